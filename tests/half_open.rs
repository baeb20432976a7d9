//! Peers that vanish without FIN or RST (a failed-over host, a dead NAT
//! entry): the kernel drops every packet of a connection (see
//! `support::Blackhole`), and the TCP settings of `[postgres]` bound how
//! long a caller waits for it.

mod support;

use std::time::{Duration, Instant};

use dbmanager::{DatabaseManager, Error};
use support::{Blackhole, TestDb, pg_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_in_flight_to_a_vanished_peer_fails_transiently_within_the_tcp_timeouts() {
    let db = TestDb::create("half_open").await;
    let mut config = pg_config(&db.url);
    config.postgres.pool.min_idle = 1;
    config.postgres.keepalives_idle = Duration::from_secs(1);
    config.postgres.keepalives_interval = Duration::from_secs(1);
    config.postgres.keepalives_retries = 2;
    config.postgres.tcp_user_timeout = Some(Duration::from_secs(2));
    let manager = DatabaseManager::builder()
        .config(config)
        .build()
        .await
        .unwrap();
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
