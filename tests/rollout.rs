//! A rollout's shutdown sequence (`dbmanager::http::Rollout`) over real
//! HTTP: on the signal readiness reads `draining` while requests are still
//! served from the database; then the listener closes, the request in
//! flight finishes, and the databases drain.

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use dbmanager::DatabaseManager;
use dbmanager::http::Rollout;
use support::{TestDb, http_get, json};
use tokio::sync::{Notify, oneshot};

/// What the test's routes share: the manager and a latch that holds a
/// request in flight until the test releases it.
#[derive(Clone)]
struct App {
    db: DatabaseManager,
    entered: Arc<Notify>,
    release: Arc<Notify>,
}

/// A request that reads the database.
async fn work(State(app): State<App>) -> Result<String, dbmanager::Error> {
    let client = app.db.postgres()?.get().await?;
    let one: i32 = client.query_one("SELECT 1", &[]).await?.get(0);
    Ok(one.to_string())
}

/// A request that stays in flight until the test releases it, then reads
/// the database.
async fn hold(State(app): State<App>) -> Result<String, dbmanager::Error> {
    app.entered.notify_one();
    app.release.notified().await;
    work(State(app)).await
}

/// Whether nothing accepts connections on `addr` any more.
async fn refused(addr: std::net::SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reads_draining_while_requests_are_served_then_the_listener_closes_and_drains() {
    let pg = TestDb::create("rollout").await;
    let db = support::manager(&pg.url).await;
    let app = App {
        db: db.clone(),
        entered: Arc::new(Notify::new()),
        release: Arc::new(Notify::new()),
    };
    let router = axum::Router::new()
        .route("/work", get(work))
        .route("/hold", get(hold))
        .with_state(app.clone())
        .merge(dbmanager::http::health_router(db.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (signal, signalled) = oneshot::channel::<()>();
    let (hurry, hurried) = oneshot::channel::<()>();
    // A minute: only `hurry` ends the unready period in this test, so
    // nothing here depends on how fast the machine is.
    let rollout = Rollout::new(db.clone())
        .unready_period(Duration::from_secs(60))
        .after(
            async move {
                let _ = signalled.await;
            },
            async move {
                let _ = hurried.await;
            },
        );
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(rollout)
            .await
    });

    let (code, body) = http_get(addr, "/health/ready").await;
    assert_eq!(
        (code, json(&body)["status"].clone()),
        (200, "ready".into()),
        "{body}"
    );

    // The signal: readiness turns false at once, and says why.
    signal.send(()).unwrap();
    let mut last = String::new();
    let draining = support::eventually(Duration::from_secs(10), async || {
        let (code, body) = http_get(addr, "/health/ready").await;
        last = body;
        code == 503
    })
    .await;
    assert!(draining, "readiness never turned false: {last}");
    let probe = json(&last);
    assert_eq!(probe["status"], "draining", "{last}");
    assert_eq!(probe["phase"], "stopping", "{last}");
    assert_eq!(db.phase(), dbmanager::Phase::Stopping);

    // Still serving, from the database, on new connections.
    for _ in 0..3 {
        let (code, body) = http_get(addr, "/work").await;
        assert_eq!((code, body.as_str()), (200, "1"), "served while unready");
    }
    let (code, _) = http_get(addr, "/health").await;
    assert_eq!(code, 200, "liveness stays true during a rollout");

    // A request in flight when the period ends.
    let in_flight = tokio::spawn(async move { http_get(addr, "/hold").await });
    tokio::time::timeout(Duration::from_secs(10), app.entered.notified())
        .await
        .expect("the held request reached its handler");

    // The period ends: the listener closes while the request is in flight.
    hurry.send(()).unwrap();
    assert!(
        support::eventually(Duration::from_secs(10), async || refused(addr).await).await,
        "the listener still accepts after the unready period"
    );
    assert!(
        !server.is_finished(),
        "the server waits for the request in flight"
    );

    // It finishes, from the database (the pool still serves), and the server
    // returns.
    app.release.notify_one();
    let (code, body) = in_flight.await.unwrap();
    assert_eq!(
        (code, body.as_str()),
        (200, "1"),
        "the request in flight finished"
    );
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server returned once the request in flight finished")
        .unwrap()
        .expect("axum::serve returned Ok");

    // Then the databases drain, cleanly.
    let report = db.shutdown().await.unwrap();
    assert!(report.drained, "{report:?}");
    assert_eq!(report.forced(), 0);
    assert_eq!(db.phase(), dbmanager::Phase::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unready_period_ends_by_itself_and_announcing_twice_or_after_shutdown_changes_nothing()
{
    let pg = TestDb::create("rollout_period").await;
    let db = support::manager(&pg.url).await;
    let router = dbmanager::http::health_router(db.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // No hurry: the period alone ends the sequence.
    let rollout = Rollout::new(db.clone())
        .unready_period(Duration::from_millis(200))
        .after(std::future::ready(()), std::future::pending());
    let served = axum::serve(listener, router).with_graceful_shutdown(rollout);
    tokio::time::timeout(Duration::from_secs(30), served)
        .await
        .expect("the sequence ended after its unready period")
        .unwrap();
    assert!(refused(addr).await, "the listener closed");
    assert_eq!(db.phase(), dbmanager::Phase::Stopping);
    assert!(!db.readiness().await);
    // The pool still serves until shutdown().
    let client = db.postgres().unwrap().get().await.unwrap();
    client.query_one("SELECT 1", &[]).await.unwrap();
    drop(client);

    db.announce_shutdown();
    assert_eq!(db.phase(), dbmanager::Phase::Stopping, "announcing twice");
    db.shutdown().await.unwrap();
    db.announce_shutdown();
    assert_eq!(
        db.phase(),
        dbmanager::Phase::Closed,
        "announcing after shutdown"
    );
}
