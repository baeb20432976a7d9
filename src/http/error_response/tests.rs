//! Every [`Error`] variant as a response: its status, `Retry-After`, and a
//! body that is one short line without what the error carries inside
//! (server DETAIL, backend PIDs, OIDs, hosts, secrets). Inside the crate so
//! the match below is exhaustive: a new variant does not compile until it
//! is listed here, and the list must construct it.

use std::time::Duration;

use axum::body::to_bytes;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use crate::error::{Backend, Error, FailureKind};
use crate::pool_status::PoolStatus;

/// What every free-text field of the constructed errors carries: what a
/// server, a host or a user might have put there. None of it may reach a body.
const LEAKY: &str = "password=hunter2-secret host db-internal.example:5432; \
    DETAIL: Process 4242 waits for ShareLock on transaction 777; blocked by process 4343.\n\
    Process 4343 waits for ShareLock on relation 16384 of database 16385; HINT: see server log";

/// Fragments of [`LEAKY`] that must not appear in any body.
const FORBIDDEN: [&str; 7] = [
    "hunter2",
    "db-internal",
    "4242",
    "4343",
    "16384",
    "DETAIL",
    "HINT",
];

/// An index per variant: exhaustive, so adding a variant to [`Error`]
/// breaks this test's build until the variant is constructed below.
fn variant(error: &Error) -> usize {
    match error {
        Error::Config { .. } => 0,
        Error::ConfigFile { .. } => 1,
        Error::NotConfigured { .. } => 2,
        Error::Connect { .. } => 3,
        Error::CredentialProvider { .. } => 4,
        Error::PoolTimeout { .. } => 5,
        Error::ShuttingDown { .. } => 6,
        Error::Startup { .. } => 7,
        Error::Timeout { .. } => 8,
        Error::Hook { .. } => 9,
        Error::Postgres { .. } => 10,
        Error::Mongo { .. } => 11,
        Error::IndexConflict { .. } => 12,
        Error::Migrate(_) => 13,
        Error::TransactionRetriesExhausted { .. } => 14,
        Error::CommitOutcomeUnknown { .. } => 15,
        Error::Aborted { .. } => 16,
        Error::SessionRequired { .. } => 17,
        Error::NoReplica { .. } => 18,
        Error::Privilege { .. } => 19,
        Error::TransactionRolledBack { .. } => 20,
        Error::InvalidChannel { .. } => 21,
    }
}
const VARIANTS: usize = 22;

fn connect(kind: FailureKind) -> Error {
    Error::Connect {
        backend: Backend::Postgres,
        target: LEAKY.into(),
        kind,
        reason: LEAKY.into(),
        code: Some("57P03".into()),
        attempts: 3,
        elapsed: Duration::from_secs(2),
    }
}

/// A real tokio-postgres error without a server: a connection string the
/// driver refuses. Not transient.
fn postgres_error() -> tokio_postgres::Error {
    format!("host=h port=not-a-port password={LEAKY}")
        .parse::<tokio_postgres::Config>()
        .unwrap_err()
}

fn io(kind: std::io::ErrorKind) -> std::io::Error {
    std::io::Error::new(kind, LEAKY)
}

/// Each error, the status it must answer and whether `Retry-After` is set.
fn every_error() -> Vec<(Error, StatusCode)> {
    const UNAVAILABLE: StatusCode = StatusCode::SERVICE_UNAVAILABLE;
    const INTERNAL: StatusCode = StatusCode::INTERNAL_SERVER_ERROR;
    let status = PoolStatus {
        name: "primary",
        max_size: 4,
        open: 4,
        idle: 0,
        in_use: 4,
        waiting: 9,
    };
    let reset = Error::Mongo {
        what: "transaction",
        error: Box::new(mongodb::error::Error::from(io(
            std::io::ErrorKind::ConnectionReset,
        ))),
    };
    vec![
        (Error::config("postgres.url", LEAKY), INTERNAL),
        (
            Error::ConfigFile {
                path: LEAKY.into(),
                problem: LEAKY.into(),
            },
            INTERNAL,
        ),
        (
            Error::NotConfigured {
                backend: Backend::Mongodb,
                hint: "MONGODB_URL",
            },
            INTERNAL,
        ),
        (connect(FailureKind::Refused), UNAVAILABLE),
        (connect(FailureKind::Authentication), INTERNAL),
        (
            Error::CredentialProvider {
                backend: Backend::Postgres,
                reason: LEAKY.into(),
            },
            UNAVAILABLE,
        ),
        (
            Error::PoolTimeout {
                backend: Backend::Postgres,
                waited: Duration::from_secs(30),
                status,
            },
            UNAVAILABLE,
        ),
        (
            Error::ShuttingDown {
                backend: Backend::Postgres,
            },
            UNAVAILABLE,
        ),
        (
            Error::Startup {
                reason: LEAKY.into(),
            },
            INTERNAL,
        ),
        (
            Error::Timeout {
                what: "health probe",
                after: Duration::from_secs(2),
            },
            UNAVAILABLE,
        ),
        (
            Error::Hook {
                hook: "on_connect",
                reason: LEAKY.into(),
            },
            INTERNAL,
        ),
        (Error::postgres("query", postgres_error()), INTERNAL),
        (reset, UNAVAILABLE),
        (
            Error::mongo("insert", mongodb::error::Error::custom(LEAKY.to_string())),
            INTERNAL,
        ),
        (
            Error::IndexConflict {
                collection: LEAKY.into(),
                name: LEAKY.into(),
                existing: LEAKY.into(),
                wanted: LEAKY.into(),
            },
            INTERNAL,
        ),
        (
            Error::Migrate(crate::migrate::MigrateError::LockTimeout {
                waited: Duration::from_secs(60),
                holder: Some(4242),
            }),
            INTERNAL,
        ),
        (
            // What the transaction helper returns after its last rerun of a
            // serialization failure: transient, like the failure itself.
            Error::TransactionRetriesExhausted {
                backend: Backend::Postgres,
                attempts: 3,
                last: Box::new(connect(FailureKind::Reset)),
            },
            UNAVAILABLE,
        ),
        (
            // Exhausted on a failure that is not worth retrying (the
            // helper never reruns one; a caller could build it): not 503.
            Error::TransactionRetriesExhausted {
                backend: Backend::Postgres,
                attempts: 1,
                last: Box::new(Error::postgres("query", postgres_error())),
            },
            INTERNAL,
        ),
        (
            Error::CommitOutcomeUnknown {
                backend: Backend::Postgres,
                attempt: 1,
                reason: LEAKY.into(),
            },
            INTERNAL,
        ),
        (Error::abort(LEAKY), INTERNAL),
        (Error::SessionRequired { statement: "BEGIN" }, INTERNAL),
        (
            Error::NoReplica {
                reason: LEAKY.into(),
            },
            UNAVAILABLE,
        ),
        (
            Error::Privilege {
                action: LEAKY.into(),
                reason: LEAKY.into(),
            },
            INTERNAL,
        ),
        (
            Error::TransactionRolledBack {
                backend: Backend::Postgres,
                sqlstate: Some("23505".into()),
                message: Some(LEAKY.into()),
            },
            INTERNAL,
        ),
        (
            Error::InvalidChannel {
                channel: LEAKY.into(),
                problem: "longer than 63 bytes",
            },
            INTERNAL,
        ),
    ]
}

async fn body_text(error: Error) -> (StatusCode, Option<String>, String) {
    answer(error.into_response()).await
}

async fn answer(response: axum::response::Response) -> (StatusCode, Option<String>, String) {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = to_bytes(response.into_body(), 64 * 1024).await.unwrap();
    (
        status,
        retry_after,
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

#[tokio::test]
async fn every_variant_has_its_status_retry_after_and_a_one_line_public_body() {
    let errors = every_error();
    let mut seen = [false; VARIANTS];
    for (error, expected) in errors {
        seen[variant(&error)] = true;
        let kind = super::kind(&error);
        let transient = error.is_transient();
        let debug = format!("{error:?}");
        let (status, retry_after, text) = body_text(error).await;

        assert_eq!(status, expected, "{debug}: {text}");
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(retry_after.as_deref(), Some("1"), "{debug}");
        } else {
            assert_eq!(retry_after, None, "{debug}");
            assert!(!transient, "a transient error answers 503: {debug}");
        }

        assert!(!text.contains('\n') && text.len() < 200, "{debug}: {text}");
        let body: serde_json::Value = serde_json::from_str(&text).unwrap();
        let fields = body.as_object().unwrap();
        assert_eq!(fields.len(), 2, "only error and kind: {text}");
        assert_eq!(body["kind"], kind, "{text}");
        let message = body["error"].as_str().unwrap();
        assert!(!message.is_empty() && !message.contains('\n'), "{text}");
        for fragment in FORBIDDEN {
            assert!(!text.contains(fragment), "{fragment:?} leaked: {text}");
        }
    }
    let missing: Vec<usize> = (0..VARIANTS).filter(|i| !seen[*i]).collect();
    assert!(missing.is_empty(), "variants not constructed: {missing:?}");
}

#[tokio::test]
async fn retry_exhaustion_of_a_retryable_failure_is_transient() {
    let exhausted = Error::TransactionRetriesExhausted {
        backend: Backend::Postgres,
        attempts: 5,
        last: Box::new(connect(FailureKind::Conflict)),
    };
    assert!(exhausted.is_transient());
    let (status, retry_after, text) = body_text(exhausted).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(text.contains("all 5 attempts"), "{text}");
}

#[tokio::test]
async fn the_detail_setting_adds_the_whole_message_and_nothing_secret() {
    // `respond` with the setting on, rather than the process-wide switch
    // the other tests here would see.
    let (_, _, text) = answer(super::respond(
        Error::Hook {
            hook: "on_connect",
            reason: "relation 16384 is locked\nby process 4242".into(),
        },
        true,
    ))
    .await;
    assert!(!text.contains('\n'), "{text}");
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        body["detail"],
        "on_connect hook failed: relation 16384 is locked\nby process 4242"
    );
}
