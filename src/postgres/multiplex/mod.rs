//! The multiplexed mode: single autocommit statements from many tasks,
//! pipelined over a few shared connections (Npgsql's `Multiplexing=true`).
//!
//! A pool lends a connection to one task at a time, so a short query pays a
//! round trip during which the connection idles. Here no one checks a
//! connection out: every call claims a place in the pipeline of the
//! connection with the fewest statements in flight, tokio-postgres writes
//! the statement behind the others already sent, and answers come back in
//! order. Nothing session-bound can go this way (see [`Multiplexed`]).

mod cache;
mod connection;
mod drain;
mod keeper;
mod router;
mod session_sql;
mod state;

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};
use tracing::field::Empty;
use tracing::{Instrument, Span};

use super::pool::PostgresPool;
use crate::error::{Error, Result};
use crate::pool_status::MultiplexStatus;
use state::MuxState;

/// Statements pipelined over a few connections shared by every caller:
/// `db.postgres()?.multiplexed()`.
///
/// For **single autocommit statements that need no session**: each call is
/// one statement, committed on its own, on whichever connection has the
/// fewest statements in flight. SQL text is prepared once per connection
/// and cached, at most `postgres.multiplex.statement_cache_capacity`
/// statements per connection (the least recently used is closed on the
/// server to make room). A failing statement fails only its own caller.
///
/// What needs a session is refused with [`Error::SessionRequired`] where
/// the SQL text shows it (`BEGIN`/`COMMIT`/`ROLLBACK`/`SAVEPOINT`, `SET`,
/// `RESET`, `LISTEN`, `DECLARE`/`FETCH`/`CLOSE` cursors, `CREATE TEMP
/// TABLE`, `LOCK`, `PREPARE`/`EXECUTE`, session advisory locks) and must
/// not be sent otherwise (a function that calls `set_config(..., false)`,
/// say): use [`PostgresPool::get`] for anything that needs a session.
/// The refusal needs no connection: it comes before any connect or wait.
///
/// Back-pressure: each connection takes at most
/// `postgres.multiplex.max_in_flight` statements at once; further callers
/// wait up to `postgres.multiplex.wait_timeout`. A connection whose oldest
/// statement has run past `stall_threshold` gets no new work, but what is
/// already queued behind a slow statement waits for it: keep slow
/// statements on pooled connections.
///
/// A caller that gives up (its future dropped) only stops waiting: its
/// statement still runs, its answer is discarded, and its connection counts
/// it in flight until the server has answered it. No cancel request is
/// sent, since on a pipelined connection it could stop another caller's
/// statement (docs/decisions.md).
///
/// ```no_run
/// # async fn demo(db: dbmanager::DatabaseManager) -> dbmanager::Result<()> {
/// let id = 7_i32;
/// let row = db
///     .postgres()?
///     .multiplexed()
///     .query_one("SELECT $1::int + 1", &[&id])
///     .await?;
/// let next: i32 = row.get(0);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Multiplexed {
    state: Arc<MuxState>,
}

/// SQL the multiplexed handle runs: text (`&str`, `String`) or a
/// [`MultiplexedStatement`].
pub trait MultiplexSql: sealed::Sealed + Sync {
    /// The statement's text.
    fn sql(&self) -> &str;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for str {}
    impl Sealed for String {}
    impl Sealed for super::MultiplexedStatement {}
}

impl MultiplexSql for str {
    fn sql(&self) -> &str {
        self
    }
}

impl MultiplexSql for String {
    fn sql(&self) -> &str {
        self
    }
}

/// A statement checked once by [`Multiplexed::statement`]: prepared on
/// each connection the first time it runs there, like SQL text, without
/// being checked again. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MultiplexedStatement {
    sql: Arc<str>,
}

impl MultiplexSql for MultiplexedStatement {
    fn sql(&self) -> &str {
        &self.sql
    }
}

impl PostgresPool {
    /// The multiplexed handle of this pool: single autocommit statements
    /// pipelined over `postgres.multiplex.connections` connections of its
    /// own. They open on first use, or at `build()` with
    /// `postgres.multiplex.warm_up`.
    pub fn multiplexed(&self) -> &Multiplexed {
        &self.multiplexed
    }
}

impl Multiplexed {
    pub(crate) fn new(
        settings: crate::config::PostgresMultiplexConfig,
        driver: super::connect::Driver,
        pool: Arc<super::shared::Shared>,
    ) -> Self {
        Multiplexed {
            state: Arc::new(MuxState::new(settings, driver, pool)),
        }
    }

    /// Checks `sql` for statements that need a session once, for a handle
    /// to run it by.
    ///
    /// # Errors
    ///
    /// [`Error::SessionRequired`] for a statement this handle refuses.
    pub fn statement(&self, sql: &str) -> Result<MultiplexedStatement> {
        refuse_session(sql)?;
        Ok(MultiplexedStatement { sql: sql.into() })
    }

    /// Runs a statement and returns its rows, like
    /// `tokio_postgres::Client::query`.
    ///
    /// # Errors
    ///
    /// [`Error::SessionRequired`] for a statement that needs a session;
    /// [`Error::PoolTimeout`] when no connection had room within
    /// `wait_timeout`; [`Error::ShuttingDown`] once shutdown began;
    /// [`Error::Postgres`] when the server refused the statement or the
    /// connection was lost (then [`Error::is_transient`]; the statement is
    /// not sent again, it may or may not have run).
    pub async fn query<S: MultiplexSql + ?Sized>(
        &self,
        statement: &S,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        self.run(statement, async |client, prepared| {
            client.query(prepared, params).await
        })
        .await
    }

    /// Runs a statement that returns exactly one row, like
    /// `tokio_postgres::Client::query_one`.
    ///
    /// # Errors
    ///
    /// As [`Multiplexed::query`], and [`Error::Postgres`] when it returned
    /// no row or more than one.
    pub async fn query_one<S: MultiplexSql + ?Sized>(
        &self,
        statement: &S,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row> {
        self.run(statement, async |client, prepared| {
            client.query_one(prepared, params).await
        })
        .await
    }

    /// Runs a statement that returns at most one row, like
    /// `tokio_postgres::Client::query_opt`.
    ///
    /// # Errors
    ///
    /// As [`Multiplexed::query`], and [`Error::Postgres`] when it returned
    /// more than one row.
    pub async fn query_opt<S: MultiplexSql + ?Sized>(
        &self,
        statement: &S,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>> {
        self.run(statement, async |client, prepared| {
            client.query_opt(prepared, params).await
        })
        .await
    }

    /// Runs a statement and returns how many rows it changed, like
    /// `tokio_postgres::Client::execute`.
    ///
    /// # Errors
    ///
    /// As [`Multiplexed::query`].
    pub async fn execute<S: MultiplexSql + ?Sized>(
        &self,
        statement: &S,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64> {
        self.run(statement, async |client, prepared| {
            client.execute(prepared, params).await
        })
        .await
    }

    /// Claims a place, prepares (or finds) the statement on that
    /// connection and runs `call` with it.
    async fn run<S, T>(
        &self,
        statement: &S,
        call: impl AsyncFnOnce(&tokio_postgres::Client, &Statement) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T>
    where
        S: MultiplexSql + ?Sized,
    {
        // As for a checkout's span: not built without an INFO subscriber,
        // not entered when its subscriber does not record it.
        if !crate::spans::info_spans_possible() {
            return self.run_within(statement, call).await;
        }
        let span = self.statement_span(statement.sql());
        if span.is_disabled() {
            return self.run_within(statement, call).await;
        }
        let result = self
            .run_within(statement, call)
            .instrument(span.clone())
            .await;
        if let Err(error) = &result {
            crate::spans::record_error(&span, error);
        }
        result
    }

    /// The client span of one statement: `{db.operation.name}
    /// {db.namespace}` (`SELECT app`), the SQL text only when
    /// `postgres.trace_query_text` opts in, never parameters.
    fn statement_span(&self, sql: &str) -> Span {
        let shared = &self.state.pool;
        let peer = &shared.peer;
        let operation = crate::spans::sql_operation(sql);
        let span = tracing::info_span!(
            target: "dbmanager::postgres",
            "dbmanager.query",
            otel.name = Empty,
            otel.kind = "client",
            db.system.name = crate::spans::POSTGRESQL,
            db.namespace = %peer.namespace,
            server.address = %peer.address,
            server.port = peer.port,
            db.operation.name = operation,
            db.query.text = Empty,
            error.type = Empty,
            db.response.status_code = Empty,
            otel.status_code = Empty,
        );
        if !span.is_disabled() {
            // The conventions' name; the namespace alone when the
            // operation is not known.
            match operation {
                Some(operation) => {
                    span.record("otel.name", format!("{operation} {}", peer.namespace))
                }
                None => span.record("otel.name", peer.namespace.as_str()),
            };
            if shared.trace_query_text {
                span.record("db.query.text", sql);
            }
        }
        span
    }

    async fn run_within<S, T>(
        &self,
        statement: &S,
        call: impl AsyncFnOnce(&tokio_postgres::Client, &Statement) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T>
    where
        S: MultiplexSql + ?Sized,
    {
        let sql = statement.sql();
        // Checked here only when no connection has room at once (on an
        // unused handle, or with the server down): a refused statement
        // then costs no connection and no wait. Otherwise the check runs
        // once per text and connection, before it is first prepared.
        let mut place = self.state.acquire(|| refuse_session(sql)).await?;
        #[cfg(feature = "metrics")]
        let started = std::time::Instant::now();
        let result = match place.conn.statement(sql).await {
            Ok(prepared) => call(&place.conn.client, &prepared)
                .await
                .map_err(Error::from),
            Err(e) => Err(e),
        };
        match &result {
            Err(Error::Postgres { error, .. }) if error.is_closed() => {
                // Its other statements fail too; the keeper replaces it.
                place.conn.mark_closed();
                self.state.wake.notify_one();
                place.over();
            }
            Err(Error::SessionRequired { .. }) => place.over(),
            _ => place.answered(),
        }
        #[cfg(feature = "metrics")]
        crate::metrics::multiplex_statement(started.elapsed(), crate::spans::sql_operation(sql));
        drop(place);
        result
    }

    /// The handle right now: connections open, statements in flight,
    /// callers waiting.
    pub fn status(&self) -> MultiplexStatus {
        self.state.status()
    }

    /// Whether the handle has been used (or warmed up): its connections
    /// are kept open from then on.
    pub(crate) fn is_started(&self) -> bool {
        self.state
            .started
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Opens the first connection now and starts the keeper, which opens
    /// the others: an eager `build()` with `warm_up`.
    pub(crate) async fn warm_up(&self) -> Result<()> {
        self.state.open_first().await?;
        self.state.start();
        Ok(())
    }

    /// Shuts down within `grace`; returns how many statements were still
    /// in flight when it ran out (and were ended).
    pub(crate) async fn drain(&self, grace: Duration) -> usize {
        self.state.drain(grace).await
    }
}

/// [`Error::SessionRequired`] for a statement that needs a session.
fn refuse_session(sql: &str) -> Result<()> {
    match session_sql::session_statement(sql) {
        Some(statement) => Err(Error::SessionRequired { statement }),
        None => Ok(()),
    }
}

impl std::fmt::Debug for Multiplexed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Multiplexed")
            .field("target", &self.state.pool.target)
            .field("status", &self.status())
            .finish()
    }
}
