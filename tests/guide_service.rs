//! The guide's service (examples/guide.rs, shown whole in docs/guide.md)
//! started as a process: it migrates, serves, writes both databases; on
//! SIGTERM readiness reads "draining" while it still serves, and on the
//! second it finishes the request in flight, drains and exits 0.

mod support;

use std::time::Duration;

use support::{Example, TestDb, http, query_i64, unique_name};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_request_lets_it_finish_then_drains_and_exits_0() {
    let pg = TestDb::adopt(&unique_name("guide"));
    let (mongo_url, _mongo) = support::mongo();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let guide = Example {
        name: "guide",
        env: vec![
            ("DATABASE_URL".into(), pg.url.clone()),
            ("MONGODB_URL".into(), mongo_url),
            ("DBMANAGER_MONGODB__DATABASE".into(), unique_name("guide")),
            ("PORT".into(), port.to_string()),
            ("DBMANAGER_SHUTDOWN__UNREADY_PERIOD".into(), "60s".into()),
        ],
    };
    let running = guide.start();
    let addr = running.addr;

    let (code, body) = http(
        addr,
        "POST",
        "/users",
        Some(r#"{"email":"ada@example.com","name":"Ada"}"#),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = http(addr, "GET", "/users", None).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("ada@example.com"), "{body}");
    // The same email again breaks the unique index: the transaction rolls
    // back and dbmanager::Error answers 500 with its JSON body.
    let (code, body) = http(
        addr,
        "POST",
        "/users",
        Some(r#"{"email":"ada@example.com","name":"Ada again"}"#),
    )
    .await;
    assert_eq!(code, 500, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["kind"], "postgres", "{body}");
    assert!(error["error"].as_str().unwrap().contains("23505"), "{body}");
    assert_eq!(
        query_i64(&pg.url, "SELECT count(*) FROM users").await,
        1,
        "the failed transaction left nothing behind"
    );
    let (code, body) = http(addr, "GET", "/health/ready", None).await;
    assert_eq!(code, 200, "{body}");

    // SIGTERM: readiness reads "draining" while requests are still served
    // (the rollout's unready period, a minute here so that only the second
    // SIGTERM below ends it).
    running.terminate();
    let mut last = String::new();
    let draining = support::eventually(Duration::from_secs(10), async || {
        let (code, body) = http(addr, "GET", "/health/ready", None).await;
        last = body;
        code == 503
    })
    .await;
    assert!(
        draining,
        "readiness never turned false after SIGTERM: {last}"
    );
    let probe: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(probe["status"], "draining", "{last}");
    assert_eq!(probe["phase"], "stopping", "{last}");
    let (code, body) = http(addr, "GET", "/users", None).await;
    assert_eq!(code, 200, "served while unready: {body}");

    // A second SIGTERM while a slow request runs in the database: the
    // listener closes, the request finishes, then exit 0.
    let slow = tokio::spawn(async move { http(addr, "GET", "/slow/1500", None).await });
    let sleeping = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' \
         AND state = 'active' AND query LIKE 'SELECT pg_sleep%'",
        pg.name
    );
    assert!(
        support::eventually(Duration::from_secs(10), async || {
            query_i64(&support::admin_url(), &sleeping).await == 1
        })
        .await,
        "the slow request never reached the database"
    );
    running.terminate();
    let (code, body) = slow.await.unwrap();
    assert_eq!(code, 200, "the in-flight request finished: {body}");
    let (status, printed) = running.wait().await;
    assert!(
        status.success(),
        "exit status {status:?} (143 would mean SIGTERM was not handled)"
    );
    assert!(
        printed.contains("stopped: drained true"),
        "the databases drained: {printed:?}"
    );
    assert!(
        support::database_sessions_reach(&pg.name, 0, Duration::from_secs(5)).await,
        "the service closed its sessions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_as_soon_as_it_listens_is_handled_not_fatal() {
    let pg = TestDb::adopt(&unique_name("guide_early"));
    let (mongo_url, _mongo) = support::mongo();
    // The service installs its handlers before it prints its address, so a
    // signal sent the moment it listens takes the shutdown path (exit 0,
    // drained), never the default action (killed, status 143).
    for _ in 0..3 {
        let guide = Example {
            name: "guide",
            env: vec![
                ("DATABASE_URL".into(), pg.url.clone()),
                ("MONGODB_URL".into(), mongo_url.clone()),
                ("DBMANAGER_MONGODB__DATABASE".into(), unique_name("guide")),
                ("PORT".into(), support::free_port().to_string()),
                ("DBMANAGER_SHUTDOWN__UNREADY_PERIOD".into(), "0s".into()),
            ],
        };
        let running = guide.start();
        running.terminate();
        let (status, printed) = running.wait().await;
        assert!(
            status.success(),
            "exit status {status:?} (killed by the signal's default action?)"
        );
        assert!(printed.contains("stopped: drained true"), "{printed:?}");
    }
}
