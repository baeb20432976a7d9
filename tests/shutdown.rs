//! Graceful shutdown: drain in-flight work, refuse new work, close every
//! session, and stay idempotent.

mod support;

use std::time::Duration;

use dbmanager::{Backend, DatabaseManager, Error};
use support::{TestDb, pg_config, sessions_reach};

/// Whether one connection of the manager is checked out within five
/// seconds: the query the test started is running.
async fn one_connection_in_use(manager: &DatabaseManager) -> bool {
    support::eventually(Duration::from_secs(5), async || {
        manager.postgres().unwrap().status().in_use == 1
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_query_completes_new_work_is_refused_and_no_session_remains() {
    let db = TestDb::create("shutdown").await;
    let mut config = pg_config(&db.url);
    config.postgres.pool.min_idle = 2;
    // The warm-up is best effort (a connect slower than its bound on a
    // loaded machine is left to maintenance): wait for the state the
    // maintenance task guarantees, quickly.
    config.postgres.pool.maintenance_interval = Duration::from_millis(200);
    let app = config.postgres.application_name.clone();
    let manager = support::build(config).await;
    assert!(
        sessions_reach(&app, 2, Duration::from_secs(10)).await,
        "min_idle sessions open"
    );

    let worker = manager.clone();
    let in_flight = tokio::spawn(async move {
        let client = worker.postgres()?.get().await?;
        let row = client
            .query_one("SELECT pg_sleep(1.5)::text, 42::int", &[])
            .await?;
        Ok::<i32, Error>(row.get(1))
    });
    // Let the query start before shutting down.
    assert!(one_connection_in_use(&manager).await);

    let other = manager.clone();
    let (first, second) = tokio::join!(manager.shutdown(), other.shutdown());
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(first, second, "concurrent calls share one shutdown");
    assert!(first.drained);
    assert_eq!(first.forced(), 0);
    assert_eq!(
        in_flight.await.unwrap().unwrap(),
        42,
        "the in-flight query finished"
    );

    match manager.postgres().unwrap().get().await {
        Err(Error::ShuttingDown {
            backend: Backend::Postgres,
        }) => {}
        other => panic!("expected ShuttingDown, got {other:?}"),
    }
    assert!(
        sessions_reach(&app, 0, Duration::from_secs(5)).await,
        "no session of the manager remains"
    );
    let again = manager.shutdown().await.unwrap();
    assert_eq!(
        again, first,
        "a second shutdown is harmless and reports the first"
    );
    assert!(!manager.postgres().unwrap().stats().maintenance_running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_still_busy_after_the_grace_period_are_closed() {
    let db = TestDb::create("forced").await;
    let mut config = pg_config(&db.url);
    config.shutdown.grace_period = Duration::from_millis(300);
    let app = config.postgres.application_name.clone();
    let manager = support::build(config).await;

    let worker = manager.clone();
    let stuck = tokio::spawn(async move {
        let client = worker.postgres().unwrap().get().await.unwrap();
        client
            .query_one("SELECT pg_sleep(30)", &[])
            .await
            .map(|_| ())
    });
    assert!(one_connection_in_use(&manager).await);
    let report = manager.shutdown().await.unwrap();
    assert!(!report.drained);
    assert_eq!(report.postgres_forced, 1);
    assert!(
        stuck.await.unwrap().is_err(),
        "the stuck query lost its connection"
    );
    assert!(
        sessions_reach(&app, 0, Duration::from_secs(10)).await,
        "the forced session is gone from the server"
    );
}
