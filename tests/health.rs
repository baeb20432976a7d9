//! Health probes, liveness and readiness against a real PostgreSQL.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use dbmanager::{DatabaseManager, HealthStatus, Phase};
use support::{PgCluster, TestDb, pg_config, retry_for_a_minute};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_json_when_up_has_every_documented_field() {
    let db = TestDb::create("health_up").await;
    let manager = support::build(pg_config(&db.url)).await;

    let report = manager.health().await;
    assert_eq!(report.status, HealthStatus::Up);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["status"], "up");
    assert!(
        json["components"].get("mongodb").is_none(),
        "an unconfigured database is omitted"
    );
    let pg = &json["components"]["postgres"];
    assert_eq!(pg["status"], "up");
    assert_eq!(pg["required"], true);
    assert!(pg["latency_ms"].as_f64().unwrap() >= 0.0);
    let version = pg["server_version"].as_str().unwrap();
    assert!(
        version.chars().next().unwrap().is_ascii_digit() && !version.contains(' '),
        "{version}"
    );
    assert_eq!(pg["database"], db.name.as_str());
    for key in ["max_size", "open", "idle", "in_use", "waiting"] {
        assert!(pg["pool"][key].is_u64(), "pool.{key} in {pg}");
    }
    assert_eq!(pg["pool"]["max_size"], 4);
    assert!(pg["error"].is_null());
    assert!(manager.liveness());
    assert!(manager.readiness().await);
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_down_within_the_probe_timeout_once_the_server_stops() {
    let cluster = PgCluster::start_new("health-down-pw");
    let mut config = pg_config(&cluster.url("postgres"));
    let probe_timeout = Duration::from_secs(1);
    config.health.probe_timeout = probe_timeout;
    let manager = support::build(config).await;
    assert_eq!(manager.health().await.status, HealthStatus::Up);

    cluster.stop();
    let started = Instant::now();
    let report = manager.health().await;
    let took = started.elapsed();

    assert_eq!(report.status, HealthStatus::Down);
    let pg = &report.components["postgres"];
    assert_eq!(pg.status, HealthStatus::Down);
    assert!(pg.error.is_some());
    assert!(pg.latency_ms.is_none());
    // The probe is bounded by its own timeout (with room for a loaded machine).
    assert!(
        took < probe_timeout * 3,
        "the probe took {took:?}, its timeout is {probe_timeout:?}"
    );
    assert!(
        !manager.readiness().await,
        "a required database down means not ready"
    );
    assert!(manager.liveness(), "liveness never depends on the database");
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optional_database_that_is_down_makes_health_degraded() {
    let cluster = PgCluster::start_new("degraded-pw");
    let mut config = pg_config(&cluster.url("postgres"));
    config.postgres.required = false;
    config.health.probe_timeout = Duration::from_secs(1);
    let manager = support::build(config).await;
    cluster.stop();
    let report = manager.health().await;
    assert_eq!(report.status, HealthStatus::Degraded);
    assert!(report.is_healthy());
    assert!(
        manager.readiness().await,
        "an optional database does not gate readiness"
    );
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_moves_from_connecting_to_ready_to_draining() {
    let cluster = Arc::new(PgCluster::init("readiness-pw"));
    let mut config = pg_config(&cluster.url("postgres"));
    config.retry = retry_for_a_minute();
    config.shutdown.grace_period = Duration::from_secs(10);

    let manager = DatabaseManager::builder()
        .config(config)
        .build_in_background()
        .unwrap();
    assert_eq!(manager.phase(), Phase::Connecting);
    assert!(!manager.readiness().await, "not ready while connecting");
    assert!(manager.liveness(), "alive while connecting");

    let starter = cluster.clone();
    tokio::task::spawn_blocking(move || starter.start())
        .await
        .unwrap();
    manager.wait_ready().await.unwrap();
    assert_eq!(manager.phase(), Phase::Ready);
    assert!(manager.readiness().await);

    // Hold a connection so the drain lasts until it is returned.
    let held = manager.postgres().unwrap().get().await.unwrap();
    let draining = manager.clone();
    let shutdown = tokio::spawn(async move { draining.shutdown().await });
    assert!(
        support::eventually(Duration::from_secs(5), async || manager.phase()
            == Phase::Draining)
        .await,
        "shutdown started"
    );
    assert!(!manager.readiness().await, "not ready while draining");
    assert_eq!(manager.health().await.status, HealthStatus::Down);
    drop(held);
    let report = shutdown.await.unwrap().unwrap();
    assert!(report.drained);
    assert_eq!(manager.phase(), Phase::Closed);
    assert!(!manager.readiness().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_connect_that_fails_for_good_turns_liveness_false() {
    let missing = support::with_database(&support::admin_url(), &support::unique_name("nope"));
    let manager = DatabaseManager::builder()
        .config(pg_config(&missing))
        .build_in_background()
        .unwrap();
    let err = manager.wait_ready().await.unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert_eq!(manager.phase(), Phase::Failed);
    assert!(!manager.liveness());
    assert!(!manager.readiness().await);
}
