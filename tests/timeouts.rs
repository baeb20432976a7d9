//! Every wait of a checkout is bounded by the caller's wait limit, whatever
//! the server does: here new connections stall after the TCP accept (a
//! proxy whose upstream does not answer), with the pool empty.

mod support;

use std::time::{Duration, Instant};

use dbmanager::{DatabaseManager, Error};
use support::{FaultProxy, TestDb, pg_config};

/// Scheduling slack on a shared 2-core machine; far below the 10 s the
/// create timeout would allow.
const SLACK: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_ends_the_checkout_within_the_wait_timeout() {
    let db = TestDb::create("stall").await;
    let (proxy, via_proxy) = FaultProxy::in_front_of(&db.url).await;
    proxy.stall_new(Duration::from_secs(60));
    let mut config = pg_config(&via_proxy);
    config.postgres.pool.min_idle = 0;
    config.postgres.pool.wait_timeout = Duration::from_millis(500);
    // The create timeout (twice this) alone would let a checkout wait 10 s.
    config.postgres.pool.connect_timeout = Duration::from_secs(5);
    let manager = DatabaseManager::builder()
        .config(config)
        .build_lazy()
        .unwrap();
    let pool = manager.postgres().unwrap();

    for (limit, checkout) in [
        (Duration::from_millis(500), None),
        (Duration::from_millis(200), Some(Duration::from_millis(200))),
    ] {
        let started = Instant::now();
        let result = match checkout {
            None => pool.get().await,
            Some(wait) => pool.get_timeout(wait).await,
        };
        let took = started.elapsed();
        match result {
            Err(Error::PoolTimeout { status, .. }) => {
                assert_eq!(status.in_use, 0, "{status}");
            }
            other => panic!("expected a pool timeout, got {other:?}"),
        }
        assert!(
            took < limit + SLACK,
            "the checkout took {took:?} against a wait of {limit:?}"
        );
        assert!(proxy.accepted() > 0, "a connection was attempted");
    }
    let status = pool.status();
    assert_eq!((status.open, status.in_use), (0, 0), "{status}");
    // Once the server answers again, checkouts succeed.
    proxy.stall_new(Duration::ZERO);
    let client = pool
        .get_timeout(Duration::from_secs(10))
        .await
        .expect("a connection once the handshake goes through");
    client.query_one("SELECT 1", &[]).await.unwrap();
    drop(client);
    manager.shutdown().await.unwrap();
}
