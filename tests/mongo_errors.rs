//! MongoDB errors read as one line, like the PostgreSQL ones: the operation,
//! the server when the driver knows it, and the cause; never the driver's
//! `Kind: ..., labels: {}, source: None, server response: None`.

mod support;

use std::time::Duration;

use dbmanager::mongo::{CollectionIndexes, IndexSpec};
use dbmanager::mongodb::bson::{Document, doc};
use dbmanager::{Config, DatabaseUrl, Error, RetryPolicy};
use support::{MongoServer, unique_name};

const DEBUG_DUMPS: [&str; 4] = ["Kind:", "labels:", "source: None", "server response:"];

fn assert_readable(text: &str, password: &str) {
    assert!(!text.contains('\n'), "one line: {text}");
    for dump in DEBUG_DUMPS {
        assert!(!text.contains(dump), "no `{dump}` in: {text}");
    }
    assert!(!text.contains(password), "no password in: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_gives_one_line_naming_the_operation_server_and_cause() {
    let password = "mongo-errors-secret";
    let mut server = MongoServer::start("errors", password);
    let port = server.port;
    let mut config = Config::default();
    config.mongodb.url = Some(DatabaseUrl::new(server.url()));
    config.mongodb.database = Some(unique_name("errors"));
    config.mongodb.pool.min_size = 1;
    config.mongodb.server_selection_timeout = Duration::from_millis(1500);
    config.mongodb.connect_timeout = Duration::from_secs(1);
    config.retry = RetryPolicy::exponential()
        .initial_delay(Duration::from_millis(50))
        .max_attempts(3);
    let db = support::build(config).await;
    let mongo = db.mongo().unwrap();
    server.kill();

    // An operation of the crate's own.
    let indexes = [CollectionIndexes::new(
        "things",
        [IndexSpec::new(doc! { "a": 1 })],
    )];
    let mut crate_error = mongo.ensure_indexes(&indexes).await.unwrap_err();
    // The first operation may meet the dead pooled connection itself (an
    // I/O error); the next has to select a server and names it.
    let first = crate_error.to_string();
    assert_readable(&first, password);
    if !first.contains(&port.to_string()) {
        crate_error = mongo.ensure_indexes(&indexes).await.unwrap_err();
    }
    assert!(
        matches!(crate_error, Error::Mongo { .. }),
        "{crate_error:?}"
    );
    let text = crate_error.to_string();
    println!("{first}\n{text}");
    assert_readable(&text, password);
    // The operation, the server and the cause, pinned.
    assert_eq!(
        text,
        format!(
            "MongoDB listing indexes failed: no available server within the server selection \
             timeout (127.0.0.1:{port}: I/O error: Connection refused (os error 111))"
        )
    );
    if first != text {
        // The dead pooled connection, before the driver noticed: the cause
        // without the driver's Debug fields.
        assert!(
            first.starts_with("MongoDB listing indexes failed: I/O error: "),
            "{first}"
        );
    }

    // An application's operation, through `?` (From<mongodb::error::Error>).
    let find = async {
        mongo
            .database()
            .collection::<Document>("things")
            .find_one(doc! {})
            .await?;
        Ok::<_, Error>(())
    };
    let text = find.await.unwrap_err().to_string();
    assert_readable(&text, password);
    assert!(
        text.starts_with("MongoDB operation failed: "),
        "names the operation: {text}"
    );

    // The health report's error is the same one line.
    let report = db.health().await;
    let component = &report.components["mongodb"];
    let error = component.error.as_deref().expect("the probe failed");
    assert_readable(error, password);
}
