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
//! | `/health/ready` | readiness | ready | connecting, a required database down, or draining (a [`Rollout`] or a shutdown began) |
//!
//! Every body is JSON and free of secrets.
//!
//! [`Error`](crate::Error) is also an [`IntoResponse`](axum::response::IntoResponse), so a handler may return
//! `Result<T, dbmanager::Error>` and use `?` on the crate's, tokio-postgres'
//! and the MongoDB driver's errors: 503 with `Retry-After: 1` for a full
//! pool, a draining manager and every error for which
//! [`Error::is_transient`](crate::Error::is_transient) is true, 500 otherwise (the guide's "Errors and
//! `?`" lists every variant). The body is one short line,
//! `{"error": "<public message>", "kind": "<variant>"}`: never the server's
//! message, DETAIL or HINT (backend PIDs, OIDs, key values), hosts or
//! secrets. The whole error goes to the log, on one line.
//! [`expose_error_details`] adds it to the body, for development.

mod error_response;
mod rollout;

pub use error_response::expose_error_details;
pub use rollout::Rollout;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde::Serialize;

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
        // A rollout or a shutdown: say so, so a probe's log tells a pod
        // leaving on purpose from one in trouble.
        let status = match phase {
            Phase::Stopping | Phase::Draining | Phase::Closed => "draining",
            _ => "not ready",
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Probe { status, phase }),
        )
    }
}
