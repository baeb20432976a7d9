//! The five metrics of the multiplexed handle move as each scenario
//! predicts, seen through metrics-util's debugging recorder (installed
//! once for this process, so this file holds one test).

#![cfg(feature = "metrics")]

mod support;

use std::time::Duration;

use dbmanager::metrics::names;
use metrics_util::debugging::Snapshotter;
use support::{Reading, TestDb, pg_config};

const LABELS: &[(&str, &str)] = &[("database", "postgres"), ("pool", "multiplex")];

/// Waits (bounded) until the keeper's sampled gauge `name` reads `value`.
async fn gauge_reaches(snapshotter: &Snapshotter, name: &str, value: f64) -> bool {
    support::eventually(Duration::from_secs(10), async || {
        Reading::take(snapshotter).gauge(name, LABELS) == Some(value)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_multiplex_metrics_move_as_the_scenario_predicts() {
    let snapshotter = support::install_recorder();

    let db = TestDb::create("mux_metrics").await;
    let mut config = pg_config(&db.url);
    config.postgres.multiplex.connections = 2;
    config.postgres.multiplex.max_in_flight = 1;
    config.postgres.multiplex.wait_timeout = Duration::from_secs(20);
    let manager = support::build(config).await;
    let mux = manager.postgres().unwrap().multiplexed().clone();
    Reading::take(&snapshotter);

    // Five statements: five queue waits (the first waits for the first
    // connection to open) and five statement times.
    for i in 0..5i32 {
        let row = mux.query_one("SELECT $1::int", &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i);
    }
    let five = Reading::take(&snapshotter);
    assert_eq!(five.histogram_count(names::MUX_QUEUE_WAIT, LABELS), 5);
    assert_eq!(five.histogram_count(names::MUX_STATEMENT, LABELS), 5);
    // And under OpenTelemetry's name, by the statement's first keyword.
    assert_eq!(
        five.histogram_count(
            names::OTEL_OPERATION_DURATION,
            &[
                (names::OTEL_SYSTEM, "postgresql"),
                (names::OTEL_POOL_NAME, "multiplex"),
                ("db.operation.name", "SELECT")
            ]
        ),
        5
    );
    assert!(
        gauge_reaches(&snapshotter, names::MUX_OPEN, 2.0).await,
        "open connections gauge"
    );

    // Both places taken by slow statements, a third caller waits.
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let mux = mux.clone();
            tokio::spawn(async move { mux.execute("SELECT pg_sleep(2)", &[]).await })
        })
        .collect();
    assert!(
        support::eventually(Duration::from_secs(10), async || mux.status().in_flight
            == 2)
        .await,
        "{}",
        mux.status()
    );
    let waiter = {
        let mux = mux.clone();
        tokio::spawn(async move { mux.query_one("SELECT 1", &[]).await })
    };
    assert!(
        gauge_reaches(&snapshotter, names::MUX_IN_FLIGHT, 2.0).await,
        "in-flight gauge"
    );
    assert!(
        gauge_reaches(&snapshotter, names::MUX_WAITING, 1.0).await,
        "waiting gauge"
    );
    for statement in slow {
        statement.await.unwrap().unwrap();
    }
    waiter.await.unwrap().unwrap();
    assert!(
        gauge_reaches(&snapshotter, names::MUX_WAITING, 0.0).await,
        "waiting gauge back to 0"
    );
    assert!(
        gauge_reaches(&snapshotter, names::MUX_IN_FLIGHT, 0.0).await,
        "in-flight gauge back to 0"
    );
    manager.shutdown().await.unwrap();
}
