//! Faults made by the fault proxy (`support::FaultProxy`), against
//! PostgreSQL and MongoDB: connections reset or cut mid-reply, flows frozen,
//! latency. Each fault ends in a classified, transient error for the
//! callers it hits, within a bound a setting sets, and the same manager
//! serves again once it is gone.

mod support;

use std::time::{Duration, Instant};

use dbmanager::mongodb::bson::{Document, doc};
use dbmanager::{Config, DatabaseUrl, Error, HealthStatus};
use support::{FaultProxy, MongoServer, TestDb, pg_config, unique_name};

/// Scheduling slack on a shared 2-core machine.
const SLACK: Duration = Duration::from_secs(2);

async fn pg_through_proxy(prefix: &str) -> (TestDb, FaultProxy, dbmanager::DatabaseManager) {
    let db = TestDb::create(prefix).await;
    let (proxy, via_proxy) = FaultProxy::in_front_of(&db.url).await;
    let mut config = pg_config(&via_proxy);
    config.postgres.pool.max_size = 4;
    config.postgres.pool.min_idle = 2;
    config.health.probe_timeout = Duration::from_millis(500);
    let manager = support::build(config).await;
    (db, proxy, manager)
}

/// A checkout and `SELECT 1` that must succeed.
async fn select_one(pool: &dbmanager::PostgresPool) {
    let client = pool.get().await.expect("a connection");
    let row = client.query_one("SELECT 1", &[]).await.expect("SELECT 1");
    assert_eq!(row.get::<_, i32>(0), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_connections_fail_their_callers_transiently_and_are_replaced() {
    let (_db, proxy, manager) = pg_through_proxy("reset").await;
    let pool = manager.postgres().unwrap();
    let held: Vec<_> = futures_util::future::join_all((0..2).map(|_| pool.get())).await;
    let held: Vec<_> = held.into_iter().map(|c| c.unwrap()).collect();
    let running: Vec<_> = held
        .iter()
        .map(|client| client.simple_query("SELECT pg_sleep(30)"))
        .collect();
    let reset = async {
        // Both statements are on the wire before the reset.
        assert!(
            support::eventually(Duration::from_secs(5), async || {
                support::query_i64(
                    &support::admin_url(),
                    "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'",
                )
                .await
                    >= 2
            })
            .await
        );
        proxy.reset();
    };
    let (results, ()) = tokio::join!(futures_util::future::join_all(running), reset);
    for result in results {
        let error = Error::from(result.expect_err("the connection was reset"));
        assert!(error.is_transient(), "{error}");
    }
    drop(held);
    // The same pool serves again, on new connections.
    select_one(pool).await;
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_mid_reply_fails_only_its_caller() {
    let (_db, proxy, manager) = pg_through_proxy("cut").await;
    let pool = manager.postgres().unwrap();
    let client = pool.get().await.unwrap();
    // A reply of a few megabytes, cut after its first 64 KiB.
    proxy.cut_after(64 * 1024);
    let error = client
        .query(
            "SELECT repeat('x', 1000) FROM generate_series(1, 5000)",
            &[],
        )
        .await
        .expect_err("the reply was cut");
    let error = Error::from(error);
    assert!(error.is_transient(), "{error}");
    drop(client);
    proxy.cut_after(u64::MAX);
    let client = pool.get().await.expect("another connection");
    let rows = client
        .query(
            "SELECT repeat('x', 1000) FROM generate_series(1, 5000)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 5000);
    drop(client);
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_flows_make_health_down_within_the_probe_timeout_then_up_again() {
    let (_db, proxy, manager) = pg_through_proxy("freeze").await;
    assert_eq!(manager.health().await.status, HealthStatus::Up);
    proxy.freeze();
    let started = Instant::now();
    let report = manager.health().await;
    let took = started.elapsed();
    assert_eq!(report.status, HealthStatus::Down, "{report:?}");
    assert!(!manager.readiness().await);
    assert!(
        took < Duration::from_millis(500) + SLACK,
        "the probe took {took:?}"
    );
    // A checkout with a short wait is bounded too, whatever the checks do.
    let started = Instant::now();
    let checkout = manager
        .postgres()
        .unwrap()
        .get_timeout(Duration::from_millis(300))
        .await;
    let took = started.elapsed();
    if let Ok(client) = checkout {
        // Handed out unverified (used moments ago): its statement then
        // waits on the frozen flow, bounded by the caller.
        let statement = tokio::time::timeout(
            Duration::from_millis(300),
            client.query_one("SELECT 1", &[]),
        )
        .await;
        assert!(statement.is_err(), "nothing passes a frozen flow");
    }
    assert!(
        took < Duration::from_millis(300) + SLACK,
        "the checkout took {took:?}"
    );
    proxy.thaw();
    assert!(
        support::eventually(Duration::from_secs(10), async || manager
            .health()
            .await
            .status
            == HealthStatus::Up)
        .await,
        "health comes back once the flows thaw"
    );
    assert!(manager.readiness().await);
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_slows_but_does_not_break_and_stalled_handshakes_stay_bounded() {
    let (_db, proxy, manager) = pg_through_proxy("latency").await;
    let pool = manager.postgres().unwrap();
    proxy.set_latency(Duration::from_millis(50));
    select_one(pool).await;
    proxy.set_latency(Duration::ZERO);
    // Hold every connection, then stall new ones: a caller who needs one
    // more gets `PoolTimeout` within its wait.
    let held: Vec<_> = futures_util::future::join_all((0..4).map(|_| pool.get())).await;
    proxy.stall_new(Duration::from_secs(60));
    let started = Instant::now();
    let extra = pool.get_timeout(Duration::from_millis(300)).await;
    assert!(matches!(extra, Err(Error::PoolTimeout { .. })), "{extra:?}");
    assert!(started.elapsed() < Duration::from_millis(300) + SLACK);
    drop(held);
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_frozen_flows_fail_operations_transiently_and_recover() {
    let server = MongoServer::start("frozen", "frozen-pw");
    let (proxy, via_proxy) = FaultProxy::in_front_of(&server.url()).await;
    let mut config = Config::default();
    config.mongodb.url = Some(DatabaseUrl::new(via_proxy));
    config.mongodb.database = Some(unique_name("frozen"));
    config.mongodb.server_selection_timeout = Duration::from_secs(2);
    config.mongodb.connect_timeout = Duration::from_secs(2);
    config.mongodb.heartbeat_frequency = Duration::from_secs(1);
    config.health.probe_timeout = Duration::from_secs(1);
    let manager = support::build(config).await;
    let collection = manager
        .mongo()
        .unwrap()
        .database()
        .collection::<Document>("c");
    collection.insert_one(doc! { "n": 1 }).await.unwrap();

    proxy.freeze();
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        collection.find_one(doc! { "n": 1 }),
    )
    .await
    .expect("the operation ended");
    let took = started.elapsed();
    let error = Error::from(outcome.expect_err("nothing passes a frozen flow"));
    assert!(error.is_transient(), "{error}");
    // The monitor notices at its next check (heartbeat_frequency), which
    // times out after connect_timeout; the operation's one retry then waits
    // for a server up to server_selection_timeout.
    let bound = Duration::from_secs(1 + 2 + 2);
    assert!(took < bound + SLACK, "the operation failed after {took:?}");
    let report = manager.health().await;
    assert_eq!(report.status, HealthStatus::Down, "{report:?}");

    proxy.thaw();
    assert!(
        support::eventually(Duration::from_secs(20), async || collection
            .find_one(doc! { "n": 1 })
            .await
            .is_ok_and(|found| found.is_some()))
        .await,
        "operations succeed again once the flows thaw"
    );
    manager.shutdown().await.unwrap();
}
