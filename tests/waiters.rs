//! Many callers queued on a few connections: each is served or told
//! `PoolTimeout` (with the pool's status) within its wait, callers that give
//! up cost nothing, and a shutdown refuses the queue at once.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dbmanager::{DatabaseManager, Error};
use support::{TestDb, pg_config, sessions_reach};

/// Scheduling slack on a shared 2-core machine, for 1,000 tasks at once.
const SLACK: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_waiters_on_four_connections_a_third_cancelling() {
    let db = TestDb::create("waiters").await;
    let mut config = pg_config(&db.url);
    config.postgres.pool.max_size = 4;
    config.postgres.pool.min_idle = 4;
    // Each served caller holds its connection at least 10 ms, so four
    // connections serve at most ~400 callers a second: of the 666 that
    // wait, some are served and some time out, whatever the machine.
    let wait = Duration::from_secs(1);
    config.postgres.pool.wait_timeout = wait;
    let app = config.postgres.application_name.clone();
    let manager = support::build(config).await;
    let pool = manager.postgres().unwrap().clone();

    let served = Arc::new(AtomicUsize::new(0));
    let timed_out = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..1_000u64)
        .map(|i| {
            let pool = pool.clone();
            let (served, timed_out) = (served.clone(), timed_out.clone());
            tokio::spawn(async move {
                if i % 3 == 0 {
                    // Gives up after 0–29 ms, at whatever point it reached.
                    let gave_up = Duration::from_millis(i % 30);
                    if let Ok(Ok(client)) = tokio::time::timeout(gave_up, pool.get()).await {
                        client.query_one("SELECT 1", &[]).await.unwrap();
                    }
                    return;
                }
                let started = Instant::now();
                let result = pool.get().await;
                let waited = started.elapsed();
                assert!(waited < wait + SLACK, "waited {waited:?} against {wait:?}");
                match result {
                    Ok(client) => {
                        let row = client
                            .query_one("SELECT $1::bigint, pg_sleep(0.01)::text", &[&(i as i64)])
                            .await;
                        assert_eq!(row.unwrap().get::<_, i64>(0), i as i64);
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(Error::PoolTimeout { status, .. }) => {
                        assert_eq!(status.max_size, 4, "{status}");
                        timed_out.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(other) => panic!("caller {i}: {other}"),
                }
            })
        })
        .collect();
    // Nothing deadlocks: every caller is done well within its wait plus the
    // time 1,000 short statements take on four connections.
    let all = futures_util::future::join_all(tasks);
    let results = tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("every caller finished");
    for result in results {
        result.expect("no caller panicked");
    }
    let (served, timed_out) = (
        served.load(Ordering::Relaxed),
        timed_out.load(Ordering::Relaxed),
    );
    assert_eq!(
        served + timed_out,
        666,
        "served {served}, timed out {timed_out}"
    );
    assert!(
        served > 0 && timed_out > 0,
        "served {served}, timed out {timed_out}"
    );

    // The pool is whole: nothing in use, no slot leaked, every open
    // connection is a live session, and four callers can hold one each.
    let status = pool.status();
    assert_eq!(status.in_use, 0, "{status}");
    assert!(status.open <= 4, "{status}");
    assert!(
        sessions_reach(&app, status.open as i64, Duration::from_secs(5)).await,
        "{status}"
    );
    let held = futures_util::future::join_all((0..4).map(|_| pool.get_timeout(wait))).await;
    for client in &held {
        client
            .as_ref()
            .expect("four connections")
            .query_one("SELECT 1", &[])
            .await
            .unwrap();
    }
    drop(held);
    manager.shutdown().await.unwrap();
    assert!(sessions_reach(&app, 0, Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_queued_waiters_and_callers_mid_hook_and_leaves_no_session() {
    let db = TestDb::create("drainq").await;
    let mut config = pg_config(&db.url);
    config.postgres.pool.max_size = 2;
    config.postgres.pool.min_idle = 0;
    config.postgres.pool.wait_timeout = Duration::from_secs(30);
    config.shutdown.grace_period = Duration::from_secs(10);
    let app = config.postgres.application_name.clone();
    // A checkout hook that takes a while, so callers are inside it when the
    // shutdown begins; it counts its callers.
    let in_hook = Arc::new(AtomicUsize::new(0));
    let counter = in_hook.clone();
    let manager = DatabaseManager::builder()
        .config(config)
        .on_checkout(move |client| {
            let counter = counter.clone();
            Box::pin(async move {
                counter.fetch_add(1, Ordering::SeqCst);
                client.simple_query("SELECT pg_sleep(0.5)").await?;
                Ok(())
            })
        })
        .build_lazy()
        .unwrap();
    let pool = manager.postgres().unwrap().clone();

    // Two callers go through the slow hook; twenty more queue behind them.
    let callers: Vec<_> = (0..22)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.get().await.map(drop) })
        })
        .collect();
    assert!(
        support::eventually(Duration::from_secs(10), async || {
            in_hook.load(Ordering::SeqCst) >= 2 && pool.status().waiting >= 10
        })
        .await,
        "callers are in the hook and queued: {}",
        pool.status()
    );

    let shutdown = tokio::time::timeout(Duration::from_secs(20), manager.shutdown());
    shutdown.await.expect("shutdown is bounded").unwrap();
    let mut refused = 0;
    for caller in callers {
        match caller.await.unwrap() {
            Err(Error::ShuttingDown { .. }) => refused += 1,
            other => panic!("expected ShuttingDown, got {other:?}"),
        }
    }
    assert_eq!(refused, 22);
    assert!(
        sessions_reach(&app, 0, Duration::from_secs(5)).await,
        "a session was left after shutdown"
    );
    let status = pool.status();
    assert_eq!((status.in_use, status.open), (0, 0), "{status}");
}
