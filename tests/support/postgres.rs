//! The shared PostgreSQL server: URLs, one-off SQL outside any pool under
//! test, a database of its own per test, and test configurations.

use std::time::Duration;

use super::unique_name;

/// The superuser URL of the shared PostgreSQL server.
pub fn admin_url() -> String {
    std::env::var("PG_ADMIN_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| {
            panic!(
                "no PostgreSQL server for the tests: run them with `scripts/test` (which starts one), \
                 or set PG_ADMIN_URL (or DATABASE_URL) to a superuser URL"
            )
        })
}

/// Replaces the database of a `postgres://` URL.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[authority_end..].find('/') {
        Some(i) => &base[..authority_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

/// Replaces the user and password of a `postgres://user:password@...` URL.
pub fn with_credentials(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let host = rest.split_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{user}:{password}@{host}")
}

/// A plain tokio-postgres connection outside any pool under test (a
/// notification sender, a look at one server); it closes when the client
/// is dropped.
pub async fn client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting a plain client: {e}"));
    tokio::spawn(connection);
    client
}

/// Runs SQL on a fresh connection (outside any pool under test).
pub async fn sql(url: &str, statements: &str) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting for test setup: {e}"));
    let task = tokio::spawn(connection);
    client
        .batch_execute(statements)
        .await
        .unwrap_or_else(|e| panic!("test setup SQL failed: {e:?}"));
    drop(client);
    let _ = task.await;
}

/// A query returning one i64 (count(*) etc.).
pub async fn query_i64(url: &str, query: &str) -> i64 {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(connection);
    let value: i64 = client.query_one(query, &[]).await.unwrap().get(0);
    drop(client);
    let _ = task.await;
    value
}

/// One text value from a query (NULL as the empty string).
pub async fn query_text(url: &str, query: &str) -> String {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(connection);
    let value: Option<String> = client.query_one(query, &[]).await.unwrap().get(0);
    drop(client);
    let _ = task.await;
    value.unwrap_or_default()
}

/// Sessions the server sees with this application name.
pub async fn sessions(admin: &str, application_name: &str) -> i64 {
    query_i64(
        admin,
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{application_name}'"
        ),
    )
    .await
}

/// Whether the sessions the shared server sees with this application name
/// come to `count` within `limit`: the server counts a session a moment
/// after a pool opens or closes it.
pub async fn sessions_reach(application_name: &str, count: i64, limit: Duration) -> bool {
    super::eventually(limit, async || {
        sessions(&admin_url(), application_name).await == count
    })
    .await
}

/// Waits (bounded by `limit`) until the shared server has `count` sessions
/// on `database`: a backend leaves `pg_stat_activity` a moment after its
/// client said goodbye, so a single read would race it.
pub async fn database_sessions_reach(database: &str, count: i64, limit: Duration) -> bool {
    let sessions = format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{database}'");
    super::eventually(limit, async || {
        query_i64(&admin_url(), &sessions).await == count
    })
    .await
}

/// Whether a database of that name exists on the shared server.
pub async fn database_exists(name: &str) -> bool {
    query_i64(
        &admin_url(),
        &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'"),
    )
    .await
        == 1
}

/// A database of its own on the shared server, dropped afterwards (also
/// when the test panics).
pub struct TestDb {
    pub name: String,
    pub url: String,
    admin: String,
}

impl TestDb {
    /// A new database on the shared server.
    pub async fn create(prefix: &str) -> TestDb {
        let admin = admin_url();
        let name = unique_name(prefix);
        sql(&admin, &format!("CREATE DATABASE \"{name}\"")).await;
        TestDb {
            url: with_database(&admin, &name),
            name,
            admin,
        }
    }

    /// Takes charge of an existing (or soon to exist) database on the
    /// shared server: dropped when the value is.
    pub fn adopt(name: &str) -> TestDb {
        let admin = admin_url();
        TestDb {
            url: with_database(&admin, name),
            name: name.to_string(),
            admin,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime: use a thread with its own.
        let _ = std::thread::spawn(move || {
            super::block_on_own_runtime(async {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&admin, tokio_postgres::NoTls).await
                {
                    let task = tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .await;
                    drop(client);
                    let _ = task.await;
                }
            });
        })
        .join();
    }
}

/// A configuration for PostgreSQL only, with a small pool and timeouts
/// suited to tests.
pub fn pg_config(url: &str) -> dbmanager::Config {
    let mut config = dbmanager::Config::default();
    config.postgres.url = Some(dbmanager::DatabaseUrl::new(url));
    config.postgres.application_name = unique_name("dbm");
    config.postgres.pool.max_size = 4;
    config.postgres.pool.min_idle = 1;
    config.postgres.pool.wait_timeout = Duration::from_secs(5);
    config.postgres.pool.connect_timeout = Duration::from_secs(2);
    config.retry = dbmanager::RetryPolicy::exponential()
        .initial_delay(Duration::from_millis(100))
        .max_delay(Duration::from_millis(500))
        .max_attempts(5);
    config.shutdown.grace_period = Duration::from_secs(5);
    config
}

/// A manager on `url` (PostgreSQL only), connected.
pub async fn manager(url: &str) -> dbmanager::DatabaseManager {
    dbmanager::DatabaseManager::builder()
        .config(pg_config(url))
        .build()
        .await
        .expect("build a manager")
}

/// Builds a manager from `config`, connected; panics with the error
/// otherwise. The set-up line of most tests.
pub async fn build(config: dbmanager::Config) -> dbmanager::DatabaseManager {
    dbmanager::DatabaseManager::builder()
        .config(config)
        .build()
        .await
        .unwrap_or_else(|e| panic!("building the manager failed: {e}"))
}
