//! The PostgreSQL pool handle: checkout, status, warm-up and drain.

use std::future::Future;
use std::panic::Location;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool::Runtime;
use deadpool::managed::{Object, Pool, PoolError, TimeoutType, Timeouts};
use tokio::task::JoinHandle;

use super::connect::{create_timeout, driver_config};
use super::connection::PooledConnection;
use super::hooks::Hooks;
use super::maintenance;
use super::recycler::{Checked, PgManager, check_out, idle_for};
use super::replicas::{ReadReplicas, ReplicaSet};
use super::shared::{Endpoint, Shared};
use crate::config::{PostgresConfig, QueueMode, ReplicaFallback, url::ConnectionString};
use crate::error::{Backend, Error, Result};
use crate::metrics::{self, CloseReason, PoolLabel};
use crate::pool_status::PoolStatus;

/// The PostgreSQL connection pool of a [`crate::DatabaseManager`].
///
/// A cheap `Clone` handle. Get one with `db.postgres()?`.
#[derive(Clone)]
pub struct PostgresPool {
    pool: Pool<PgManager>,
    shared: Arc<Shared>,
    maintenance: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// Statements pipelined over connections of its own (multiplex/).
    pub(super) multiplexed: super::multiplex::Multiplexed,
    /// Dedicated LISTEN connections (listener/).
    pub(super) listeners: super::listener::Listeners,
    /// The read replicas of `[postgres.replicas]`, if any (none on a
    /// replica's own pool).
    replicas: Option<Arc<ReplicaSet>>,
    /// `postgres.replicas.fallback`.
    replica_fallback: ReplicaFallback,
}

/// Counters of a pool's life since it was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[non_exhaustive]
pub struct PoolStats {
    /// Connections opened.
    pub created: u64,
    /// Closed because they reached `max_lifetime`.
    pub closed_lifetime: u64,
    /// Closed after idling past `idle_timeout`.
    pub closed_idle: u64,
    /// Closed because they were found broken.
    pub closed_broken: u64,
    /// Closed on return because `max_idle` connections were already idle.
    pub closed_excess: u64,
    /// Closed because a checkout or checkin hook failed.
    pub closed_hook: u64,
    /// Closed by [`PooledConnection::discard`].
    pub closed_discarded: u64,
    /// Closed because work its caller abandoned (a dropped query future)
    /// did not end within `recycle_timeout` of the return.
    pub closed_abandoned: u64,
    /// Closed by shutdown.
    pub closed_shutdown: u64,
    /// Statements cancelled on the server because their caller stopped
    /// waiting and returned the connection.
    pub abandoned_cancelled: u64,
    /// Connections returned inside a transaction block (a manual `BEGIN`
    /// never ended) and rolled back before being handed out again.
    pub rolled_back: u64,
    /// `get()` calls that timed out.
    pub acquire_timeouts: u64,
    /// Connections reported as held past `leak_detection_threshold`.
    pub leaks: u64,
    /// Whether the maintenance task is running.
    pub maintenance_running: bool,
}

/// What draining the pool found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Drain {
    pub forced: usize,
}

pub(crate) fn status_of(pool: &Pool<PgManager>, shared: &Shared) -> PoolStatus {
    let status = pool.status();
    let in_use = shared.checked_out.load(Ordering::Acquire).min(status.size);
    PoolStatus {
        name: shared.label.pool,
        max_size: shared.settings.max_size,
        open: status.size,
        idle: status.size - in_use,
        in_use,
        waiting: status.waiting,
    }
}

impl PostgresPool {
    /// The pool of `postgres.url`, with a pool per read replica.
    pub(crate) fn new(config: &PostgresConfig, hooks: Hooks) -> Result<Self> {
        let mut primary = Self::single(config, hooks.clone(), PoolLabel::PRIMARY)?;
        // The set keeps a handle of the primary without the set, so that
        // neither keeps the other alive.
        primary.replicas = ReplicaSet::new(config, &hooks, primary.clone())?;
        Ok(primary)
    }

    /// A pool of `config.url` for work outside the service's pools
    /// (bootstrap's and test databases' migrations): `pool="direct"` in
    /// metrics, no replicas, no hooks.
    pub(crate) fn direct(config: &PostgresConfig) -> Result<Self> {
        Self::single(config, Hooks::default(), PoolLabel::DIRECT)
    }

    /// One pool of `config.url`, named `label` in metrics and health.
    pub(super) fn single(config: &PostgresConfig, hooks: Hooks, label: PoolLabel) -> Result<Self> {
        let url = config.url.as_ref().ok_or(Error::NotConfigured {
            backend: Backend::Postgres,
            hint: "DATABASE_URL, the POSTGRES_* variables or postgres.url",
        })?;
        let mut driver = driver_config(config, url)?;
        driver.credentials = hooks.password_provider.clone();
        let pg = &driver.config;
        let parsed = ConnectionString::parse(url.expose()).ok();
        let target = parsed
            .as_ref()
            .map(ConnectionString::target)
            .unwrap_or_default();
        let database = pg
            .get_dbname()
            .or(pg.get_user())
            .unwrap_or("postgres")
            .to_string();
        let secrets = url.password().into_iter().collect();
        let settings = config.pool.clone();
        let timeouts = Timeouts {
            wait: Some(settings.wait_timeout),
            // Room for the on_connect hook on top of the socket connect.
            create: Some(driver.attempt_timeout()),
            // The manager times the checks that make a round trip itself
            // (`recycle_timeout`): a deadpool timer here would cost every
            // checkout a clock read and a timer entry.
            recycle: None,
        };
        let queue_mode = match settings.queue_mode {
            QueueMode::Lifo => deadpool::managed::QueueMode::Lifo,
            QueueMode::Fifo => deadpool::managed::QueueMode::Fifo,
        };
        let max_size = settings.max_size;
        let require_writable = driver.config.get_target_session_attrs()
            == tokio_postgres::config::TargetSessionAttrs::ReadWrite;
        let endpoint = Endpoint {
            label,
            target,
            database,
            secrets,
            require_writable,
        };
        let shared = Arc::new(Shared::new(
            endpoint,
            settings,
            config.statement_cache,
            hooks,
        ));
        let multiplexed = super::multiplex::Multiplexed::new(
            config.multiplex.clone(),
            driver.clone(),
            shared.clone(),
        );
        let listeners = super::listener::Listeners::new(
            config.listener.clone(),
            driver.clone(),
            shared.clone(),
        );
        let pool = Pool::builder(PgManager::new(driver, shared.clone()))
            .max_size(max_size)
            .timeouts(timeouts)
            .queue_mode(queue_mode)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| Error::config("postgres.pool", e.to_string()))?;
        Ok(PostgresPool {
            pool,
            shared,
            maintenance: Arc::new(Mutex::new(None)),
            multiplexed,
            listeners,
            replicas: None,
            replica_fallback: config.replicas.fallback,
        })
    }

    /// Checkouts from the read replicas of `[postgres.replicas]`:
    /// `db.postgres()?.replica().get().await`. See [`ReadReplicas`].
    pub fn replica(&self) -> ReadReplicas<'_> {
        ReadReplicas::new(self, self.replicas.as_ref())
    }

    /// The read replicas, when configured.
    pub(crate) fn replica_set(&self) -> Option<&Arc<ReplicaSet>> {
        self.replicas.as_ref()
    }

    pub(super) fn replica_fallback(&self) -> ReplicaFallback {
        self.replica_fallback
    }

    pub(super) fn wait_timeout(&self) -> Duration {
        self.shared.settings.wait_timeout
    }

    /// The pool's name in metrics and health.
    pub(super) fn label(&self) -> PoolLabel {
        self.shared.label
    }

    /// Checks out a connection, waiting up to `postgres.pool.wait_timeout`.
    ///
    /// The location of the call is remembered for leak reports.
    ///
    /// # Errors
    ///
    /// [`Error::PoolTimeout`] with the pool's status when none became free
    /// in time; [`Error::Connect`] when a new connection could not be opened;
    /// [`Error::ShuttingDown`] once shutdown has begun; [`Error::Hook`] when
    /// `on_checkout` failed on every connection tried.
    #[track_caller]
    pub fn get(&self) -> impl Future<Output = Result<PooledConnection>> + Send + '_ {
        let caller = Location::caller();
        self.acquire(caller, None)
    }

    /// Like [`PostgresPool::get`] with another wait limit.
    ///
    /// # Errors
    ///
    /// As [`PostgresPool::get`].
    #[track_caller]
    pub fn get_timeout(
        &self,
        wait: Duration,
    ) -> impl Future<Output = Result<PooledConnection>> + Send + '_ {
        let caller = Location::caller();
        self.acquire(caller, Some(wait))
    }

    pub(super) async fn acquire(
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
        let wait = wait.unwrap_or(shared.settings.wait_timeout);
        // When this acquire began, read only once something can take time
        // (queueing, a round-trip check, a hook, a retry): a checkout that
        // finds a free, healthy connection reads no clock of its own, and
        // deadpool stamps the checkout itself. The instants before the first
        // reading are a few hundred nanoseconds of in-memory work.
        let mut started: Option<Instant> = None;
        let mut rejected_by_hook = 0usize;
        let (object, checked_out_at) = loop {
            let mut object = InCheckout(Some(self.checkout(&mut started, wait).await?));
            let metrics = Object::metrics(object.get());
            let reused = metrics.recycle_count > 0;
            let mut at = metrics.recycled.unwrap_or(metrics.created);
            if !reused && started.is_none() {
                // Opened by this checkout: it waited for the connect.
                started = Some(object.get().opening_began);
            }
            let budget = started.map_or(wait, |s| wait.saturating_sub(s.elapsed()));
            let verified = match check_out(object.get_mut(), reused, at, budget).await {
                Checked::Usable { verified } => verified,
                checked => {
                    let began = *started.get_or_insert(at);
                    object.close();
                    if checked == Checked::Unresponsive {
                        self.evict_unproven();
                    }
                    // Each discarded connection may have cost a check of up
                    // to `recycle_timeout`; the caller's budget is `wait`
                    // for all of them together (a black-holed network can
                    // leave every idle connection looking open).
                    if checked == Checked::OutOfTime || began.elapsed() >= wait {
                        return Err(self.pool_error(PoolError::Timeout(TimeoutType::Wait), began));
                    }
                    continue;
                }
            };
            if verified {
                started.get_or_insert(at);
                at = Instant::now();
            }
            let Some(hook) = &shared.hooks.on_checkout else {
                break (object.keep(), at);
            };
            let began = *started.get_or_insert(at);
            let budget = wait.saturating_sub(began.elapsed());
            let (reason, give_up) = match tokio::time::timeout(
                budget,
                hook.call(&object.get().client),
            )
            .await
            {
                Ok(Ok(())) => break (object.keep(), Instant::now()),
                // Cut off mid-hook: the connection is in an unknown state.
                Err(_) => (
                    format!("did not finish within the wait timeout ({wait:?})"),
                    true,
                ),
                Ok(Err(e)) => {
                    rejected_by_hook += 1;
                    let error = crate::config::scrub(&e.to_string(), &shared.secrets);
                    tracing::warn!(target: "dbmanager::postgres", error = %error, "on_checkout hook failed; discarding the connection and trying another");
                    (
                        error,
                        rejected_by_hook > shared.settings.max_size || began.elapsed() >= wait,
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
        };
        shared.checked_out.fetch_add(1, Ordering::AcqRel);
        let connection = PooledConnection::new(object, checked_out_at, caller);
        if shared.is_draining() {
            // Shutdown began while this caller waited: hand nothing out.
            drop(connection);
            return Err(Error::ShuttingDown {
                backend: Backend::Postgres,
            });
        }
        let waited = started.map_or(Duration::ZERO, |s| {
            checked_out_at.saturating_duration_since(s)
        });
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

    /// One deadpool checkout: first without queueing, which sets no timer
    /// (the common case: a connection is free), then queued for what is
    /// left of `wait` since `started` (read here if it was not yet). The
    /// semaphore is fair, so the first try never takes a connection ahead
    /// of callers already queued.
    async fn checkout(
        &self,
        started: &mut Option<Instant>,
        wait: Duration,
    ) -> Result<Object<PgManager>> {
        let configured = self.pool.timeouts();
        // Opening a connection counts against the caller's wait as well: a
        // handshake that stalls (a proxy whose upstream is gone) must not
        // hold the caller for the whole create timeout.
        let left = started.map_or(wait, |began| wait.saturating_sub(began.elapsed()));
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
                let began = started.unwrap_or_else(|| {
                    let now = Instant::now();
                    now.checked_sub(left).unwrap_or(now)
                });
                return Err(self.create_error(e, began, configured.create, left));
            }
        }
        let remaining = match *started {
            Some(began) => wait.saturating_sub(began.elapsed()),
            None => {
                *started = Some(Instant::now());
                wait
            }
        };
        let queued = Timeouts {
            wait: Some(remaining),
            create: bounded(configured.create, remaining),
            ..configured
        };
        let began = started.expect("set above");
        self.pool
            .timeout_get(&queued)
            .await
            .map_err(|e| self.create_error(e, began, configured.create, remaining))
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

    /// The pool right now: the same figures as the `dbmanager_pool_*`
    /// gauges.
    pub fn status(&self) -> PoolStatus {
        status_of(&self.pool, &self.shared)
    }

    /// Counters since the pool was built.
    pub fn stats(&self) -> PoolStats {
        let c = &self.shared.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        PoolStats {
            created: load(&c.created),
            closed_lifetime: load(&c.closed_lifetime),
            closed_idle: load(&c.closed_idle),
            closed_broken: load(&c.closed_broken),
            closed_excess: load(&c.closed_excess),
            closed_hook: load(&c.closed_hook),
            closed_discarded: load(&c.closed_discarded),
            closed_abandoned: load(&c.closed_abandoned),
            abandoned_cancelled: load(&c.abandoned_cancelled),
            rolled_back: load(&c.rolled_back),
            closed_shutdown: load(&c.closed_shutdown),
            acquire_timeouts: load(&c.acquire_timeouts),
            leaks: load(&c.leaks),
            maintenance_running: self
                .maintenance
                .lock()
                .expect("maintenance lock")
                .as_ref()
                .is_some_and(|task| !task.is_finished()),
        }
    }

    /// The database name connections use.
    pub fn database(&self) -> &str {
        &self.shared.database
    }

    /// Where the pool connects, without credentials (`user@host:port/db`).
    pub fn target(&self) -> &str {
        &self.shared.target
    }

    /// `postgres.statement_cache`, for the crate's own statements.
    pub(crate) fn statement_cache(&self) -> crate::config::StatementCache {
        self.shared.statement_cache
    }

    /// Secrets to scrub from messages before they are shown.
    pub(crate) fn secrets(&self) -> &[String] {
        &self.shared.secrets
    }

    /// Opens one connection now: the eager start-up proof.
    pub(crate) async fn connect_once(&self) -> Result<()> {
        let connection = self
            .get_timeout(self.pool.timeouts().create.unwrap_or_default())
            .await?;
        drop(connection);
        Ok(())
    }

    /// Opens connections in parallel until `min_idle` are idle; returns how
    /// many were opened.
    pub(crate) async fn warm_up(&self) -> usize {
        maintenance::fill(&self.pool, &self.shared, self.shared.settings.min_idle).await
    }

    /// Starts the maintenance task (once).
    pub(crate) fn start_maintenance(&self) {
        let mut slot = self.maintenance.lock().expect("maintenance lock");
        if slot.is_none() && !self.shared.is_draining() {
            *slot = Some(maintenance::spawn(self.pool.weak(), self.shared.clone()));
        }
    }

    /// Whether shutdown has begun.
    pub(crate) fn is_draining(&self) -> bool {
        self.shared.is_draining()
    }

    /// Stops handing out connections, waits up to `grace` for checked-out
    /// ones, then closes everything (forcibly what is still in use).
    pub(crate) async fn drain(&self, grace: Duration) -> Drain {
        let shared = &self.shared;
        shared.draining.store(true, Ordering::Release);
        let task = self.maintenance.lock().expect("maintenance lock").take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        // Closing deadpool's pool now refuses the callers queued for a
        // connection at once (`ShuttingDown`) instead of letting them take
        // connections as they come back during the grace period; it closes
        // the idle connections, and each in-use one as it comes back.
        let open = self.pool.status().size;
        self.pool.close();
        shared.closed(CloseReason::Shutdown, open as u64);
        let deadline = crate::clock::deadline_after(grace);
        loop {
            let returned = shared.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if shared.checked_out.load(Ordering::Acquire) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, returned).await.is_err() {
                break;
            }
        }
        let forced = shared.checked_out.load(Ordering::Acquire);
        if forced > 0 {
            tracing::warn!(target: "dbmanager::postgres", forced, "grace period over; cancelling and closing connections still in use");
            // Idle connections are closed already: what is left is in use.
            let tokens: Vec<_> = shared
                .live
                .lock()
                .expect("live connections lock")
                .values()
                .map(|entry| entry.cancel.clone())
                .collect();
            let cancels = futures_util::future::join_all(tokens.iter().map(|t| t.cancel()));
            let _ = tokio::time::timeout(Duration::from_secs(2), cancels).await;
            shared.abort_all();
        }
        // Wait (briefly) for the sockets to be closed, so the server sees the
        // sessions end before shutdown returns.
        let closed_by = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let ended = shared.connection_ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if shared.live_connections.load(Ordering::Acquire) == 0 {
                break;
            }
            if tokio::time::timeout_at(closed_by, ended).await.is_err() {
                break;
            }
        }
        maintenance::record_gauges(shared.label, &self.status());
        Drain { forced }
    }
}

impl std::fmt::Debug for PostgresPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresPool")
            .field("target", &self.shared.target)
            .field("status", &self.status())
            .field("replicas", &self.replica())
            .finish()
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
