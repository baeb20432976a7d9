//! [`Error`] as an HTTP response: a status that tells a client whether to
//! come back, a one-line public body, and the whole error in the log.
//!
//! The body never carries the error's `Display`: a PostgreSQL error's
//! DETAIL names backend PIDs, relation OIDs and key values, a connect error
//! names hosts. Those go to the log, escaped onto one line, where the
//! operator reads them; the client gets a fixed sentence per variant and the
//! variant's name, which is all it can act on.

use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::{Error, FailureKind};

/// How many seconds a client is told to wait before trying again after a
/// 503 (`Retry-After`).
const RETRY_AFTER_SECONDS: &str = "1";

/// Whether bodies also carry the whole error ([`expose_error_details`]).
static EXPOSE_DETAILS: AtomicBool = AtomicBool::new(false);

/// Adds the whole error message (the server's message, DETAIL and HINT,
/// hosts, SQL) to every [`Error`] response body as `"detail"`, for a
/// development or internal service whose clients are its own developers.
/// Off by default, and it should stay off for a public API: DETAIL names
/// backend PIDs, relation OIDs and the values of rows. Passwords are never
/// in it either way. Process-wide, because a response has no other way to
/// reach a setting.
pub fn expose_error_details(expose: bool) {
    EXPOSE_DETAILS.store(expose, Ordering::Relaxed);
}

/// The body of an [`Error`] response.
#[derive(Debug, Serialize)]
struct ErrorBody {
    error: String,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

impl IntoResponse for Error {
    /// 503 with `Retry-After` for a full pool, a draining manager and
    /// transient failures ([`Error::is_transient`]); 500 otherwise. The
    /// JSON body carries a public one-line message and the variant; the
    /// whole error is logged on one line.
    fn into_response(self) -> Response {
        respond(self, EXPOSE_DETAILS.load(Ordering::Relaxed))
    }
}

/// The response, with the whole message in the body when `expose`.
fn respond(error: Error, expose: bool) -> Response {
    let unavailable = unavailable(&error);
    let kind = kind(&error);
    // `?` on a String escapes newlines and quotes: a multi-line DETAIL
    // stays one log entry.
    let full = error.to_string();
    let sqlstate = error.sqlstate().unwrap_or("");
    if unavailable {
        tracing::warn!(kind, sqlstate, error = ?full, "request failed: database unavailable");
    } else {
        tracing::error!(kind, sqlstate, error = ?full, "request failed");
    }
    let body = ErrorBody {
        error: public_message(&error),
        kind,
        detail: expose.then_some(full),
    };
    if unavailable {
        let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECONDS),
        );
        response
    } else {
        (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response()
    }
}

/// 503 + `Retry-After` rather than 500: the same request may succeed later.
fn unavailable(error: &Error) -> bool {
    matches!(
        error,
        Error::PoolTimeout { .. } | Error::ShuttingDown { .. }
    ) || error.is_transient()
}

/// The variant's name in snake_case: the `kind` of an error body.
fn kind(error: &Error) -> &'static str {
    error.kind()
}

/// What a client is told: a fixed sentence per variant, with only what the
/// crate itself wrote into it (the database's name, what timed out, a
/// SQLSTATE, a failure kind). Nothing a server, a host or a user sent.
fn public_message(error: &Error) -> String {
    match error {
        Error::Config { .. } | Error::ConfigFile { .. } => {
            "the database configuration is invalid".into()
        }
        Error::NotConfigured { backend, .. } => format!("{backend} is not configured"),
        Error::Connect { backend, kind, .. } => {
            format!("could not connect to {backend} ({kind})")
        }
        Error::CredentialProvider { backend, .. } => {
            format!("the {backend} credential is not available")
        }
        Error::PoolTimeout { backend, .. } => {
            format!("timed out waiting for a {backend} connection")
        }
        Error::ShuttingDown { .. } => "the service is shutting down".into(),
        Error::Startup { .. } => "the database connection could not be set up".into(),
        Error::Timeout { what, .. } => format!("{what} timed out"),
        Error::Hook { hook, .. } => format!("the {hook} hook failed"),
        #[cfg(feature = "postgres")]
        Error::Postgres { error, .. } => {
            let kind = crate::error::classify_postgres(error);
            let what = failure(kind, "a PostgreSQL statement failed", "PostgreSQL");
            match error.code() {
                Some(code) => format!("{what} (SQLSTATE {})", code.code()),
                None => what,
            }
        }
        #[cfg(feature = "mongodb")]
        Error::Mongo { error, .. } => failure(
            crate::error::classify_mongo(error),
            "a MongoDB operation failed",
            "MongoDB",
        ),
        #[cfg(feature = "mongodb")]
        Error::IndexConflict { .. } => "a MongoDB index definition conflicts".into(),
        #[cfg(feature = "migrate")]
        Error::Migrate(_) => "a database migration failed".into(),
        Error::TransactionRetriesExhausted {
            backend, attempts, ..
        } => format!(
            "the {backend} transaction conflicted or lost its connection on all {attempts} attempts: try again later"
        ),
        Error::CommitOutcomeUnknown { backend, .. } => format!(
            "the {backend} transaction's outcome is unknown: the connection failed during commit"
        ),
        Error::Aborted { .. } => "the transaction was rolled back".into(),
        Error::SessionRequired { .. } => {
            "the statement needs a session the shared connections do not keep".into()
        }
        Error::NoReplica { .. } => "no read replica can serve".into(),
        Error::Privilege { .. } => "the database role lacks a privilege".into(),
        Error::TransactionRolledBack {
            backend, sqlstate, ..
        } => match sqlstate {
            Some(code) => format!(
                "the {backend} transaction was rolled back: a statement in it failed (SQLSTATE {code})"
            ),
            None => format!("the {backend} transaction was rolled back: a statement in it failed"),
        },
        Error::InvalidChannel { .. } => "the notification channel name is invalid".into(),
    }
}

/// A driver failure in words: a conflict, a database that is unavailable
/// for now, or a plain failure.
fn failure(kind: FailureKind, failed: &str, backend: &str) -> String {
    match kind {
        FailureKind::Conflict => {
            format!("the {backend} transaction conflicted with a concurrent one: try again")
        }
        kind if kind.is_transient() => format!("{backend} is unavailable for now ({kind})"),
        _ => failed.into(),
    }
}

#[cfg(all(test, feature = "postgres", feature = "mongodb", feature = "migrate"))]
mod tests;
