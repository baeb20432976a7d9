//! Peers that vanish without FIN or RST (a failed-over host, a dead NAT
//! entry): the kernel drops every packet of a connection (see
//! `support::Blackhole`), and the TCP settings of `[postgres]` bound how
//! long a caller waits for it.

mod support;

use std::time::{Duration, Instant};

use dbmanager::Error;
use support::{Blackhole, TestDb, pg_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_in_flight_to_a_vanished_peer_fails_transiently_within_the_tcp_timeouts() {
    let db = TestDb::create("half_open").await;
    let mut config = pg_config(&db.url);
    config.postgres.pool.min_idle = 1;
    quick_keepalives(&mut config);
    let manager = support::build(config).await;
    let pool = manager.postgres().unwrap();
    let client = pool.get().await.unwrap();
    let port: i32 = client
        .query_one("SELECT inet_client_port()", &[])
        .await
        .unwrap()
        .get(0);

    let blackhole = Blackhole::new();
    let in_flight = tokio::spawn(async move {
        let result = client.query_one("SELECT pg_sleep(3600)", &[]).await;
        (result.map(|_| ()), client)
    });
    // Once the server runs the query, the peer vanishes.
    let running = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE client_port = {port} AND state = 'active' AND query LIKE 'SELECT pg_sleep%'"
    );
    assert!(
        support::eventually(Duration::from_secs(10), async || {
            support::query_i64(&support::admin_url(), &running).await == 1
        })
        .await,
        "the query reached the server"
    );
    let vanished = Instant::now();
    blackhole.flow(u16::try_from(port).unwrap());

    // Idle 1 s, then probes every 1 s, closed when unacknowledged for 2 s:
    // a few seconds. Without the settings: about 15 minutes.
    let (result, client) = tokio::time::timeout(Duration::from_secs(30), in_flight)
        .await
        .expect("the query ends instead of hanging")
        .unwrap();
    let took = vanished.elapsed();
    let error = Error::from(result.expect_err("the connection is gone"));
    assert!(error.is_transient(), "{error}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    drop(client);

    // The broken connection is not handed out again: the pool opens another.
    drop(blackhole);
    let client = pool
        .get()
        .await
        .expect("a new connection after the broken one");
    let other: i32 = client
        .query_one("SELECT inet_client_port()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(other, port);
    drop(client);
    manager.shutdown().await.unwrap();
}

/// Keepalive settings for a test: a vanished peer is noticed in seconds.
fn quick_keepalives(config: &mut dbmanager::Config) {
    config.postgres.keepalives_idle = Duration::from_secs(1);
    config.postgres.keepalives_interval = Duration::from_secs(1);
    config.postgres.keepalives_retries = 2;
    config.postgres.tcp_user_timeout = Some(Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_lock_holder_that_vanishes_releases_the_lock_to_the_next_replica() {
    let db = TestDb::create("half_open_lock").await;
    let mut holder_config = pg_config(&db.url);
    quick_keepalives(&mut holder_config);
    let holder_app = holder_config.postgres.application_name.clone();
    // The holder's migration runs for an hour; the next replica's at once.
    let dir = support::migrations_dir(&[(
        "1_slow.up.sql",
        &format!(
            "SELECT pg_sleep(CASE WHEN current_setting('application_name') = '{holder_app}' THEN 3600 ELSE 0 END);\nCREATE TABLE t (id int);"
        ),
    )]);
    let migrations = dbmanager::migrate::Migrations::from_dir(dir.path()).unwrap();
    let holder = support::build(holder_config).await;
    let running = {
        let holder = holder.clone();
        let migrations = migrations.clone();
        tokio::spawn(async move { holder.migrate(&migrations).await })
    };
    let sleeping = format!(
        "SELECT coalesce(max(client_port), 0)::bigint FROM pg_stat_activity WHERE application_name = '{holder_app}' AND state = 'active' AND query LIKE 'SELECT pg_sleep%'"
    );
    let mut port = 0;
    assert!(
        support::eventually(Duration::from_secs(10), async || {
            port = support::query_i64(&support::admin_url(), &sleeping).await;
            port > 0
        })
        .await,
        "the holder runs its migration under the lock"
    );

    // The holder's host vanishes.
    let blackhole = Blackhole::new();
    let vanished = Instant::now();
    blackhole.flow(u16::try_from(port).unwrap());

    let mut next_config = pg_config(&db.url);
    quick_keepalives(&mut next_config);
    let next = support::build(next_config).await;
    let report = next
        .migrator(&migrations)
        .unwrap()
        .lock_timeout(Duration::from_secs(60))
        .up()
        .await
        .expect("the next replica gets the lock once the server drops the holder");
    let took = vanished.elapsed();
    assert_eq!(report.versions(), [1]);
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(
        running.await.unwrap().is_err(),
        "the vanished holder's migration failed"
    );
    drop(blackhole);
    next.shutdown().await.unwrap();
    let _ = holder.shutdown().await;
}

/// The client ports of this application's sessions, as the server sees
/// them.
async fn client_ports(application_name: &str) -> Vec<u16> {
    let (client, connection) =
        tokio_postgres::connect(&support::admin_url(), tokio_postgres::NoTls)
            .await
            .unwrap();
    let task = tokio::spawn(connection);
    let ports = client
        .query(
            "SELECT client_port FROM pg_stat_activity WHERE application_name = $1",
            &[&application_name],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| u16::try_from(row.get::<_, i32>(0)).unwrap())
        .collect();
    drop(client);
    let _ = task.await;
    ports
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_idle_connection_half_open_callers_and_readiness_recover_within_ten_seconds() {
    let db = TestDb::create("half_open_pool").await;
    // Default settings, but for the URL and a name to find the sessions by.
    let mut config = dbmanager::Config::default();
    config.postgres.url = Some(dbmanager::DatabaseUrl::new(&db.url));
    config.postgres.application_name = support::unique_name("half_open_pool");
    let app = config.postgres.application_name.clone();
    let defaults = config.postgres.pool.clone();
    let manager = support::build(config).await;
    let pool = manager.postgres().unwrap();
    let ports = client_ports(&app).await;
    assert_eq!(ports.len(), defaults.min_idle, "warmed to min_idle");

    // Idle long enough that `auto` recycling checks them before reuse
    // (the rule under test needs the time to pass, not a state to appear).
    tokio::time::sleep(defaults.verify_after_idle + Duration::from_millis(100)).await;
    let blackhole = Blackhole::new();
    for port in &ports {
        blackhole.flow(*port);
    }
    let vanished = Instant::now();

    // A caller that gives up during the check leaves that connection closed,
    // not back in the pool.
    let gave_up = tokio::time::timeout(Duration::from_millis(300), pool.get()).await;
    assert!(
        gave_up.is_err(),
        "the check of a half-open connection cannot answer"
    );
    assert_eq!(pool.stats().closed_discarded, 1, "{:?}", pool.stats());

    let client = pool
        .get()
        .await
        .expect("a caller is served by a new connection");
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    drop(client);
    let served = vanished.elapsed();
    assert!(
        support::eventually(Duration::from_secs(30), async || manager.readiness().await).await,
        "ready again"
    );
    let ready = vanished.elapsed();
    println!("served again after {served:?}, ready after {ready:?}");
    assert!(served < Duration::from_secs(10), "served after {served:?}");
    assert!(ready < Duration::from_secs(10), "ready after {ready:?}");
    drop(blackhole);
    manager.shutdown().await.unwrap();
}
