//! Transactions that end by themselves: commit on `Ok`, roll back on `Err`,
//! on a panic and when abandoned, and run again after a serialization
//! failure, a deadlock or a connection lost before `COMMIT`.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use deadpool_postgres::Transaction;
use futures_util::FutureExt;
use tokio_postgres::IsolationLevel;

use super::connection::PooledConnection;
use super::pool::PostgresPool;
use crate::error::{Backend, Error, Result, describe_postgres};
use crate::retry::{Jitter, RetryPolicy};

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
}

impl Default for TransactionOptions {
    fn default() -> Self {
        TransactionOptions::new()
    }
}

impl TransactionOptions {
    /// The server's default isolation and access mode, and
    /// [`TransactionOptions::default_retry`].
    pub fn new() -> Self {
        TransactionOptions {
            isolation: None,
            read_only: None,
            deferrable: None,
            retry: Self::default_retry(),
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
}

/// How one attempt ended, when it did not commit.
enum Failure {
    /// The transaction is gone without effect and may run again.
    Retry(Error),
    /// Return this error as it is.
    Fail(Error),
}

/// Serialization failure or deadlock: nothing was kept, a rerun can pass.
fn is_conflict(error: &Error) -> bool {
    matches!(error.sqlstate(), Some("40001" | "40P01"))
}

impl PostgresPool {
    /// Runs `work` in a transaction with the default options: commits when
    /// it returns `Ok`, rolls back when it returns `Err` or panics (the
    /// panic then continues), and runs it again after a serialization
    /// failure (SQLSTATE 40001), a deadlock (40P01) or a connection lost
    /// before `COMMIT` was sent, per [`TransactionOptions::default_retry`].
    ///
    /// The closure may run more than once: keep effects outside the
    /// database (e-mails, messages) out of it, or make them idempotent. It
    /// returns [`crate::Result`]: `?` converts driver errors, and
    /// [`Error::abort`] rolls back for a reason of its own.
    ///
    /// If the returned future is dropped before it finishes (a timeout, a
    /// cancelled request), the connection is closed instead of going back
    /// to the pool, and the server rolls the transaction back: no other
    /// caller is ever handed a connection inside it.
    ///
    /// ```no_run
    /// # async fn demo(db: dbmanager::DatabaseManager) -> dbmanager::Result<()> {
    /// let (from, to, amount) = (1i64, 2i64, 100i64);
    /// let balance: i64 = db
    ///     .postgres()?
    ///     .transaction(async |tx| {
    ///         tx.execute("UPDATE accounts SET balance = balance - $2 WHERE id = $1", &[&from, &amount])
    ///             .await?;
    ///         tx.execute("UPDATE accounts SET balance = balance + $2 WHERE id = $1", &[&to, &amount])
    ///             .await?;
    ///         let row = tx.query_one("SELECT balance FROM accounts WHERE id = $1", &[&from]).await?;
    ///         Ok(row.get(0))
    ///     })
    ///     .await?;
    /// # let _ = balance; Ok(()) }
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
    ///   `COMMIT` was sent: it may have committed, so it is not run again;
    /// - pool errors from checking out a connection ([`PostgresPool::get`]).
    pub async fn transaction<T, F>(&self, work: F) -> Result<T>
    where
        F: AsyncFnMut(&Transaction<'_>) -> Result<T>,
    {
        self.transaction_with(TransactionOptions::new(), work).await
    }

    /// [`PostgresPool::transaction`] with an isolation level, access mode,
    /// deferrability or retry policy of its own.
    ///
    /// ```no_run
    /// # async fn demo(db: dbmanager::DatabaseManager) -> dbmanager::Result<()> {
    /// use dbmanager::postgres::{IsolationLevel, TransactionOptions};
    ///
    /// let options = TransactionOptions::new().isolation(IsolationLevel::Serializable);
    /// let total: i64 = db
    ///     .postgres()?
    ///     .transaction_with(options, async |tx| {
    ///         let row = tx.query_one("SELECT sum(balance)::bigint FROM accounts", &[]).await?;
    ///         tx.execute("INSERT INTO audits (total) VALUES ($1)", &[&row.get::<_, i64>(0)]).await?;
    ///         Ok(row.get(0))
    ///     })
    ///     .await?;
    /// # let _ = total; Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`PostgresPool::transaction`].
    pub async fn transaction_with<T, F>(
        &self,
        options: TransactionOptions,
        mut work: F,
    ) -> Result<T>
    where
        F: AsyncFnMut(&Transaction<'_>) -> Result<T>,
    {
        let mut backoff = options.retry.backoff();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let error = match self.attempt(&options, &mut work, attempt).await {
                Ok(value) => return Ok(value),
                Err(Failure::Fail(error)) => return Err(error),
                Err(Failure::Retry(error)) => error,
            };
            let Some(delay) = backoff.next() else {
                return Err(Error::TransactionRetriesExhausted {
                    backend: Backend::Postgres,
                    attempts: attempt,
                    last: Box::new(error),
                });
            };
            tracing::info!(
                target: "dbmanager::postgres",
                attempt,
                next_delay_ms = delay.as_millis() as u64,
                error = %error,
                "transaction rolled back; running it again"
            );
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt<T, F>(
        &self,
        options: &TransactionOptions,
        work: &mut F,
        attempt: u32,
    ) -> std::result::Result<T, Failure>
    where
        F: AsyncFnMut(&Transaction<'_>) -> Result<T>,
    {
        let mut connection = self.get().await.map_err(Failure::Fail)?;
        // From here until the transaction is known to have ended, dropping
        // the connection closes it.
        connection.in_transaction = true;
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
                let lost = e.code().is_none();
                let error = Error::postgres("starting a transaction", e);
                return Err(if lost {
                    Failure::Retry(error)
                } else {
                    Failure::Fail(error)
                });
            }
        };
        let outcome = AssertUnwindSafe(work(&tx)).catch_unwind().await;
        let value = match outcome {
            Ok(Ok(value)) => value,
            Ok(Err(error)) => {
                let rolled_back = tx.rollback().await.is_ok();
                ended(&mut connection, rolled_back);
                return Err(if is_conflict(&error) || connection.is_closed() {
                    Failure::Retry(error)
                } else {
                    Failure::Fail(error)
                });
            }
            Err(panic) => {
                let rolled_back = tx.rollback().await.is_ok();
                ended(&mut connection, rolled_back);
                drop(connection);
                std::panic::resume_unwind(panic);
            }
        };
        match tx.commit().await {
            Ok(()) => {
                connection.in_transaction = false;
                // A failed transaction's COMMIT succeeds as a message and
                // rolls back: the server says so only in the tag.
                match connection.commit_rolled_back() {
                    None => Ok(value),
                    Some(error) if is_conflict(&error) => Err(Failure::Retry(error)),
                    Some(error) => Err(Failure::Fail(error)),
                }
            }
            // The server answered: the transaction is over, rolled back.
            Err(e) if e.code().is_some() => {
                connection.in_transaction = false;
                let error = Error::postgres("committing a transaction", e);
                Err(if is_conflict(&error) {
                    Failure::Retry(error)
                } else {
                    Failure::Fail(error)
                })
            }
            // COMMIT was sent and no answer came: the connection stays
            // marked and is closed with it.
            Err(e) => Err(Failure::Fail(Error::CommitOutcomeUnknown {
                backend: Backend::Postgres,
                attempt,
                reason: describe_postgres(&e),
            })),
        }
    }
}

/// After a rollback: a connection whose ROLLBACK was answered goes back to
/// the pool; one whose ROLLBACK failed stays marked and is closed.
fn ended(connection: &mut PooledConnection, rolled_back: bool) {
    if rolled_back && !connection.is_closed() {
        connection.in_transaction = false;
    }
}
