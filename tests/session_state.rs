//! What a connection carries back to the pool never reaches the next
//! caller: a statement its caller stopped waiting for (a timeout around a
//! query, an aborted task) is cancelled on the server and the connection
//! drained before reuse; a transaction block left open or failed (a manual
//! `BEGIN`, an uncommitted `Transaction`) is rolled back first. Each under
//! every recycling method, with one connection so the next caller gets the
//! very same session.

mod support;

use std::time::Duration;

use dbmanager::config::RecyclingMethod;
use dbmanager::{Config, DatabaseManager};
use support::{TestDb, admin_url, build, eventually, pg_config, query_i64, sql};

const METHODS: [RecyclingMethod; 4] = [
    RecyclingMethod::Fast,
    RecyclingMethod::Auto,
    RecyclingMethod::Verified,
    RecyclingMethod::Clean,
];

/// A bound the tests put on the next caller: far below the abandoned
/// statement's 30 s, far above any scheduling delay.
const NEXT_CALLER: Duration = Duration::from_secs(10);

fn one_connection(url: &str, method: RecyclingMethod) -> Config {
    let mut config = pg_config(url);
    config.postgres.pool.max_size = 1;
    config.postgres.pool.min_idle = 1;
    config.postgres.pool.recycling = method;
    config
}

/// Whether, within 5 s, exactly `count` statements of this manager's
/// sessions matching `pattern` are running on the server.
async fn active_reaches(config: &Config, pattern: &str, count: i64) -> bool {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{}' \
         AND state = 'active' AND query LIKE '{pattern}'",
        config.postgres.application_name
    );
    eventually(Duration::from_secs(5), async || {
        query_i64(&admin_url(), &sql).await == count
    })
    .await
}

async fn serves_next_caller(manager: &DatabaseManager) -> i32 {
    let pool = manager.postgres().unwrap();
    tokio::time::timeout(NEXT_CALLER, async {
        let client = pool.get().await.expect("a connection");
        client
            .query_one("SELECT 7", &[])
            .await
            .expect("SELECT 7")
            .get::<_, i32>(0)
    })
    .await
    .expect("the next caller waited for the abandoned statement")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_statement_is_cancelled_and_never_delays_the_next_caller() {
    let db = TestDb::create("abandon").await;
    for method in METHODS {
        let config = one_connection(&db.url, method.clone());
        let manager = build(config.clone()).await;
        let pool = manager.postgres().unwrap();

        // The caller's own timeout fires mid-statement; the connection goes
        // back with the statement still running.
        let client = pool.get().await.unwrap();
        let gave_up = tokio::time::timeout(
            Duration::from_millis(300),
            client.simple_query("SELECT pg_sleep(30)"),
        )
        .await;
        assert!(gave_up.is_err(), "{method:?}: the sleep cannot finish");
        drop(client);

        assert_eq!(serves_next_caller(&manager).await, 7, "{method:?}");
        assert!(
            active_reaches(&config, "%pg_sleep%", 0).await,
            "{method:?}: the abandoned statement still runs on the server"
        );
        let stats = pool.stats();
        assert_eq!(stats.abandoned_cancelled, 1, "{method:?}: {stats:?}");
        // Drained and reused: the same single connection.
        assert_eq!(stats.created, 1, "{method:?}: {stats:?}");
        manager.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_aborted_mid_query_leaves_nothing_running() {
    let db = TestDb::create("abort").await;
    let config = one_connection(&db.url, RecyclingMethod::Auto);
    let manager = build(config.clone()).await;
    let pool = manager.postgres().unwrap().clone();
    let started = std::sync::Arc::new(tokio::sync::Notify::new());
    let task = tokio::spawn({
        let started = started.clone();
        async move {
            let client = pool.get().await.unwrap();
            let sleep = client.simple_query("SELECT pg_sleep(30)");
            tokio::pin!(sleep);
            // Poll once so the statement is sent, then say so.
            let _ = futures_poll_once(&mut sleep).await;
            started.notify_one();
            let _ = sleep.await;
        }
    });
    started.notified().await;
    assert!(
        active_reaches(&config, "%pg_sleep%", 1).await,
        "the statement reached the server"
    );
    task.abort();
    let _ = task.await;
    assert_eq!(serves_next_caller(&manager).await, 7);
    assert!(
        active_reaches(&config, "%pg_sleep%", 0).await,
        "the aborted task's statement still runs"
    );
    manager.shutdown().await.unwrap();
}

/// Polls a future once (it sends its request), without waiting for it.
async fn futures_poll_once<F: std::future::Future + Unpin>(future: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| match std::pin::Pin::new(&mut *future).poll(cx) {
        std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_returned_inside_a_transaction_is_rolled_back_first() {
    let db = TestDb::create("txstate").await;
    sql(&db.url, "CREATE TABLE t (v int)").await;
    let mut expected_rows = 0;
    for method in METHODS {
        let manager = build(one_connection(&db.url, method.clone())).await;
        let pool = manager.postgres().unwrap();

        // A manual BEGIN, never ended.
        let client = pool.get().await.unwrap();
        client
            .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
            .await
            .unwrap();
        drop(client);
        // Autocommit again: this row is visible to others at once.
        let client = pool.get().await.unwrap();
        client
            .execute("INSERT INTO t VALUES (2)", &[])
            .await
            .unwrap();
        drop(client);
        expected_rows += 1;
        assert_eq!(
            query_i64(&db.url, "SELECT count(*) FROM t WHERE v = 2").await,
            expected_rows,
            "{method:?}: the next caller's insert ran inside the open transaction"
        );

        // A failed transaction block: everything would be refused in it.
        let client = pool.get().await.unwrap();
        let _ = client.batch_execute("BEGIN; SELECT 1/0").await.unwrap_err();
        drop(client);
        assert_eq!(serves_next_caller(&manager).await, 7, "{method:?}");

        // An uncommitted tokio-postgres transaction (an early `?`): its
        // ROLLBACK is in flight when the connection comes back.
        let mut client = pool.get().await.unwrap();
        let tx = client.transaction().await.unwrap();
        tx.execute("INSERT INTO t VALUES (3)", &[]).await.unwrap();
        drop(tx);
        drop(client);
        assert_eq!(serves_next_caller(&manager).await, 7, "{method:?}");

        let stats = pool.stats();
        // The manual BEGIN and the failed block; tokio-postgres' own
        // ROLLBACK may also still have been queued at the checkout.
        assert!(stats.rolled_back >= 2, "{method:?}: {stats:?}");
        // Nothing was cancelled or closed: a roll-back is awaited, not
        // treated as abandoned work.
        assert_eq!(
            (
                stats.abandoned_cancelled,
                stats.closed_abandoned,
                stats.created
            ),
            (0, 0, 1),
            "{method:?}: {stats:?}"
        );
        manager.shutdown().await.unwrap();
    }
    assert_eq!(
        query_i64(&db.url, "SELECT count(*) FROM t WHERE v <> 2").await,
        0
    );
}
