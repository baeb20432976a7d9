//! Health endpoints for axum services (feature `axum`).
//!
//! ```no_run
//! # async fn demo(db: dbmanager::DatabaseManager) -> std::io::Result<()> {
//! let app = axum::Router::new()
//!     // .route("/users", ...)
//!     .merge(dbmanager::http::health_router(db.clone()));
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
//! axum::serve(listener, app).await
//! # }
//! ```
//!
//! | path | meaning | 200 | 503 |
//! | --- | --- | --- | --- |
//! | `/health` | liveness; never touches a database | alive | the background connect failed for good |
//! | `/health/db` | the detailed [`crate::HealthReport`] | `up` or `degraded` | `down`, or draining |
//! | `/health/ready` | readiness | ready | connecting, a required database down, or draining |
//!
//! Every body is JSON and free of secrets.
//!
//! [`Error`] is also an [`IntoResponse`], so a handler may return
//! `Result<T, dbmanager::Error>` and use `?` on the crate's, tokio-postgres'
//! and the MongoDB driver's errors:
//!
//! | error | status | headers |
//! | --- | --- | --- |
//! | [`Error::PoolTimeout`], [`Error::ShuttingDown`], and every error for which [`Error::is_transient`] is true (a refused or reset connection, a timeout, a server starting or out of connection slots, a serialization conflict) | 503 Service Unavailable | `Retry-After: 1` |
//! | anything else | 500 Internal Server Error | |
//!
//! The body is `{"error": "<the error's Display>", "kind": "<variant>"}`,
//! e.g. `{"error": "timed out after 30s waiting for a PostgreSQL connection
//! (pool: ...)", "kind": "pool_timeout"}`. The message never contains a
//! password, but it does name tables, constraints and hosts: a public API
//! may prefer its own error type (see the guide's "Errors and `?`").

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use crate::error::Error;
use crate::health::HealthStatus;
use crate::manager::{DatabaseManager, Phase};

/// The body of `/health` and `/health/ready`.
#[derive(Debug, Serialize)]
struct Probe {
    status: &'static str,
    phase: Phase,
}

/// A router serving `/health`, `/health/db` and `/health/ready` for this
/// manager. Merge it into the service's router.
pub fn health_router(db: DatabaseManager) -> Router {
    Router::new()
        .route("/health", get(liveness))
        .route("/health/db", get(report))
        .route("/health/ready", get(readiness))
        .with_state(db)
}

async fn liveness(State(db): State<DatabaseManager>) -> (StatusCode, Json<Probe>) {
    let phase = db.phase();
    if db.liveness() {
        (
            StatusCode::OK,
            Json(Probe {
                status: "alive",
                phase,
            }),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Probe {
                status: "failed",
                phase,
            }),
        )
    }
}

async fn report(
    State(db): State<DatabaseManager>,
) -> (StatusCode, Json<crate::health::HealthReport>) {
    let report = db.health().await;
    let draining = matches!(db.phase(), Phase::Draining | Phase::Closed);
    let code = if report.status == HealthStatus::Down || draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(report))
}

async fn readiness(State(db): State<DatabaseManager>) -> (StatusCode, Json<Probe>) {
    let ready = db.readiness().await;
    let phase = db.phase();
    if ready {
        (
            StatusCode::OK,
            Json(Probe {
                status: "ready",
                phase,
            }),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Probe {
                status: "not ready",
                phase,
            }),
        )
    }
}

/// The body of an [`Error`] response.
#[derive(Debug, Serialize)]
struct ErrorBody {
    error: String,
    kind: String,
}

/// How many seconds a client is told to wait before trying again after a
/// 503 (`Retry-After`).
const RETRY_AFTER_SECONDS: &str = "1";

impl IntoResponse for Error {
    /// 503 with `Retry-After` for a full pool, a draining manager and
    /// transient failures ([`Error::is_transient`]); 500 otherwise. The
    /// JSON body carries the message (free of secrets) and the variant.
    fn into_response(self) -> Response {
        let unavailable = matches!(self, Error::PoolTimeout { .. } | Error::ShuttingDown { .. })
            || self.is_transient();
        let body = ErrorBody {
            error: self.to_string(),
            kind: kind(&self),
        };
        if unavailable {
            tracing::warn!(error = %body.error, kind = %body.kind, "request failed: database unavailable");
            let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
            response
        } else {
            tracing::error!(error = %body.error, kind = %body.kind, "request failed");
            (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response()
        }
    }
}

/// The variant's name in snake_case (`PoolTimeout` is `pool_timeout`): the
/// `kind` of an error body. Read from the derived `Debug`, whose text up to
/// the first `{` or `(` is the variant's name; nothing else of it is kept.
fn kind(error: &Error) -> String {
    let debug = format!("{error:?}");
    let name = debug
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap_or_default();
    let mut kind = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                kind.push('_');
            }
            kind.push(c.to_ascii_lowercase());
        } else {
            kind.push(c);
        }
    }
    kind
}
