//! The crate's one error type.
//!
//! Every variant carries what is needed to act on it (which key, which
//! database, how long it waited, what the pool looked like) and nothing
//! secret: connection targets are shown without their password, and server
//! messages are checked for the configured password before they are kept.

mod classify;
#[cfg(feature = "mongodb")]
mod describe_mongo;
mod kind;
mod problems;

use std::time::Duration;

pub(crate) use classify::classify_io;
#[cfg(feature = "mongodb")]
pub(crate) use classify::classify_mongo;
#[cfg(feature = "postgres")]
pub(crate) use classify::classify_postgres;
#[cfg(feature = "postgres")]
pub use classify::describe_postgres;
#[cfg(feature = "postgres")]
pub(crate) use classify::{SILENCE_ROUTINE, is_silence};
#[cfg(feature = "mongodb")]
pub use describe_mongo::describe_mongo;
pub use kind::{Backend, FailureKind};
pub(crate) use problems::{Problems, at_most_a_year, pool_size, positive, positive_opt};

use crate::pool_status::PoolStatus;

/// A `Result` with [`Error`] as its error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error from user code run by the crate (hooks, closures), boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in `dbmanager`.
///
/// Errors never contain a password: connection targets are rendered without
/// credentials and messages are scrubbed of the configured secrets. Each
/// variant's message is complete on its own; where a lower-level error is
/// kept, it is reachable through an accessor rather than repeated in
/// [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is missing, malformed or inconsistent.
    #[error("invalid configuration `{key}`: {problem}")]
    Config {
        /// The setting, as a dotted path (`postgres.pool.max_size`) or an
        /// environment variable name (`DB_POOL_SIZE`).
        key: String,
        /// What is wrong with its value. Never contains the value when the
        /// value is a secret.
        problem: String,
    },

    /// A configuration file exists but could not be read or parsed.
    #[error("configuration file {path}: {problem}")]
    ConfigFile {
        /// The file that failed.
        path: std::path::PathBuf,
        /// Why it failed.
        problem: String,
    },

    /// The database was not configured (no URL for it).
    #[error("{backend} is not configured: set {hint}")]
    NotConfigured {
        /// The database that was asked for.
        backend: Backend,
        /// Which settings configure it.
        hint: &'static str,
    },

    /// Connecting failed; `attempts` tells how many tries the retry policy
    /// made before giving up (1 for a permanent error).
    #[error(
        "could not connect to {backend} at {target} ({kind}{}): {reason}",
        attempts_note(*attempts, *elapsed)
    )]
    Connect {
        /// The database.
        backend: Backend,
        /// Where it tried to connect, without credentials.
        target: String,
        /// The classification of the last failure.
        kind: FailureKind,
        /// The server's or the driver's message for the last failure.
        reason: String,
        /// The SQLSTATE of the last failure, when the server sent one.
        code: Option<String>,
        /// How many attempts were made.
        attempts: u32,
        /// How long all attempts took together.
        elapsed: Duration,
    },

    /// The password provider ([`crate::DatabaseManagerBuilder::password_provider`])
    /// failed or did not answer within the connect timeout, so no
    /// connection was attempted. Transient: the provider is asked again on
    /// the next attempt.
    #[error("the {backend} password provider failed: {reason}")]
    CredentialProvider {
        /// The database whose connection needed the credential.
        backend: Backend,
        /// The provider's error message, or that it did not answer in time.
        reason: String,
    },

    /// No connection became free within the pool's wait timeout.
    ///
    /// `status` is the pool at the moment of the timeout: `in_use == max_size`
    /// with many `waiting` says the pool is too small or connections leak;
    /// `open < max_size` says new connections could not be opened.
    #[error("timed out after {waited:?} waiting for a {backend} connection (pool {status})")]
    PoolTimeout {
        /// The database.
        backend: Backend,
        /// How long the caller waited.
        waited: Duration,
        /// The pool when the wait ended.
        status: PoolStatus,
    },

    /// The manager is shutting down or has shut down; no new work is taken.
    #[error("{backend} is shutting down: no new connections are handed out")]
    ShuttingDown {
        /// The database.
        backend: Backend,
    },

    /// The background connect of `build_in_background` gave up.
    #[error("start-up connect failed: {reason}")]
    Startup {
        /// The last error, without secrets.
        reason: String,
    },

    /// An operation did not finish within its time limit.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// What was being done.
        what: &'static str,
        /// The limit that was reached.
        after: Duration,
    },

    /// A user hook (`on_connect`, `on_checkout`, ...) returned an error.
    #[error("{hook} hook failed: {reason}")]
    Hook {
        /// Which hook.
        hook: &'static str,
        /// The hook's error message.
        reason: String,
    },

    /// A statement sent by the crate (health probe, migration, bootstrap)
    /// failed on the PostgreSQL server.
    #[cfg(feature = "postgres")]
    #[error("PostgreSQL {what} failed: {}", describe_postgres(error))]
    Postgres {
        /// What was being done.
        what: &'static str,
        /// The driver's error, also reachable through
        /// [`Error::postgres_error`]. Its message is already in this
        /// error's, so it is not repeated as the `source()`.
        error: tokio_postgres::Error,
    },

    /// The MongoDB driver reported an error for an operation of the crate.
    #[cfg(feature = "mongodb")]
    #[error("MongoDB {what} failed: {}", describe_mongo(error))]
    Mongo {
        /// What was being done.
        what: &'static str,
        /// The driver's error; its message is already in this error's, in
        /// one line ([`crate::mongo::describe_error`]).
        error: Box<mongodb::error::Error>,
    },

    /// An index exists with the same name but a different definition.
    #[cfg(feature = "mongodb")]
    #[error(
        "index `{name}` on collection `{collection}` exists with a different definition: existing {existing}, wanted {wanted}"
    )]
    IndexConflict {
        /// The collection.
        collection: String,
        /// The index name.
        name: String,
        /// The existing definition (keys and options, as JSON).
        existing: String,
        /// The declared definition.
        wanted: String,
    },

    /// A migration problem: a bad migration source, a history that does not
    /// match the files, or a failed migration.
    // upward import: the migration error is a leaf (it imports nothing of
    // the crate), so wrapping it here makes no circle; it lives beside the
    // migrations it describes.
    #[cfg(feature = "migrate")]
    #[error(transparent)]
    Migrate(#[from] crate::migrate::MigrateError),

    /// A transaction failed with an error worth retrying (a serialization
    /// failure, a deadlock, a lost connection) on every attempt its retry
    /// policy allowed; `last` is the error of the last attempt.
    #[error("{backend} transaction failed on all {attempts} attempt{}: {last}", if *attempts == 1 { "" } else { "s" })]
    TransactionRetriesExhausted {
        /// The database.
        backend: Backend,
        /// How many times the transaction ran.
        attempts: u32,
        /// The last attempt's error (its message is already in this one's).
        last: Box<Error>,
    },

    /// The connection was lost after `COMMIT` was sent and before the
    /// server answered: the transaction may or may not have committed. It
    /// is not run again; check whether its effects are present first.
    #[error(
        "{backend} transaction outcome unknown: the connection failed after COMMIT was sent ({reason}); check whether its effects are present before running it again"
    )]
    CommitOutcomeUnknown {
        /// The database.
        backend: Backend,
        /// The attempt whose commit was lost (1 for the first).
        attempt: u32,
        /// The driver's message.
        reason: String,
    },

    /// The server rolled the transaction back although its closure
    /// returned `Ok`: a statement inside failed and the closure went on
    /// (the error swallowed, or a statement run with `simple_query` whose
    /// error was ignored), so PostgreSQL answered `COMMIT` with `ROLLBACK`.
    /// Nothing of the transaction was kept. Rerun by the helper only when
    /// the first error was a serialization failure or deadlock.
    #[error("{backend} transaction rolled back by the server although its closure returned Ok: {}", first_error_text(.sqlstate.as_deref(), .message.as_deref()))]
    TransactionRolledBack {
        /// The database.
        backend: Backend,
        /// The SQLSTATE of the first error the server reported in the
        /// transaction, when known.
        sqlstate: Option<String>,
        /// That error's message (secrets scrubbed), when known.
        message: Option<String>,
    },

    /// A transaction closure gave up with an error of its own
    /// ([`Error::abort`]): the transaction was rolled back. The error is
    /// kept for [`Error::aborted`] to hand back.
    #[error("transaction rolled back: {reason}")]
    Aborted {
        /// The closure's error; its message is already in this one's.
        reason: BoxError,
    },

    /// A statement that needs a session (a transaction, `SET`, `LISTEN`, a
    /// temporary table, a cursor, a session advisory lock, ...) was given to
    /// the multiplexed handle, whose connections are shared by every caller
    /// and keep no session for anyone. Run it on a pooled connection
    /// (`db.postgres()?.get()`).
    #[error(
        "`{statement}` needs a session, which the multiplexed handle does not keep (its connections are shared by all callers): run it on a pooled connection from `db.postgres()?.get()`"
    )]
    SessionRequired {
        /// What was recognised (`BEGIN`, `SET`, `CREATE TEMP TABLE`, ...).
        statement: &'static str,
    },

    /// `db.postgres()?.replica()` found no read replica that can serve
    /// (each is down or further behind than `postgres.replicas.max_lag`, or
    /// none is configured) and `postgres.replicas.fallback` is `error`.
    /// Transient: a replica that catches up or comes back serves again.
    #[error("no read replica can serve: {reason}")]
    NoReplica {
        /// Each replica's state, without secrets (`replica-1 (app@r1:5432/app):
        /// 14.2 s behind`).
        reason: String,
    },

    /// A LISTEN channel name the server would not take as given: empty,
    /// longer than PostgreSQL's 63-byte identifier limit (the server would
    /// silently truncate it), or containing a NUL byte.
    #[error("invalid LISTEN channel name {channel:?}: {problem}")]
    InvalidChannel {
        /// The name as given.
        channel: String,
        /// What is wrong with it.
        problem: &'static str,
    },

    /// The connected role lacks a privilege an operation needs.
    #[error("insufficient privilege to {action}: {reason}")]
    Privilege {
        /// What was attempted (`create database "app"`).
        action: String,
        /// The server's message.
        reason: String,
    },
}

/// ", 6 attempts in 2.0s" when the retry made more than one attempt.
fn attempts_note(attempts: u32, elapsed: Duration) -> String {
    if attempts > 1 {
        format!(", {attempts} attempts in {elapsed:.1?}")
    } else {
        String::new()
    }
}

#[cfg(feature = "postgres")]
impl From<tokio_postgres::Error> for Error {
    /// Wraps a query error, so `?` works in functions returning
    /// [`crate::Result`].
    fn from(error: tokio_postgres::Error) -> Self {
        Error::Postgres {
            what: "query",
            error,
        }
    }
}

#[cfg(feature = "mongodb")]
impl From<mongodb::error::Error> for Error {
    /// Wraps a driver error, so `?` works in functions returning
    /// [`crate::Result`].
    fn from(error: mongodb::error::Error) -> Self {
        Error::mongo("operation", error)
    }
}

impl Error {
    /// Whether retrying the same operation later may succeed.
    ///
    /// This is the classification [`crate::retry::retry`] and the start-up
    /// connect use: refused or reset connections, timeouts, a server that is
    /// starting (57P03), out of connection slots (53300), shutting down
    /// (57P01) or any connection exception (class 08) are transient; bad
    /// credentials, an unknown database, TLS and configuration errors are
    /// not. A transaction that ran out of attempts
    /// ([`Error::TransactionRetriesExhausted`]) is transient when its last
    /// error is (a serialization failure, a deadlock, a lost connection),
    /// so an HTTP handler answers it 503 with `Retry-After`.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect { kind, .. } => kind.is_transient(),
            Error::PoolTimeout { .. } | Error::Timeout { .. } | Error::NoReplica { .. } => true,
            // A token service that hiccuped answers the next attempt.
            Error::CredentialProvider { .. } => true,
            // The helper reruns only retryable failures (conflicts, lost
            // connections): when it runs out of attempts, a later run of
            // the same transaction may well succeed.
            Error::TransactionRetriesExhausted { last, .. } => last.is_transient(),
            #[cfg(feature = "postgres")]
            Error::Postgres { error, .. } => classify_postgres(error).is_transient(),
            #[cfg(feature = "mongodb")]
            Error::Mongo { error, .. } => classify_mongo(error).is_transient(),
            _ => false,
        }
    }

    /// The variant's name in snake_case: the `kind` of an HTTP error body
    /// and a span's `error.type` when there is no SQLSTATE. An
    /// exhaustive match, so a new variant cannot ship without a name here.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Error::Config { .. } => "config",
            Error::ConfigFile { .. } => "config_file",
            Error::NotConfigured { .. } => "not_configured",
            Error::Connect { .. } => "connect",
            Error::CredentialProvider { .. } => "credential_provider",
            Error::PoolTimeout { .. } => "pool_timeout",
            Error::ShuttingDown { .. } => "shutting_down",
            Error::Startup { .. } => "startup",
            Error::Timeout { .. } => "timeout",
            Error::Hook { .. } => "hook",
            #[cfg(feature = "postgres")]
            Error::Postgres { .. } => "postgres",
            #[cfg(feature = "mongodb")]
            Error::Mongo { .. } => "mongo",
            #[cfg(feature = "mongodb")]
            Error::IndexConflict { .. } => "index_conflict",
            #[cfg(feature = "migrate")]
            Error::Migrate(_) => "migrate",
            Error::TransactionRetriesExhausted { .. } => "transaction_retries_exhausted",
            Error::CommitOutcomeUnknown { .. } => "commit_outcome_unknown",
            Error::Aborted { .. } => "aborted",
            Error::SessionRequired { .. } => "session_required",
            Error::NoReplica { .. } => "no_replica",
            Error::Privilege { .. } => "privilege",
            Error::TransactionRolledBack { .. } => "transaction_rolled_back",
            Error::InvalidChannel { .. } => "invalid_channel",
        }
    }

    /// The SQLSTATE code of a PostgreSQL failure, when there is one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Connect { code, .. } => code.as_deref(),
            #[cfg(feature = "postgres")]
            Error::Postgres { error, .. } => error.code().map(|c| c.code()),
            #[cfg(feature = "migrate")]
            Error::Migrate(error) => error.sqlstate(),
            Error::TransactionRetriesExhausted { last, .. } => last.sqlstate(),
            Error::TransactionRolledBack { sqlstate, .. } => sqlstate.as_deref(),
            _ => None,
        }
    }

    /// An error that rolls back a transaction run by
    /// `PostgresPool::transaction` or `MongoHandle::transaction` for a
    /// reason of the caller's own (insufficient funds, a failed check):
    /// `return Err(Error::abort(MyError::Overdrawn))`. It is never retried.
    pub fn abort(reason: impl Into<BoxError>) -> Self {
        Error::Aborted {
            reason: reason.into(),
        }
    }

    /// The caller's error inside an [`Error::Aborted`], when it is an `E`.
    pub fn aborted<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            Error::Aborted { reason } => reason.downcast_ref::<E>(),
            Error::TransactionRetriesExhausted { last, .. } => last.aborted(),
            _ => None,
        }
    }

    /// How many times a transaction ran before it gave up: the count of an
    /// [`Error::TransactionRetriesExhausted`] or the attempt of an
    /// [`Error::CommitOutcomeUnknown`].
    pub fn attempts(&self) -> Option<u32> {
        match self {
            Error::TransactionRetriesExhausted { attempts, .. } => Some(*attempts),
            Error::CommitOutcomeUnknown { attempt, .. } => Some(*attempt),
            _ => None,
        }
    }

    /// The underlying tokio-postgres error, for callers that need its details
    /// (position, constraint, ...).
    #[cfg(feature = "postgres")]
    pub fn postgres_error(&self) -> Option<&tokio_postgres::Error> {
        match self {
            Error::Postgres { error, .. } => Some(error),
            Error::TransactionRetriesExhausted { last, .. } => last.postgres_error(),
            _ => None,
        }
    }

    /// The underlying MongoDB driver error (its labels, code, ...).
    #[cfg(feature = "mongodb")]
    pub fn mongo_error(&self) -> Option<&mongodb::error::Error> {
        match self {
            Error::Mongo { error, .. } => Some(error),
            Error::TransactionRetriesExhausted { last, .. } => last.mongo_error(),
            _ => None,
        }
    }

    pub(crate) fn config(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Error::Config {
            key: key.into(),
            problem: problem.into(),
        }
    }

    #[cfg(feature = "postgres")]
    pub(crate) fn postgres(what: &'static str, error: tokio_postgres::Error) -> Self {
        Error::Postgres { what, error }
    }

    #[cfg(feature = "mongodb")]
    pub(crate) fn mongo(what: &'static str, error: mongodb::error::Error) -> Self {
        Error::Mongo {
            what,
            error: Box::new(error),
        }
    }
}

/// The first error of a rolled-back transaction, for its message.
fn first_error_text(sqlstate: Option<&str>, message: Option<&str>) -> String {
    match (sqlstate, message) {
        (Some(code), Some(message)) => format!("the first error was {message} (SQLSTATE {code})"),
        (Some(code), None) => format!("the first error had SQLSTATE {code}"),
        (None, Some(message)) => format!("the first error was {message}"),
        (None, None) => "the first error is not known".to_string(),
    }
}
