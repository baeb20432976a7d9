//! The managed LISTEN connection under a three-member Patroni cluster
//! (etcd, synchronous mode): a listener on a URL naming every member with
//! `target_session_attrs=read-write` listens on two channels; after a
//! planned switchover (`patronictl switchover`) it ends in `Reconnected`
//! on the new leader with both channels listened again. One cluster for
//! the whole test: it takes ~20 s to come up.

mod support;

use std::time::{Duration, Instant};

use dbmanager::{Listener, ListenerEvent};
use support::{Patroni, pg_config};

/// How long the test waits for an event the code guarantees.
const EVENT_BOUND: Duration = Duration::from_secs(60);

const CHANNELS: [&str; 2] = ["alpha", "beta"];

/// The next event within [`EVENT_BOUND`].
async fn next(listener: &mut Listener) -> ListenerEvent {
    support::next_event(listener, EVENT_BOUND).await
}

/// Sends `payload` on every channel through `client`, then reads events
/// until each channel delivered it; returns the `Reconnected` events seen
/// on the way (none expected once the listener settled).
async fn hears_every_channel(
    listener: &mut Listener,
    client: &tokio_postgres::Client,
    payload: &str,
) -> usize {
    for channel in CHANNELS {
        client
            .batch_execute(&format!("NOTIFY {channel}, '{payload}'"))
            .await
            .unwrap();
    }
    let mut heard = Vec::new();
    let mut reconnects = 0;
    while heard.len() < CHANNELS.len() {
        match next(listener).await {
            ListenerEvent::Notification {
                channel,
                payload: p,
                ..
            } if p == payload => heard.push(channel),
            ListenerEvent::Reconnected { .. } => reconnects += 1,
            ListenerEvent::Lagged { missed } => panic!("lagged by {missed}"),
            _ => {}
        }
    }
    assert_eq!(heard, CHANNELS.map(String::from), "in the order sent");
    reconnects
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_patroni_switchover_the_listener_hears_the_new_leader() {
    let mut cluster = Patroni::start(3);
    let (leader, _) = cluster.wait_for_leader(None, Duration::from_secs(60));
    let mut config = pg_config(&cluster.url("postgres"));
    config.postgres.pool.connect_timeout = Duration::from_secs(1);
    config.postgres.listener.liveness_interval = Duration::from_millis(500);
    config.postgres.listener.liveness_timeout = Duration::from_millis(500);
    config.postgres.listener.reconnect_max_delay = Duration::from_millis(500);
    let db = support::build(config).await;
    let mut listener = db.postgres().unwrap().listener().await.unwrap();
    for channel in CHANNELS {
        listener.listen(channel).await.unwrap();
    }
    let old = support::client(&cluster.member_url(leader, "postgres")).await;
    assert_eq!(hears_every_channel(&mut listener, &old, "before").await, 0);

    // The consumer keeps reading during the switchover, in a task of its
    // own, and notes when `Reconnected` arrived.
    // Nothing is sent during the switchover: the first event is the one.
    let reading = tokio::spawn(async move {
        match next(&mut listener).await {
            ListenerEvent::Reconnected { gap } => (listener, Instant::now(), gap),
            other => panic!("Reconnected first, not {other:?}"),
        }
    });
    let candidate = (0..3)
        .find(|&i| i != leader && cluster.is_synchronous(i))
        .expect("a synchronous standby");
    let started = Instant::now();
    tokio::task::block_in_place(|| cluster.switchover(leader, candidate, Duration::from_secs(60)));
    let returned = Instant::now();
    let (new_leader, _) = tokio::task::block_in_place(|| {
        cluster.wait_for_leader(Some(leader), Duration::from_secs(60))
    });
    assert_eq!(new_leader, candidate);
    let (mut listener, reconnected, gap) = tokio::time::timeout(EVENT_BOUND, reading)
        .await
        .expect("Reconnected within the bound")
        .unwrap();
    assert!(listener.is_connected());
    assert_eq!(listener.channels(), CHANNELS.map(String::from));

    // Notifications do not cross servers (and a standby refuses LISTEN):
    // hearing a NOTIFY sent on the new leader proves the listener's
    // session is there, with both channels listened again.
    let new = support::client(&cluster.member_url(new_leader, "postgres")).await;
    let in_recovery: bool = new
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!in_recovery, "the new leader is writable");
    let extra = hears_every_channel(&mut listener, &new, "after").await;
    assert_eq!(extra, 0, "one Reconnected for one switchover");
    assert_eq!(listener.health().reconnects, 1);

    let after_return = if reconnected >= returned {
        format!("{:?} after", reconnected - returned)
    } else {
        format!("{:?} before", returned - reconnected)
    };
    println!(
        "patroni switchover: patronictl took {:?}; Reconnected {after_return} it returned ({:?} after it started; gap {gap:?})",
        returned - started,
        reconnected.saturating_duration_since(started),
    );
    db.shutdown().await.unwrap();
}
