//! Ok means it happened: what the pool does with a connection follows the
//! session's exact protocol state, so a caller is never handed another's
//! half-sent request, an acknowledged write is never inside someone else's
//! transaction, COPY returns a clean connection, and a transaction the
//! server rolled back is never reported committed.

mod support;

use std::time::Duration;

use bytes::Bytes;
use dbmanager::config::RecyclingMethod;
use dbmanager::{Config, DatabaseManager, Error, TxFutureExt};
use futures_util::{SinkExt, StreamExt};
use support::{TestDb, build, pg_config, query_i64, sql};

fn one_connection(url: &str) -> Config {
    let mut config = pg_config(url);
    config.postgres.pool.max_size = 1;
    config.postgres.pool.min_idle = 1;
    // A connection held past this would be closed: reuse of the same
    // backend then proves nothing waited for it.
    config.postgres.pool.recycle_timeout = Duration::from_secs(30);
    config.postgres.pool.wait_timeout = Duration::from_secs(40);
    config
}

async fn backend_pid(db: &DatabaseManager) -> i32 {
    let client = db.postgres().unwrap().get().await.expect("a connection");
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pg_backend_pid()")
        .get(0)
}

/// The race of the issue: a caller gives up on `BEGIN` before
/// tokio-postgres wrote it (a zero timeout drops the future right after it
/// queued the request) and returns the connection; the next caller's
/// autocommit INSERT is acknowledged. Every acknowledged row must stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_queued_by_an_abandoned_caller_never_swallows_the_next_callers_write() {
    let db = TestDb::create("queued").await;
    sql(&db.url, "CREATE TABLE acked (id int PRIMARY KEY)").await;
    let manager = build(one_connection(&db.url)).await;
    let pool = manager.postgres().unwrap();
    let iterations = 3_000;
    let mut acknowledged = 0i64;
    let mut gave_up = 0;
    for id in 0..iterations {
        {
            let client = pool.get().await.expect("caller A's connection");
            if tokio::time::timeout(Duration::ZERO, client.batch_execute("BEGIN"))
                .await
                .is_err()
            {
                gave_up += 1;
            }
        }
        let client = pool.get().await.expect("caller B's connection");
        if client
            .execute("INSERT INTO acked (id) VALUES ($1)", &[&id])
            .await
            .is_ok()
        {
            acknowledged += 1;
        }
    }
    drop(manager);
    let present = query_i64(&db.url, "SELECT count(*) FROM acked").await;
    println!(
        "{iterations} iterations: caller A gave up {gave_up} times; {acknowledged} writes acknowledged, {present} present"
    );
    assert!(
        gave_up > 0,
        "the zero timeout never fired: the race was not exercised"
    );
    assert_eq!(present, acknowledged, "acknowledged writes were lost");
    assert_eq!(acknowledged, i64::from(iterations));
}

async fn copy_table(db: &TestDb) {
    sql(
        &db.url,
        "CREATE TABLE IF NOT EXISTS copied (id int PRIMARY KEY)",
    )
    .await;
}

/// After each COPY case the same backend serves the next caller at once:
/// no cancel was sent, nothing was closed.
async fn reused_clean(manager: &DatabaseManager, pid: i32, case: &str) {
    assert_eq!(
        backend_pid(manager).await,
        pid,
        "{case}: a new connection was opened"
    );
    let stats = manager.postgres().unwrap().stats();
    assert_eq!(
        stats.abandoned_cancelled, 0,
        "{case}: a cancel was sent: {stats:?}"
    );
    assert_eq!(stats.created, 1, "{case}: {stats:?}");
    let client = manager.postgres().unwrap().get().await.unwrap();
    // SAVEPOINT is refused outside a transaction block.
    let outside = client.batch_execute("SAVEPOINT probe").await.is_err();
    assert!(
        outside,
        "{case}: the connection came back inside a transaction"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_finished_failed_dropped_and_in_a_transaction_returns_a_clean_connection() {
    let db = TestDb::create("copyin").await;
    copy_table(&db).await;
    let manager = build(one_connection(&db.url)).await;
    let pid = backend_pid(&manager).await;
    let pool = manager.postgres().unwrap();

    // Finished.
    {
        let client = pool.get().await.unwrap();
        let sink = client.copy_in("COPY copied (id) FROM STDIN").await.unwrap();
        let mut sink = std::pin::pin!(sink);
        sink.send(Bytes::from_static(b"1\n2\n")).await.unwrap();
        assert_eq!(sink.as_mut().finish().await.unwrap(), 2);
    }
    reused_clean(&manager, pid, "finished").await;

    // Failed on the server: a duplicate key.
    {
        let client = pool.get().await.unwrap();
        let sink = client.copy_in("COPY copied (id) FROM STDIN").await.unwrap();
        let mut sink = std::pin::pin!(sink);
        let sent = sink.send(Bytes::from_static(b"1\n")).await;
        let finished = match sent {
            Ok(()) => sink.as_mut().finish().await.map(|_| ()),
            Err(e) => Err(e),
        };
        assert!(finished.is_err(), "a duplicate key must fail the COPY");
    }
    reused_clean(&manager, pid, "failed on the server").await;

    // Dropped mid-stream (the sink sends CopyFail).
    {
        let client = pool.get().await.unwrap();
        let sink = client.copy_in("COPY copied (id) FROM STDIN").await.unwrap();
        let mut sink = Box::pin(sink);
        sink.send(Bytes::from_static(b"10\n11\n")).await.unwrap();
        drop(sink);
    }
    reused_clean(&manager, pid, "dropped mid-stream").await;

    // Inside a transaction, committed.
    {
        let mut client = pool.get().await.unwrap();
        let tx = client.transaction().await.unwrap();
        let sink = tx.copy_in("COPY copied (id) FROM STDIN").await.unwrap();
        let mut sink = std::pin::pin!(sink);
        sink.send(Bytes::from_static(b"20\n")).await.unwrap();
        sink.as_mut().finish().await.unwrap();
        tx.commit().await.unwrap();
    }
    reused_clean(&manager, pid, "in a transaction").await;

    let ids = query_i64(&db.url, "SELECT coalesce(sum(id), 0) FROM copied").await;
    assert_eq!(ids, 1 + 2 + 20, "the failed and dropped COPYs kept nothing");
    assert_eq!(manager.postgres().unwrap().stats().closed_broken, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_out_read_to_the_end_or_dropped_early_returns_a_clean_connection() {
    let db = TestDb::create("copyout").await;
    let manager = build(one_connection(&db.url)).await;
    let pid = backend_pid(&manager).await;
    let pool = manager.postgres().unwrap();
    {
        let client = pool.get().await.unwrap();
        let stream = client
            .copy_out("COPY (SELECT g FROM generate_series(1, 1000) g) TO STDOUT")
            .await
            .unwrap();
        let chunks: Vec<_> = stream.collect().await;
        let bytes: usize = chunks.into_iter().map(|c| c.unwrap().len()).sum();
        assert!(bytes > 1000);
    }
    reused_clean(&manager, pid, "read to the end").await;
    {
        let client = pool.get().await.unwrap();
        let stream = client
            .copy_out("COPY (SELECT g FROM generate_series(1, 1000) g) TO STDOUT")
            .await
            .unwrap();
        let mut stream = std::pin::pin!(stream);
        stream.next().await.expect("one chunk").unwrap();
    }
    reused_clean(&manager, pid, "dropped early").await;
}

/// The first bullet: a statement fails inside the closure, the
/// closure swallows the error and returns Ok; PostgreSQL answers COMMIT
/// with ROLLBACK. The helper must not return Ok.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_the_server_rolled_back_is_never_reported_committed() {
    let db = TestDb::create("swallowed").await;
    sql(&db.url, "CREATE TABLE t (id int PRIMARY KEY)").await;
    sql(&db.url, "INSERT INTO t VALUES (1)").await;
    let manager = build(pg_config(&db.url)).await;
    let pool = manager.postgres().unwrap();

    // A duplicate key, swallowed.
    let result = pool
        .transaction(|tx| {
            async move {
                tx.execute("INSERT INTO t VALUES (2)", &[]).await?;
                let _ = tx.execute("INSERT INTO t VALUES (1)", &[]).await;
                Ok(7)
            }
            .scoped()
        })
        .await;
    println!("swallowed duplicate key: {result:?}");
    match result {
        Err(Error::TransactionRolledBack { sqlstate, .. }) => {
            assert_eq!(sqlstate.as_deref(), Some("23505"))
        }
        other => panic!("expected TransactionRolledBack, got {other:?}"),
    }

    // `SELECT 1/0` through simple_query, swallowed.
    let result = pool
        .transaction(|tx| {
            async move {
                tx.execute("INSERT INTO t VALUES (3)", &[]).await?;
                let _ = tx.simple_query("SELECT 1/0").await;
                Ok(())
            }
            .scoped()
        })
        .await;
    println!("swallowed division by zero: {result:?}");
    let error = result.expect_err("the server rolled it back");
    assert!(
        matches!(error, Error::TransactionRolledBack { .. }),
        "{error:?}"
    );
    assert_eq!(error.sqlstate(), Some("22012"));
    assert!(!error.is_transient());

    // Nothing of either transaction was kept, and a clean one commits.
    assert_eq!(query_i64(&db.url, "SELECT count(*) FROM t").await, 1);
    pool.transaction(|tx| {
        async move {
            tx.execute("INSERT INTO t VALUES (4)", &[]).await?;
            Ok(())
        }
        .scoped()
    })
    .await
    .expect("a clean transaction commits");
    assert_eq!(query_i64(&db.url, "SELECT count(*) FROM t").await, 2);
}

/// `recycling = "clean"` resets the session at every checkout; what the
/// `on_connect` hook set is set again, so every caller sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_recycling_keeps_what_on_connect_set() {
    let db = TestDb::create("cleanhook").await;
    sql(&db.url, "CREATE SCHEMA orders").await;
    let mut config = one_connection(&db.url);
    config.postgres.pool.recycling = RecyclingMethod::Clean;
    let manager = DatabaseManager::builder()
        .config(config)
        .on_connect(|client| {
            Box::pin(async move {
                client
                    .batch_execute("SET search_path TO orders, public")
                    .await?;
                Ok(())
            })
        })
        .build()
        .await
        .expect("build");
    for round in 0..3 {
        let client = manager.postgres().unwrap().get().await.unwrap();
        let path: String = client
            .query_one("SHOW search_path", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(path, "orders, public", "checkout {round}");
        // What a caller changes is reset before the next one.
        client
            .batch_execute("SET statement_timeout = '1234ms'")
            .await
            .unwrap();
        drop(client);
        let client = manager.postgres().unwrap().get().await.unwrap();
        let timeout: String = client
            .query_one("SHOW statement_timeout", &[])
            .await
            .unwrap()
            .get(0);
        assert_ne!(
            timeout, "1234ms",
            "checkout {round}: a caller's setting survived clean"
        );
    }
}
