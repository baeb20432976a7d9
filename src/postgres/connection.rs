//! A checked-out connection: use it like a `tokio_postgres::Client`; it goes
//! back to the pool when dropped.

use std::ops::{Deref, DerefMut};
use std::panic::Location;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use deadpool::managed::Object;
use deadpool_postgres::ClientWrapper;
use tokio::task::JoinHandle;

use super::protocol::{ServerError, TransactionStatus};
use super::recycler::PgManager;
use super::reuse::{self, NotReusable};
use super::shared::Shared;
use super::wire_tap::Tap;
use crate::config::StatementCache;
use crate::error::{Backend, Error};
use crate::metrics::{self, CloseReason};

/// A pooled PostgreSQL connection.
///
/// It dereferences to deadpool-postgres' [`ClientWrapper`], so every
/// `tokio_postgres::Client` method works, plus the statement cache
/// (`prepare_cached`) and cached transactions. Dropping it returns the
/// connection to the pool (after the `on_checkin` hook, if any).
pub struct PooledConnection {
    /// `Some` until the connection goes back (or is discarded).
    object: Option<Object<PgManager>>,
    checked_out_at: Instant,
    leak_watch: Option<LeakWatch>,
    /// Set by the transaction helper while its transaction is open: if the
    /// checkout ends then (its future dropped), the connection is closed
    /// instead of returned, so no one is handed a session inside it.
    pub(super) in_transaction: bool,
}

/// Watches one checkout for leaks, like HikariCP's leak task: a timer that
/// warns once if the connection is still held at the threshold.
struct LeakWatch {
    timer: JoinHandle<()>,
    reported: Arc<AtomicBool>,
    acquired_at: &'static Location<'static>,
}

impl PooledConnection {
    pub(crate) fn new(
        object: Object<PgManager>,
        checked_out_at: Instant,
        caller: &'static Location<'static>,
    ) -> Self {
        let shared = &object.shared;
        let leak_watch = shared
            .settings
            .leak_detection_threshold
            .map(|threshold| LeakWatch::start(threshold, caller, shared));
        PooledConnection {
            object: Some(object),
            checked_out_at,
            leak_watch,
            in_transaction: false,
        }
    }

    fn shared(&self) -> &Shared {
        &self
            .object
            .as_ref()
            .expect("a pooled connection is present until dropped")
            .shared
    }

    /// How long this connection has been checked out.
    pub fn held_for(&self) -> Duration {
        self.checked_out_at.elapsed()
    }

    /// Sends cancel requests for this connection's backend.
    #[cfg_attr(not(feature = "migrate"), allow(dead_code))]
    pub(crate) fn canceller(&self) -> super::open::Canceller {
        self.object
            .as_ref()
            .expect("a pooled connection is present until dropped")
            .canceller
            .clone()
    }

    /// A view of this connection's session that outlives borrows of the
    /// connection (the transaction helper holds one while a `Transaction`
    /// borrows the connection).
    pub(crate) fn session(&self) -> SessionWatch {
        let object = self
            .object
            .as_ref()
            .expect("a pooled connection is present until dropped");
        SessionWatch {
            tap: object.tap.clone(),
            shared: object.shared.clone(),
        }
    }

    /// Closes the connection instead of returning it to the pool, for a
    /// session whose state cannot be reset (a `SET ROLE` you cannot undo, a
    /// protocol error mid-stream). The pool opens a fresh one when needed.
    pub fn discard(mut self) {
        if self.object.is_some() {
            self.finish();
            self.shared().closed(CloseReason::Discarded, 1);
            if let Some(object) = self.object.take() {
                drop(Object::take(object));
            }
        }
    }

    /// Ends the checkout: hold time, leak watch, in-use count. Returns the
    /// time of return.
    fn finish(&mut self) -> Instant {
        let now = Instant::now();
        metrics::released(self.shared().label, self.checked_out_at, now);
        if let Some(watch) = self.leak_watch.take() {
            watch.finish(now.saturating_duration_since(self.checked_out_at));
        }
        self.shared().checked_in();
        now
    }
}

impl LeakWatch {
    fn start(
        threshold: Duration,
        caller: &'static Location<'static>,
        shared: &Arc<Shared>,
    ) -> Self {
        let reported = Arc::new(AtomicBool::new(false));
        let flag = reported.clone();
        let shared = shared.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(threshold).await;
            flag.store(true, Ordering::Release);
            shared.counters.leaks.fetch_add(1, Ordering::Relaxed);
            metrics::leak(shared.label);
            tracing::warn!(
                target: "dbmanager::postgres",
                acquired_at = %caller,
                threshold_ms = threshold.as_millis() as u64,
                "connection held longer than leak_detection_threshold; possible leak (acquired at {caller})"
            );
        });
        LeakWatch {
            timer,
            reported,
            acquired_at: caller,
        }
    }

    fn finish(self, held: Duration) {
        self.timer.abort();
        if self.reported.load(Ordering::Acquire) {
            tracing::info!(
                target: "dbmanager::postgres",
                acquired_at = %self.acquired_at,
                held_ms = held.as_millis() as u64,
                "a connection reported as possibly leaked was returned"
            );
        }
    }
}

impl Deref for PooledConnection {
    type Target = ClientWrapper;

    fn deref(&self) -> &ClientWrapper {
        &self
            .object
            .as_ref()
            .expect("a pooled connection is present until dropped")
            .client
    }
}

impl DerefMut for PooledConnection {
    fn deref_mut(&mut self) -> &mut ClientWrapper {
        &mut self
            .object
            .as_mut()
            .expect("a pooled connection is present until dropped")
            .client
    }
}

impl std::fmt::Debug for PooledConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let database = self.object.as_ref().map(|o| o.shared.database.as_str());
        f.debug_struct("PooledConnection")
            .field("database", &database)
            .field("held_for", &self.held_for())
            .finish_non_exhaustive()
    }
}

impl Drop for PooledConnection {
    fn drop(&mut self) {
        if self.object.is_none() {
            return;
        }
        if self.in_transaction {
            // A transaction helper's future was dropped mid-transaction: a
            // drop cannot await a ROLLBACK, and closing the session makes
            // the server roll back.
            tracing::info!(target: "dbmanager::postgres", "a transaction was abandoned before it ended; closing its connection so the server rolls it back");
            self.finish();
            self.shared().closed(CloseReason::Discarded, 1);
            if let Some(object) = self.object.take() {
                drop(Object::take(object));
            }
            return;
        }
        let now = self.finish();
        let object = self.object.as_mut().expect("checked above");
        object.last_released = now;
        let shared = &object.shared;
        if shared.statement_cache != StatementCache::Named {
            // The next checkout may run on another server connection behind
            // a transaction pooler: no statement name may carry over. The
            // statements' Close messages are housekeeping the return below
            // lets finish.
            object.client.statement_cache.clear();
            object.client.clear_type_cache();
        }
        // Work the caller left queued or unanswered (a dropped query future,
        // an uncommitted `Transaction`'s ROLLBACK, a statement's Close), a
        // transaction block left open, a failed COPY: settled, and the hook
        // run, off the caller's path, before the connection goes back.
        if (!reuse::is_ready_now(object) || shared.hooks.on_checkin.is_some())
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let object = self.object.take().expect("checked above");
            runtime.spawn(check_in(object));
            return;
        }
        if shared.settings.max_idle.is_some()
            && let Some(object) = self.object.take()
        {
            return_or_close(object);
        }
        // Otherwise the object goes back to the pool when the field drops,
        // right after this: not moving it out saves copying it.
    }
}

/// The return of a connection that needs awaiting: made ready for the next
/// caller within `recycle_timeout` (else closed), then the `on_checkin`
/// hook.
async fn check_in(object: Object<PgManager>) {
    let limit = object.shared.settings.recycle_timeout;
    if let Err(why) = reuse::make_ready(&object, limit).await {
        if why == NotReusable::TimedOut {
            tracing::warn!(target: "dbmanager::postgres", timeout_ms = limit.as_millis() as u64, "closing a returned connection whose abandoned work did not end within recycle_timeout");
        }
        object.shared.closed(why.close_reason(), 1);
        drop(Object::take(object));
        return;
    }
    if let Some(hook) = &object.shared.hooks.on_checkin
        && let Err(e) = hook.call(&object.client).await
    {
        let error = crate::config::scrub(&e.to_string(), &object.shared.secrets);
        tracing::warn!(target: "dbmanager::postgres", error = %error, "on_checkin hook failed; closing the connection");
        object.shared.closed(CloseReason::Hook, 1);
        drop(Object::take(object));
        return;
    }
    return_or_close(object);
}

/// Returns a connection to the pool, or closes it when the pool already
/// keeps `max_idle` idle connections (SQLAlchemy's overflow behaviour).
fn return_or_close(object: Object<PgManager>) {
    if let Some(max_idle) = object.shared.settings.max_idle
        && let Some(pool) = Object::pool(&object)
        && pool.status().available >= max_idle
    {
        object.shared.closed(CloseReason::Excess, 1);
        drop(Object::take(object));
    }
}

/// What the transaction helper reads of a connection's session: whether
/// the server rolled the transaction back, and with which first error.
pub(crate) struct SessionWatch {
    tap: Arc<Tap>,
    shared: Arc<Shared>,
}

impl SessionWatch {
    /// The transaction is in the failed state (a statement inside failed):
    /// it can only roll back.
    pub fn transaction_failed(&self) -> Option<Error> {
        (self.tap.view().status == TransactionStatus::Failed)
            .then(|| self.rolled_back(self.tap.first_error()))
    }

    /// After a `COMMIT`: the server answered it with `ROLLBACK`.
    pub fn commit_rolled_back(&self) -> Option<Error> {
        let first = self.tap.rolled_back()?;
        Some(self.rolled_back(first))
    }

    fn rolled_back(&self, first: Option<ServerError>) -> Error {
        Error::TransactionRolledBack {
            backend: Backend::Postgres,
            sqlstate: first.as_ref().and_then(|e| e.code.clone()),
            message: first
                .and_then(|e| e.message)
                .map(|m| crate::config::scrub(&m, &self.shared.secrets)),
        }
    }
}
