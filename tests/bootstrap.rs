//! Bootstrap against real servers: waiting, creating databases and
//! extensions, migrating; idempotent; typed privilege errors.

mod support;

use std::time::Duration;

use dbmanager::migrate::Bootstrap;
use dbmanager::retry::Jitter;
use dbmanager::{DatabaseManager, Error, FailureKind, RetryPolicy};
use support::{
    PgCluster, TestDb, admin_url, database_exists, example_migrations, history, pg_config,
    query_i64, sql, unique_name, with_database,
};

const HISTORY: &str = "dbmanager_schema_history";

fn quick_retry() -> RetryPolicy {
    RetryPolicy::exponential()
        .initial_delay(Duration::from_millis(100))
        .max_delay(Duration::from_millis(400))
        .jitter(Jitter::None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_creates_a_missing_database_with_extensions_then_is_a_noop() {
    let name = unique_name("boot");
    let _drop_afterwards = TestDb::adopt(&name);
    let url = with_database(&admin_url(), &name);
    let mut config = pg_config(&url);
    config.bootstrap.extensions = vec!["pgcrypto".into(), "uuid-ossp".into()];
    let migrations = example_migrations();
    assert!(!database_exists(&name).await);

    let first = Bootstrap::new(&config)
        .migrations(&migrations)
        .run()
        .await
        .unwrap();
    assert_eq!(first.databases.len(), 1);
    let done = &first.databases[0];
    assert_eq!(done.database, name);
    assert!(done.created);
    assert_eq!(done.extensions_created, ["pgcrypto", "uuid-ossp"]);
    assert_eq!(done.migrations.as_ref().unwrap().versions(), [1, 2, 3]);
    assert!(!first.is_noop());
    assert!(database_exists(&name).await);
    assert_eq!(
        query_i64(
            &url,
            "SELECT count(*) FROM pg_extension WHERE extname IN ('pgcrypto', 'uuid-ossp')"
        )
        .await,
        2
    );
    assert_eq!(history(&url, HISTORY).await, [1, 2, 3]);

    // Again, through a manager built lazily: nothing left to do.
    let manager = DatabaseManager::builder()
        .config(config.clone())
        .build_lazy()
        .unwrap();
    let second = manager.bootstrap(&migrations).await.unwrap();
    assert!(second.is_noop(), "{second:?}");
    let again = &second.databases[0];
    assert!(!again.created);
    assert!(again.extensions_created.is_empty());
    assert!(again.migrations.as_ref().unwrap().is_empty());
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_also_creates_and_migrates_the_test_database() {
    let name = unique_name("bootapp");
    let test_name = format!("test_{name}");
    let _drop_main = TestDb::adopt(&name);
    let _drop_test = TestDb::adopt(&test_name);
    let mut config = pg_config(&with_database(&admin_url(), &name));
    config.bootstrap.create_test_database = true;
    config.bootstrap.extensions = vec!["citext".into()];
    let migrations = example_migrations();

    let first = Bootstrap::new(&config)
        .migrations(&migrations)
        .run()
        .await
        .unwrap();
    let names: Vec<&str> = first
        .databases
        .iter()
        .map(|d| d.database.as_str())
        .collect();
    assert_eq!(names, [name.as_str(), test_name.as_str()]);
    assert!(first.databases.iter().all(|d| d.created));
    assert!(
        first
            .databases
            .iter()
            .all(|d| d.extensions_created == ["citext"])
    );
    let test_url = with_database(&admin_url(), &test_name);
    assert_eq!(history(&test_url, HISTORY).await, [1, 2, 3]);

    let second = Bootstrap::new(&config)
        .migrations(&migrations)
        .run()
        .await
        .unwrap();
    assert!(second.is_noop(), "{second:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_without_migrations_leaves_an_existing_database_alone() {
    let db = TestDb::create("bootexisting").await;
    let report = Bootstrap::new(&pg_config(&db.url)).run().await.unwrap();
    assert!(report.is_noop());
    assert!(!report.databases[0].created);
    assert!(report.databases[0].migrations.is_none());
    assert_eq!(history(&db.url, HISTORY).await, Vec::<i64>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_createdb_gets_a_privilege_error_without_its_password() {
    let admin = admin_url();
    let role = unique_name("boot_role");
    let password = "role-secret-pw";
    sql(
        &admin,
        &format!("CREATE ROLE {role} LOGIN NOCREATEDB PASSWORD '{password}'"),
    )
    .await;
    let host = admin
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap();
    let name = unique_name("boot_denied");
    let _drop_afterwards = TestDb::adopt(&name);
    let config = pg_config(&format!("postgres://{role}:{password}@{host}/{name}"));

    let error = Bootstrap::new(&config).run().await.unwrap_err();
    match &error {
        Error::Privilege { action, reason } => {
            assert_eq!(action, &format!("create database \"{name}\""));
            assert!(reason.contains("42501"), "{reason}");
        }
        other => panic!("expected a privilege error, got {other:?}"),
    }
    assert!(!error.to_string().contains(password), "{error}");
    assert!(!database_exists(&name).await);
    sql(&admin, &format!("DROP ROLE {role}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_waits_for_a_server_that_starts_later() {
    let logs = support::logs();
    let cluster = PgCluster::init("boot-wait-pw");
    let mut config = pg_config(&cluster.url("app"));
    config.retry = quick_retry();
    config.bootstrap.wait_timeout = Duration::from_secs(60);
    let migrations = example_migrations();
    let bootstrap =
        tokio::spawn(async move { Bootstrap::new(&config).migrations(&migrations).run().await });
    // Let it find nothing listening a few times before the server starts.
    tokio::time::sleep(Duration::from_millis(600)).await;
    cluster.start();
    let report = bootstrap.await.unwrap().expect("bootstrap after start");
    assert!(report.databases[0].created);
    assert_eq!(history(&cluster.url("app"), HISTORY).await, [1, 2, 3]);
    assert!(
        logs.contents().contains("retrying"),
        "connect attempts were retried while the server was down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_gives_up_after_its_wait_timeout_with_the_attempts_counted() {
    let port = support::free_port();
    let mut config = pg_config(&format!("postgres://app:pw@127.0.0.1:{port}/app"));
    config.retry = quick_retry();
    config.bootstrap.wait_timeout = Duration::from_millis(800);
    let error = Bootstrap::new(&config).run().await.unwrap_err();
    let (kind, attempts) = support::connect_failure(&error);
    assert_eq!(kind, FailureKind::Refused);
    assert!(attempts > 1, "retried until the wait timeout: {attempts}");
}
