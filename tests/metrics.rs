//! Metrics move as each scenario predicts, seen through a real recorder
//! (metrics-util's debugging recorder, installed once for this process).

mod support;

use std::time::Duration;

use dbmanager::metrics::names;
use dbmanager::{Config, DatabaseUrl, Error, RetryPolicy};
use support::{Reading, TestDb, pg_config};

const PG: (&str, &str) = ("database", "postgres");
const MONGO: (&str, &str) = ("database", "mongodb");
/// The labels of the OpenTelemetry-named series of the primary pool.
const OTEL_PG: [(&str, &str); 2] = [
    (names::OTEL_SYSTEM, "postgresql"),
    (names::OTEL_POOL_NAME, "primary"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_metric_moves_as_the_scenario_predicts() {
    let snapshotter = support::install_recorder();

    // Start-up: one connection proves the server, warm-up opens the second.
    let db = TestDb::create("metrics").await;
    let (mongo_url, _mongo) = support::mongo();
    let mut config = pg_config(&db.url);
    config.postgres.pool.max_size = 2;
    config.postgres.pool.min_idle = 2;
    config.postgres.pool.maintenance_interval = Duration::from_millis(100);
    config.postgres.pool.max_lifetime = Some(Duration::from_millis(700));
    config.postgres.pool.leak_detection_threshold = Some(Duration::from_millis(150));
    config.mongodb.url = Some(DatabaseUrl::new(&mongo_url));
    config.mongodb.database = Some(support::unique_name("metrics"));
    config.mongodb.pool.min_size = 2;
    let manager = support::build(config).await;
    let pool = manager.postgres().unwrap();
    let start = Reading::take(&snapshotter);
    assert_eq!(start.counter(names::CREATED, &[PG]), 2);
    assert_eq!(start.histogram_count(names::CONNECT_TIME, &[PG]), 2);
    assert!(start.counter(names::CREATED, &[MONGO]) >= 2);
    assert_eq!(start.histogram_count(names::OTEL_CREATE_TIME, &OTEL_PG), 2);

    // Five checkouts: five acquire waits and five hold times.
    for _ in 0..5 {
        let client = pool.get().await.unwrap();
        client.simple_query("SELECT 1").await.unwrap();
    }
    let checkouts = Reading::take(&snapshotter);
    assert_eq!(checkouts.histogram_count(names::ACQUIRE_WAIT, &[PG]), 5);
    assert_eq!(checkouts.histogram_count(names::HOLD, &[PG]), 5);
    // The same under OpenTelemetry's names, beside them.
    assert_eq!(
        checkouts.histogram_count(names::OTEL_WAIT_TIME, &OTEL_PG),
        5
    );
    assert_eq!(checkouts.histogram_count(names::OTEL_USE_TIME, &OTEL_PG), 5);

    // A forced timeout: both connections held, a third caller gives up.
    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    let err = pool
        .get_timeout(Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PoolTimeout { .. }), "{err:?}");
    // Held past the leak threshold, too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop((a, b));
    let timeout = Reading::take(&snapshotter);
    assert_eq!(timeout.counter(names::ACQUIRE_TIMEOUTS, &[PG]), 1);
    assert_eq!(timeout.counter(names::OTEL_TIMEOUTS, &OTEL_PG), 1);
    assert_eq!(timeout.counter(names::LEAKS, &[PG]), 2);

    // Connections past max_lifetime are closed by the maintenance task and
    // replaced; the gauges are sampled on its ticks. The open gauge is
    // written from several places (ticks, status(), probes) and passes
    // through 0 and 1 while connections are replaced: wait (bounded) until
    // it shows the refilled pool, never assert on one sample.
    let mut closed_by_lifetime = 0;
    let mut recreated = 0;
    let mut open_gauge = None;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = Reading::take(&snapshotter);
        closed_by_lifetime += r.counter(names::CLOSED, &[PG, ("reason", "lifetime")]);
        recreated += r.counter(names::CREATED, &[PG]);
        open_gauge = r.gauge(names::POOL_OPEN, &[PG]).or(open_gauge);
        if closed_by_lifetime >= 2 && recreated >= 2 && open_gauge == Some(2.0) {
            break;
        }
    }
    assert!(
        closed_by_lifetime >= 2,
        "closed by lifetime: {closed_by_lifetime}"
    );
    assert!(recreated >= 2, "replaced: {recreated}");
    assert_eq!(
        open_gauge,
        Some(2.0),
        "within 10 s the open gauge shows the refilled pool"
    );

    // MongoDB operations are counted through the driver's pool events.
    let mongo = manager.mongo().unwrap();
    mongo
        .database()
        .collection::<dbmanager::mongodb::bson::Document>("m")
        .insert_one(dbmanager::mongodb::bson::doc! { "x": 1 })
        .await
        .unwrap();
    let mut mongo_holds = 0;
    for _ in 0..100 {
        mongo_holds += Reading::take(&snapshotter).histogram_count(names::HOLD, &[MONGO]);
        if mongo_holds > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(mongo_holds >= 1, "MongoDB hold times are recorded");

    // Health probes are timed, per database.
    let report = manager.health().await;
    assert!(report.is_healthy());
    let probes = Reading::take(&snapshotter);
    assert_eq!(probes.histogram_count(names::PROBE, &[PG]), 1);
    assert_eq!(probes.histogram_count(names::PROBE, &[MONGO]), 1);
    assert!(
        probes.gauge(names::POOL_MAX, &[MONGO]).is_some(),
        "MongoDB gauges move with pool events"
    );
    // The probe sampled the pool's gauges: under OpenTelemetry's names too,
    // from the same status (idle + used = open).
    assert_eq!(
        probes.gauge(names::OTEL_CONNECTION_MAX, &OTEL_PG),
        Some(2.0)
    );
    let state = |s| [OTEL_PG[0], OTEL_PG[1], (names::OTEL_STATE, s)];
    let idle = probes.gauge(names::OTEL_CONNECTION_COUNT, &state("idle"));
    let used = probes.gauge(names::OTEL_CONNECTION_COUNT, &state("used"));
    assert_eq!(
        probes.gauge(names::POOL_IDLE, &[PG, ("pool", "primary")]),
        idle
    );
    assert_eq!(
        probes.gauge(names::POOL_IN_USE, &[PG, ("pool", "primary")]),
        used
    );
    assert!(
        idle.is_some() && used.is_some(),
        "idle {idle:?}, used {used:?}"
    );
    assert_eq!(
        probes.gauge(names::OTEL_PENDING_REQUESTS, &OTEL_PG),
        probes.gauge(names::POOL_WAITING, &[PG, ("pool", "primary")])
    );
    assert!(
        probes
            .gauge(
                names::OTEL_CONNECTION_MAX,
                &[
                    (names::OTEL_SYSTEM, "mongodb"),
                    (names::OTEL_POOL_NAME, "mongodb")
                ]
            )
            .is_some(),
        "MongoDB's pool under OpenTelemetry's names"
    );

    // Shutdown closes with reason "shutdown".
    manager.shutdown().await.unwrap();
    let shutdown = Reading::take(&snapshotter);
    assert_eq!(
        shutdown.counter(names::CLOSED, &[PG, ("reason", "shutdown")]),
        2
    );

    // Connect errors by kind, and retries.
    let missing = support::with_database(&support::admin_url(), &support::unique_name("missing"));
    let err = support::build_error(pg_config(&missing)).await;
    assert!(matches!(err, Error::Connect { .. }));
    let refused_port = support::free_port();
    let mut refused: Config = pg_config(&format!("postgres://x:y@127.0.0.1:{refused_port}/x"));
    refused.retry = RetryPolicy::exponential()
        .initial_delay(Duration::from_millis(10))
        .max_delay(Duration::from_millis(10))
        .max_attempts(3);
    support::build_error(refused).await;
    let errors = Reading::take(&snapshotter);
    assert_eq!(
        errors.counter(names::CONNECT_ERRORS, &[PG, ("kind", "unknown_database")]),
        1
    );
    assert_eq!(
        errors.counter(names::CONNECT_ERRORS, &[PG, ("kind", "refused")]),
        3
    );
    assert_eq!(errors.counter(names::CONNECT_RETRIES, &[PG]), 2);
}
