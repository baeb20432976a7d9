//! Transactions that end by themselves: commit on `Ok`, roll back on `Err`,
//! on a panic and when abandoned, and run again after a serialization
//! failure, a deadlock or a connection lost before `COMMIT`. A connection
//! lost after `COMMIT` was sent is resolved by asking the server what
//! became of the transaction's id (`txid_status`).

use std::future::Future;
use std::panic::{AssertUnwindSafe, Location};
use std::time::{Duration, Instant};

use deadpool_postgres::Transaction;
use futures_util::FutureExt;
use tokio_postgres::IsolationLevel;

use self::commit_outcome::{Resolved, xid_and_pid};
use super::connection::PooledConnection;
use super::pool::PostgresPool;
use crate::TxFuture;
use crate::error::{Backend, Error, Result, describe_postgres};
use crate::metrics::{self, TransactionEnd};
use crate::retry::{Jitter, RetryPolicy};
use crate::spans;
use tracing::field::Empty;
use tracing::{Instrument, Span};

mod commit_outcome;

/// How [`PostgresPool::transaction_with`] runs a transaction: isolation
/// level, access mode, deferrability and retry.
///
/// ```
/// use dbmanager::postgres::{IsolationLevel, TransactionOptions};
/// use dbmanager::RetryPolicy;
///
/// let options = TransactionOptions::new()
///     .isolation(IsolationLevel::Serializable)
///     .read_only(true)
///     .deferrable(true)
///     .retry(RetryPolicy::exponential().max_attempts(3));
/// # let _ = options;
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct TransactionOptions {
    isolation: Option<IsolationLevel>,
    read_only: Option<bool>,
    deferrable: Option<bool>,
    retry: RetryPolicy,
    outcome_timeout: Duration,
}

impl Default for TransactionOptions {
    fn default() -> Self {
        TransactionOptions::new()
    }
}

impl TransactionOptions {
    /// The default of [`TransactionOptions::outcome_timeout`]: 10 s.
    pub const DEFAULT_OUTCOME_TIMEOUT: Duration = Duration::from_secs(10);

    /// The server's default isolation and access mode, and
    /// [`TransactionOptions::default_retry`].
    pub fn new() -> Self {
        TransactionOptions {
            isolation: None,
            read_only: None,
            deferrable: None,
            retry: Self::default_retry(),
            outcome_timeout: Self::DEFAULT_OUTCOME_TIMEOUT,
        }
    }

    /// The retry policy of [`PostgresPool::transaction`]: at most 5
    /// attempts within 10 s, waits from 10 ms doubling up to 1 s, full
    /// jitter. Conflicts clear quickly once the other transaction ends.
    pub fn default_retry() -> RetryPolicy {
        RetryPolicy::exponential()
            .initial_delay(Duration::from_millis(10))
            .max_delay(Duration::from_secs(1))
            .max_attempts(5)
            .max_elapsed(Duration::from_secs(10))
            .jitter(Jitter::Full)
    }

    /// Sets the isolation level. Default: the server's
    /// (`default_transaction_isolation`, normally READ COMMITTED).
    pub fn isolation(mut self, level: IsolationLevel) -> Self {
        self.isolation = Some(level);
        self
    }

    /// Makes the transaction READ ONLY (`true`) or READ WRITE. Default: the
    /// server's (`default_transaction_read_only`). A write in a read-only
    /// transaction fails with SQLSTATE 25006.
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = Some(read_only);
        self
    }

    /// Makes the transaction DEFERRABLE: together with SERIALIZABLE and
    /// READ ONLY it may wait at its start, and then never fails with a
    /// serialization error. Default: the server's.
    pub fn deferrable(mut self, deferrable: bool) -> Self {
        self.deferrable = Some(deferrable);
        self
    }

    /// Sets when the closure runs again. Default:
    /// [`TransactionOptions::default_retry`]; [`RetryPolicy::none`] runs it
    /// once.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Bounds the check made when the connection is lost after `COMMIT`
    /// was sent: a connection from the pool, then `txid_status` until the
    /// server knows. Past it the helper gives up with
    /// [`Error::CommitOutcomeUnknown`]. Default:
    /// [`TransactionOptions::DEFAULT_OUTCOME_TIMEOUT`] (10 s).
    pub fn outcome_timeout(mut self, bound: Duration) -> Self {
        self.outcome_timeout = bound;
        self
    }
}

/// How one attempt ended.
enum Attempt<T> {
    /// COMMIT answered: committed.
    Committed(T),
    /// The transaction is gone without effect and may run again.
    Retry(Error),
    /// Return this error as it is.
    Fail(Error),
    /// COMMIT was sent and the connection was lost before its answer: the
    /// server may have committed. Resolved with `txid_status`.
    CommitLost {
        value: T,
        xid: Option<i64>,
        backend_pid: Option<i32>,
        error: tokio_postgres::Error,
    },
}

/// Serialization failure or deadlock: nothing was kept, a rerun can pass.
fn is_conflict(error: &Error) -> bool {
    matches!(error.sqlstate(), Some("40001" | "40P01"))
}

/// The `reason` label of a rerun: the SQLSTATE class (`40` for conflicts,
/// `57` or `08` for a session ended by the server), or `connection` when
/// the connection was lost without an answer.
fn rerun_reason(error: &Error) -> &'static str {
    match error.sqlstate() {
        Some(code) => match &code[..2] {
            "40" => "40",
            "08" => "08",
            "57" => "57",
            _ => "other",
        },
        None => "connection",
    }
}

impl PostgresPool {
    /// Runs `work` in a transaction with the default options: commits when
    /// it returns `Ok`, rolls back when it returns `Err` or panics (the
    /// panic then continues), and runs it again after a serialization
    /// failure (SQLSTATE 40001), a deadlock (40P01) or a connection lost
    /// before `COMMIT` was sent, per [`TransactionOptions::default_retry`]
    /// (set another with [`PostgresPool::transaction_with`] and
    /// [`TransactionOptions::retry`]).
    ///
    /// The closure returns its body as `async move { .. }.scoped()`
    /// ([`crate::TxFutureExt::scoped`]): a boxed `Send` future that may
    /// borrow the transaction and anything the closure borrows, so the
    /// helper's future is `Send` and runs inside `tokio::spawn` and axum
    /// handlers. State that changes per attempt (a counter) is changed in
    /// the closure's body, before the `async move` block.
    ///
    /// The closure may run more than once: keep effects outside the
    /// database (e-mails, messages) out of it, or make them idempotent. It
    /// returns [`crate::Result`]: `?` converts driver errors, and
    /// [`Error::abort`] rolls back for a reason of its own.
    ///
    /// If the returned future is dropped before it finishes (a timeout, a
    /// cancelled request), the connection is closed instead of going back
    /// to the pool, and the server rolls the transaction back: no other
    /// caller is ever handed a connection inside it. Leak and slow-acquire
    /// warnings name the line that called this method.
    ///
    /// ```no_run
    /// # fn require_send<F: std::future::Future + Send>(f: F) -> F { f }
    /// # struct Transfer { from: i64, to: i64, amount: i64 }
    /// # async fn demo(db: dbmanager::DatabaseManager, req: Transfer) -> dbmanager::Result<()> {
    /// use dbmanager::TxFutureExt;
    ///
    /// let mut attempts = 0;
    /// let balance: i64 = require_send(db.postgres()?.transaction(|tx| {
    ///     attempts += 1;
    ///     let req = &req;
    ///     async move {
    ///         tx.execute("UPDATE accounts SET balance = balance - $2 WHERE id = $1", &[&req.from, &req.amount])
    ///             .await?;
    ///         tx.execute("UPDATE accounts SET balance = balance + $2 WHERE id = $1", &[&req.to, &req.amount])
    ///             .await?;
    ///         let row = tx.query_one("SELECT balance FROM accounts WHERE id = $1", &[&req.from]).await?;
    ///         Ok(row.get(0))
    ///     }
    ///     .scoped()
    /// }))
    /// .await?;
    /// # let _ = (balance, attempts); Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// - the closure's error, after the rollback, when it is not worth
    ///   retrying; a `COMMIT` refused by the server (a deferred constraint);
    /// - [`Error::TransactionRolledBack`] when the closure returned `Ok`
    ///   but a statement inside had failed, so the server rolled the
    ///   transaction back at `COMMIT` (rerun when that first error was a
    ///   serialization failure or deadlock);
    /// - [`Error::TransactionRetriesExhausted`] with the attempt count and
    ///   the last error, when every attempt conflicted or lost its
    ///   connection;
    /// - [`Error::CommitOutcomeUnknown`] when the connection failed after
    ///   `COMMIT` was sent and the server could not say, within
    ///   [`TransactionOptions::outcome_timeout`], whether the transaction
    ///   committed (it is not run again). When it can say: committed gives
    ///   `Ok`, rolled back runs the closure again per the retry policy, and
    ///   a transaction that wrote nothing runs again too (a rerun cannot
    ///   apply anything twice, and its value may rest on a snapshot whose
    ///   commit is unknown);
    /// - pool errors from checking out a connection ([`PostgresPool::get`]).
    #[track_caller]
    pub fn transaction<'p, 'a, T, F>(&'p self, work: F) -> impl Future<Output = Result<T>> + Send
    where
        F: for<'t> FnMut(&'t Transaction<'t>) -> TxFuture<'a, 't, Result<T>> + Send + 'a,
        T: Send + 'a,
    {
        let caller = Location::caller();
        self.run_transaction(TransactionOptions::new(), work, caller)
    }

    /// [`PostgresPool::transaction`] with an isolation level, access mode,
    /// deferrability, retry policy or outcome check bound of its own.
    ///
    /// ```no_run
    /// # fn require_send<F: std::future::Future + Send>(f: F) -> F { f }
    /// # async fn demo(db: dbmanager::DatabaseManager) -> dbmanager::Result<()> {
    /// use dbmanager::postgres::{IsolationLevel, TransactionOptions};
    /// use dbmanager::{RetryPolicy, TxFutureExt};
    ///
    /// let options = TransactionOptions::new()
    ///     .isolation(IsolationLevel::Serializable)
    ///     .retry(TransactionOptions::default_retry().max_attempts(10));
    /// let table = String::from("audits");
    /// let total: i64 = require_send(db.postgres()?.transaction_with(options, |tx| {
    ///     let table = &table;
    ///     async move {
    ///         let row = tx.query_one("SELECT sum(balance)::bigint FROM accounts", &[]).await?;
    ///         tx.execute(&format!("INSERT INTO {table} (total) VALUES ($1)"), &[&row.get::<_, i64>(0)])
    ///             .await?;
    ///         Ok(row.get(0))
    ///     }
    ///     .scoped()
    /// }))
    /// .await?;
    /// # let _ = total; Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`PostgresPool::transaction`].
    #[track_caller]
    pub fn transaction_with<'p, 'a, T, F>(
        &'p self,
        options: TransactionOptions,
        work: F,
    ) -> impl Future<Output = Result<T>> + Send
    where
        F: for<'t> FnMut(&'t Transaction<'t>) -> TxFuture<'a, 't, Result<T>> + Send + 'a,
        T: Send + 'a,
    {
        let caller = Location::caller();
        self.run_transaction(options, work, caller)
    }

    async fn run_transaction<'a, T, F>(
        &self,
        options: TransactionOptions,
        mut work: F,
        caller: &'static Location<'static>,
    ) -> Result<T>
    where
        F: for<'t> FnMut(&'t Transaction<'t>) -> TxFuture<'a, 't, Result<T>> + Send + 'a,
        T: Send + 'a,
    {
        let label = self.label();
        let started = Instant::now();
        let result = self.attempts(&options, &mut work, caller).await;
        let end = match &result {
            Ok(_) => TransactionEnd::Committed,
            Err(_) => TransactionEnd::Failed,
        };
        metrics::transaction_finished(label, end, started.elapsed());
        result
    }

    async fn attempts<'a, T, F>(
        &self,
        options: &TransactionOptions,
        work: &mut F,
        caller: &'static Location<'static>,
    ) -> Result<T>
    where
        F: for<'t> FnMut(&'t Transaction<'t>) -> TxFuture<'a, 't, Result<T>> + Send + 'a,
        T: Send + 'a,
    {
        let label = self.label();
        let mut backoff = options.retry.backoff();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            metrics::transaction_attempt(label);
            let span = self.attempt_span(attempt, caller);
            let outcome = self
                .attempt(options, work, caller)
                .instrument(span.clone())
                .await;
            record_attempt(&span, &outcome);
            let error = match outcome {
                Attempt::Committed(value) => return Ok(value),
                Attempt::Fail(error) => return Err(error),
                Attempt::Retry(error) => error,
                Attempt::CommitLost {
                    value,
                    xid,
                    backend_pid,
                    error,
                } => {
                    let reason = describe_postgres(&error);
                    let lost = Error::postgres("committing a transaction", error);
                    match self
                        .resolve_commit(xid, backend_pid, options.outcome_timeout, caller)
                        .await
                    {
                        Ok(resolved) => {
                            span.record(
                                "dbmanager.transaction.commit_resolved",
                                resolved.as_label(),
                            );
                            metrics::commit_outcome(label, resolved.as_label());
                            tracing::info!(
                                target: "dbmanager::postgres",
                                attempt,
                                outcome = resolved.as_label(),
                                error = %lost,
                                "connection lost after COMMIT was sent; outcome resolved"
                            );
                            match resolved {
                                Resolved::Committed => return Ok(value),
                                Resolved::Aborted | Resolved::NoWrite => lost,
                            }
                        }
                        Err(why) => {
                            metrics::commit_outcome(label, "unknown");
                            return Err(Error::CommitOutcomeUnknown {
                                backend: Backend::Postgres,
                                attempt,
                                reason: format!("{reason}; {why}"),
                            });
                        }
                    }
                }
            };
            let Some(delay) = backoff.next() else {
                span.record("dbmanager.transaction.outcome", "exhausted");
                metrics::transaction_exhausted(label);
                return Err(Error::TransactionRetriesExhausted {
                    backend: Backend::Postgres,
                    attempts: attempt,
                    last: Box::new(error),
                });
            };
            span.record("dbmanager.transaction.outcome", "rerun");
            metrics::transaction_rerun(label, rerun_reason(&error));
            tracing::info!(
                target: "dbmanager::postgres",
                attempt,
                next_delay_ms = delay.as_millis() as u64,
                sqlstate = error.sqlstate().unwrap_or(""),
                error = %error,
                "transaction rolled back; running it again"
            );
            // The attempt ends here: its span does not cover the pause.
            drop(span);
            tokio::time::sleep(delay).await;
        }
    }

    /// The span of one attempt, exported as `transaction`: a client span
    /// (BEGIN .. COMMIT or ROLLBACK are round trips to the server).
    fn attempt_span(&self, attempt: u32, caller: &'static Location<'static>) -> Span {
        let peer = &self.shared.peer;
        tracing::info_span!(
            target: "dbmanager::postgres",
            "dbmanager.transaction",
            otel.name = "transaction",
            otel.kind = "client",
            db.system.name = spans::POSTGRESQL,
            db.namespace = %peer.namespace,
            server.address = %peer.address,
            server.port = peer.port,
            db.operation.name = Empty,
            dbmanager.transaction.attempt = attempt,
            dbmanager.transaction.outcome = Empty,
            dbmanager.transaction.commit_resolved = Empty,
            code.file.path = caller.file(),
            code.line.number = caller.line(),
            error.type = Empty,
            db.response.status_code = Empty,
            otel.status_code = Empty,
        )
    }

    async fn attempt<'a, T, F>(
        &self,
        options: &TransactionOptions,
        work: &mut F,
        caller: &'static Location<'static>,
    ) -> Attempt<T>
    where
        F: for<'t> FnMut(&'t Transaction<'t>) -> TxFuture<'a, 't, Result<T>> + Send + 'a,
        T: Send + 'a,
    {
        let mut connection = match self.acquire(caller, None).await {
            Ok(connection) => connection,
            Err(error) => return Attempt::Fail(error),
        };
        // From here until the transaction is known to have ended, dropping
        // the connection closes it.
        connection.in_transaction = true;
        let session = connection.session();
        let mut builder = connection.build_transaction();
        if let Some(level) = options.isolation {
            builder = builder.isolation_level(level);
        }
        if let Some(read_only) = options.read_only {
            builder = builder.read_only(read_only);
        }
        if let Some(deferrable) = options.deferrable {
            builder = builder.deferrable(deferrable);
        }
        let tx = match builder.start().await {
            Ok(tx) => tx,
            Err(e) => {
                // No SQLSTATE: the server did not answer, the connection
                // is lost (and stays marked, so it is closed).
                let lost = e.code().is_none() || crate::error::is_silence(&e);
                let error = Error::postgres("starting a transaction", e);
                return if lost {
                    Attempt::Retry(error)
                } else {
                    Attempt::Fail(error)
                };
            }
        };
        let outcome = AssertUnwindSafe(work(&tx)).catch_unwind().await;
        let value = match outcome {
            Ok(Ok(value)) => value,
            Ok(Err(error)) => {
                let ok = tx.rollback().await.is_ok();
                return rolled_back(&mut connection, ok, error);
            }
            Err(panic) => {
                let rolled_back = tx.rollback().await.is_ok();
                ended(&mut connection, rolled_back);
                drop(connection);
                std::panic::resume_unwind(panic);
            }
        };
        // The transaction's id, known before COMMIT is sent: if the answer
        // to COMMIT is lost, the server can still say what became of it.
        // One round trip; a transaction that failed inside the closure
        // answers it with 25P02 and is rolled back here, never committed.
        let (xid, backend_pid) = match tx
            .simple_query("SELECT txid_current_if_assigned(), pg_backend_pid()")
            .await
        {
            Ok(messages) => xid_and_pid(&messages),
            Err(e) => {
                // Refused because a statement inside failed (the closure
                // went on regardless): the session knows the first error.
                let error = session.transaction_failed().unwrap_or_else(|| {
                    Error::postgres("reading the transaction id before COMMIT", e)
                });
                let ok = tx.rollback().await.is_ok();
                return rolled_back(&mut connection, ok, error);
            }
        };
        match tx.commit().await {
            Ok(()) => {
                connection.in_transaction = false;
                // A failed transaction's COMMIT succeeds as a message and
                // rolls back: the server says so only in the tag.
                match session.commit_rolled_back() {
                    None => Attempt::Committed(value),
                    Some(error) if is_conflict(&error) => Attempt::Retry(error),
                    Some(error) => Attempt::Fail(error),
                }
            }
            // The server answered: the transaction is over, rolled back.
            // (Not the pool's error for a silent connection: no answer.)
            Err(e) if e.code().is_some() && !crate::error::is_silence(&e) => {
                connection.in_transaction = false;
                let error = Error::postgres("committing a transaction", e);
                if is_conflict(&error) {
                    Attempt::Retry(error)
                } else {
                    Attempt::Fail(error)
                }
            }
            // COMMIT was sent and no answer came: the connection stays
            // marked and is closed when this attempt returns, before the
            // outcome is asked on another.
            Err(error) => Attempt::CommitLost {
                value,
                xid,
                backend_pid,
                error,
            },
        }
    }
}

/// What one attempt ended with, on its span: `db.operation.name` (the
/// `COMMIT` or `ROLLBACK` that ended it), `dbmanager.transaction.outcome`
/// (`committed`, `failed`, `commit_lost`; a retryable failure's is
/// recorded once known whether it runs again: `rerun` or `exhausted`) and,
/// for a failure, its SQLSTATE (a rerun's 40001 or 40P01) and `error.type`.
fn record_attempt<T>(span: &Span, outcome: &Attempt<T>) {
    if span.is_disabled() {
        return;
    }
    let (operation, label, error) = match outcome {
        Attempt::Committed(_) => ("COMMIT", Some("committed"), None),
        Attempt::Retry(error) => ("ROLLBACK", None, Some(error)),
        Attempt::Fail(error) => ("ROLLBACK", Some("failed"), Some(error)),
        Attempt::CommitLost { .. } => ("COMMIT", Some("commit_lost"), None),
    };
    span.record("db.operation.name", operation);
    if let Some(label) = label {
        span.record("dbmanager.transaction.outcome", label);
    }
    match (error, outcome) {
        (Some(error), _) => spans::record_error(span, error),
        (None, Attempt::CommitLost { .. }) => {
            span.record("error.type", "commit_outcome_unknown");
            span.record("otel.status_code", "ERROR");
        }
        (None, _) => {}
    }
}

/// After the rollback that `error` caused: whether the closure may run
/// again.
fn rolled_back<T>(
    connection: &mut PooledConnection,
    rolled_back: bool,
    error: Error,
) -> Attempt<T> {
    ended(connection, rolled_back);
    if is_conflict(&error) || connection.is_closed() {
        Attempt::Retry(error)
    } else {
        Attempt::Fail(error)
    }
}

/// After a rollback: a connection whose ROLLBACK was answered goes back to
/// the pool; one whose ROLLBACK failed stays marked and is closed.
fn ended(connection: &mut PooledConnection, rolled_back: bool) {
    if rolled_back && !connection.is_closed() {
        connection.in_transaction = false;
    }
}
