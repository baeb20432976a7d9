//! Read replicas against real streaming standbys (`pg_basebackup -R` of a
//! cluster owned by the test): checkouts go to the least busy replica that
//! is up and within `max_lag`; a replica whose replay is paused, that is
//! stopped, or whose network path freezes gets no new checkouts; with none
//! left, the fallback (the primary, or `Error::NoReplica`) serves.

mod support;

use std::time::Duration;

use dbmanager::config::ReplicaFallback;
use dbmanager::{DatabaseManager, Error, HealthStatus, ReplicaHealth};
use support::{FaultProxy, PgCluster, pg_config};

/// The port of the server a connection is on.
async fn server_port(connection: &dbmanager::PooledConnection) -> u16 {
    let row = connection
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap();
    row.get::<_, i32>(0) as u16
}

/// A replica configuration that notices changes quickly.
fn config(primary: &PgCluster, replicas: &[String]) -> dbmanager::Config {
    let mut config = pg_config(&primary.url("postgres"));
    config.postgres.pool.max_size = 4;
    config.postgres.pool.min_idle = 1;
    config.postgres.pool.wait_timeout = Duration::from_secs(5);
    config.postgres.pool.connect_timeout = Duration::from_secs(1);
    config.postgres.replicas.urls = replicas.iter().map(dbmanager::DatabaseUrl::new).collect();
    config.postgres.replicas.max_lag = Duration::from_millis(500);
    config.postgres.replicas.check_interval = Duration::from_millis(100);
    config.postgres.replicas.check_timeout = Duration::from_millis(500);
    config
}

async fn replica_health(db: &DatabaseManager) -> Vec<ReplicaHealth> {
    db.health().await.components["postgres"]
        .replicas
        .clone()
        .expect("replicas in the health report")
}

/// Waits (bounded) until the first replica's health satisfies `check`.
async fn wait_for_replica(
    db: &DatabaseManager,
    what: &str,
    check: impl Fn(&ReplicaHealth) -> bool,
) {
    let mut last = None;
    let reached = support::eventually(Duration::from_secs(30), async || {
        let health = replica_health(db).await.remove(0);
        let ok = check(&health);
        last = Some(health);
        ok
    })
    .await;
    assert!(reached, "{what}: last seen {last:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_gets_no_reads_until_it_catches_up() {
    let primary = PgCluster::start_new("replica-pw");
    let standby = primary.standby();
    // A commit replayed after the base backup: its time is what the lag
    // is measured from once replay stops.
    primary.psql("CREATE TABLE t (id bigint PRIMARY KEY)");
    standby.wait_for_sql("SELECT to_regclass('t') IS NOT NULL", "t");
    let db = support::build(config(&primary, &[standby.url("postgres")])).await;
    let pg = db.postgres().unwrap();
    assert_eq!(pg.replica().len(), 1);

    // Caught up: reads go to the standby.
    wait_for_replica(&db, "the replica is routable", |r| r.routable).await;
    let r = pg.replica().get().await.unwrap();
    assert_eq!(server_port(&r).await, standby.port);
    let in_recovery: bool = r
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(in_recovery);
    drop(r);
    let report = db.health().await;
    assert_eq!(report.status, HealthStatus::Up);
    let health = &report.components["postgres"].replicas.as_ref().unwrap()[0];
    assert_eq!(health.name, "replica-1");
    assert_eq!(health.pool.name, "replica-1");
    assert_eq!(health.status, HealthStatus::Up);
    assert_eq!(health.in_recovery, Some(true));
    assert!(health.lag_ms.unwrap() <= 500.0, "{health:?}");
    let json = serde_json::to_value(&report).unwrap();
    let replica_json = &json["components"]["postgres"]["replicas"][0];
    for key in [
        "name",
        "status",
        "routable",
        "lag_ms",
        "lag_bytes",
        "pool",
        "error",
    ] {
        assert!(replica_json.get(key).is_some(), "{key} in {replica_json}");
    }
    assert_eq!(json["components"]["postgres"]["pool"]["name"], "primary");

    // Replay paused while the primary writes: the replica falls behind in
    // time and in bytes and gets no new checkouts; reads go to the primary.
    standby.psql("SELECT pg_wal_replay_pause()");
    primary.psql("INSERT INTO t SELECT generate_series(1, 1000)");
    let paused = std::time::Instant::now();
    wait_for_replica(&db, "the paused replica is past max_lag", |r| {
        !r.routable && r.status == HealthStatus::Degraded
    })
    .await;
    let lagging = replica_health(&db).await.remove(0);
    println!(
        "replay paused: routed around {:?} after the write ({:.0} ms, {} bytes behind)",
        paused.elapsed(),
        lagging.lag_ms.unwrap(),
        lagging.lag_bytes.unwrap()
    );
    assert!(lagging.lag_ms.unwrap() > 500.0, "{lagging:?}");
    assert!(lagging.lag_bytes.unwrap() > 0, "{lagging:?}");
    assert!(
        lagging.error.as_deref().unwrap().contains("max_lag"),
        "{lagging:?}"
    );
    assert_eq!(db.health().await.status, HealthStatus::Degraded);
    assert!(
        db.readiness().await,
        "a lagging replica does not make the service unready"
    );
    for _ in 0..10 {
        let r = pg.replica().get().await.unwrap();
        assert_eq!(
            server_port(&r).await,
            primary.port,
            "fallback to the primary"
        );
    }

    // Replay resumed: it catches up and serves reads again, with the rows.
    standby.psql("SELECT pg_wal_replay_resume()");
    let resumed = std::time::Instant::now();
    wait_for_replica(&db, "the replica caught up", |r| r.routable).await;
    println!(
        "replay resumed: routable again after {:?}",
        resumed.elapsed()
    );
    let r = pg.replica().get().await.unwrap();
    assert_eq!(server_port(&r).await, standby.port);
    let rows: i64 = r
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1000);
    drop(r);
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_too_many_bytes_behind_gets_no_reads() {
    let primary = PgCluster::start_new("bytes-pw");
    let standby = primary.standby();
    primary.psql("CREATE TABLE t (id bigint PRIMARY KEY)");
    standby.wait_for_sql("SELECT to_regclass('t') IS NOT NULL", "t");
    let mut config = config(&primary, &[standby.url("postgres")]);
    // Time alone would keep it: only the bytes behind decide here.
    config.postgres.replicas.max_lag = Duration::from_secs(3600);
    config.postgres.replicas.max_lag_bytes = Some(64 * 1024);
    let db = support::build(config).await;
    let pg = db.postgres().unwrap();
    wait_for_replica(&db, "the replica is routable", |r| r.routable).await;

    standby.psql("SELECT pg_wal_replay_pause()");
    primary.psql("INSERT INTO t SELECT generate_series(1, 10000)");
    wait_for_replica(&db, "the paused replica is past max_lag_bytes", |r| {
        !r.routable && r.lag_bytes.is_some_and(|bytes| bytes > 64 * 1024)
    })
    .await;
    let behind = replica_health(&db).await.remove(0);
    assert!(
        behind.error.as_deref().unwrap().contains("max_lag_bytes"),
        "{behind:?}"
    );
    let r = pg.replica().get().await.unwrap();
    assert_eq!(
        server_port(&r).await,
        primary.port,
        "fallback to the primary"
    );
    drop(r);

    standby.psql("SELECT pg_wal_replay_resume()");
    wait_for_replica(&db, "the replica caught up", |r| r.routable).await;
    let r = pg.replica().get().await.unwrap();
    assert_eq!(server_port(&r).await, standby.port);
    drop(r);
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkouts_go_to_the_least_busy_replica() {
    let primary = PgCluster::start_new("busy-pw");
    let first = primary.standby();
    let second = primary.standby();
    // The second replica by host, reusing the primary's credentials.
    let mut config = config(&primary, &[first.url("postgres")]);
    config.postgres.replicas.hosts = vec![format!("127.0.0.1:{}", second.port)];
    // Checked once, by build(): no check borrows a connection meanwhile.
    config.postgres.replicas.check_interval = Duration::from_secs(3600);
    let db = support::build(config).await;
    let replicas = db.postgres().unwrap().replica();
    assert_eq!(replicas.len(), 2);
    assert_eq!(
        replicas.routable(),
        2,
        "both checked before build() returned"
    );
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(replicas.get().await.unwrap());
    }
    let mut ports = Vec::new();
    for connection in &held {
        ports.push(server_port(connection).await);
    }
    ports.sort_unstable();
    let mut expected = vec![first.port, first.port, second.port, second.port];
    expected.sort_unstable();
    assert_eq!(ports, expected, "four checkouts spread two and two");
    // Two more held on the first: the next goes to the second.
    let extra = [replicas.get().await.unwrap(), replicas.get().await.unwrap()];
    let extra_ports = [server_port(&extra[0]).await, server_port(&extra[1]).await];
    assert_ne!(extra_ports[0], extra_ports[1], "each to the less busy one");
    drop(held);
    drop(extra);
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_is_routed_around_at_once() {
    let primary = PgCluster::start_new("stopped-pw");
    let standby = primary.standby();
    let mut config = config(&primary, &[standby.url("postgres")]);
    // Only the failed checkout can notice: the monitor is too slow here.
    config.postgres.replicas.check_interval = Duration::from_secs(3600);
    // Every checkout proves its connection, so one to the stopped server
    // is never handed out, however soon after the stop it comes.
    config.postgres.pool.recycling = dbmanager::config::RecyclingMethod::Verified;
    let db = support::build(config).await;
    let pg = db.postgres().unwrap();
    assert_eq!(
        pg.replica().routable(),
        1,
        "checked before build() returned"
    );
    let r = pg.replica().get().await.unwrap();
    assert_eq!(server_port(&r).await, standby.port);
    drop(r);

    standby.stop();
    // The first checkout after the stop cannot connect to the replica:
    // it marks it down and is served by the primary, as are the next.
    for _ in 0..5 {
        let r = pg.replica().get().await.unwrap();
        assert_eq!(server_port(&r).await, primary.port);
    }
    assert_eq!(pg.replica().routable(), 0);
    let health = replica_health(&db).await.remove(0);
    assert_eq!(health.status, HealthStatus::Down);
    assert!(health.error.is_some(), "{health:?}");
    assert_eq!(db.health().await.status, HealthStatus::Degraded);
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_replica_is_noticed_within_the_check_timeout() {
    let primary = PgCluster::start_new("frozen-pw");
    let standby = primary.standby();
    let (proxy, via) = FaultProxy::in_front_of(&standby.url("postgres")).await;
    let mut config = config(&primary, &[via]);
    config.postgres.replicas.fallback = ReplicaFallback::Error;
    let db = support::build(config).await;
    let pg = db.postgres().unwrap();
    wait_for_replica(&db, "the replica is routable", |r| r.routable).await;

    // Every flow to the replica stalls, new ones too: its checks time out
    // (check_timeout 500 ms), it is marked down, and with fallback
    // "error" a checkout fails at once with the typed error, naming why.
    proxy.freeze();
    wait_for_replica(&db, "the frozen replica is down", |r| {
        r.status == HealthStatus::Down
    })
    .await;
    let health = replica_health(&db).await.remove(0);
    assert!(
        health.error.as_deref().unwrap().contains("check_timeout"),
        "{health:?}"
    );
    let error = pg.replica().get().await.unwrap_err();
    assert!(matches!(error, Error::NoReplica { .. }), "{error:?}");
    assert!(error.is_transient());
    let message = error.to_string();
    assert!(message.contains("replica-1"), "{message}");
    assert!(!message.contains("frozen-pw"), "no secret in {message}");
    // The primary is untouched.
    let client = pg.get().await.unwrap();
    assert_eq!(server_port(&client).await, primary.port);
    drop(client);

    proxy.thaw();
    wait_for_replica(&db, "the replica is back", |r| r.routable).await;
    let r = pg.replica().get().await.unwrap();
    assert_eq!(server_port(&r).await, standby.port);
    drop(r);
    let report = serde_json::to_string(&db.health().await).unwrap();
    assert!(
        !report.contains("frozen-pw"),
        "no secret in the health report"
    );
    assert!(!format!("{db:?}").contains("frozen-pw"));
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_replicas_the_fallback_decides() {
    let primary = PgCluster::start_new("none-pw");
    let db = support::build(config(&primary, &[])).await;
    let pg = db.postgres().unwrap();
    assert!(pg.replica().is_empty());
    let r = pg.replica().get().await.unwrap();
    assert_eq!(server_port(&r).await, primary.port);
    drop(r);
    assert!(db.health().await.components["postgres"].replicas.is_none());
    db.shutdown().await.unwrap();

    let mut config = config(&primary, &[]);
    config.postgres.replicas.fallback = ReplicaFallback::Error;
    let db = support::build(config).await;
    let error = db.postgres().unwrap().replica().get().await.unwrap_err();
    assert!(matches!(error, Error::NoReplica { .. }), "{error}");
    db.shutdown().await.unwrap();
}

#[cfg(feature = "metrics")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pool_has_its_own_metric_series() {
    use dbmanager::metrics::names;
    use metrics_util::debugging::DebuggingRecorder;

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // Under `cargo test` this process runs the other tests too; they only
    // add series of their own replicas, which the checks below tell apart.
    let _ = recorder.install();

    let primary = PgCluster::start_new("labels-pw");
    let standby = primary.standby();
    let mut config = config(&primary, &[standby.url("postgres")]);
    config.postgres.pool.min_idle = 2;
    let db = support::build(config).await;
    let pg = db.postgres().unwrap();
    drop(pg.replica().get().await.unwrap());
    drop(pg.get().await.unwrap());
    db.health().await;

    let reading = support::Reading::take(&snapshotter);
    let series = |name: &str, pool: &str| {
        reading
            .find(name, &[("database", "postgres"), ("pool", pool)])
            .is_some()
    };
    for name in [
        names::CREATED,
        names::ACQUIRE_WAIT,
        names::HOLD,
        names::POOL_OPEN,
        names::POOL_MAX,
    ] {
        assert!(series(name, "primary"), "{name} for the primary");
        assert!(series(name, "replica-1"), "{name} for replica-1");
    }
    assert_eq!(
        reading.gauge(
            names::REPLICA_ROUTABLE,
            &[("database", "postgres"), ("pool", "replica-1")]
        ),
        Some(1.0)
    );
    assert!(
        series(names::REPLICA_LAG, "replica-1"),
        "the replica's lag gauge"
    );
    // No series lacks the pool label (OpenTelemetry's name for it on the
    // series under OpenTelemetry's names).
    for (name, labels, _) in reading.entries() {
        let key = if name.starts_with("db.client.") {
            names::OTEL_POOL_NAME
        } else {
            "pool"
        };
        assert!(
            labels.iter().any(|(k, _)| k == key),
            "{name} {labels:?} has a pool label"
        );
    }
    assert!(
        reading
            .find(
                names::OTEL_WAIT_TIME,
                &[(names::OTEL_POOL_NAME, "replica-1")]
            )
            .is_some(),
        "the replica's wait time under OpenTelemetry's name"
    );
    db.shutdown().await.unwrap();
}
