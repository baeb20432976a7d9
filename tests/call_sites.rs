//! Warnings about a checkout (a leak, a slow acquire) name the line of the
//! caller's code that checked out, also when the checkout goes through the
//! replica handle: to a standby, or to the primary as its fallback.

mod support;

use std::time::Duration;

use support::{PgCluster, TestDb, pg_config};

/// Waits (bounded) for a WARN line containing both `what` and `location`,
/// and returns it.
async fn warning(logs: &support::Logs, what: &str, location: &str) -> String {
    let find = || {
        logs.contents()
            .lines()
            .find(|l| l.contains("WARN") && l.contains(what) && l.contains(location))
            .map(str::to_string)
    };
    let found = support::eventually(Duration::from_secs(10), async || find().is_some()).await;
    assert!(
        found,
        "no `{what}` warning naming {location}:\n{}",
        logs.contents()
    );
    find().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leak_through_the_replica_handle_names_the_callers_line() {
    let logs = support::logs();
    let primary = PgCluster::start_new("call-sites-pw");
    let standby = primary.standby();
    let mut config = pg_config(&primary.url("postgres"));
    config.postgres.replicas.urls = vec![dbmanager::DatabaseUrl::new(standby.url("postgres"))];
    config.postgres.replicas.max_lag = Duration::from_secs(60);
    config.postgres.pool.leak_detection_threshold = Some(Duration::from_millis(200));
    let db = support::build(config).await;
    let replicas = db.postgres().unwrap().replica();
    assert_eq!(replicas.routable(), 1, "the standby takes the read");

    let (held, line) = (replicas.get().await.unwrap(), line!());
    let in_recovery: bool = held
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(in_recovery, "checked out on the standby");
    let location = format!("tests/call_sites.rs:{line}");
    warning(&logs, "leak", &location).await;
    drop(held);
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replica_handles_fallback_to_the_primary_names_the_callers_line() {
    let logs = support::logs();
    let pg = TestDb::create("call_sites").await;
    let mut config = pg_config(&pg.url);
    config.postgres.pool.max_size = 1;
    config.postgres.pool.min_idle = 1;
    config.postgres.pool.slow_acquire_threshold = Some(Duration::from_millis(1));
    config.postgres.pool.leak_detection_threshold = Some(Duration::from_millis(200));
    let db = support::build(config).await;
    let pool = db.postgres().unwrap();

    // No replica is configured: the handle falls back to the primary.
    let (held, leak_line) = (pool.replica().get().await.unwrap(), line!());
    warning(&logs, "leak", &format!("tests/call_sites.rs:{leak_line}")).await;

    // A second checkout waits for the first, which a slow statement holds.
    let waiter = {
        let db = db.clone();
        tokio::spawn(async move {
            let line = line!() + 1;
            let connection = db.postgres().unwrap().replica().get().await.unwrap();
            drop(connection);
            line
        })
    };
    let queued =
        support::eventually(Duration::from_secs(10), async || pool.status().waiting == 1).await;
    assert!(queued, "the second checkout waits: {}", pool.status());
    held.query_one("SELECT pg_sleep(0.05)", &[]).await.unwrap();
    drop(held);
    let waiter_line = waiter.await.unwrap();
    let slow = warning(
        &logs,
        "slow connection acquire",
        &format!("tests/call_sites.rs:{waiter_line}"),
    )
    .await;
    assert!(slow.contains("acquired_at="), "{slow}");
    db.shutdown().await.unwrap();
}
