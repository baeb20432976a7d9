//! The checkout and multiplexed-statement spans are built only when a
//! subscriber would record them: whatever way the subscriber filters
//! (EnvFilter by target, by span name, by field; a per-layer filter; a
//! subscriber installed after the manager was built and used), a span it
//! accepts is still recorded and one it rejects is not. One subscriber per
//! test: each test runs in a process of its own under nextest.

mod support;

use std::sync::{Arc, Mutex};

use dbmanager::DatabaseManager;
use support::{TestDb, pg_config};
use tracing::span::{Attributes, Id};
use tracing::{Subscriber, subscriber};
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets, filter_fn};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{Layer, Registry};

/// The names of every span the layer saw created.
#[derive(Clone, Default)]
struct Names(Arc<Mutex<Vec<&'static str>>>);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Names {
    fn on_new_span(&self, attrs: &Attributes<'_>, _id: &Id, _ctx: Context<'_, S>) {
        self.0.lock().unwrap().push(attrs.metadata().name());
    }
}

impl Names {
    fn count(&self, name: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|n| **n == name)
            .count()
    }
}

/// One checkout and one multiplexed statement; the spans they made, as
/// (acquire, query) counts.
async fn exercise(manager: &DatabaseManager, names: &Names) -> (usize, usize) {
    let before = (
        names.count("dbmanager.acquire"),
        names.count("dbmanager.query"),
    );
    let pool = manager.postgres().unwrap();
    let client = pool.get().await.unwrap();
    client.query_one("SELECT 1", &[]).await.unwrap();
    drop(client);
    pool.multiplexed().query_one("SELECT 1", &[]).await.unwrap();
    (
        names.count("dbmanager.acquire") - before.0,
        names.count("dbmanager.query") - before.1,
    )
}

async fn manager(db: &TestDb) -> DatabaseManager {
    support::build(pg_config(&db.url)).await
}

fn install(subscriber: impl Subscriber + Send + Sync + 'static) {
    subscriber::set_global_default(subscriber).expect("the only subscriber");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_filter_dbmanager_info_records_both_spans() {
    let names = Names::default();
    install(
        Registry::default()
            .with(names.clone())
            .with(EnvFilter::new("dbmanager=info")),
    );
    let db = TestDb::create("tf_info").await;
    let manager = manager(&db).await;
    assert_eq!(exercise(&manager, &names).await, (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_filter_postgres_debug_records_both_spans() {
    let names = Names::default();
    install(
        Registry::default()
            .with(names.clone())
            .with(EnvFilter::new("warn,dbmanager::postgres=debug")),
    );
    let db = TestDb::create("tf_debug").await;
    let manager = manager(&db).await;
    assert_eq!(exercise(&manager, &names).await, (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_filter_postgres_warn_records_neither() {
    let names = Names::default();
    install(
        Registry::default()
            .with(names.clone())
            .with(EnvFilter::new("info,dbmanager::postgres=warn")),
    );
    let db = TestDb::create("tf_warn").await;
    let manager = manager(&db).await;
    assert_eq!(exercise(&manager, &names).await, (0, 0));
}

/// The callsites were first hit with no subscriber at all (their interest
/// cached as "never"); installing one must make them record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_installed_after_the_manager_was_used_records_both_spans() {
    let names = Names::default();
    let db = TestDb::create("tf_after").await;
    let manager = manager(&db).await;
    assert_eq!(exercise(&manager, &names).await, (0, 0));
    install(
        Registry::default()
            .with(names.clone())
            .with(EnvFilter::new("dbmanager=info")),
    );
    assert_eq!(exercise(&manager, &names).await, (1, 1));
}

/// A per-layer filter: the recording layer takes `dbmanager=info`, another
/// layer only warnings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_layer_filter_records_both_spans() {
    let names = Names::default();
    let other = Names::default();
    install(
        Registry::default()
            .with(names.clone().with_filter(EnvFilter::new("dbmanager=info")))
            .with(other.clone().with_filter(LevelFilter::WARN)),
    );
    let db = TestDb::create("tf_layer").await;
    let manager = manager(&db).await;
    assert_eq!(exercise(&manager, &names).await, (1, 1));
    assert_eq!(other.count("dbmanager.acquire"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_layer_targets_filter_records_both_spans() {
    let names = Names::default();
    install(
        Registry::default().with(
            names
                .clone()
                .with_filter(Targets::new().with_target("dbmanager::postgres", LevelFilter::INFO)),
        ),
    );
    let db = TestDb::create("tf_targets").await;
    let manager = manager(&db).await;
    assert_eq!(exercise(&manager, &names).await, (1, 1));
}

/// EnvFilter's documented span-name directive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_filter_by_span_name_records_the_named_spans() {
    let names = Names::default();
    install(Registry::default().with(names.clone()).with(EnvFilter::new(
        "warn,[dbmanager.acquire]=info,[dbmanager.query]=info",
    )));
    let db = TestDb::create("tf_spanname").await;
    let manager = manager(&db).await;
    assert_eq!(exercise(&manager, &names).await, (1, 1));
}

/// EnvFilter's documented field directive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_filter_by_span_field_records_the_spans_with_it() {
    let names = Names::default();
    install(
        Registry::default()
            .with(names.clone())
            .with(EnvFilter::new("warn,dbmanager[{db.system.name}]=info")),
    );
    let db = TestDb::create("tf_field").await;
    let manager = manager(&db).await;
    assert_eq!(exercise(&manager, &names).await, (1, 1));
}

/// A per-layer filter that selects spans by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_layer_filter_by_span_name_records_the_named_spans() {
    let names = Names::default();
    install(
        Registry::default().with(names.clone().with_filter(filter_fn(|meta| {
            meta.is_span() && matches!(meta.name(), "dbmanager.acquire" | "dbmanager.query")
        }))),
    );
    let db = TestDb::create("tf_fnname").await;
    let manager = manager(&db).await;
    assert_eq!(exercise(&manager, &names).await, (1, 1));
}
