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

/// Bootstrap, `TestDatabase` and `drop_configured_database` open direct
/// connections outside the pool: each attempt is bounded too (twice
/// `connect_timeout`, handshake included), and the retries by their own
/// budget, when the server accepts TCP and then says nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_connections_are_bounded_when_the_handshake_stalls() {
    let db = TestDb::create("stall_admin").await;
    let (proxy, via_proxy) = FaultProxy::in_front_of(&db.url).await;
    proxy.stall_new(Duration::from_secs(600));
    let mut config = pg_config(&via_proxy);
    config.postgres.pool.connect_timeout = Duration::from_millis(250);
    config.bootstrap.wait_timeout = Duration::from_secs(1);

    let started = Instant::now();
    let bootstrap = dbmanager::migrate::Bootstrap::new(&config).run().await;
    let took = started.elapsed();
    assert!(
        matches!(bootstrap, Err(Error::Connect { .. })),
        "{bootstrap:?}"
    );
    // The budget, plus one attempt that began just before it ran out.
    assert!(
        took < Duration::from_millis(1_500) + SLACK,
        "bootstrap took {took:?}"
    );

    let no_migrations = tempfile::tempdir().unwrap();
    let migrations = dbmanager::migrate::Migrations::from_dir(no_migrations.path()).unwrap();
    let started = Instant::now();
    let test_db = dbmanager::testing::TestDatabase::with_config(&config, &migrations).await;
    let took = started.elapsed();
    match test_db {
        Err(Error::Connect { kind, .. }) => assert!(kind.is_transient(), "{kind:?}"),
        other => panic!("expected a connect error, got {:?}", other.map(|_| ())),
    }
    assert!(
        took < Duration::from_secs(1) + SLACK,
        "TestDatabase took {took:?}"
    );
    assert!(proxy.accepted() > 0, "the connections were attempted");
}
