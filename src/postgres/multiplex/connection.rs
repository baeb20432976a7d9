//! One multiplexed connection: a tokio-postgres client that many callers
//! use at once (the driver pipelines their statements on the socket), the
//! counters routing reads, and the statements prepared on it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio_postgres::{Client, Statement};

use super::cache::StatementCache;
use super::session_sql::session_statement;
use crate::error::{Error, Result};
use crate::metrics::PoolLabel;
use crate::postgres::connect::{Driver, create_timeout};
use crate::postgres::credentials::secrets_of;
use crate::postgres::open::{Canceller, Opened, open};
use crate::postgres::shared::Shared;
use crate::postgres::silence::Watch;

/// The largest share of `max_lifetime` taken off a connection's life, so
/// connections opened together are not all replaced together (the pool's
/// and HikariCP's 2.5 %).
const LIFETIME_JITTER: f64 = 0.025;

/// A shared, pipelined connection.
pub(super) struct MuxConnection {
    pub client: Client,
    /// Statements sent and not yet answered (or abandoned).
    pub in_flight: AtomicUsize,
    /// Statements answered so far: the stall watch compares it between
    /// ticks to see whether the head of the pipeline moves.
    pub answered: AtomicU64,
    /// Set by the stall watch while the head of the pipeline has not moved
    /// for `stall_threshold`: routing sends it no new work.
    pub stalled: AtomicBool,
    /// Set when the socket is gone (the connection task ended, or a
    /// statement failed because the connection closed).
    closed: Arc<AtomicBool>,
    /// When the connection is to be replaced.
    expires_at: Option<Instant>,
    /// Statements prepared on this connection, by SQL text, least recently
    /// used evicted (and closed on the server) past its capacity.
    statements: StatementCache,
    pub cancel: Canceller,
    task: AbortHandle,
}

impl MuxConnection {
    /// Opens a connection through the pool's driver settings (TLS, session
    /// options, keepalives), within the connect timeout, and runs the
    /// `on_connect` hook on it. `ended` is notified when its socket closes.
    pub async fn open(
        driver: &Driver,
        shared: &Shared,
        max_lifetime: Option<Duration>,
        statement_cache_capacity: usize,
        ended: Arc<Notify>,
        live: Arc<AtomicUsize>,
    ) -> Result<Arc<MuxConnection>> {
        let started = Instant::now();
        let limit = driver.attempt_timeout();
        // The pool's way of opening: a password from the provider, every
        // host of the URL, and a cancel request that goes to the right server.
        let connect = Box::pin(async {
            let driver = driver.for_next_connection().await?;
            let secrets = secrets_of(&driver.config, &shared.secrets);
            open(&driver, &shared.target, &secrets).await
        });
        let Opened {
            client,
            connection,
            canceller,
            tap,
        } = tokio::time::timeout(limit, connect)
            .await
            .map_err(|_| create_timeout(&shared.target, limit))
            .and_then(|opened| opened)
            .inspect_err(|e| crate::metrics::connect_failed(PoolLabel::MULTIPLEX, e))?;
        let closed = Arc::new(AtomicBool::new(false));
        live.fetch_add(1, Ordering::AcqRel);
        let end = TaskEnd {
            closed: closed.clone(),
            live,
            ended,
        };
        let watchdog = Arc::new(Watch {
            driver: driver.clone(),
            target: shared.target.clone(),
            secrets: shared.secrets.clone(),
            label: PoolLabel::MULTIPLEX,
        })
        .start(tap, canceller.clone());
        let task = tokio::spawn(async move {
            // Dropped when the socket closes and also when the task is
            // aborted (a forced close, a failed `on_connect`).
            let _end = end;
            let _watchdog = watchdog;
            if let Err(e) = connection.await {
                tracing::debug!(target: "dbmanager::postgres", error = %e, "multiplexed connection ended with an error");
            }
        });
        if let Some(hook) = &shared.hooks.on_connect
            && let Err(e) = hook.call(&client).await
        {
            task.abort();
            return Err(Error::Hook {
                hook: "on_connect",
                reason: crate::config::scrub(&e.to_string(), &shared.secrets),
            });
        }
        let took = started.elapsed();
        crate::metrics::connection_created(PoolLabel::MULTIPLEX, Some(took));
        // The pool's `stats()` counts the handle's connections too.
        shared.counters.created.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(target: "dbmanager::postgres", took_ms = took.as_millis() as u64, "opened a multiplexed connection");
        let expires_at = max_lifetime.map(|lifetime| {
            let jitter = lifetime.mul_f64(LIFETIME_JITTER * fastrand::f64());
            started + (lifetime - jitter)
        });
        Ok(Arc::new(MuxConnection {
            cancel: canceller,
            client,
            in_flight: AtomicUsize::new(0),
            answered: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
            closed,
            expires_at,
            statements: StatementCache::new(statement_cache_capacity),
            task: task.abort_handle(),
        }))
    }

    /// The head of the pipeline moved: a statement was answered.
    pub fn answered(&self) {
        self.answered.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether new work may be sent on it.
    pub fn is_open(&self) -> bool {
        !self.closed.load(Ordering::Acquire) && !self.client.is_closed()
    }

    /// Marks the socket as gone (a statement failed with a closed
    /// connection), before its task has noticed.
    pub fn mark_closed(&self) {
        self.closed.store(true, Ordering::Release);
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    /// Ends the connection at once (a forced close at the end of the
    /// shutdown grace period): statements still in flight fail.
    pub fn abort(&self) {
        self.task.abort();
    }

    /// The prepared statement for `sql` on this connection: from the cache,
    /// or checked for session statements and prepared once.
    ///
    /// The prepare runs in a task of its own, so a caller that gives up
    /// while it is in flight leaves no statement behind on the server that
    /// nothing would close: the task still puts it in the cache (where it
    /// counts against the capacity and is closed when evicted).
    ///
    /// # Errors
    ///
    /// [`Error::SessionRequired`] for a statement that needs a session;
    /// the server's error when it cannot be prepared.
    pub async fn statement(self: &Arc<Self>, sql: &str) -> Result<Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement);
        }
        if let Some(statement) = session_statement(sql) {
            return Err(Error::SessionRequired { statement });
        }
        let conn = self.clone();
        let sql: Box<str> = sql.into();
        let prepare = tokio::spawn(async move {
            let statement = conn.client.prepare(&sql).await?;
            Ok::<_, Error>(conn.statements.insert(&sql, statement))
        });
        match prepare.await {
            Ok(result) => result,
            // A panic inside tokio-postgres is carried on as it would have
            // been without the task.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Only a runtime shutting down cancels the task.
            Err(_) => Err(Error::ShuttingDown {
                backend: crate::error::Backend::Postgres,
            }),
        }
    }

    /// Statements prepared and kept on this connection now.
    pub fn statements_cached(&self) -> usize {
        self.statements.len()
    }
}

/// Marks a connection's task as ended however it ends: the connection is
/// closed, one fewer task is alive, and the keeper and a drain are told.
struct TaskEnd {
    closed: Arc<AtomicBool>,
    live: Arc<AtomicUsize>,
    ended: Arc<Notify>,
}

impl Drop for TaskEnd {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
        self.live.fetch_sub(1, Ordering::AcqRel);
        // Every current waiter (a drain), and a stored wake-up for the
        // keeper if it is not waiting right now.
        self.ended.notify_waiters();
        self.ended.notify_one();
    }
}
