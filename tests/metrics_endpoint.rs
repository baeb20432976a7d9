//! The `/metrics` route of docs/operations.md: metrics-exporter-prometheus
//! (default features off) installed as the recorder, its handle rendered by
//! an axum route, scraped over HTTP. Proves the crate's `metrics` facade
//! and the exporter's are one (a mismatch would scrape nothing of ours).

mod support;

use std::time::Duration;

use dbmanager::axum::Router;
use dbmanager::axum::routing::get;
use metrics_exporter_prometheus::PrometheusBuilder;
use support::{TestDb, http_get, pg_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_of_metrics_shows_the_pool_series() {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder of this test binary");
    dbmanager::metrics::describe();

    let db = TestDb::create("metrics_endpoint").await;
    let mut config = pg_config(&db.url);
    config.postgres.pool.min_idle = 1;
    let manager = support::build(config).await;
    let client = manager.postgres().unwrap().get().await.unwrap();
    client.query_one("SELECT 1", &[]).await.unwrap();
    drop(client);

    let app = Router::new().route("/metrics", get(move || async move { handle.render() }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { dbmanager::axum::serve(listener, app).await });

    let wanted = [
        "# TYPE dbmanager_pool_open_connections gauge",
        "dbmanager_pool_max_connections{database=\"postgres\",pool=\"primary\"} 4",
        "dbmanager_pool_open_connections{database=\"postgres\",pool=\"primary\"}",
        "dbmanager_connections_created_total{database=\"postgres\",pool=\"primary\"}",
        "dbmanager_acquire_wait_seconds",
    ];
    let mut last = String::new();
    let scraped = support::eventually(Duration::from_secs(10), async || {
        let (code, body) = http_get(addr, "/metrics").await;
        let ok = code == 200 && wanted.iter().all(|w| body.contains(w));
        last = body;
        ok
    })
    .await;
    assert!(
        scraped,
        "a scrape lacks the pool series {wanted:?}:\n{last}"
    );
    server.abort();
    manager.shutdown().await.unwrap();
}
