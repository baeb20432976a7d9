//! Connecting: queries through the pool, the on_connect hook, fail-fast on
//! permanent errors and retry on transient ones.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dbmanager::retry::Jitter;
use dbmanager::{DatabaseManager, Error, FailureKind, RetryPolicy};
use support::{
    PgCluster, TestDb, build_error, connect_failure, permanent_build_error, pg_config,
    retry_for_a_minute, slow_retry, sql, timed_build_error,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_run_through_the_pool_and_on_connect_runs_once_per_connection() {
    let db = TestDb::create("connect").await;
    let mut config = pg_config(&db.url);
    config.postgres.pool.min_idle = 2;
    let connects = Arc::new(AtomicUsize::new(0));
    let counter = connects.clone();
    let manager = DatabaseManager::builder()
        .config(config)
        .on_connect(move |client| {
            let counter = counter.clone();
            Box::pin(async move {
                counter.fetch_add(1, Ordering::SeqCst);
                client.batch_execute("SET search_path TO public").await?;
                Ok(())
            })
        })
        .build()
        .await
        .expect("build");

    // Warm-up opened min_idle connections, each through on_connect.
    assert_eq!(manager.postgres().unwrap().status().open, 2);
    assert_eq!(connects.load(Ordering::SeqCst), 2);

    for _ in 0..20 {
        let client = manager.postgres().unwrap().get().await.unwrap();
        let statement = client.prepare_cached("SELECT $1::int + 1").await.unwrap();
        let two: i32 = client.query_one(&statement, &[&1i32]).await.unwrap().get(0);
        assert_eq!(two, 2);
    }
    // Two at once needs no new connection; three at once opens one more.
    let pool = manager.postgres().unwrap();
    let held: Vec<_> = futures_util::future::join_all((0..3).map(|_| pool.get())).await;
    assert!(held.iter().all(Result::is_ok));
    drop(held);
    assert_eq!(
        connects.load(Ordering::SeqCst),
        3,
        "one on_connect per new connection"
    );
    assert_eq!(pool.stats().created, 3);
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_fails_before_the_first_retry_delay() {
    let db = TestDb::create("wrongpw").await;
    let role = support::unique_name("role");
    sql(
        &db.url,
        &format!("CREATE ROLE {role} LOGIN PASSWORD 'right-password'"),
    )
    .await;
    let url = support::with_credentials(&db.url, &role, "wrong-password");
    let err = permanent_build_error("wrong password", pg_config(&url)).await;
    match &err {
        Error::Connect {
            kind,
            attempts,
            code,
            reason,
            ..
        } => {
            assert_eq!(*kind, FailureKind::Authentication);
            assert_eq!(*attempts, 1);
            assert_eq!(code.as_deref(), Some("28P01"));
            assert!(
                reason.contains("password authentication failed"),
                "{reason}"
            );
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
    assert!(!err.is_transient());
    assert!(!err.to_string().contains("wrong-password"), "{err}");
    sql(&db.url, &format!("DROP ROLE {role}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_database_fails_before_the_first_retry_delay() {
    let missing = support::with_database(&support::admin_url(), &support::unique_name("missing"));
    let err = permanent_build_error("unknown database", pg_config(&missing)).await;
    assert_eq!(
        connect_failure(&err),
        (FailureKind::UnknownDatabase, 1),
        "{err:?}"
    );
    assert_eq!(err.sqlstate(), Some("3D000"));
    assert!(err.to_string().contains("does not exist"), "{err}");
}

/// A permanent failure of one database ends `build()` at once, even while
/// the other is still retrying: here MongoDB listens nowhere and each of its
/// attempts would wait out a long server selection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_of_one_database_does_not_wait_for_the_other() {
    let missing = support::with_database(&support::admin_url(), &support::unique_name("missing"));
    let closed_port = support::free_port();
    let selection = Duration::from_secs(20);
    let mut config = pg_config(&missing);
    config.retry = slow_retry(Duration::from_secs(2));
    config.mongodb.url = Some(dbmanager::DatabaseUrl::new(format!(
        "mongodb://127.0.0.1:{closed_port}/?serverSelectionTimeoutMS=20000"
    )));
    config.mongodb.server_selection_timeout = selection;

    let (err, took) = timed_build_error(config).await;

    assert_eq!(
        connect_failure(&err).0,
        FailureKind::UnknownDatabase,
        "{err:?}"
    );
    assert!(
        took < selection,
        "build() took {took:?}: it waited for MongoDB's {selection:?} server selection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_retries_until_a_late_server_starts() {
    let cluster = Arc::new(PgCluster::init("late-server-pw"));
    let mut config = pg_config(&cluster.url("postgres"));
    config.retry = retry_for_a_minute();
    let logs = support::logs();

    let starter = cluster.clone();
    let start = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        tokio::task::spawn_blocking(move || starter.start())
            .await
            .unwrap();
    });
    let manager = support::build(config).await;
    start.await.unwrap();

    let client = manager.postgres().unwrap().get().await.unwrap();
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    drop(client);
    // Each retry is logged inside the connect span, which names the target.
    let target = format!("127.0.0.1:{}", cluster.port);
    let retries = logs
        .contents()
        .lines()
        .filter(|l| l.contains("retrying") && l.contains(&target))
        .count();
    assert!(
        retries >= 1,
        "more than one attempt was made:\n{}",
        logs.contents()
    );
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_is_retried_and_reports_every_attempt() {
    // Nothing listens on this port: every attempt is refused.
    let cluster = PgCluster::init("never-started");
    let mut config = pg_config(&cluster.url("postgres"));
    config.retry = RetryPolicy::exponential()
        .initial_delay(Duration::from_millis(50))
        .max_delay(Duration::from_millis(50))
        .max_attempts(3)
        .jitter(Jitter::None);
    let (kind, attempts) = connect_failure(&build_error(config).await);
    assert_eq!(kind, FailureKind::Refused);
    assert_eq!(attempts, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_lazy_opens_nothing_until_first_use() {
    let db = TestDb::create("lazy").await;
    let config = pg_config(&db.url);
    let app = config.postgres.application_name.clone();
    let manager = DatabaseManager::builder()
        .config(config)
        .build_lazy()
        .unwrap();
    assert_eq!(manager.postgres().unwrap().status().open, 0);
    assert_eq!(support::sessions(&support::admin_url(), &app).await, 0);
    let client = manager.postgres().unwrap().get().await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    assert_eq!(manager.postgres().unwrap().status().open, 1);
    drop(client);
    manager.shutdown().await.unwrap();
}

/// A Unix-socket host has no TLS server name. With TLS compiled in (the
/// default feature) and the default `sslmode=prefer`, the connection must
/// still open: the server declines TLS on a socket, so no name is needed.
#[tokio::test]
async fn a_unix_socket_host_connects_with_tls_compiled_in() {
    use dbmanager::tokio_postgres;

    let db = TestDb::create("socket").await;
    let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let directories: String = client
        .query_one("SHOW unix_socket_directories", &[])
        .await
        .unwrap()
        .get(0);
    let directory = directories.split(',').next().unwrap().trim().to_string();
    let parsed: tokio_postgres::Config = db.url.parse().unwrap();
    let quote = |s: &str| format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"));
    let socket_url = format!(
        "host={} port={} user={} password={} dbname={}",
        quote(&directory),
        parsed.get_ports()[0],
        quote(parsed.get_user().unwrap()),
        quote(std::str::from_utf8(parsed.get_password().unwrap()).unwrap()),
        quote(parsed.get_dbname().unwrap()),
    );

    let manager = support::build(pg_config(&socket_url)).await;
    let conn = manager.postgres().unwrap().get().await.unwrap();
    let over_socket: bool = conn
        .query_one("SELECT inet_client_addr() IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(over_socket, "the connection did not use the Unix socket");
    drop(conn);
    manager.shutdown().await.unwrap();
}
