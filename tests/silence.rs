//! The bound for silence on a live connection (`postgres.silence_timeout`):
//! a server that keeps TCP alive and says nothing (a backend or a whole
//! server stopped with SIGSTOP, a proxy that stopped forwarding) ends the
//! query waiting on it with a transient error, and the pool replaces the
//! connection; a statement that runs longer than the bound on a healthy
//! server completes.
//!
//! The suite uses a bound of 2 s. With `DBMANAGER_SILENCE_DEFAULTS=1` every
//! case runs with the default settings instead (`silence_timeout` 30 s,
//! `connect_timeout` 5 s) and the long statement sleeps 2 minutes: the
//! figures quoted in docs/reliability.md.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use dbmanager::{Config, DatabaseManager, Error, PooledConnection, TxFutureExt};
use support::{AtCommit, FaultProxy, PgCluster, TestDb, pg_config};

const PASSWORD: &str = "silence-pw";

/// Whether the cases run with the default settings (by hand, for the
/// figures), not the suite's short bound.
fn with_defaults() -> bool {
    std::env::var_os("DBMANAGER_SILENCE_DEFAULTS").is_some_and(|v| v == "1")
}

/// A configuration on `url` with the bound under test.
fn config(url: &str) -> Config {
    let mut config = pg_config(url);
    config.postgres.pool.min_idle = 1;
    if with_defaults() {
        let defaults = Config::default();
        config.postgres.silence_timeout = defaults.postgres.silence_timeout;
        config.postgres.pool.connect_timeout = defaults.postgres.pool.connect_timeout;
    } else {
        config.postgres.silence_timeout = Duration::from_secs(2);
    }
    config
}

/// How long a silent query may take to fail: the bound, the check's
/// connect and query bounds, and a generous margin for a loaded machine.
/// With the defaults: the 60 s.
fn failure_limit(config: &Config) -> Duration {
    if with_defaults() {
        return Duration::from_secs(60);
    }
    config.postgres.silence_timeout
        + config.postgres.pool.connect_timeout * 3
        + Duration::from_secs(10)
}

/// Runs `sql` on `client` (which the server will not answer) and returns
/// the error and how long it took, failing past `limit`.
async fn silent_query(client: &PooledConnection, sql: &str, limit: Duration) -> (Error, Duration) {
    let began = Instant::now();
    let result = tokio::time::timeout(limit, client.query(sql, &[]))
        .await
        .unwrap_or_else(|_| panic!("`{sql}` on a silent server still waits after {limit:?}"));
    let took = began.elapsed();
    let error = Error::from(result.expect_err("a silent server gives no rows"));
    (error, took)
}

fn assert_silence_error(error: &Error) {
    assert!(error.is_transient(), "not transient: {error}");
    let text = error.to_string();
    assert!(
        text.contains("postgres.silence_timeout"),
        "the error names the setting: {text}"
    );
    assert!(!text.contains(PASSWORD), "no secret in the error: {text}");
}

async fn backend_pid(client: &PooledConnection) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// A checkout after the silent connection was closed: another connection
/// (another backend), which answers.
async fn next_checkout_works(db: &DatabaseManager, old_pid: i32) {
    let client = db
        .postgres()
        .unwrap()
        .get()
        .await
        .expect("a new connection");
    let pid = backend_pid(&client).await;
    assert_ne!(pid, old_pid, "the silent connection was replaced");
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

/// Processes stopped with SIGSTOP, continued (in reverse order) when
/// dropped, also when the test fails.
struct Stopped(Vec<u32>);

impl Stopped {
    fn new(pids: Vec<u32>) -> Stopped {
        let mut stopped = Stopped(Vec::new());
        for pid in pids {
            signal("-STOP", pid);
            stopped.0.push(pid);
        }
        stopped
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        for pid in self.0.iter().rev() {
            signal("-CONT", *pid);
        }
    }
}

fn signal(which: &str, pid: u32) {
    let status = Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {which} {pid}");
}

/// The children of process `pid` (a postmaster's backends and workers).
fn children(pid: u32) -> Vec<u32> {
    let output = Command::new("ps")
        .args(["-o", "pid=", "--ppid", &pid.to_string()])
        .output()
        .expect("ps");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_to_a_stopped_backend_fails_transiently_and_the_connection_is_replaced() {
    let logs = support::logs();
    #[cfg(feature = "metrics")]
    let snapshotter = support::install_recorder();
    // A cluster of its own: the test stops one of its processes.
    let cluster = PgCluster::start_new(PASSWORD);
    let config = config(&cluster.url("postgres"));
    let limit = failure_limit(&config);
    let db = support::build(config).await;
    let client = db.postgres().unwrap().get().await.unwrap();
    let pid = backend_pid(&client).await;

    let (error, took) = {
        let _stopped = Stopped::new(vec![u32::try_from(pid).unwrap()]);
        silent_query(&client, "SELECT 1", limit).await
    };
    assert_silence_error(&error);
    assert!(
        error.to_string().contains(&format!("pid {pid}")),
        "the error names the backend: {error}"
    );
    eprintln!("stopped backend: the query failed after {took:?}");
    let warning = logs
        .contents()
        .lines()
        .find(|line| line.contains("WARN") && line.contains("postgres.silence_timeout"))
        .map(str::to_string)
        .expect("a warning for the closed connection");
    assert!(
        warning.contains(&format!("backend_pid={pid}")),
        "the warning names the backend: {warning}"
    );
    #[cfg(feature = "metrics")]
    assert_eq!(
        support::Reading::take(&snapshotter).counter(
            dbmanager::metrics::names::SILENT_CLOSED,
            &[("database", "postgres"), ("pool", "primary")]
        ),
        1
    );
    drop(client);
    next_checkout_works(&db, pid).await;
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_to_a_stopped_backend_over_tls_fails_transiently() {
    // Over TLS the tap reads the plaintext above the TLS stream: the error
    // goes in there.
    let cluster = PgCluster::init(PASSWORD);
    cluster.enable_tls();
    cluster.start();
    let config = config(&format!("{}?sslmode=require", cluster.url("postgres")));
    let limit = failure_limit(&config);
    let db = support::build(config).await;
    let client = db.postgres().unwrap().get().await.unwrap();
    let pid = backend_pid(&client).await;
    let encrypted: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(encrypted, "the connection uses TLS");

    let (error, took) = {
        let _stopped = Stopped::new(vec![u32::try_from(pid).unwrap()]);
        silent_query(&client, "SELECT 1", limit).await
    };
    assert_silence_error(&error);
    eprintln!("stopped backend over TLS: the query failed after {took:?}");
    drop(client);
    next_checkout_works(&db, pid).await;
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_to_a_stopped_server_fails_transiently_but_a_stopped_postmaster_alone_cuts_nothing()
{
    let cluster = PgCluster::start_new(PASSWORD);
    let config = config(&cluster.url("postgres"));
    let limit = failure_limit(&config);
    let db = support::build(config).await;
    let client = db.postgres().unwrap().get().await.unwrap();
    let pid = backend_pid(&client).await;
    let postmaster = cluster.postmaster_pid();

    // Only the postmaster stopped: new connections cannot open, but the
    // open one's backend answers, and nothing closes it.
    {
        let _stopped = Stopped::new(vec![postmaster]);
        let slept = client.query("SELECT pg_sleep(0.5)", &[]).await;
        assert!(slept.is_ok(), "{slept:?}");
        assert_eq!(backend_pid(&client).await, pid);
    }

    // The postmaster first (no new children), then every process of it.
    let (error, took) = {
        let _postmaster = Stopped::new(vec![postmaster]);
        let others = children(postmaster);
        assert!(
            others.contains(&u32::try_from(pid).unwrap()),
            "the connection's backend is a child of the postmaster"
        );
        let _children = Stopped::new(others);
        silent_query(&client, "SELECT 1", limit).await
    };
    assert_silence_error(&error);
    assert!(
        error.to_string().contains("could not"),
        "the check could not reach the server: {error}"
    );
    eprintln!("stopped server: the query failed after {took:?}");
    drop(client);
    next_checkout_works(&db, pid).await;
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_through_a_proxy_that_stopped_forwarding_fails_transiently() {
    let test_db = TestDb::create("silence_proxy").await;
    let (proxy, via) = FaultProxy::in_front_of(&test_db.url).await;
    let config = config(&via);
    let limit = failure_limit(&config);
    let db = support::build(config).await;
    let client = db.postgres().unwrap().get().await.unwrap();
    let pid = backend_pid(&client).await;

    proxy.freeze();
    let (error, took) = silent_query(&client, "SELECT 1", limit).await;
    assert_silence_error(&error);
    eprintln!("frozen proxy: the query failed after {took:?}");
    drop(client);
    proxy.thaw();
    next_checkout_works(&db, pid).await;
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_longer_than_the_bound_completes_on_a_healthy_server() {
    let logs = support::logs();
    let test_db = TestDb::create("silence_long").await;
    let config = config(&test_db.url);
    let bound = config.postgres.silence_timeout;
    // Four bounds: the backend is checked (and found working) more than
    // once. With the defaults: the two minutes.
    let sleep = if with_defaults() {
        Duration::from_secs(120)
    } else {
        bound * 4
    };
    let db = support::build(config).await;
    let client = db.postgres().unwrap().get().await.unwrap();
    let pid = backend_pid(&client).await;
    let began = Instant::now();
    let sql = format!("SELECT pg_sleep({})", sleep.as_secs_f64());
    let result = tokio::time::timeout(sleep * 2 + Duration::from_secs(30), client.query(&sql, &[]))
        .await
        .expect("the statement ends");
    assert!(result.is_ok(), "the long statement was cut: {result:?}");
    eprintln!(
        "long statement: {sleep:?} sleep completed in {:?}",
        began.elapsed()
    );
    assert_eq!(backend_pid(&client).await, pid, "the same connection");
    let kept = format!("backend_pid={pid}");
    assert!(
        logs.contents()
            .lines()
            .any(|line| line.contains("its backend is running a statement") && line.contains(&kept)),
        "the silent statement was checked and found running"
    );
    drop(client);
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multiplexed_statement_through_a_proxy_that_stopped_forwarding_fails_transiently() {
    let test_db = TestDb::create("silence_mux").await;
    let (proxy, via) = FaultProxy::in_front_of(&test_db.url).await;
    let mut config = config(&via);
    config.postgres.multiplex.connections = 1;
    let limit = failure_limit(&config);
    let db = support::build(config).await;
    let mux = db.postgres().unwrap().multiplexed();
    let rows = mux.query("SELECT pg_backend_pid()", &[]).await.unwrap();
    let pid: i32 = rows[0].get(0);

    proxy.freeze();
    let began = Instant::now();
    let result = tokio::time::timeout(limit, mux.query("SELECT 1", &[]))
        .await
        .unwrap_or_else(|_| panic!("a multiplexed statement still waits after {limit:?}"));
    let error = result.expect_err("a silent server gives no rows");
    assert_silence_error(&error);
    eprintln!(
        "frozen proxy, multiplexed: the statement failed after {:?}",
        began.elapsed()
    );

    proxy.thaw();
    let rows = mux
        .query("SELECT pg_backend_pid()", &[])
        .await
        .expect("a new multiplexed connection");
    assert_ne!(
        rows[0].get::<_, i32>(0),
        pid,
        "the silent connection was replaced"
    );
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_whose_commit_answer_never_comes_is_found_committed_and_returns_ok_once() {
    let test_db = TestDb::create("silence_commit").await;
    support::sql(&test_db.url, "CREATE TABLE t (id int PRIMARY KEY)").await;
    let (proxy, via) = FaultProxy::in_front_of(&test_db.url).await;
    let config = config(&via);
    let limit = failure_limit(&config) * 2;
    let db = support::build(config).await;

    // The server commits; the proxy keeps the connection open and never
    // forwards the answer. The pool's error for the silent connection is
    // not an answer: the helper asks the server what became of the
    // transaction instead of reporting it rolled back.
    proxy.at_commit(AtCommit::DeliverThenSilence);
    let mut attempts = 0u32;
    let result = tokio::time::timeout(
        limit,
        db.postgres().unwrap().transaction(|tx| {
            attempts += 1;
            async move {
                tx.execute("INSERT INTO t VALUES (1)", &[]).await?;
                Ok(1)
            }
            .scoped()
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("the transaction still waits after {limit:?}"));
    assert!(proxy.commit_fault_fired(), "the COMMIT passed the proxy");
    assert_eq!(result.unwrap(), 1, "the server committed: Ok");
    assert_eq!(attempts, 1, "not run again");
    assert_eq!(
        support::query_i64(&test_db.url, "SELECT count(*) FROM t").await,
        1
    );
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_reads_its_rows_slowly_is_not_taken_for_a_silent_server() {
    use futures_util::StreamExt;
    let test_db = TestDb::create("silence_slow_reader").await;
    let config = config(&test_db.url);
    let bound = config.postgres.silence_timeout;
    let db = support::build(config).await;
    let client = db.postgres().unwrap().get().await.unwrap();

    // About 100 kB: more than tokio-postgres buffers ahead of its caller,
    // less than the sockets hold, so the server finishes (goes idle) while
    // the rest waits unread on this side.
    let rows = client
        .query_raw(
            "SELECT repeat('x', 100) FROM generate_series(1, 1000)",
            std::iter::empty::<i32>(),
        )
        .await
        .unwrap();
    let mut rows = std::pin::pin!(rows);
    assert!(rows.next().await.unwrap().is_ok());
    // The caller is busy elsewhere for longer than the bound (the fault
    // under test: a slow consumer, not a wait for a state).
    tokio::time::sleep(bound * 2).await;
    let mut count = 1;
    while let Some(row) = rows.next().await {
        row.expect("the rest of the rows, on the same connection");
        count += 1;
    }
    assert_eq!(count, 1000);
    drop(client);
    db.shutdown().await.unwrap();
}
