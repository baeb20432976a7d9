//! `dbmanager::Error` as an axum response: 503 with `Retry-After` for a
//! full pool, a draining manager and transient failures, 500 otherwise,
//! and a JSON body that names the kind and never shows a password.

mod support;

use std::time::Duration;

use dbmanager::axum::body::to_bytes;
use dbmanager::axum::http::{StatusCode, header};
use dbmanager::axum::response::IntoResponse;
use dbmanager::{DatabaseManager, Error};
use support::{TestDb, pg_config};

struct Answer {
    status: StatusCode,
    retry_after: Option<String>,
    body: serde_json::Value,
    text: String,
}

async fn respond(error: Error) -> Answer {
    let response = error.into_response();
    let status = response.status();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(
        response.headers().get(header::CONTENT_TYPE).unwrap(),
        "application/json"
    );
    let bytes = to_bytes(response.into_body(), 64 * 1024).await.unwrap();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    Answer {
        status,
        retry_after,
        body,
        text,
    }
}

fn assert_unavailable(answer: &Answer, kind: &str) {
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.text
    );
    assert_eq!(answer.retry_after.as_deref(), Some("1"), "{}", answer.text);
    assert_eq!(answer.body["kind"], kind, "{}", answer.text);
    assert!(answer.body["error"].is_string(), "{}", answer.text);
}

fn assert_internal(answer: &Answer, kind: &str) {
    assert_eq!(
        answer.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        answer.text
    );
    assert_eq!(answer.retry_after, None, "{}", answer.text);
    assert_eq!(answer.body["kind"], kind, "{}", answer.text);
    assert!(answer.body["error"].is_string(), "{}", answer.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_timeout_and_shutting_down_are_503_with_retry_after() {
    let db = TestDb::create("http_errors").await;
    let mut config = pg_config(&db.url);
    config.postgres.pool.max_size = 1;
    config.postgres.pool.min_idle = 1;
    let manager = support::build(config).await;
    let pool = manager.postgres().unwrap();

    let held = pool.get().await.unwrap();
    let timeout = pool
        .get_timeout(Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(matches!(timeout, Error::PoolTimeout { .. }), "{timeout:?}");
    let answer = respond(timeout).await;
    assert_unavailable(&answer, "pool_timeout");
    assert!(
        answer.body["error"]
            .as_str()
            .unwrap()
            .contains("waiting for a PostgreSQL connection"),
        "{}",
        answer.text
    );
    drop(held);

    // A query error is the application's problem: 500.
    let client = pool.get().await.unwrap();
    let query: Error = client.query("SELEC 1", &[]).await.unwrap_err().into();
    drop(client);
    let answer = respond(query).await;
    assert_internal(&answer, "postgres");
    assert!(
        answer.text.contains("42601"),
        "the SQLSTATE is shown: {}",
        answer.text
    );

    manager.shutdown().await.unwrap();
    let draining = pool.get().await.map(|_| ()).unwrap_err();
    assert!(
        matches!(draining, Error::ShuttingDown { .. }),
        "{draining:?}"
    );
    assert_unavailable(&respond(draining).await, "shutting_down");
}

#[tokio::test]
async fn a_refused_connection_is_503_and_its_body_shows_no_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let password = "http-errors-refused-secret";
    let mut config = pg_config(&format!("postgres://app:{password}@127.0.0.1:{port}/app"));
    config.retry = config.retry.clone().max_attempts(1);
    let error = DatabaseManager::builder()
        .config(config)
        .build()
        .await
        .unwrap_err();
    assert!(error.is_transient(), "{error:?}");
    let answer = respond(error).await;
    assert_unavailable(&answer, "connect");
    assert!(!answer.text.contains(password), "{}", answer.text);
    assert!(answer.text.contains("refused"), "{}", answer.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_connect_failure_is_500_and_its_body_shows_no_password() {
    let password = "http-errors-wrong-secret";
    let url = support::with_credentials(&support::admin_url(), "postgres", password);
    let error = DatabaseManager::builder()
        .config(pg_config(&url))
        .build()
        .await
        .unwrap_err();
    assert!(!error.is_transient(), "{error:?}");
    let answer = respond(error).await;
    assert_internal(&answer, "connect");
    assert!(!answer.text.contains(password), "{}", answer.text);
    assert!(
        answer.text.contains("authentication"),
        "the kind of failure is named: {}",
        answer.text
    );
}

#[tokio::test]
async fn a_database_that_is_not_configured_is_500() {
    let manager = DatabaseManager::builder()
        .config(pg_config("postgres://app:secret@127.0.0.1:1/app"))
        .build_lazy()
        .unwrap();
    let error = manager.mongo().map(|_| ()).unwrap_err();
    assert_internal(&respond(error).await, "not_configured");
}
