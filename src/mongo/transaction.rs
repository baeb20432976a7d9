//! MongoDB transactions that end by themselves, over the driver's sessions:
//! commit on `Ok`, abort on `Err` and on a panic, rerun on
//! `TransientTransactionError` and retry the commit on
//! `UnknownTransactionCommitResult`, as the driver specification's
//! convenient transaction API does.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use mongodb::ClientSession;
use mongodb::error::{TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT};

use super::MongoHandle;
use crate::TxFuture;
use crate::error::{Backend, Error, Result};
use crate::metrics::{self, PoolLabel, TransactionEnd};
use crate::retry::{Jitter, RetryPolicy};
use tracing::field::Empty;
use tracing::{Instrument, Span};

/// MaxTimeMSExpired: a commit that timed out on the server is not retried
/// (the specification's exception to retrying unknown commit results).
const MAX_TIME_MS_EXPIRED: i32 = 50;

/// How [`MongoHandle::transaction_with`] runs a transaction: the driver's
/// transaction options (read and write concern, read preference, max
/// commit time) and when to try again.
///
/// ```
/// use std::time::Duration;
/// use dbmanager::mongo::TransactionOptions;
/// use dbmanager::mongodb::options::{TransactionOptions as DriverOptions, WriteConcern};
///
/// let options = TransactionOptions::new()
///     .driver(DriverOptions::builder().write_concern(WriteConcern::majority()).build())
///     .retry(TransactionOptions::default_retry().max_elapsed(Duration::from_secs(30)));
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct TransactionOptions {
    driver: Option<mongodb::options::TransactionOptions>,
    retry: Option<RetryPolicy>,
}

impl TransactionOptions {
    /// The session's defaults and [`TransactionOptions::default_retry`].
    pub fn new() -> Self {
        TransactionOptions::default()
    }

    /// The retry of [`MongoHandle::transaction`]: the driver
    /// specification's 120 s limit, any number of attempts, waits from
    /// 10 ms doubling up to 1 s with full jitter (the specification retries
    /// at once; a short wait lets the conflicting transaction finish).
    pub fn default_retry() -> RetryPolicy {
        RetryPolicy::exponential()
            .initial_delay(Duration::from_millis(10))
            .max_delay(Duration::from_secs(1))
            .unlimited_attempts()
            .max_elapsed(Duration::from_secs(120))
            .jitter(Jitter::Full)
    }

    /// Sets the driver's options for the transaction. Default: the
    /// session's (the client's read and write concern).
    pub fn driver(mut self, options: mongodb::options::TransactionOptions) -> Self {
        self.driver = Some(options);
        self
    }

    /// Sets when the closure (or the commit) runs again. Default:
    /// [`TransactionOptions::default_retry`]; [`RetryPolicy::none`] tries
    /// once.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }
}

fn is_max_time_expired(error: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match error.kind.as_ref() {
        ErrorKind::Command(command) => command.code == MAX_TIME_MS_EXPIRED,
        ErrorKind::Write(WriteFailure::WriteConcernError(concern)) => {
            concern.code == MAX_TIME_MS_EXPIRED
        }
        _ => false,
    }
}

fn has_label(error: &Error, label: &str) -> bool {
    error.mongo_error().is_some_and(|e| e.contains_label(label))
}

fn exhausted(attempts: u32, last: Error) -> Error {
    metrics::transaction_exhausted(PoolLabel::MONGODB);
    Error::TransactionRetriesExhausted {
        backend: Backend::Mongodb,
        attempts,
        last: Box::new(last),
    }
}

impl MongoHandle {
    /// Runs `work` in a transaction on a new session with the default
    /// options: commits when it returns `Ok`; aborts when it returns `Err`
    /// or panics (the panic then continues) or when the returned future is
    /// dropped (the driver aborts a session dropped mid-transaction). Runs
    /// the whole closure again on errors labelled
    /// `TransientTransactionError`, and the commit again on
    /// `UnknownTransactionCommitResult`, for up to 120 s.
    ///
    /// Pass the session to every operation (`.session(&mut *session)`):
    /// operations without it run outside the transaction. Transactions
    /// need a replica set or a sharded cluster; a standalone server refuses
    /// them, and that error is returned as is.
    ///
    /// The closure returns its body as `async move { .. }.scoped()`
    /// ([`crate::TxFutureExt::scoped`]): a boxed `Send` future that may
    /// borrow the session and what the closure borrows, so the helper's
    /// future is `Send` (`tokio::spawn`, axum handlers).
    ///
    /// An operation error the closure swallows (`let _ = coll.insert_one(..)
    /// .session(..).await;` and then `Ok`) is never reported as a commit
    /// that did not happen, but what follows depends on the server. A
    /// `mongod` aborts the transaction on the failed statement; the commit
    /// then fails with `NoSuchTransaction`, labelled
    /// `TransientTransactionError`, so the closure runs again (and swallows
    /// the same error again) until the retry policy ends with
    /// [`Error::TransactionRetriesExhausted`]. mongoeco, the test suite's
    /// wire server, keeps the transaction open and commits the other
    /// writes (`Ok`). A closure that needs all or nothing returns the
    /// error (`?`).
    ///
    /// ```no_run
    /// # fn require_send<F: std::future::Future + Send>(f: F) -> F { f }
    /// # async fn demo(db: dbmanager::DatabaseManager) -> dbmanager::Result<()> {
    /// use dbmanager::TxFutureExt;
    /// use dbmanager::mongodb::bson::{Document, doc};
    ///
    /// let accounts = db.mongo()?.database().collection::<Document>("accounts");
    /// let (from, to) = (1, 2);
    /// require_send(db.mongo()?.transaction(|session| {
    ///     let accounts = &accounts;
    ///     async move {
    ///         accounts
    ///             .update_one(doc! { "_id": from }, doc! { "$inc": { "balance": -100 } })
    ///             .session(&mut *session)
    ///             .await?;
    ///         accounts
    ///             .update_one(doc! { "_id": to }, doc! { "$inc": { "balance": 100 } })
    ///             .session(&mut *session)
    ///             .await?;
    ///         Ok(())
    ///     }
    ///     .scoped()
    /// }))
    /// .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// - the closure's error, after the abort, when it is not transient;
    /// - [`Error::TransactionRetriesExhausted`] when transient errors lasted
    ///   past the retry policy;
    /// - [`Error::CommitOutcomeUnknown`] when the commit's result stayed
    ///   unknown past the retry policy;
    /// - [`Error::Mongo`] when a session or transaction cannot be started
    ///   (a standalone server: "Transaction numbers are only allowed on a
    ///   replica set member or mongos") or the commit fails otherwise.
    pub fn transaction<'a, T, F>(&self, work: F) -> impl Future<Output = Result<T>> + Send
    where
        F: for<'s> FnMut(&'s mut ClientSession) -> TxFuture<'a, 's, Result<T>> + Send + 'a,
        T: Send + 'a,
    {
        self.transaction_with(TransactionOptions::new(), work)
    }

    /// [`MongoHandle::transaction`] with driver options or a retry policy
    /// of its own.
    ///
    /// # Errors
    ///
    /// As [`MongoHandle::transaction`].
    // Not an `async fn`: the signature promises `Send`, so a change that
    // breaks it fails here, not in a caller's `tokio::spawn`.
    #[allow(clippy::manual_async_fn)]
    pub fn transaction_with<'a, T, F>(
        &self,
        options: TransactionOptions,
        work: F,
    ) -> impl Future<Output = Result<T>> + Send
    where
        F: for<'s> FnMut(&'s mut ClientSession) -> TxFuture<'a, 's, Result<T>> + Send + 'a,
        T: Send + 'a,
    {
        async move {
            let started = Instant::now();
            let result = self.attempts(options, work).await;
            let end = match &result {
                Ok(_) => TransactionEnd::Committed,
                Err(_) => TransactionEnd::Failed,
            };
            metrics::transaction_finished(PoolLabel::MONGODB, end, started.elapsed());
            result
        }
    }

    async fn attempts<'a, T, F>(&self, options: TransactionOptions, mut work: F) -> Result<T>
    where
        F: for<'s> FnMut(&'s mut ClientSession) -> TxFuture<'a, 's, Result<T>> + Send + 'a,
        T: Send + 'a,
    {
        let label = PoolLabel::MONGODB;
        let mut session = self
            .client
            .start_session()
            .await
            .map_err(|e| Error::mongo("starting a session", e))?;
        let policy = options
            .retry
            .clone()
            .unwrap_or_else(TransactionOptions::default_retry);
        let mut backoff = policy.backoff();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            metrics::transaction_attempt(label);
            let span = self.attempt_span(attempt);
            let step = self
                .attempt(&mut session, &options, &mut work, &mut backoff, attempt)
                .instrument(span.clone())
                .await;
            if !span.is_disabled() {
                let (outcome, operation, error) = match &step {
                    Step::Done(Ok(_)) => ("committed", "commitTransaction", None),
                    Step::Done(Err(error @ Error::TransactionRetriesExhausted { .. })) => {
                        ("exhausted", "abortTransaction", Some(error))
                    }
                    Step::Done(Err(error)) => ("failed", "abortTransaction", Some(error)),
                    Step::Rerun(_, error) => ("rerun", "abortTransaction", Some(error)),
                };
                span.record("dbmanager.transaction.outcome", outcome);
                span.record("db.operation.name", operation);
                if let Some(error) = error {
                    crate::spans::record_error(&span, error);
                    if let Some(code) = server_code(error) {
                        span.record("db.response.status_code", code.as_str());
                        span.record("error.type", code.as_str());
                    }
                }
            }
            // The attempt ends here: its span does not cover the pause.
            drop(span);
            match step {
                Step::Done(result) => return result,
                Step::Rerun(delay, _) => tokio::time::sleep(delay).await,
            }
        }
    }

    /// The client span of one attempt (`dbmanager.transaction`): its
    /// number, how it ended (`commitTransaction` or `abortTransaction`,
    /// `dbmanager.transaction.outcome`) and the server's error code of a
    /// failure.
    fn attempt_span(&self, attempt: u32) -> Span {
        tracing::info_span!(
            target: "dbmanager::mongo",
            "dbmanager.transaction",
            otel.name = "transaction",
            otel.kind = "client",
            db.system.name = crate::spans::MONGODB,
            db.namespace = %self.database,
            db.operation.name = Empty,
            dbmanager.transaction.attempt = attempt,
            dbmanager.transaction.outcome = Empty,
            error.type = Empty,
            db.response.status_code = Empty,
            otel.status_code = Empty,
        )
    }

    /// One attempt: the closure in a transaction, then the commit (retried
    /// while its result is unknown). A rerun comes back with its delay.
    async fn attempt<'a, T, F>(
        &self,
        session: &mut ClientSession,
        options: &TransactionOptions,
        work: &mut F,
        backoff: &mut crate::retry::Backoff,
        attempt: u32,
    ) -> Step<T>
    where
        F: for<'s> FnMut(&'s mut ClientSession) -> TxFuture<'a, 's, Result<T>> + Send + 'a,
        T: Send + 'a,
    {
        let label = PoolLabel::MONGODB;
        let mut commit_unknown = false;
        if let Err(e) = session
            .start_transaction()
            .with_options(options.driver.clone())
            .await
        {
            return Step::Done(Err(Error::mongo("starting a transaction", e)));
        }
        let value = match AssertUnwindSafe(work(session)).catch_unwind().await {
            Ok(Ok(value)) => value,
            Ok(Err(error)) => {
                // Ignored: a transaction the server already aborted
                // cannot be aborted again, and a failed abort leaves
                // it to time out on the server.
                let _ = session.abort_transaction().await;
                if !has_label(&error, TRANSIENT_TRANSACTION_ERROR) {
                    return Step::Done(Err(error));
                }
                return match backoff.next() {
                    Some(delay) => {
                        metrics::transaction_rerun(label, "transient");
                        tracing::info!(target: "dbmanager::mongo", attempt, error = %error, "transient transaction error; running the transaction again");
                        Step::Rerun(delay, error)
                    }
                    None => Step::Done(Err(exhausted(attempt, error))),
                };
            }
            Err(panic) => {
                let _ = session.abort_transaction().await;
                std::panic::resume_unwind(panic);
            }
        };
        loop {
            let error = match session.commit_transaction().await {
                Ok(()) => {
                    if commit_unknown {
                        metrics::commit_outcome(label, "committed");
                    }
                    return Step::Done(Ok(value));
                }
                Err(e) => e,
            };
            let unknown = error.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT)
                && !is_max_time_expired(&error);
            let transient = error.contains_label(TRANSIENT_TRANSACTION_ERROR);
            let delay = backoff.next();
            match (delay, unknown, transient) {
                (Some(delay), true, _) => {
                    commit_unknown = true;
                    metrics::transaction_rerun(label, "commit_unknown");
                    tracing::info!(target: "dbmanager::mongo", attempt, error = %error, "commit result unknown; committing again");
                    tokio::time::sleep(delay).await;
                }
                (Some(delay), false, true) => {
                    metrics::transaction_rerun(label, "transient");
                    tracing::info!(target: "dbmanager::mongo", attempt, error = %error, "transient commit error; running the transaction again");
                    return Step::Rerun(delay, Error::mongo("committing a transaction", error));
                }
                (None, true, _) => {
                    metrics::commit_outcome(label, "unknown");
                    return Step::Done(Err(Error::CommitOutcomeUnknown {
                        backend: Backend::Mongodb,
                        attempt,
                        reason: crate::config::scrub(&error.to_string(), &self.shared.secrets),
                    }));
                }
                (None, false, true) => {
                    return Step::Done(Err(exhausted(
                        attempt,
                        Error::mongo("committing a transaction", error),
                    )));
                }
                (_, false, false) => {
                    return Step::Done(Err(Error::mongo("committing a transaction", error)));
                }
            }
        }
    }
}

/// How one attempt ended.
enum Step<T> {
    /// Committed, or failed for good.
    Done(Result<T>),
    /// Rolled back by a transient error: run again after the delay.
    Rerun(Duration, Error),
}

/// The server's error code of a MongoDB failure (112 for a write
/// conflict), as the conventions' `db.response.status_code`.
fn server_code(error: &Error) -> Option<String> {
    let error = match error {
        Error::TransactionRetriesExhausted { last, .. } => last.mongo_error(),
        other => other.mongo_error(),
    }?;
    match error.kind.as_ref() {
        mongodb::error::ErrorKind::Command(command) => Some(command.code.to_string()),
        _ => None,
    }
}
