//! The three listener metrics move as each scenario predicts, seen through
//! metrics-util's debugging recorder (installed once for this process, so
//! this file holds one test): notifications received, events dropped by an
//! unread burst over a small buffer, and a reconnect after
//! `pg_terminate_backend` of the listener's backend.

#![cfg(feature = "metrics")]

mod support;

use std::time::Duration;

use dbmanager::metrics::names;
use dbmanager::{Listener, ListenerEvent};
use metrics_util::debugging::Snapshotter;
use support::{Reading, TestDb, pg_config};

const LABELS: &[(&str, &str)] = &[("database", "postgres"), ("pool", "listener")];

/// How long the test waits for an event the code guarantees.
const EVENT_BOUND: Duration = Duration::from_secs(30);

const BUFFER: usize = 10;

/// The three counters' increments since the previous reading (the recorder
/// resets on read): notifications, dropped, reconnects.
fn counters(snapshotter: &Snapshotter) -> (u64, u64, u64) {
    let reading = Reading::take(snapshotter);
    (
        reading.counter(names::LISTENER_NOTIFICATIONS, LABELS),
        reading.counter(names::LISTENER_DROPPED, LABELS),
        reading.counter(names::LISTENER_RECONNECTS, LABELS),
    )
}

async fn next(listener: &mut Listener) -> ListenerEvent {
    support::next_event(listener, EVENT_BOUND).await
}

fn payload(event: ListenerEvent) -> String {
    match event {
        ListenerEvent::Notification { payload, .. } => payload,
        other => panic!("a notification, not {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_metrics_move_as_the_scenario_predicts() {
    let snapshotter = support::install_recorder();

    let db = TestDb::create("listener_metrics").await;
    let mut config = pg_config(&db.url);
    config.postgres.listener.buffer_size = BUFFER;
    config.postgres.listener.liveness_interval = Duration::from_millis(500);
    config.postgres.listener.liveness_timeout = Duration::from_millis(500);
    config.postgres.listener.reconnect_max_delay = Duration::from_millis(500);
    let application_name = config.postgres.application_name.clone();
    let manager = support::build(config).await;
    let mut listener = manager.postgres().unwrap().listener().await.unwrap();
    listener.listen("metered").await.unwrap();
    let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    Reading::take(&snapshotter);

    // Five notifications, each read as it comes: five received, none
    // dropped.
    for i in 0..5 {
        client
            .execute("SELECT pg_notify('metered', $1)", &[&i.to_string()])
            .await
            .unwrap();
        assert_eq!(payload(next(&mut listener).await), i.to_string());
    }
    assert_eq!(counters(&snapshotter), (5, 0, 0));

    // A burst of 100 the consumer does not read: the connection reads them
    // all; all but the newest BUFFER are dropped.
    client
        .execute(
            "SELECT count(pg_notify('metered', g::text)) FROM generate_series(100, 199) g",
            &[],
        )
        .await
        .unwrap();
    assert!(
        support::eventually(EVENT_BOUND, async || listener.health().received == 105).await,
        "received {} of 105",
        listener.health().received
    );
    let missed = 100 - BUFFER as u64;
    assert_eq!(counters(&snapshotter), (100, missed, 0));
    assert_eq!(next(&mut listener).await, ListenerEvent::Lagged { missed });
    for i in 200 - BUFFER..200 {
        assert_eq!(payload(next(&mut listener).await), i.to_string());
    }
    assert_eq!(listener.try_next(), None);

    // The listener's backend terminated (the pool's sessions share its
    // application_name and go too; they are not listener metrics): one
    // reconnect, then a notification heard on the new connection.
    let terminated = support::query_i64(
        &support::admin_url(),
        &format!(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = '{application_name}') t"
        ),
    )
    .await;
    assert!(terminated >= 1);
    match next(&mut listener).await {
        ListenerEvent::Reconnected { .. } => {}
        other => panic!("Reconnected, not {other:?}"),
    }
    client
        .batch_execute("NOTIFY metered, 'after'")
        .await
        .unwrap();
    assert_eq!(payload(next(&mut listener).await), "after");
    assert_eq!(counters(&snapshotter), (1, 0, 1));
    let health = listener.health();
    assert_eq!(
        (health.received, health.dropped, health.reconnects),
        (106, missed, 1),
        "the health report agrees with the metrics"
    );
    manager.shutdown().await.unwrap();
}
