//! MongoDB through the manager, against a real wire-protocol server
//! (mongoeco unless MONGODB_URL names a real mongod).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use dbmanager::mongo::{CollectionIndexes, IndexSpec};
use dbmanager::mongodb::bson::doc;
use dbmanager::{
    Config, DatabaseManager, DatabaseUrl, Error, FailureKind, HealthStatus, RetryPolicy,
};
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use support::{
    MongoServer, TestDb, connect_failure, encode, permanent_build_error, pg_config,
    retry_for_a_minute, unique_name,
};

fn mongo_config(url: &str) -> Config {
    let mut config = Config::default();
    config.mongodb.url = Some(DatabaseUrl::new(url));
    config.mongodb.database = Some(unique_name("dbm"));
    config.mongodb.pool.min_size = 2;
    config.mongodb.pool.max_size = 5;
    config.mongodb.server_selection_timeout = Duration::from_secs(2);
    config.mongodb.connect_timeout = Duration::from_secs(2);
    config.retry = RetryPolicy::exponential()
        .initial_delay(Duration::from_millis(100))
        .max_delay(Duration::from_millis(500))
        .max_attempts(5);
    config.shutdown.grace_period = Duration::from_secs(10);
    config
}

/// Writes one document through the manager's client: proof that it is
/// connected and authenticated.
async fn write_a_document(db: &DatabaseManager) {
    db.mongo()
        .unwrap()
        .database()
        .collection("t")
        .insert_one(doc! { "x": 1 })
        .await
        .unwrap();
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Post {
    #[serde(rename = "_id")]
    id: i64,
    title: String,
    author: String,
    upvotes: i32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_on_a_typed_collection_through_the_default_database() {
    let (url, _server) = support::mongo();
    let db = support::build(mongo_config(&url)).await;
    let posts = db.mongo().unwrap().database().collection::<Post>("posts");

    let first = Post {
        id: 1,
        title: "Hello".into(),
        author: "ada".into(),
        upvotes: 0,
    };
    let second = Post {
        id: 2,
        title: "Pools".into(),
        author: "grace".into(),
        upvotes: 3,
    };
    posts
        .insert_many([first.clone(), second.clone()])
        .await
        .unwrap();

    let by_ada: Vec<Post> = posts
        .find(doc! { "author": "ada" })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(by_ada, vec![first.clone()]);

    posts
        .update_one(doc! { "_id": 1 }, doc! { "$inc": { "upvotes": 5 } })
        .await
        .unwrap();
    let updated = posts.find_one(doc! { "_id": 1 }).await.unwrap().unwrap();
    assert_eq!(updated.upvotes, 5);

    assert_eq!(posts.count_documents(doc! {}).await.unwrap(), 2);
    posts.delete_one(doc! { "_id": 2 }).await.unwrap();
    assert_eq!(posts.count_documents(doc! {}).await.unwrap(), 1);

    // The named-database accessor reaches another database on the same client.
    let other = db.mongo().unwrap().database_named(&unique_name("other"));
    assert_eq!(
        other
            .collection::<Post>("posts")
            .count_documents(doc! {})
            .await
            .unwrap(),
        0
    );

    db.mongo().unwrap().database().drop().await.unwrap();
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_with_special_characters_in_the_password_connect() {
    let password = "p@ss:w/rd";
    let server = MongoServer::start("partsuser", password);
    let config = Config::loader()
        .no_dotenv()
        .file(tempfile::NamedTempFile::new().unwrap().path())
        .env_vars([
            ("MONGO_HOST", "127.0.0.1".to_string()),
            ("MONGO_PORT", server.port.to_string()),
            ("MONGO_USER", "partsuser".to_string()),
            ("MONGO_PASSWORD", password.to_string()),
            ("MONGO_AUTH_SOURCE", "admin".to_string()),
            ("MONGO_DB", "parts_db".to_string()),
            (
                "DBMANAGER_MONGODB__AUTH_MECHANISM",
                "SCRAM-SHA-256".to_string(),
            ),
        ])
        .load()
        .unwrap();
    let url = config.mongodb.url.as_ref().unwrap();
    assert!(
        url.expose().contains(&encode(password)),
        "the password is percent-encoded"
    );
    assert!(!format!("{config:?}").contains("p@ss"));
    assert_eq!(config.mongodb.database_name(), "parts_db");

    let db = support::build(config).await;
    assert_eq!(db.mongo().unwrap().database_name(), "parts_db");
    write_a_document(&db).await;
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_fails_fast_with_a_typed_error() {
    let server = MongoServer::start("authuser", "right-pw");
    let good = format!(
        "mongodb://authuser:right-pw@127.0.0.1:{}/?authSource=admin&authMechanism=SCRAM-SHA-256",
        server.port
    );
    let db = support::build(mongo_config(&good)).await;
    db.shutdown().await.unwrap();

    let bad = good.replace("right-pw", "wrong-pw");
    let err = permanent_build_error("MongoDB wrong password", mongo_config(&bad)).await;
    let (kind, attempts) = connect_failure(&err);
    assert_eq!(kind, FailureKind::Authentication, "{err}");
    assert_eq!(attempts, 1);
    assert!(!err.to_string().contains("wrong-pw"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_retries_until_a_late_server_starts() {
    let port = support::free_port();
    let url = format!(
        "mongodb://late:late-pw@127.0.0.1:{port}/?authSource=admin&authMechanism=SCRAM-SHA-256"
    );
    let mut config = mongo_config(&url);
    config.mongodb.server_selection_timeout = Duration::from_millis(500);
    config.retry = retry_for_a_minute();
    let server = Arc::new(std::sync::Mutex::new(None));
    let slot = server.clone();
    let starter = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let started =
            tokio::task::spawn_blocking(move || MongoServer::start_on(port, "late", "late-pw"))
                .await
                .unwrap();
        *slot.lock().unwrap() = Some(started);
    });
    let started = Instant::now();
    let db = support::build(config).await;
    starter.await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "build waited for the server"
    );
    write_a_document(&db).await;
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexes_are_ensured_idempotently_and_conflicts_are_typed() {
    let (url, _server) = support::mongo();
    let db = support::build(mongo_config(&url)).await;
    let mongo = db.mongo().unwrap();
    let declared = [
        CollectionIndexes::new(
            "users",
            [
                IndexSpec::new(doc! { "email": 1 }).unique(),
                IndexSpec::new(doc! { "created_at": 1 })
                    .ttl(Duration::from_secs(3600))
                    .name("users_ttl"),
                IndexSpec::new(doc! { "nickname": 1 }).sparse(),
            ],
        ),
        CollectionIndexes::new(
            "posts",
            [IndexSpec::new(doc! { "author": 1, "created_at": -1 })],
        ),
    ];

    let first = mongo.ensure_indexes(&declared).await.unwrap();
    assert_eq!(first.created.len(), 4, "{first:?}");
    assert!(first.present.is_empty());
    let second = mongo.ensure_indexes(&declared).await.unwrap();
    assert!(
        second.created.is_empty(),
        "nothing created the second time: {second:?}"
    );
    assert_eq!(second.present.len(), 4);
    assert!(
        second
            .present
            .iter()
            .any(|i| i.name == "author_1_created_at_-1")
    );

    let users = mongo
        .database()
        .collection::<dbmanager::mongodb::bson::Document>("users");
    users
        .insert_one(doc! { "email": "a@example.com" })
        .await
        .unwrap();
    let duplicate = users.insert_one(doc! { "email": "a@example.com" }).await;
    assert!(duplicate.is_err(), "the unique index rejects a duplicate");

    let conflicting = [CollectionIndexes::new(
        "users",
        [IndexSpec::new(doc! { "email": 1 })],
    )];
    match mongo.ensure_indexes(&conflicting).await {
        Err(Error::IndexConflict {
            collection,
            name,
            existing,
            wanted,
        }) => {
            assert_eq!(collection, "users");
            assert_eq!(name, "email_1");
            assert!(
                existing.contains("unique") && !wanted.contains("unique"),
                "{existing} / {wanted}"
            );
        }
        other => panic!("expected an index conflict, got {other:?}"),
    }
    mongo.database().drop().await.unwrap();
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_latency_version_topology_and_pool_then_down_when_killed() {
    let mut server = MongoServer::start("healthuser", "health-pw");
    let mut config = mongo_config(&server.url());
    config.health.probe_timeout = Duration::from_secs(2);
    let db = support::build(config).await;
    write_a_document(&db).await;
    // The driver reports the check-in from its pool task, a moment later.
    let mongo = db.mongo().unwrap().clone();
    assert!(support::eventually(Duration::from_secs(5), async || mongo.status().in_use == 0).await);

    let report = db.health().await;
    assert_eq!(report.status, HealthStatus::Up);
    assert!(!report.components.contains_key("postgres"));
    let json = serde_json::to_value(&report).unwrap();
    let mongo = &json["components"]["mongodb"];
    assert_eq!(mongo["status"], "up");
    assert!(mongo["latency_ms"].as_f64().unwrap() > 0.0);
    assert!(mongo["server_version"].as_str().unwrap().contains('.'));
    assert_eq!(mongo["topology"]["kind"], "standalone");
    assert_eq!(
        mongo["topology"]["servers"][0],
        format!("127.0.0.1:{}", server.port)
    );
    assert!(
        mongo["pool"]["open"].as_u64().unwrap() >= 2,
        "warmed to min_size: {mongo}"
    );
    assert_eq!(mongo["pool"]["max_size"], 5);
    assert_eq!(mongo["pool"]["in_use"], 0);
    assert!(
        mongo["checkout_wait_ms"].as_f64().is_some(),
        "checkout wait from pool events: {mongo}"
    );
    assert!(!json.to_string().contains("health-pw"));

    server.kill();
    let started = Instant::now();
    let report = db.health().await;
    assert_eq!(report.status, HealthStatus::Down);
    assert!(report.components["mongodb"].error.is_some());
    assert!(
        started.elapsed() < Duration::from_secs(2) * 3,
        "bounded by the probe timeout"
    );
    assert!(!db.readiness().await);
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optional_mongodb_that_is_down_makes_health_degraded() {
    let mut server = MongoServer::start("optuser", "opt-pw");
    let pg = TestDb::create("mixed_optional").await;
    let mut config = pg_config(&pg.url);
    let mongo = mongo_config(&server.url());
    config.mongodb = mongo.mongodb;
    config.mongodb.required = false;
    config.health.probe_timeout = Duration::from_secs(1);
    let db = support::build(config).await;
    server.kill();
    let report = db.health().await;
    assert_eq!(report.status, HealthStatus::Degraded);
    assert_eq!(report.components["postgres"].status, HealthStatus::Up);
    assert_eq!(report.components["mongodb"].status, HealthStatus::Down);
    assert!(db.readiness().await);
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn either_database_alone_or_both_together() {
    let (url, _server) = support::mongo();
    let pg = TestDb::create("mixed").await;

    let mongo_only = support::build(mongo_config(&url)).await;
    assert!(matches!(
        mongo_only.postgres(),
        Err(Error::NotConfigured { .. })
    ));
    assert_eq!(
        mongo_only
            .health()
            .await
            .components
            .keys()
            .collect::<Vec<_>>(),
        ["mongodb"]
    );
    mongo_only.shutdown().await.unwrap();

    let pg_only = support::build(pg_config(&pg.url)).await;
    assert!(matches!(pg_only.mongo(), Err(Error::NotConfigured { .. })));
    assert_eq!(
        pg_only.health().await.components.keys().collect::<Vec<_>>(),
        ["postgres"]
    );
    pg_only.shutdown().await.unwrap();

    let mut both = pg_config(&pg.url);
    both.mongodb = mongo_config(&url).mongodb;
    let db = support::build(both).await;
    let report = db.health().await;
    assert_eq!(report.status, HealthStatus::Up);
    assert_eq!(
        report.components.keys().collect::<Vec<_>>(),
        ["mongodb", "postgres"]
    );
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_an_operation_in_flight() {
    let (url, _server) = support::mongo();
    let mut config = mongo_config(&url);
    // The Python test server answers nothing else while it stores the batch:
    // give the driver's monitor room not to give up on it meanwhile.
    config.mongodb.connect_timeout = Duration::from_secs(20);
    let db = support::build(config).await;
    let collection = db
        .mongo()
        .unwrap()
        .database()
        .collection::<dbmanager::mongodb::bson::Document>("bulk");
    // Large enough that the test server takes a moment to store it.
    let docs: Vec<_> = (0..500)
        .map(|i| doc! { "i": i, "pad": "x".repeat(64) })
        .collect();
    let mongo = db.mongo().unwrap().clone();
    let started = Instant::now();
    let writer = tokio::spawn({
        let collection = collection.clone();
        async move {
            collection
                .insert_many(docs)
                .await
                .map(|r| r.inserted_ids.len())
        }
    });
    // Keep the sample that saw the insert in flight: a second read could
    // come after it finished.
    let mut in_use = 0;
    while in_use == 0 && !writer.is_finished() && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(1)).await;
        in_use = mongo.status().in_use;
    }
    if in_use == 0 {
        panic!(
            "the insert was not observed in flight (finished: {})",
            writer.is_finished()
        );
    }
    let report = db.shutdown().await.unwrap();
    assert!(report.drained, "{report:?}");
    assert_eq!(report.mongodb_forced, 0);
    assert_eq!(
        writer.await.unwrap().unwrap(),
        500,
        "the in-flight insert completed"
    );
    println!("in-flight insert and drain took {:?}", started.elapsed());
    assert!(matches!(db.mongo(), Err(Error::ShuttingDown { .. })));
    // The figures come from the driver's pool events, which may trail the
    // client's shutdown by a moment.
    assert!(
        support::eventually(Duration::from_secs(5), async || mongo.status().open == 0).await,
        "the client closed its connections: {}",
        mongo.status()
    );
}
