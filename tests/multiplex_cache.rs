//! The multiplexed handle's statement cache: bounded per connection, the
//! least recently used statement closed on the server, and nothing left
//! behind by a caller that gave up during its prepare. Against a real
//! server, counting `pg_prepared_statements` on the connection itself.

mod support;

use std::time::Duration;

use dbmanager::{Config, DatabaseManager, Multiplexed};
use futures_util::StreamExt;
use support::{TestDb, admin_url, pg_config};

/// Distinct statement texts sent in the bound's test, as in issue 21.
const TEXTS: i32 = 20_000;

/// One multiplexed connection (so every statement and the count share a
/// backend) keeping at most `capacity` statements, never replaced while
/// the test runs.
fn one_connection(url: &str, capacity: usize) -> Config {
    let mut config = pg_config(url);
    config.postgres.multiplex.connections = 1;
    config.postgres.multiplex.statement_cache_capacity = capacity;
    config.postgres.multiplex.max_lifetime = None;
    config.postgres.multiplex.wait_timeout = Duration::from_secs(20);
    config
}

/// Prepared statements on the backend of the handle's only connection.
async fn prepared_on_backend(mux: &Multiplexed) -> i64 {
    mux.query_one("SELECT count(*) FROM pg_prepared_statements", &[])
        .await
        .expect("count the backend's prepared statements")
        .get(0)
}

/// A process's resident memory from `/proc/<pid>/status`, in kB:
/// (`VmRSS`, `RssAnon`). The servers of the tests run on this machine.
fn rss_kb(pid: &str) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_else(|e| {
        panic!("reading /proc/{pid}/status (the server must run on this machine): {e}")
    });
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("RssAnon:"))
}

/// What sending [`TEXTS`] distinct statements did to the backend and to
/// this process.
struct Figures {
    prepared: i64,
    cached: usize,
    backend_kb: (u64, u64),
    backend_growth_kb: (i64, i64),
    client_growth_kb: (i64, i64),
}

async fn distinct_statements(url: &str, capacity: usize) -> Figures {
    let manager: DatabaseManager = support::build(one_connection(url, capacity)).await;
    let mux = manager.postgres().unwrap().multiplexed().clone();
    let pid: i32 = mux
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let pid = pid.to_string();
    let (backend_before, client_before) = (rss_kb(&pid), rss_kb("self"));
    // Sixteen callers at a time, as a service's request handlers would.
    let mut calls = futures_util::stream::iter(0..TEXTS)
        .map(|n| {
            let mux = mux.clone();
            async move {
                let sql = format!("SELECT $1::int + {n}");
                let row = mux.query_one(&sql, &[&1i32]).await?;
                Ok::<_, dbmanager::Error>((n, row.get::<_, i32>(0)))
            }
        })
        .buffer_unordered(16);
    while let Some(answer) = calls.next().await {
        let (n, sum) = answer.expect("every statement runs");
        assert_eq!(sum, n + 1);
    }
    let prepared = prepared_on_backend(&mux).await;
    let same_backend: i32 = mux
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(same_backend.to_string(), pid, "one backend throughout");
    let (backend_after, client_after) = (rss_kb(&pid), rss_kb("self"));
    let cached = mux.status().statements;
    manager.shutdown().await.unwrap();
    let growth = |after: (u64, u64), before: (u64, u64)| {
        (
            after.0 as i64 - before.0 as i64,
            after.1 as i64 - before.1 as i64,
        )
    };
    Figures {
        prepared,
        cached,
        backend_kb: backend_after,
        backend_growth_kb: growth(backend_after, backend_before),
        client_growth_kb: growth(client_after, client_before),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_distinct_statements_keep_the_backend_at_the_cache_capacity() {
    let db = TestDb::create("mux_cache_bound").await;
    let default_capacity = Config::default()
        .postgres
        .multiplex
        .statement_cache_capacity;
    assert_eq!(default_capacity, 100);
    // The default first, then a capacity above the number of texts: what
    // the handle did before it had one (every text kept for the
    // connection's life). Printed for docs/benchmarks.md.
    for capacity in [default_capacity, 100_000] {
        let figures = distinct_statements(&db.url, capacity).await;
        eprintln!(
            "capacity {capacity}: {TEXTS} distinct texts -> {} prepared statements on the backend ({} cached); \
             backend VmRSS {} kB (RssAnon {} kB), grew {} kB (RssAnon {} kB); client VmRSS grew {} kB (RssAnon {} kB)",
            figures.prepared,
            figures.cached,
            figures.backend_kb.0,
            figures.backend_kb.1,
            figures.backend_growth_kb.0,
            figures.backend_growth_kb.1,
            figures.client_growth_kb.0,
            figures.client_growth_kb.1,
        );
        if capacity == default_capacity {
            assert!(
                figures.prepared <= capacity as i64,
                "{} prepared statements on the backend, capacity {capacity}",
                figures.prepared
            );
            assert_eq!(figures.cached, capacity);
        } else {
            // Without a bound every text stays prepared: the setting is
            // what keeps the backend small.
            assert!(figures.prepared > i64::from(TEXTS), "{}", figures.prepared);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_recently_used_statement_is_the_one_closed() {
    let db = TestDb::create("mux_cache_lru").await;
    let manager = support::build(one_connection(&db.url, 2)).await;
    let mux = manager.postgres().unwrap().multiplexed().clone();
    let kept = |mux: Multiplexed| async move {
        let rows = mux
            .query(
                "SELECT statement FROM pg_prepared_statements ORDER BY statement",
                &[],
            )
            .await
            .unwrap();
        rows.iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
    };
    mux.query_one("SELECT 1", &[]).await.unwrap();
    mux.query_one("SELECT 2", &[]).await.unwrap();
    // `SELECT 1` used again: `SELECT 2` is now the least recently used, and
    // the listing (a third text, the capacity being two) evicts it.
    mux.query_one("SELECT 1", &[]).await.unwrap();
    assert_eq!(
        kept(mux.clone()).await,
        [
            "SELECT 1",
            "SELECT statement FROM pg_prepared_statements ORDER BY statement"
        ]
    );
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_abandoned_during_its_prepare_leaves_no_statement_behind() {
    let db = TestDb::create("mux_cache_abandon").await;
    let manager = support::build(one_connection(&db.url, 100)).await;
    let mux = manager.postgres().unwrap().multiplexed().clone();
    // A slow statement at the head of the only pipeline...
    let slow = {
        let mux = mux.clone();
        tokio::spawn(async move { mux.execute("SELECT pg_sleep(3)", &[]).await })
    };
    let active = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND state = 'active' AND query = 'SELECT pg_sleep(3)'",
        db.name
    );
    assert!(
        support::eventually(Duration::from_secs(10), async || {
            support::query_i64(&admin_url(), &active).await == 1
        })
        .await,
        "the slow statement runs"
    );
    // ...so a new text's prepare waits behind it, and its caller gives up
    // while the prepare is in the pipeline.
    let abandoned = tokio::time::timeout(
        Duration::from_millis(100),
        mux.query_one("SELECT 2 AS abandoned", &[]),
    )
    .await;
    assert!(abandoned.is_err(), "the caller gave up during its prepare");
    slow.await.unwrap().expect("the slow statement finishes");
    // The same text again, then every statement on the backend: each text
    // once, and nothing the cache does not know of (so nothing that would
    // never be closed).
    let again: i32 = mux
        .query_one("SELECT 2 AS abandoned", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(again, 2);
    let listing = "SELECT statement FROM pg_prepared_statements ORDER BY statement";
    let on_backend: Vec<String> = mux
        .query(listing, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        on_backend,
        ["SELECT 2 AS abandoned", "SELECT pg_sleep(3)", listing],
        "each text prepared once"
    );
    assert_eq!(mux.status().statements, on_backend.len());
    manager.shutdown().await.unwrap();
}

#[test]
fn the_capacity_is_read_from_the_environment_and_zero_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dbmanager.toml");
    std::fs::write(&file, "").unwrap();
    let load = |value: &str| {
        Config::loader()
            .file(&file)
            .env_vars([(
                "DBMANAGER_POSTGRES__MULTIPLEX__STATEMENT_CACHE_CAPACITY".to_string(),
                value.to_string(),
            )])
            .no_dotenv()
            .load()
    };
    let config = load("250").expect("a valid capacity");
    assert_eq!(config.postgres.multiplex.statement_cache_capacity, 250);
    match load("0") {
        Err(dbmanager::Error::Config { key, problem }) => {
            assert_eq!(
                key, "postgres.multiplex.statement_cache_capacity",
                "{problem}"
            );
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
}
