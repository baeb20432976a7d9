//! The managed LISTEN connection (`db.postgres()?.listener()`): every
//! notification sent while it is connected arrives, in order; a lost
//! connection (server restart, `pg_terminate_backend`, a frozen flow, a
//! failover) ends in `Reconnected` with every channel listened again, and
//! nothing is lost without a `Reconnected` or `Lagged` covering it; a
//! consumer that stops reading does not back up the server's queue.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use dbmanager::{Error, Listener, ListenerEvent};
use support::{FaultProxy, PgCluster, TestDb, pg_config};

/// How long a test waits for an event the code guarantees.
const EVENT_BOUND: Duration = Duration::from_secs(30);

fn config(url: &str) -> dbmanager::Config {
    let mut config = pg_config(url);
    config.postgres.listener.liveness_interval = Duration::from_millis(500);
    config.postgres.listener.liveness_timeout = Duration::from_millis(500);
    config.postgres.listener.reconnect_max_delay = Duration::from_millis(500);
    config
}

/// The next event within [`EVENT_BOUND`].
async fn next(listener: &mut Listener) -> ListenerEvent {
    support::next_event(listener, EVENT_BOUND).await
}

/// Reads events until a `Reconnected`; returns its gap and the
/// notifications before it.
async fn until_reconnected(listener: &mut Listener) -> (Duration, Vec<ListenerEvent>) {
    let mut before = Vec::new();
    loop {
        match next(listener).await {
            ListenerEvent::Reconnected { gap } => return (gap, before),
            other => before.push(other),
        }
    }
}

fn payload_of(event: &ListenerEvent) -> Option<(&str, &str)> {
    match event {
        ListenerEvent::Notification {
            channel, payload, ..
        } => Some((channel, payload)),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_sent_while_connected_arrive_in_order_on_the_channels_listened() {
    let db = TestDb::create("listener_order").await;
    let manager = support::build(config(&db.url)).await;
    let mut listener = manager.postgres().unwrap().listener().await.unwrap();
    listener.listen("orders").await.unwrap();
    listener.listen("Mixed Case \"quoted\"").await.unwrap();
    assert_eq!(
        listener.channels(),
        ["Mixed Case \"quoted\"", "orders"].map(String::from)
    );
    for bad in ["", &"x".repeat(64), "a\0b"] {
        assert!(
            matches!(
                listener.listen(bad).await,
                Err(Error::InvalidChannel { .. })
            ),
            "{bad:?} is refused"
        );
    }

    let client = support::client(&db.url).await;
    let sender_pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    // Autocommit notifications, then a transaction's (delivered at commit,
    // in order), on both channels; one on a channel nobody listens to.
    for i in 0..500 {
        client
            .execute("SELECT pg_notify('orders', $1)", &[&i.to_string()])
            .await
            .unwrap();
    }
    client
        .batch_execute(
            "BEGIN; SELECT pg_notify('orders', g::text) FROM generate_series(500, 999) g; \
             NOTIFY unheard, 'x'; NOTIFY \"Mixed Case \"\"quoted\"\"\", 'last'; COMMIT",
        )
        .await
        .unwrap();
    for i in 0..1000 {
        let event = next(&mut listener).await;
        assert_eq!(
            event,
            ListenerEvent::Notification {
                channel: "orders".into(),
                payload: i.to_string(),
                process_id: sender_pid,
            }
        );
    }
    assert_eq!(
        payload_of(&next(&mut listener).await),
        Some(("Mixed Case \"quoted\"", "last"))
    );

    let health = manager.health().await;
    let listeners = health.components["postgres"].listeners.clone().unwrap();
    assert_eq!(listeners.len(), 1);
    assert!(listeners[0].connected);
    assert_eq!(listeners[0].received, 1001);
    assert_eq!(listeners[0].lag, 0);
    assert!(listeners[0].last_event_age_ms.is_some());
    let json = serde_json::to_value(&health).unwrap();
    assert_eq!(
        json["components"]["postgres"]["listeners"][0]["channels"][1],
        "orders"
    );

    // After `unlisten` returns, the channel is not heard.
    listener.unlisten("orders").await.unwrap();
    client
        .batch_execute("NOTIFY orders, 'gone'; NOTIFY \"Mixed Case \"\"quoted\"\"\", 'marker'")
        .await
        .unwrap();
    assert_eq!(
        payload_of(&next(&mut listener).await),
        Some(("Mixed Case \"quoted\"", "marker"))
    );
    assert_eq!(listener.try_next(), None);
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_the_stream_and_refuses_new_listeners() {
    let db = TestDb::create("listener_shutdown").await;
    let manager = support::build(config(&db.url)).await;
    let pool = manager.postgres().unwrap();
    let mut listener = pool.listener().await.unwrap();
    listener.listen("jobs").await.unwrap();
    let client = support::client(&db.url).await;
    client.batch_execute("NOTIFY jobs, 'before'").await.unwrap();
    // Buffered before the shutdown: still delivered, then the end.
    support::eventually(EVENT_BOUND, async || listener.health().received == 1).await;

    let started = Instant::now();
    let report = manager.shutdown().await.unwrap();
    assert!(report.drained, "{report:?}");
    let grace = Duration::from_secs(5);
    assert_eq!(
        payload_of(&next(&mut listener).await),
        Some(("jobs", "before"))
    );
    assert_eq!(
        tokio::time::timeout(grace, listener.next()).await,
        Ok(None),
        "the stream ends"
    );
    assert!(started.elapsed() < grace, "{:?}", started.elapsed());
    assert!(!listener.is_connected());
    assert!(matches!(
        listener.listen("more").await,
        Err(Error::ShuttingDown { .. })
    ));
    assert!(matches!(
        pool.listener().await,
        Err(Error::ShuttingDown { .. })
    ));
}

/// Waits for `Reconnected`, then proves the channel is listened on the new
/// connection with a notification sent through `url`.
async fn reconnected_and_hearing(listener: &mut Listener, url: &str, channel: &str) -> Duration {
    let (gap, _) = until_reconnected(listener).await;
    assert!(listener.is_connected());
    let client = support::client(url).await;
    client
        .batch_execute(&format!("NOTIFY {channel}, 'after'"))
        .await
        .unwrap();
    loop {
        if payload_of(&next(listener).await) == Some((channel, "after")) {
            return gap;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_backend_is_replaced_and_every_channel_listened_again() {
    let db = TestDb::create("listener_terminate").await;
    let config = config(&db.url);
    let application_name = config.postgres.application_name.clone();
    let manager = support::build(config).await;
    let mut listener = manager.postgres().unwrap().listener().await.unwrap();
    listener.listen("one").await.unwrap();
    listener.listen("two").await.unwrap();

    let killed = Instant::now();
    let terminated = support::query_i64(
        &support::admin_url(),
        &format!(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = '{application_name}') t"
        ),
    )
    .await;
    assert!(terminated >= 1);
    let gap = reconnected_and_hearing(&mut listener, &db.url, "two").await;
    println!(
        "pg_terminate_backend: Reconnected {:?} after the kill (gap {gap:?})",
        killed.elapsed()
    );
    assert_eq!(listener.channels(), ["one", "two"].map(String::from));
    assert_eq!(listener.health().reconnects, 1);
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_connection_is_detected_within_the_liveness_settings_and_replaced() {
    let db = TestDb::create("listener_frozen").await;
    let (proxy, via) = FaultProxy::in_front_of(&db.url).await;
    let config = config(&via);
    let bound =
        config.postgres.listener.liveness_interval + config.postgres.listener.liveness_timeout;
    let manager = support::build(config).await;
    let mut listener = manager.postgres().unwrap().listener().await.unwrap();
    listener.listen("frozen").await.unwrap();

    proxy.freeze();
    let frozen = Instant::now();
    assert!(
        support::eventually(EVENT_BOUND, async || !listener.is_connected()).await,
        "the frozen connection is given up"
    );
    let detected = frozen.elapsed();
    // One interval until the round trip, its bound, and the scheduler's
    // slack on a loaded machine.
    assert!(
        detected < bound + Duration::from_secs(1),
        "detected after {detected:?}, settings allow {bound:?}"
    );
    proxy.thaw();
    let gap = reconnected_and_hearing(&mut listener, &db.url, "frozen").await;
    println!(
        "frozen flow: detected after {detected:?} (interval + timeout = {bound:?}); Reconnected {:?} after the freeze (gap {gap:?})",
        frozen.elapsed()
    );
    manager.shutdown().await.unwrap();
}

/// A sender that sends ids `0..count` one autocommit `NOTIFY` each and
/// records when each was committed; across a restart it reconnects and
/// carries on (an id whose commit it did not see is not recorded).
async fn send_ids(url: String, count: u32) -> Vec<(u32, Instant)> {
    let mut committed = Vec::with_capacity(count as usize);
    let mut client = support::client(&url).await;
    let mut id = 0;
    while id < count {
        match client
            .execute("SELECT pg_notify('ids', $1)", &[&id.to_string()])
            .await
        {
            Ok(_) => {
                committed.push((id, Instant::now()));
                id += 1;
            }
            Err(_) => {
                // The server is restarting: skip this id (it may or may not
                // have been sent) and reconnect, within a bound.
                id += 1;
                let deadline = Instant::now() + EVENT_BOUND;
                client = loop {
                    match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                        Ok((client, connection)) => {
                            tokio::spawn(connection);
                            break client;
                        }
                        Err(e) => {
                            assert!(Instant::now() < deadline, "the server came back: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                };
            }
        }
    }
    committed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_notifications_through_a_restart_arrive_or_are_covered_by_reconnected() {
    const COUNT: u32 = 10_000;
    let cluster = PgCluster::start_new("listener-pw");
    let url = cluster.url("postgres");
    let manager = support::build(config(&url)).await;
    let mut listener = manager.postgres().unwrap().listener().await.unwrap();
    listener.listen("ids").await.unwrap();

    let sending = tokio::spawn(send_ids(url.clone(), COUNT));
    let mut received: Vec<u32> = Vec::new();
    let mut reconnected_at: Vec<Instant> = Vec::new();
    let mut restarted = None;
    let mut first_reconnect = None;
    while received.last() != Some(&(COUNT - 1)) {
        match next(&mut listener).await {
            ListenerEvent::Notification { payload, .. } => {
                let id: u32 = payload.parse().unwrap();
                received.push(id);
                if id == COUNT / 3 && restarted.is_none() {
                    // A restart in the middle of the stream.
                    let cluster = &cluster;
                    restarted = Some(Instant::now());
                    tokio::task::block_in_place(|| {
                        cluster.stop();
                        cluster.start();
                    });
                }
            }
            ListenerEvent::Reconnected { gap } => {
                first_reconnect.get_or_insert((Instant::now(), gap));
                reconnected_at.push(Instant::now());
            }
            ListenerEvent::Lagged { missed } => {
                panic!("lagged by {missed} with a reading consumer")
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    let committed = sending.await.unwrap();
    assert!(
        restarted.is_some() && !reconnected_at.is_empty(),
        "a restart happened and was reported"
    );

    // In order, no duplicates.
    assert!(
        received.windows(2).all(|w| w[0] < w[1]),
        "delivered in order"
    );
    // Every committed id arrived, or a Reconnected came after its commit:
    // a consumer that resyncs on it sees the change the id stood for.
    let heard: BTreeSet<u32> = received.iter().copied().collect();
    let mut covered = 0;
    for (id, at) in &committed {
        if !heard.contains(id) {
            assert!(
                reconnected_at.iter().any(|r| r >= at),
                "id {id} was committed, never delivered, and no Reconnected covers it"
            );
            covered += 1;
        }
    }
    let (seen, gap) = first_reconnect.unwrap();
    println!(
        "restart: {} ids committed, {} delivered, {covered} covered by Reconnected; Reconnected {:?} after the restart began (gap {gap:?})",
        committed.len(),
        received.len(),
        seen.saturating_duration_since(restarted.unwrap()),
    );
    manager.shutdown().await.unwrap();
}

/// How many notifications the stalled-consumer test sends:
/// `LISTENER_STALL_NOTIFICATIONS`, default 1,000,000.
fn stall_count() -> u32 {
    std::env::var("LISTENER_STALL_NOTIFICATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// How long the stalled consumer reads nothing while the notifications are
/// sent: `LISTENER_STALL_SECS`, default 60 (the sends are spread over it).
fn stall_for() -> Duration {
    Duration::from_secs(
        std::env::var("LISTENER_STALL_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_consumer_leaves_the_server_queue_empty_and_notify_working() {
    const BATCH: u32 = 10_000;
    let count = stall_count();
    let stall = stall_for();
    let db = TestDb::create("listener_stall").await;
    let mut config = config(&db.url);
    config.postgres.listener.buffer_size = 10_000;
    let manager = support::build(config).await;
    let mut listener = manager.postgres().unwrap().listener().await.unwrap();
    listener.listen("flood").await.unwrap();

    // The consumer reads nothing for `stall` while the notifications are
    // sent, in transactions of BATCH each, spread over that time.
    let client = support::client(&db.url).await;
    let other = support::client(&db.url).await;
    let started = Instant::now();
    let mut peak_usage: f64 = 0.0;
    let mut start = 0;
    while start < count {
        let end = (start + BATCH).min(count) - 1;
        client
            .execute(
                "SELECT count(pg_notify('flood', g::text)) FROM generate_series($1::int, $2::int) g",
                &[&(start as i32), &(end as i32)],
            )
            .await
            .unwrap();
        // Another session's NOTIFY keeps working, and the queue stays empty.
        other
            .batch_execute("NOTIFY elsewhere, 'still works'")
            .await
            .unwrap();
        let usage: f64 = other
            .query_one("SELECT pg_notification_queue_usage()", &[])
            .await
            .unwrap()
            .get(0);
        peak_usage = peak_usage.max(usage);
        start = end + 1;
        // Pace the sender so the stall lasts the whole `stall`.
        let due = stall.mul_f64(f64::from(start) / f64::from(count));
        if let Some(ahead) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(ahead).await;
        }
    }
    let sent_in = started.elapsed();
    // The connection read everything, though the consumer read nothing.
    assert!(
        support::eventually(Duration::from_secs(120), async || listener
            .health()
            .received
            == u64::from(count))
        .await,
        "received {} of {count}",
        listener.health().received
    );
    let drained_in = started.elapsed();
    let usage: f64 = other
        .query_one("SELECT pg_notification_queue_usage()", &[])
        .await
        .unwrap()
        .get(0);
    println!(
        "stalled consumer: {count} notifications sent in {sent_in:?}, all read off the socket after {drained_in:?}; queue usage peak {peak_usage:.6}, at the end {usage:.6}"
    );
    assert!(usage < 0.001, "queue usage {usage}");
    assert!(peak_usage < 0.01, "peak queue usage {peak_usage}");

    // The consumer wakes up: told what it missed, then the newest events.
    let health = listener.health();
    assert_eq!(health.dropped, u64::from(count) - 10_000);
    assert_eq!(
        next(&mut listener).await,
        ListenerEvent::Lagged {
            missed: u64::from(count) - 10_000
        }
    );
    let mut last = None;
    for _ in 0..10_000 {
        last = payload_of(&next(&mut listener).await).map(|(_, p)| p.parse::<u32>().unwrap());
    }
    assert_eq!(last, Some(count - 1));
    assert_eq!(listener.try_next(), None);
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failover_the_listener_hears_the_promoted_standby() {
    let primary = PgCluster::start_new("listener-failover-pw");
    let standby = primary.standby();
    let url = format!(
        "postgres://postgres:{}@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
        primary.password, primary.port, standby.port
    );
    let mut config = config(&url);
    config.postgres.pool.connect_timeout = Duration::from_secs(1);
    let manager = support::build(config).await;
    let mut listener = manager.postgres().unwrap().listener().await.unwrap();
    listener.listen("failover").await.unwrap();
    let before = support::client(&primary.url("postgres")).await;
    before
        .batch_execute("NOTIFY failover, 'before'")
        .await
        .unwrap();
    assert_eq!(
        payload_of(&next(&mut listener).await),
        Some(("failover", "before"))
    );

    let stopped = Instant::now();
    primary.stop();
    standby.promote();
    let promoted = stopped.elapsed();
    let gap = reconnected_and_hearing(&mut listener, &standby.url("postgres"), "failover").await;
    println!(
        "failover: promotion took {promoted:?}; Reconnected on the promoted standby {:?} after the primary stopped (gap {gap:?})",
        stopped.elapsed()
    );
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_to_one_consumer_against_a_raw_connection() {
    const COUNT: u32 = 200_000;
    let db = TestDb::create("listener_rate").await;
    let manager = support::build(config(&db.url)).await;
    let mut listener = manager.postgres().unwrap().listener().await.unwrap();
    listener.listen("rate").await.unwrap();
    let client = support::client(&db.url).await;
    let flood =
        format!("SELECT count(pg_notify('rate', g::text)) FROM generate_series(1, {COUNT}) g");

    // Through the listener: from the send to the consumer's last event.
    let started = Instant::now();
    client.execute(flood.as_str(), &[]).await.unwrap();
    let mut heard = 0;
    while heard < COUNT {
        if let ListenerEvent::Notification { .. } = next(&mut listener).await {
            heard += 1;
        }
    }
    let ours = started.elapsed();
    assert_eq!(listener.health().dropped, 0);
    listener.unlisten("rate").await.unwrap();

    // A raw tokio-postgres connection driven by hand, the same way.
    let (raw, mut connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let Ok(tokio_postgres::AsyncMessage::Notification(n)) = message {
                let _ = tx.send(n);
            }
        }
    });
    raw.batch_execute("LISTEN rate").await.unwrap();
    let started = Instant::now();
    client.execute(flood.as_str(), &[]).await.unwrap();
    for _ in 0..COUNT {
        tokio::time::timeout(EVENT_BOUND, rx.recv())
            .await
            .unwrap()
            .unwrap();
    }
    let baseline = started.elapsed();
    let rate = |d: Duration| f64::from(COUNT) / d.as_secs_f64();
    println!(
        "throughput: {COUNT} notifications to one consumer: listener {ours:?} ({:.0}/s), raw tokio-postgres {baseline:?} ({:.0}/s)",
        rate(ours),
        rate(baseline)
    );
    manager.shutdown().await.unwrap();
}
