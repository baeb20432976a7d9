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

/// Log lines written while the closure runs, through a fmt subscriber.
fn logged<T>(run: impl FnOnce() -> T) -> (T, String) {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let value = tracing::subscriber::with_default(subscriber, run);
    let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    (value, text)
}

/// A real deadlock: its DETAIL names both backends' PIDs and the table's
/// OID over several lines. The client sees a 503 with one public line; the
/// log has the whole error on one line, newlines escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlock_answers_503_without_pids_and_logs_its_detail_on_one_line() {
    let db = TestDb::create("http_errors_deadlock").await;
    let manager = support::build(pg_config(&db.url)).await;
    let pool = manager.postgres().unwrap();
    let setup = pool.get().await.unwrap();
    setup
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 0), (2, 0)",
        )
        .await
        .unwrap();
    let oid: u32 = setup
        .query_one("SELECT 't'::regclass::oid", &[])
        .await
        .unwrap()
        .get(0);
    let one = pool.get().await.unwrap();
    let two = pool.get().await.unwrap();
    let pids: Vec<i32> = vec![
        one.query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0),
        two.query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0),
    ];
    one.batch_execute("BEGIN; UPDATE t SET v = 1 WHERE id = 1")
        .await
        .unwrap();
    two.batch_execute("BEGIN; UPDATE t SET v = 2 WHERE id = 2")
        .await
        .unwrap();
    // Each waits for the other's row: the server's deadlock check (after
    // its deadlock_timeout, 1 s by default) fails one of them with 40P01.
    let (a, b) = tokio::join!(
        one.execute("UPDATE t SET v = 1 WHERE id = 2", &[]),
        two.execute("UPDATE t SET v = 2 WHERE id = 1", &[]),
    );
    let deadlock: Error = match (a, b) {
        (Err(e), Ok(_)) | (Ok(_), Err(e)) => e.into(),
        other => panic!("expected exactly one deadlock victim: {other:?}"),
    };
    assert_eq!(deadlock.sqlstate(), Some("40P01"), "{deadlock}");
    let full = deadlock.to_string();
    assert!(
        full.contains("detail: Process"),
        "the DETAIL is in the error: {full}"
    );

    let (response, log) = logged(|| deadlock.into_response());
    let answer = {
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = to_bytes(response.into_body(), 64 * 1024).await.unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        Answer {
            status,
            retry_after,
            body: serde_json::from_str(&text).unwrap(),
            text,
        }
    };
    assert_unavailable(&answer, "postgres");
    assert!(!answer.text.contains('\n'), "{}", answer.text);
    assert!(answer.text.contains("40P01"), "{}", answer.text);
    for secret in pids.iter().map(|p| p.to_string()).chain([
        oid.to_string(),
        "Process".into(),
        "detail".into(),
    ]) {
        assert!(
            !answer.text.contains(&secret),
            "{secret} leaked: {}",
            answer.text
        );
    }

    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 1, "one log entry, one line: {log}");
    assert!(lines[0].contains("WARN"), "{log}");
    assert!(
        lines[0].contains("detail: Process"),
        "the log has the DETAIL: {log}"
    );
    assert!(lines[0].contains("\\n"), "its newlines are escaped: {log}");
    assert!(lines[0].contains(&pids[0].to_string()), "{log}");
    one.batch_execute("ROLLBACK").await.unwrap();
    two.batch_execute("ROLLBACK").await.unwrap();
}

/// A unique violation's DETAIL carries the key's value: not in the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unique_violation_answers_500_without_the_key_value() {
    let db = TestDb::create("http_errors_unique").await;
    let manager = support::build(pg_config(&db.url)).await;
    let client = manager.postgres().unwrap().get().await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE u (email text PRIMARY KEY); INSERT INTO u VALUES ('alice@example.org')",
        )
        .await
        .unwrap();
    let error: Error = client
        .execute("INSERT INTO u VALUES ('alice@example.org')", &[])
        .await
        .unwrap_err()
        .into();
    assert!(error.to_string().contains("alice@example.org"), "{error}");
    let answer = respond(error).await;
    assert_internal(&answer, "postgres");
    assert!(answer.text.contains("23505"), "{}", answer.text);
    assert!(!answer.text.contains("alice"), "{}", answer.text);
}
