//! The example service (examples/service.rs) started as a process: seed,
//! CRUD over HTTP on both databases, metrics, and a graceful SIGTERM.

mod support;

use std::time::Duration;

use support::{Example, TestDb, http, json, query_i64, unique_name};

struct Service(Example);

impl Service {
    fn seed(&self) -> String {
        let output = self.0.command(&["seed"]).output().unwrap();
        assert!(
            output.status.success(),
            "seed failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_crud_metrics_and_a_graceful_sigterm() {
    let pg = TestDb::adopt(&unique_name("service"));
    let (mongo_url, _mongo) = support::mongo();
    let mongo_db = unique_name("service");
    let port = support::free_port();
    let service = Service(Example {
        name: "service",
        env: vec![
            ("DATABASE_URL".into(), pg.url.clone()),
            ("MONGODB_URL".into(), mongo_url.clone()),
            ("DBMANAGER_MONGODB__DATABASE".into(), mongo_db.clone()),
            (
                "DBMANAGER_POSTGRES__POOL__MAINTENANCE_INTERVAL".into(),
                "200ms".into(),
            ),
            ("PORT".into(), port.to_string()),
            ("RUST_LOG".into(), "warn".into()),
            // The rollout's unready period ends by itself here (the guide's
            // service test cuts it short with a second SIGTERM).
            ("DBMANAGER_SHUTDOWN__UNREADY_PERIOD".into(), "1s".into()),
        ],
    });

    // Seeding twice leaves the same data.
    assert!(service.seed().contains("seeded"));
    service.seed();
    let count = |table: &str| {
        let url = pg.url.clone();
        let table = table.to_string();
        async move { query_i64(&url, &format!("SELECT count(*) FROM {table}")).await }
    };
    assert_eq!(count("users").await, 3);
    assert_eq!(count("system_configs").await, 1);

    let running = service.0.start();
    let addr = running.addr;

    // Users (PostgreSQL).
    let (code, body) = http(
        addr,
        "POST",
        "/users",
        Some(r#"{"email":"linus@example.com","name":"Linus"}"#),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let user = json(&body);
    let id = user["id"].as_str().unwrap().to_string();
    let (code, body) = http(addr, "GET", &format!("/users/{id}"), None).await;
    assert_eq!(code, 200);
    assert_eq!(json(&body)["email"], "linus@example.com");
    let (code, body) = http(
        addr,
        "PATCH",
        &format!("/users/{id}"),
        Some(r#"{"name":"Linus T."}"#),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(json(&body)["name"], "Linus T.");
    let (code, _) = http(
        addr,
        "POST",
        "/users",
        Some(r#"{"email":"linus@example.com","name":"Dup"}"#),
    )
    .await;
    assert_eq!(code, 409, "the unique email index answers 409");
    let (code, body) = http(addr, "GET", "/users", None).await;
    assert_eq!(code, 200);
    assert_eq!(json(&body).as_array().unwrap().len(), 4);
    let (code, _) = http(addr, "DELETE", &format!("/users/{id}"), None).await;
    assert_eq!(code, 204);
    let (code, _) = http(addr, "GET", &format!("/users/{id}"), None).await;
    assert_eq!(code, 404);

    // Posts (MongoDB).
    let (code, body) = http(
        addr,
        "POST",
        "/posts",
        Some(r#"{"title":"Hi","body":"First","author":"ada"}"#),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let post_id = json(&body)["_id"].as_str().unwrap().to_string();
    let (code, body) = http(addr, "GET", &format!("/posts/{post_id}"), None).await;
    assert_eq!(code, 200);
    assert_eq!(json(&body)["title"], "Hi");
    let (code, body) = http(
        addr,
        "PATCH",
        &format!("/posts/{post_id}"),
        Some(r#"{"title":"Hello"}"#),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(json(&body)["title"], "Hello");
    let (code, body) = http(
        addr,
        "POST",
        &format!("/posts/{post_id}/replies"),
        Some(r#"{"author":"grace","body":"Welcome"}"#),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["replies"][0]["author"], "grace");
    let (_, body) = http(addr, "POST", &format!("/posts/{post_id}/upvote"), None).await;
    assert_eq!(json(&body)["upvotes"], 1);
    let (code, body) = http(addr, "GET", "/posts", None).await;
    assert_eq!(code, 200);
    assert_eq!(
        json(&body).as_array().unwrap().len(),
        3,
        "two seeded posts and one new"
    );
    let (code, _) = http(addr, "DELETE", &format!("/posts/{post_id}"), None).await;
    assert_eq!(code, 204);
    let (code, _) = http(addr, "GET", &format!("/posts/{post_id}"), None).await;
    assert_eq!(code, 404);

    // Health and metrics.
    let (code, body) = http(addr, "GET", "/health/db", None).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["status"], "up");
    assert!(
        support::eventually(Duration::from_secs(10), async || {
            let (_, metrics) = http(addr, "GET", "/metrics", None).await;
            metrics
                .contains("dbmanager_pool_open_connections{database=\"postgres\",pool=\"primary\"}")
                && metrics.contains(
                    "dbmanager_pool_open_connections{database=\"mongodb\",pool=\"mongodb\"}",
                )
                && metrics.contains("dbmanager_acquire_wait_seconds")
        })
        .await,
        "/metrics shows the pool gauges"
    );

    // SIGTERM while a slow request is in flight: it finishes, then exit 0.
    let slow = tokio::spawn(async move { http(addr, "GET", "/slow/1500", None).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.terminate();
    let (code, body) = slow.await.unwrap();
    assert_eq!(code, 200, "the in-flight request finished: {body}");
    let (status, _) = running.wait().await;
    assert!(status.success(), "exit status {status:?}");
    assert!(
        support::database_sessions_reach(&pg.name, 0, Duration::from_secs(5)).await,
        "the service closed its sessions"
    );
    let _ = mongo_url;
}
