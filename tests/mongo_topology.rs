//! MongoDB read preference, replica set and direct connection: the typed
//! settings and the URL's options reach the driver, show in the health
//! topology, and a replica set the server does not have fails operations
//! and health within the server selection timeout. Against a real
//! wire-protocol server (mongoeco, a standalone, unless MONGODB_URL names
//! another server).

mod support;

use std::time::Duration;

use dbmanager::config::{ReadPreferenceMode, TagSet};
use dbmanager::mongodb::bson::{Document, doc};
use dbmanager::mongodb::error::ErrorKind;
use dbmanager::mongodb::options::{ReadPreference, SelectionCriteria};
use dbmanager::{
    Config, DatabaseManager, DatabaseUrl, Error, FailureKind, HealthStatus, RetryPolicy,
};
use support::{connect_failure, unique_name};

/// Generous bound on anything that waits for server selection: the
/// selection timeout plus room for a slow machine. Not a speed claim: a
/// wait that overruns it is a hang.
const NO_HANG: Duration = Duration::from_secs(30);

fn config(url: &str) -> Config {
    let mut config = Config::default();
    config.mongodb.url = Some(DatabaseUrl::new(url));
    config.mongodb.database = Some(unique_name("topo"));
    config.mongodb.pool.min_size = 1;
    config.mongodb.pool.max_size = 4;
    config.mongodb.server_selection_timeout = Duration::from_secs(2);
    config.mongodb.connect_timeout = Duration::from_secs(2);
    config.health.probe_timeout = Duration::from_secs(10);
    config.retry = RetryPolicy::exponential()
        .initial_delay(Duration::from_millis(100))
        .max_attempts(5);
    config
}

/// The URL with more connection string options.
fn with_options(url: &str, options: &str) -> String {
    if url.contains('?') {
        format!("{url}&{options}")
    } else if url.ends_with('/') {
        format!("{url}?{options}")
    } else {
        format!("{url}/?{options}")
    }
}

fn lazy(config: Config) -> DatabaseManager {
    DatabaseManager::builder()
        .config(config)
        .build_lazy()
        .unwrap_or_else(|e| panic!("build_lazy failed: {e}"))
}

/// The driver's read preference on the manager's client.
fn driver_read_preference(db: &DatabaseManager) -> Option<ReadPreference> {
    match db.mongo().unwrap().client().selection_criteria() {
        Some(SelectionCriteria::ReadPreference(rp)) => Some(rp.clone()),
        None => None,
        Some(other) => panic!("unexpected selection criteria {other:?}"),
    }
}

async fn topology_json(db: &DatabaseManager) -> serde_json::Value {
    let report = db.health().await;
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(report.status, HealthStatus::Up, "{json}");
    json["components"]["mongodb"]["topology"].clone()
}

/// Writes a document and reads it back through the default database.
async fn write_and_read(db: &DatabaseManager) {
    let things = db
        .mongo()
        .unwrap()
        .database()
        .collection::<Document>("things");
    things
        .insert_one(doc! { "_id": 1, "v": "x" })
        .await
        .unwrap();
    let found = things.find_one(doc! { "_id": 1 }).await.unwrap();
    assert_eq!(found.unwrap().get_str("v").unwrap(), "x");
    assert_eq!(things.count_documents(doc! {}).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_read_preference_and_direct_connection_reach_the_driver_and_reads_work() {
    let (url, _server) = support::mongo();
    let mut config = config(&url);
    config.mongodb.read_preference = Some(ReadPreferenceMode::SecondaryPreferred);
    config.mongodb.read_preference_tags = vec![
        TagSet::from([("dc".to_string(), "east".to_string())]),
        TagSet::new(),
    ];
    config.mongodb.max_staleness = Some(Duration::from_secs(120));
    config.mongodb.direct_connection = Some(true);
    let db = support::build(config).await;

    // The driver's client holds the configured read preference.
    let rp = driver_read_preference(&db).expect("a read preference");
    assert!(
        matches!(&rp, ReadPreference::SecondaryPreferred { options: Some(o) }
            if o.max_staleness == Some(Duration::from_secs(120))
            && o.tag_sets.as_ref().map(Vec::len) == Some(2)),
        "{rp:?}"
    );
    // Reads and writes go through with it.
    write_and_read(&db).await;

    let topology = topology_json(&db).await;
    println!("{topology}");
    assert_eq!(topology["read_preference"], "secondaryPreferred");
    assert_eq!(
        topology["read_preference_tags"],
        serde_json::json!([{ "dc": "east" }, {}])
    );
    assert_eq!(topology["max_staleness_secs"], 120);
    assert_eq!(topology["direct_connection"], true);
    assert!(
        topology.get("replica_set").is_none(),
        "no replica set asked for: {topology}"
    );
    if support::mongo_url_from_env().is_none() {
        // mongoeco answers `hello` as a standalone: no set name, no hosts.
        assert_eq!(topology["kind"], "standalone");
        assert!(topology.get("set_name").is_none(), "{topology}");
    }
    db.mongo().unwrap().database().drop().await.unwrap();
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_options_apply_when_unset_and_the_typed_settings_win_when_set() {
    let (url, _server) = support::mongo();
    let url = with_options(&url, "readPreference=nearest&directConnection=true");

    // Unset: the URL's options.
    let db = lazy(config(&url));
    assert_eq!(
        driver_read_preference(&db),
        Some(ReadPreference::Nearest { options: None })
    );
    let topology = topology_json(&db).await;
    assert_eq!(topology["read_preference"], "nearest");
    assert_eq!(topology["direct_connection"], true);
    db.shutdown().await.unwrap();

    // Set: the typed settings.
    let mut typed = config(&url);
    typed.mongodb.read_preference = Some(ReadPreferenceMode::Primary);
    typed.mongodb.direct_connection = Some(false);
    let db = lazy(typed);
    assert_eq!(driver_read_preference(&db), Some(ReadPreference::Primary));
    write_and_read(&db).await;
    let topology = topology_json(&db).await;
    assert_eq!(topology["read_preference"], "primary");
    assert_eq!(topology["direct_connection"], false);
    db.mongo().unwrap().database().drop().await.unwrap();
    db.shutdown().await.unwrap();

    // Neither: the driver's defaults, shown as such.
    let (plain, _server2) = support::mongo();
    let db = lazy(config(&plain));
    assert_eq!(driver_read_preference(&db), None);
    let topology = topology_json(&db).await;
    assert_eq!(topology["read_preference"], "primary");
    assert_eq!(topology["direct_connection"], false);
    db.shutdown().await.unwrap();
}

/// What a replica set name the server does not have does to operations and
/// to health, with and without a direct connection.
async fn absent_replica_set(direct_connection: bool) -> String {
    let (url, _server) = support::mongo();
    let mut config = config(&url);
    config.mongodb.replica_set = Some("rs-absent".into());
    config.mongodb.direct_connection = Some(direct_connection);
    let selection = config.mongodb.server_selection_timeout;
    let db = lazy(config);

    let started = std::time::Instant::now();
    let things = db
        .mongo()
        .unwrap()
        .database()
        .collection::<Document>("things");
    let find = things.find_one(doc! {});
    let error: Error = tokio::time::timeout(NO_HANG, find)
        .await
        .expect("the operation ended within the bound")
        .expect_err("no server of replica set rs-absent")
        .into();
    let took = started.elapsed();
    println!("direct {direct_connection}: {took:?}: {error}");
    let driver = error.mongo_error().expect("a driver error");
    assert!(
        matches!(driver.kind.as_ref(), ErrorKind::ServerSelection { .. }),
        "{error:?}"
    );
    assert!(error.is_transient(), "{error}");
    assert!(
        took >= selection,
        "it waited the selection timeout for a suitable server: {took:?}"
    );

    let report = tokio::time::timeout(NO_HANG, db.health())
        .await
        .expect("the probe ended within the bound");
    let component = &report.components["mongodb"];
    assert_eq!(report.status, HealthStatus::Down);
    assert_eq!(component.status, HealthStatus::Down);
    assert!(component.topology.is_none());
    let health_error = component.error.clone().expect("the probe's error");
    assert!(!db.readiness().await);
    db.shutdown().await.unwrap();
    health_error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_set_the_server_does_not_have_fails_operations_and_health_in_bounded_time() {
    let error = absent_replica_set(false).await;
    assert!(
        error.contains("rs-absent") && error.contains("server selection timeout"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_connection_to_a_server_outside_the_replica_set_says_why_it_is_unusable() {
    let error = absent_replica_set(true).await;
    assert!(error.contains("rs-absent"), "{error}");
    assert!(error.contains("does not match"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eager_build_against_an_absent_replica_set_fails_transiently_after_its_retries() {
    let (url, _server) = support::mongo();
    let mut config = config(&url);
    config.mongodb.replica_set = Some("rs-absent".into());
    config.mongodb.server_selection_timeout = Duration::from_secs(1);
    config.retry = RetryPolicy::none();
    let error = tokio::time::timeout(NO_HANG, support::build_error(config))
        .await
        .expect("build ended within the bound");
    let (kind, attempts) = connect_failure(&error);
    assert_eq!(kind, FailureKind::Timeout, "{error}");
    assert_eq!(attempts, 1);
    assert!(error.is_transient(), "{error}");
    assert!(error.to_string().contains("rs-absent"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_options_the_driver_refuses_are_configuration_errors_at_build() {
    let (url, _server) = support::mongo();
    for (options, wanted) in [
        ("readPreference=closest", "not a valid read preference"),
        (
            "readPreference=primary&maxStalenessSeconds=120",
            "max staleness",
        ),
        (
            "readPreference=secondary&maxStalenessSeconds=5",
            "at least 90",
        ),
        ("readPreferenceTags=dc:east", "read preference tags"),
        ("directConnection=perhaps", "must be a boolean"),
    ] {
        let bad = with_options(&url, options);
        let error = DatabaseManager::builder()
            .config(config(&bad))
            .build_lazy()
            .expect_err(options);
        match &error {
            Error::Config { key, problem } => {
                assert_eq!(key, "mongodb.url", "{options}: {error}");
                assert!(problem.contains(wanted), "{options}: {error}");
            }
            other => panic!("{options}: expected a configuration error, got {other:?}"),
        }
        let password = url
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .and_then(|(userinfo, _)| userinfo.split_once(':'))
            .map(|(_, pw)| pw.to_string());
        if let Some(password) = password {
            assert!(!error.to_string().contains(&password), "{error}");
        }
    }
}
