//! One checkout from the pool, in three steps that read apart: the caller's
//! wait budget ([`Budget`]), the two-phase deadpool checkout (free now, then
//! queued) with the check of the connection it returns, and the
//! `on_checkout` hook.

use std::panic::Location;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use deadpool::managed::{Object, PoolError, TimeoutType, Timeouts};
use tracing::field::Empty;
use tracing::{Instrument, Span};

use super::connect::create_timeout;
use super::connection::PooledConnection;
use super::pool::PostgresPool;
use super::recycler::{Checked, PgManager, check_out, idle_for};
use crate::error::{Backend, Error, Result};
use crate::metrics::{self, CloseReason};
use crate::spans;

/// The caller's wait, shared by every step of one acquire (queueing, each
/// connection's check, the hook, every retry).
///
/// When the acquire began is read only once something can take time: a
/// checkout that finds a free, healthy connection reads no clock of its
/// own, and deadpool stamps the checkout itself. The instants before the
/// first reading are a few hundred nanoseconds of in-memory work.
#[derive(Debug, Clone, Copy)]
struct Budget {
    wait: Duration,
    started: Option<Instant>,
}

impl Budget {
    fn new(wait: Duration) -> Self {
        Budget {
            wait,
            started: None,
        }
    }

    /// What is left of the wait: all of it until the start is known.
    fn left(&self) -> Duration {
        self.started
            .map_or(self.wait, |began| self.wait.saturating_sub(began.elapsed()))
    }

    /// The start, fixed at `at` if it was not known yet.
    fn begin_at(&mut self, at: Instant) -> Instant {
        *self.started.get_or_insert(at)
    }

    /// The start and what is left, reading the clock now as the start if
    /// it was not known yet (the caller is about to queue).
    fn left_from_now(&mut self) -> (Instant, Duration) {
        match self.started {
            Some(began) => (began, self.wait.saturating_sub(began.elapsed())),
            None => {
                let now = Instant::now();
                self.started = Some(now);
                (now, self.wait)
            }
        }
    }

    /// The start for an error report, without fixing it: when no clock was
    /// read before, a step that used `spent` of the budget began that long
    /// ago.
    fn began_for_report(&self, spent: Duration) -> Instant {
        self.started.unwrap_or_else(|| {
            let now = Instant::now();
            now.checked_sub(spent).unwrap_or(now)
        })
    }

    /// Whether the wait is over, counted from `began`.
    fn spent_since(&self, began: Instant) -> bool {
        began.elapsed() >= self.wait
    }

    /// How long the caller waited until `until` (zero when the clock was
    /// never read: nothing took time).
    fn waited_until(&self, until: Instant) -> Duration {
        self.started
            .map_or(Duration::ZERO, |s| until.saturating_duration_since(s))
    }
}

/// What one round of checkout found.
enum Round<T> {
    /// Go on with this.
    Ready(T),
    /// The connection was closed; take another.
    Retry,
}

impl PostgresPool {
    /// A checkout for `caller`, within its `span` (`dbmanager.acquire`).
    pub(super) async fn acquire(
        &self,
        caller: &'static Location<'static>,
        wait: Option<Duration>,
    ) -> Result<PooledConnection> {
        // No subscriber records this span: the checkout is not
        // instrumented (entering and leaving a span costs even when it is
        // disabled), and without any INFO subscriber it is not even built.
        if !spans::info_spans_possible() {
            return self.acquire_within(caller, wait).await;
        }
        let span = self.acquire_span(caller);
        if span.is_disabled() {
            return self.acquire_within(caller, wait).await;
        }
        let result = self
            .acquire_within(caller, wait)
            .instrument(span.clone())
            .await;
        if let Err(error) = &result {
            spans::record_error(&span, error);
        }
        result
    }

    /// The span of one checkout. Not a client call (no round trip of its
    /// own, most of the time): an internal span whose children are the
    /// connects and checks it caused.
    fn acquire_span(&self, caller: &'static Location<'static>) -> Span {
        let shared = &self.shared;
        tracing::info_span!(
            target: "dbmanager::postgres",
            "dbmanager.acquire",
            db.system.name = spans::POSTGRESQL,
            db.namespace = %shared.peer.namespace,
            server.address = %shared.peer.address,
            server.port = shared.peer.port,
            db.client.connection.pool.name = shared.label.pool,
            code.file.path = caller.file(),
            code.line.number = caller.line(),
            error.type = Empty,
            db.response.status_code = Empty,
            otel.status_code = Empty,
        )
    }

    async fn acquire_within(
        &self,
        caller: &'static Location<'static>,
        wait: Option<Duration>,
    ) -> Result<PooledConnection> {
        let shared = &self.shared;
        if shared.is_draining() {
            return Err(Error::ShuttingDown {
                backend: Backend::Postgres,
            });
        }
        let mut budget = Budget::new(wait.unwrap_or(shared.settings.wait_timeout));
        let mut rejected_by_hook = 0usize;
        let (object, checked_out_at) = loop {
            let object = InCheckout(Some(self.checkout(&mut budget).await?));
            let Round::Ready((object, at)) = self.verify(object, &mut budget).await? else {
                continue;
            };
            if let Round::Ready(ready) = self
                .run_on_checkout(object, at, &mut budget, &mut rejected_by_hook)
                .await?
            {
                break ready;
            }
        };
        self.hand_out(object, checked_out_at, caller, &budget)
    }

    /// Phase one: one deadpool checkout, first without queueing, which sets
    /// no timer (the common case: a connection is free), then queued for
    /// what is left of the budget (whose start is read here if it was not
    /// yet). The semaphore is fair, so the first try never takes a
    /// connection ahead of callers already queued.
    async fn checkout(&self, budget: &mut Budget) -> Result<Object<PgManager>> {
        let configured = self.pool.timeouts();
        // Opening a connection counts against the caller's wait as well: a
        // handshake that stalls (a proxy whose upstream is gone) must not
        // hold the caller for the whole create timeout.
        let left = budget.left();
        let free_now = Timeouts {
            wait: Some(Duration::ZERO),
            create: bounded(configured.create, left),
            ..configured
        };
        match self.pool.timeout_get(&free_now).await {
            Err(PoolError::Timeout(TimeoutType::Wait)) => {}
            Ok(object) => return Ok(object),
            Err(e) => {
                // No clock was read before: a create that timed out used
                // its whole budget.
                let began = budget.began_for_report(left);
                return Err(self.create_error(e, began, configured.create, left));
            }
        }
        let (began, remaining) = budget.left_from_now();
        let queued = Timeouts {
            wait: Some(remaining),
            create: bounded(configured.create, remaining),
            ..configured
        };
        self.pool
            .timeout_get(&queued)
            .await
            .map_err(|e| self.create_error(e, began, configured.create, remaining))
    }

    /// Phase two: the check of the connection deadpool handed over (a
    /// round trip when it idled long or may carry a caller's leftovers).
    /// Returns when it was checked out for the caller, or `Retry` after
    /// closing it when it failed and the budget allows another.
    async fn verify(
        &self,
        mut object: InCheckout,
        budget: &mut Budget,
    ) -> Result<Round<(InCheckout, Instant)>> {
        let metrics = Object::metrics(object.get());
        let reused = metrics.recycle_count > 0;
        let mut at = metrics.recycled.unwrap_or(metrics.created);
        if !reused && budget.started.is_none() {
            // Opened by this checkout: it waited for the connect.
            budget.started = Some(object.get().opening_began);
        }
        let verified = match check_out(object.get_mut(), reused, at, budget.left()).await {
            Checked::Usable { verified } => verified,
            checked => {
                let began = budget.begin_at(at);
                object.close();
                if checked == Checked::Unresponsive {
                    self.evict_unproven();
                }
                // Each discarded connection may have cost a check of up
                // to `recycle_timeout`; the caller's budget is `wait`
                // for all of them together (a black-holed network can
                // leave every idle connection looking open).
                if checked == Checked::OutOfTime || budget.spent_since(began) {
                    return Err(self.pool_error(PoolError::Timeout(TimeoutType::Wait), began));
                }
                return Ok(Round::Retry);
            }
        };
        if verified {
            budget.begin_at(at);
            at = Instant::now();
        }
        Ok(Round::Ready((object, at)))
    }

    /// The `on_checkout` hook, within what is left of the budget. A
    /// connection it rejects is closed (`Retry`) until more connections were
    /// rejected than the pool holds or the budget is spent.
    async fn run_on_checkout(
        &self,
        object: InCheckout,
        at: Instant,
        budget: &mut Budget,
        rejected_by_hook: &mut usize,
    ) -> Result<Round<(Object<PgManager>, Instant)>> {
        let shared = &self.shared;
        let Some(hook) = &shared.hooks.on_checkout else {
            return Ok(Round::Ready((object.keep(), at)));
        };
        let began = budget.begin_at(at);
        let (reason, give_up) = match tokio::time::timeout(
            budget.left(),
            hook.call(&object.get().client),
        )
        .await
        {
            Ok(Ok(())) => return Ok(Round::Ready((object.keep(), Instant::now()))),
            // Cut off mid-hook: the connection is in an unknown state.
            Err(_) => (
                format!("did not finish within the wait timeout ({:?})", budget.wait),
                true,
            ),
            Ok(Err(e)) => {
                *rejected_by_hook += 1;
                let error = crate::config::scrub(&e.to_string(), &shared.secrets);
                tracing::warn!(target: "dbmanager::postgres", error = %error, "on_checkout hook failed; discarding the connection and trying another");
                (
                    error,
                    *rejected_by_hook > shared.settings.max_size || budget.spent_since(began),
                )
            }
        };
        shared.closed(CloseReason::Hook, 1);
        object.close();
        if give_up {
            return Err(Error::Hook {
                hook: "on_checkout",
                reason,
            });
        }
        Ok(Round::Retry)
    }

    /// Hands the checked connection to the caller: counted, refused if
    /// shutdown began meanwhile, the wait recorded and reported when slow.
    fn hand_out(
        &self,
        object: Object<PgManager>,
        checked_out_at: Instant,
        caller: &'static Location<'static>,
        budget: &Budget,
    ) -> Result<PooledConnection> {
        let shared = &self.shared;
        shared.checked_out.fetch_add(1, Ordering::AcqRel);
        let connection = PooledConnection::new(object, checked_out_at, caller);
        if shared.is_draining() {
            // Shutdown began while this caller waited: hand nothing out.
            drop(connection);
            return Err(Error::ShuttingDown {
                backend: Backend::Postgres,
            });
        }
        let waited = budget.waited_until(checked_out_at);
        metrics::acquired(shared.label, waited);
        if shared
            .settings
            .slow_acquire_threshold
            .is_some_and(|t| waited >= t)
        {
            tracing::warn!(
                target: "dbmanager::postgres",
                waited_ms = waited.as_millis() as u64,
                pool = %self.status(),
                acquired_at = %caller,
                "slow connection acquire"
            );
        }
        Ok(connection)
    }

    /// After a connection stopped answering its check (a vanished peer, a
    /// failover), the other idle connections that have not proved
    /// themselves recently are closed too, instead of being checked one
    /// after another at a `recycle_timeout` each: callers open fresh
    /// connections instead. Connections used within `verify_after_idle`
    /// answered then and stay.
    fn evict_unproven(&self) {
        let now = Instant::now();
        let proven_within = self.shared.settings.verify_after_idle;
        let mut evicted = 0u64;
        let removed = self.pool.retain(|conn, _| {
            let keep = idle_for(conn, now) < proven_within;
            evicted += u64::from(!keep);
            keep
        });
        drop(removed.removed);
        self.shared.closed(CloseReason::Broken, evicted);
        if evicted > 0 {
            tracing::warn!(target: "dbmanager::postgres", evicted, "a connection stopped answering its check; closed the idle connections not used recently");
        }
    }

    /// A create timeout cut short by the caller's wait is the caller's
    /// timeout ([`Error::PoolTimeout`] with the pool's status); any other
    /// error as [`PostgresPool::pool_error`] reports it.
    fn create_error(
        &self,
        error: PoolError<Error>,
        began: Instant,
        configured: Option<Duration>,
        budget: Duration,
    ) -> Error {
        let cut_by_wait = configured.is_none_or(|create| budget < create);
        match error {
            PoolError::Timeout(TimeoutType::Create) if cut_by_wait => {
                self.pool_error(PoolError::Timeout(TimeoutType::Wait), began)
            }
            other => self.pool_error(other, began),
        }
    }

    fn pool_error(&self, error: PoolError<Error>, started: Instant) -> Error {
        match error {
            PoolError::Timeout(TimeoutType::Wait) => {
                let status = self.status();
                self.shared
                    .counters
                    .acquire_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                metrics::acquire_timeout(self.shared.label);
                tracing::warn!(target: "dbmanager::postgres", pool = %status, "timed out waiting for a connection");
                Error::PoolTimeout {
                    backend: Backend::Postgres,
                    waited: started.elapsed(),
                    status,
                }
            }
            PoolError::Timeout(TimeoutType::Create) => {
                let error = create_timeout(
                    &self.shared.target,
                    self.pool.timeouts().create.unwrap_or_default(),
                );
                metrics::connect_failed(self.shared.label, &error);
                error
            }
            PoolError::Timeout(TimeoutType::Recycle) => Error::Timeout {
                what: "checking a pooled connection",
                after: self.shared.settings.recycle_timeout,
            },
            PoolError::Backend(e) => e,
            PoolError::Closed => Error::ShuttingDown {
                backend: Backend::Postgres,
            },
            PoolError::NoRuntimeSpecified | PoolError::PostCreateHook(_) => Error::Timeout {
                what: "opening a connection",
                after: started.elapsed(),
            },
        }
    }
}

/// The create timeout for one checkout: the configured one, or what is
/// left of the caller's wait when that is shorter.
fn bounded(create: Option<Duration>, left: Duration) -> Option<Duration> {
    Some(create.map_or(left, |create| create.min(left)))
}

/// A connection between deadpool's checkout and the caller, while it is
/// checked and passes `on_checkout`. If the caller's future is dropped
/// meanwhile (a timeout around `get()`, a health probe giving up), the
/// connection may be mid-check or mid-hook, in an unknown state: it is
/// closed instead of going back to the pool.
struct InCheckout(Option<Object<PgManager>>);

impl InCheckout {
    fn get(&self) -> &Object<PgManager> {
        self.0.as_ref().expect("present until kept or closed")
    }

    fn get_mut(&mut self) -> &mut Object<PgManager> {
        self.0.as_mut().expect("present until kept or closed")
    }

    /// It passed: the caller takes it.
    fn keep(mut self) -> Object<PgManager> {
        self.0.take().expect("present until kept or closed")
    }

    /// Closes it; the caller has counted why.
    fn close(mut self) {
        if let Some(object) = self.0.take() {
            drop(Object::take(object));
        }
    }
}

impl Drop for InCheckout {
    fn drop(&mut self) {
        if let Some(object) = self.0.take() {
            object.shared.closed(CloseReason::Discarded, 1);
            drop(Object::take(object));
        }
    }
}
