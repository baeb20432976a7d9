//! The health router served over real HTTP: status codes and bodies with
//! both databases up, with PostgreSQL stopped, and while draining.

mod support;

use std::time::Duration;

use dbmanager::{DatabaseManager, DatabaseUrl};
use support::{MongoServer, PgCluster, http_get, json};

async fn serve(db: DatabaseManager) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, dbmanager::http::health_router(db)).await });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_codes_and_bodies_up_then_postgres_stopped_then_draining() {
    let pg_password = "http-pg-secret";
    let mongo_password = "http-mongo-secret";
    let cluster = PgCluster::start_new(pg_password);
    let mongo = MongoServer::start("httpuser", mongo_password);
    let mut config = support::pg_config(&cluster.url("postgres"));
    config.mongodb.url = Some(DatabaseUrl::new(mongo.url()));
    config.mongodb.pool.min_size = 1;
    config.health.probe_timeout = Duration::from_secs(1);
    config.shutdown.grace_period = Duration::from_secs(10);
    let db = support::build(config).await;
    let addr = serve(db.clone()).await;
    // The database report, checked to show neither password each time.
    let db_health = async || {
        let (code, body) = http_get(addr, "/health/db").await;
        assert!(
            !body.contains(pg_password) && !body.contains(mongo_password),
            "{body}"
        );
        (code, body)
    };

    // Both up.
    let (code, body) = http_get(addr, "/health").await;
    assert_eq!(code, 200);
    assert_eq!(json(&body)["status"], "alive");
    let (code, body) = db_health().await;
    assert_eq!(code, 200, "{body}");
    let report = json(&body);
    assert_eq!(report["status"], "up");
    assert_eq!(report["components"]["postgres"]["status"], "up");
    assert_eq!(report["components"]["mongodb"]["status"], "up");
    let (code, body) = http_get(addr, "/health/ready").await;
    assert_eq!(code, 200);
    assert_eq!(json(&body)["status"], "ready");

    // PostgreSQL stopped: liveness still fine, the rest 503.
    cluster.stop();
    let (code, _) = http_get(addr, "/health").await;
    assert_eq!(code, 200, "liveness never depends on a database");
    let (code, body) = db_health().await;
    assert_eq!(code, 503, "{body}");
    let report = json(&body);
    assert_eq!(report["status"], "down");
    assert_eq!(report["components"]["postgres"]["status"], "down");
    assert!(report["components"]["postgres"]["error"].is_string());
    assert_eq!(report["components"]["mongodb"]["status"], "up");
    let (code, _) = http_get(addr, "/health/ready").await;
    assert_eq!(code, 503);

    // Draining: a connection held keeps the drain going.
    cluster.start();
    assert!(
        support::eventually(Duration::from_secs(10), async || http_get(
            addr,
            "/health/ready"
        )
        .await
        .0 == 200)
        .await,
        "ready again once PostgreSQL is back"
    );
    let held = db.postgres().unwrap().get().await.unwrap();
    let shutdown = tokio::spawn({
        let db = db.clone();
        async move { db.shutdown().await }
    });
    assert!(
        support::eventually(Duration::from_secs(5), async || db.phase()
            == dbmanager::Phase::Draining)
        .await
    );
    let (code, body) = http_get(addr, "/health/ready").await;
    assert_eq!(code, 503);
    assert_eq!(json(&body)["phase"], "draining");
    let (code, _) = db_health().await;
    assert_eq!(code, 503);
    let (code, _) = http_get(addr, "/health").await;
    assert_eq!(code, 200, "a draining process is still alive");
    drop(held);
    assert!(shutdown.await.unwrap().unwrap().drained);
}
