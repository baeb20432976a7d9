//! Dropping a checkout at any await point — while it connects, while the
//! connection is checked, while `on_checkout` runs — leaves the pool
//! consistent: no slot leaked, the counts match the server's sessions, and
//! no connection in an unknown state is handed out later.

mod support;

use std::time::Duration;

use dbmanager::DatabaseManager;
use dbmanager::config::RecyclingMethod;
use support::{TestDb, admin_url, pg_config, sessions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkouts_dropped_at_every_await_point_leave_the_pool_consistent() {
    let db = TestDb::create("cancel_get").await;
    let mut config = pg_config(&db.url);
    config.postgres.pool.max_size = 4;
    config.postgres.pool.min_idle = 0;
    // Every reuse makes a round trip, so a drop can land inside the check.
    config.postgres.pool.recycling = RecyclingMethod::Verified;
    let app = config.postgres.application_name.clone();
    let manager = DatabaseManager::builder()
        .config(config)
        // A hook with a round trip and a pause: more await points.
        .on_checkout(|client| {
            Box::pin(async move {
                client.simple_query("SELECT 1").await?;
                tokio::time::sleep(Duration::from_millis(1)).await;
                Ok(())
            })
        })
        .build_lazy()
        .unwrap();
    let pool = manager.postgres().unwrap();

    // Timeouts from 0 to ~8 ms in 50 µs steps, four callers at a time:
    // drops land before, during and after connects, checks and the hook.
    for step in 0..160u64 {
        let limit = Duration::from_micros(step * 50);
        let callers = (0..4).map(|_| async {
            if let Ok(Ok(client)) = tokio::time::timeout(limit, pool.get()).await {
                // Whatever a caller gets is usable and outside any request.
                let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
                assert_eq!(one, 1);
            }
        });
        futures_util::future::join_all(callers).await;
    }

    // Nothing is checked out, no more than max_size is open, and the
    // server sees exactly the connections the pool counts.
    assert!(
        support::eventually(Duration::from_secs(10), async || {
            let status = pool.status();
            status.in_use == 0
                && status.open <= 4
                && sessions(&admin_url(), &app).await == status.open as i64
        })
        .await,
        "pool {} vs {} sessions",
        pool.status(),
        sessions(&admin_url(), &app).await
    );
    // Every slot is still usable: four callers at once are all served.
    let held = futures_util::future::join_all((0..4).map(|_| pool.get())).await;
    assert!(held.iter().all(Result::is_ok), "{held:?}");
    for client in &held {
        let client = client.as_ref().unwrap();
        client.query_one("SELECT 1", &[]).await.unwrap();
    }
    drop(held);
    manager.shutdown().await.unwrap();
    assert!(
        support::sessions_reach(&app, 0, Duration::from_secs(10)).await,
        "no session left after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_shutdown_future_still_leaves_a_closed_pool_and_no_session() {
    let db = TestDb::create("cancel_shutdown").await;
    let mut config = pg_config(&db.url);
    config.postgres.pool.min_idle = 2;
    let app = config.postgres.application_name.clone();
    let manager = support::build(config).await;
    let pool = manager.postgres().unwrap().clone();
    let held = pool.get().await.unwrap();
    // The shutdown waits for the held connection; its future is dropped
    // mid-drain.
    let first = tokio::time::timeout(Duration::from_millis(100), manager.shutdown()).await;
    assert!(first.is_err(), "the drain was still waiting");
    assert!(
        matches!(pool.get().await, Err(dbmanager::Error::ShuttingDown { .. })),
        "new checkouts stay refused"
    );
    drop(held);
    // Shutting down again completes the drain.
    manager.shutdown().await.unwrap();
    assert!(
        support::sessions_reach(&app, 0, Duration::from_secs(10)).await,
        "no session left"
    );
    assert_eq!(pool.status().in_use, 0);
}
