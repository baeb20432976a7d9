//! The crate's spans and their OpenTelemetry database attributes, seen by
//! an in-memory `tracing` layer over real servers: pool acquire, connect
//! attempts, transaction attempts (a serialization failure rerun), the
//! multiplexed handle, a replica routing decision, migrations and MongoDB
//! transactions. No field ever holds a password, a parameter, or the SQL
//! text unless `postgres.trace_query_text` opts in.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use dbmanager::{DatabaseUrl, Error, TxFutureExt};
use support::{PgCluster, TestDb, pg_config, sql};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Subscriber, subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{Layer, Registry};

/// One span as the layer saw it: its name and every field recorded, at
/// creation or later.
#[derive(Debug, Clone)]
struct Captured {
    name: &'static str,
    fields: BTreeMap<String, String>,
    parent: Option<usize>,
}

impl Captured {
    fn get(&self, field: &str) -> Option<&str> {
        self.fields.get(field).map(String::as_str)
    }

    fn field(&self, field: &str) -> &str {
        self.get(field)
            .unwrap_or_else(|| panic!("{} has no {field}: {:#?}", self.name, self.fields))
    }
}

#[derive(Default)]
struct Store {
    spans: Vec<Captured>,
    /// `tracing`'s span ids are reused once a span closes: the id's
    /// latest span.
    by_id: HashMap<u64, usize>,
}

/// The in-memory layer: every span of the process.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Store>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut store = self.0.lock().unwrap();
        let parent = ctx
            .span(id)
            .and_then(|span| span.parent())
            .and_then(|parent| store.by_id.get(&parent.id().into_u64()).copied());
        let index = store.spans.len();
        store.spans.push(Captured {
            name: attrs.metadata().name(),
            fields,
            parent,
        });
        store.by_id.insert(id.into_u64(), index);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let mut store = self.0.lock().unwrap();
        if let Some(&index) = store.by_id.get(&id.into_u64()) {
            values.record(&mut Fields(&mut store.spans[index].fields));
        }
    }
}

impl Spans {
    /// The layer of this test process, installed once as the global
    /// subscriber (each test runs in a process of its own under nextest;
    /// under `cargo test` the tests share it and filter by database).
    fn installed() -> Spans {
        static SPANS: OnceLock<Spans> = OnceLock::new();
        SPANS
            .get_or_init(|| {
                let spans = Spans::default();
                let subscriber = Registry::default().with(spans.clone());
                subscriber::set_global_default(subscriber).expect("the only subscriber");
                spans
            })
            .clone()
    }

    /// The spans named `name` whose `field` is `value`.
    fn named(&self, name: &str, field: &str, value: &str) -> Vec<Captured> {
        self.0
            .lock()
            .unwrap()
            .spans
            .iter()
            .filter(|s| s.name == name && s.get(field) == Some(value))
            .cloned()
            .collect()
    }

    /// The name of the parent of `span`, if any.
    fn parent_name(&self, span: &Captured) -> Option<&'static str> {
        let store = self.0.lock().unwrap();
        span.parent.map(|i| store.spans[i].name)
    }

    /// Fails if any field of any span contains one of `secrets`.
    fn assert_no_field_contains(&self, secrets: &[&str]) {
        let store = self.0.lock().unwrap();
        for span in &store.spans {
            for (field, value) in &span.fields {
                for secret in secrets {
                    assert!(
                        !value.contains(secret),
                        "{}.{field} = {value:?} contains {secret:?}",
                        span.name
                    );
                }
            }
        }
    }
}

/// The port of a URL's server.
fn port_of(url: &str) -> String {
    let after_at = url.rsplit('@').next().unwrap();
    let host_port = after_at.split('/').next().unwrap();
    host_port.rsplit(':').next().unwrap().to_string()
}

/// The password of a URL.
fn password_of(url: &str) -> String {
    let userinfo = url.split("://").nth(1).unwrap().split('@').next().unwrap();
    userinfo.split(':').nth(1).unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_and_connect_attempts_carry_the_database_attributes() {
    let spans = Spans::installed();
    let db = TestDb::create("spans_acquire").await;
    let mut config = pg_config(&db.url);
    config.postgres.pool.max_size = 1;
    config.postgres.pool.min_idle = 1;
    let manager = support::build(config).await;
    let pool = manager.postgres().unwrap();

    // Start-up opened the one connection: a connect attempt at the
    // server's address, connected.
    let attempts = spans.named("dbmanager.connect.attempt", "db.namespace", &db.name);
    let attempt = attempts.first().expect("a connect attempt span");
    assert_eq!(attempt.field("db.system.name"), "postgresql");
    assert_eq!(attempt.field("server.address"), "127.0.0.1");
    assert_eq!(attempt.field("server.port"), port_of(&db.url));
    assert_eq!(attempt.field("network.peer.address"), "127.0.0.1");
    assert_eq!(attempt.field("dbmanager.connect.outcome"), "connected");
    assert_eq!(attempt.field("otel.kind"), "client");
    assert_eq!(attempt.get("error.type"), None);

    // A checkout: its span names the pool, the server and the caller.
    let held = pool.get().await.unwrap();
    let line = line!() - 1;
    let acquires = spans.named("dbmanager.acquire", "db.namespace", &db.name);
    let acquire = acquires.last().expect("an acquire span");
    assert_eq!(acquire.field("db.system.name"), "postgresql");
    assert_eq!(acquire.field("server.address"), "127.0.0.1");
    assert_eq!(acquire.field("server.port"), port_of(&db.url));
    assert_eq!(acquire.field("db.client.connection.pool.name"), "primary");
    assert!(
        acquire
            .field("code.file.path")
            .ends_with("tracing_spans.rs")
    );
    assert_eq!(acquire.field("code.line.number"), line.to_string());
    assert_eq!(acquire.get("error.type"), None);

    // The pool's one connection is held: a second checkout times out, and
    // its span says so.
    let error = pool
        .get_timeout(std::time::Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::PoolTimeout { .. }), "{error:?}");
    let acquires = spans.named("dbmanager.acquire", "db.namespace", &db.name);
    let timed_out = acquires.last().unwrap();
    assert_eq!(timed_out.field("error.type"), "pool_timeout");
    assert_eq!(timed_out.field("otel.status_code"), "ERROR");
    drop(held);

    // Credentials refused: the attempt's span carries the SQLSTATE, never
    // the password.
    let wrong = support::with_credentials(&db.url, "postgres", "wrong-secret-pw");
    let error = support::build_error(pg_config(&wrong)).await;
    assert!(matches!(error, Error::Connect { .. }), "{error:?}");
    let refused = spans.named(
        "dbmanager.connect.attempt",
        "dbmanager.connect.outcome",
        "failed",
    );
    let refused = refused
        .iter()
        .find(|s| s.get("db.response.status_code") == Some("28P01"))
        .expect("a failed attempt with SQLSTATE 28P01");
    assert_eq!(refused.field("error.type"), "28P01");
    assert_eq!(refused.field("otel.status_code"), "ERROR");
    spans.assert_no_field_contains(&[&password_of(&db.url), "wrong-secret-pw"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_rerun_after_a_serialization_failure_is_one_span_per_attempt() {
    let spans = Spans::installed();
    let db = TestDb::create("spans_tx").await;
    sql(&db.url, "CREATE TABLE t (id int PRIMARY KEY)").await;
    let manager = support::build(pg_config(&db.url)).await;

    // The first attempt fails as the server reports a serialization
    // failure (SQLSTATE 40001, raised by the server itself); the second
    // commits.
    let runs = AtomicU32::new(0);
    manager
        .postgres()
        .unwrap()
        .transaction(|tx| {
            let run = runs.fetch_add(1, Ordering::SeqCst);
            async move {
                tx.execute("INSERT INTO t VALUES (1)", &[]).await?;
                if run == 0 {
                    tx.batch_execute(
                        "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$",
                    )
                    .await?;
                }
                Ok(())
            }
            .scoped()
        })
        .await
        .unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 2);

    let attempts = spans.named("dbmanager.transaction", "db.namespace", &db.name);
    assert_eq!(attempts.len(), 2, "{attempts:#?}");
    let (first, second) = (&attempts[0], &attempts[1]);
    assert_eq!(first.field("db.system.name"), "postgresql");
    assert_eq!(first.field("otel.kind"), "client");
    assert_eq!(first.field("dbmanager.transaction.attempt"), "1");
    assert_eq!(first.field("dbmanager.transaction.outcome"), "rerun");
    assert_eq!(first.field("db.operation.name"), "ROLLBACK");
    assert_eq!(first.field("db.response.status_code"), "40001");
    assert_eq!(first.field("error.type"), "40001");
    assert_eq!(second.field("dbmanager.transaction.attempt"), "2");
    assert_eq!(second.field("dbmanager.transaction.outcome"), "committed");
    assert_eq!(second.field("db.operation.name"), "COMMIT");
    assert_eq!(second.get("error.type"), None);
    // Out of attempts: the last attempt's span says so.
    let options = dbmanager::postgres::TransactionOptions::new().retry(
        dbmanager::RetryPolicy::exponential()
            .initial_delay(std::time::Duration::from_millis(1))
            .max_delay(std::time::Duration::from_millis(1))
            .max_attempts(2),
    );
    let error = manager
        .postgres()
        .unwrap()
        .transaction_with::<(), _>(options, |tx| {
            async move {
                tx.batch_execute(
                    "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$",
                )
                .await?;
                Ok(())
            }
            .scoped()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::TransactionRetriesExhausted { .. }),
        "{error:?}"
    );
    let all = spans.named("dbmanager.transaction", "db.namespace", &db.name);
    let outcomes: Vec<&str> = all[2..]
        .iter()
        .map(|s| s.field("dbmanager.transaction.outcome"))
        .collect();
    assert_eq!(outcomes, ["rerun", "exhausted"]);
    assert_eq!(all[3].field("db.response.status_code"), "40001");

    // Each attempt's checkout is a child of the attempt.
    let acquires = spans.named("dbmanager.acquire", "db.namespace", &db.name);
    let under_attempts = acquires
        .iter()
        .filter(|a| spans.parent_name(a) == Some("dbmanager.transaction"))
        .count();
    assert_eq!(under_attempts, 4);
    spans.assert_no_field_contains(&[&password_of(&db.url)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiplexed_statements_show_their_text_only_when_a_setting_opts_in() {
    let spans = Spans::installed();
    const SQL: &str = "SELECT $1::text AS v";
    const PARAMETER: &str = "parameter-value-never-traced";

    // Default: the operation and the database, no text, no parameter.
    let db = TestDb::create("spans_mux").await;
    let manager = support::build(pg_config(&db.url)).await;
    let mux = manager.postgres().unwrap().multiplexed();
    let row = mux.query_one(SQL, &[&PARAMETER]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), PARAMETER);
    let queries = spans.named("dbmanager.query", "db.namespace", &db.name);
    let query = queries.first().expect("a statement span");
    assert_eq!(query.field("otel.name"), format!("SELECT {}", db.name));
    assert_eq!(query.field("otel.kind"), "client");
    assert_eq!(query.field("db.system.name"), "postgresql");
    assert_eq!(query.field("db.operation.name"), "SELECT");
    assert_eq!(query.field("server.address"), "127.0.0.1");
    assert_eq!(query.field("server.port"), port_of(&db.url));
    assert_eq!(query.get("db.query.text"), None);
    spans.assert_no_field_contains(&[SQL, PARAMETER, &password_of(&db.url)]);

    // A failing statement: its SQLSTATE.
    let error = mux.query_one("SELECT 1/0", &[]).await.unwrap_err();
    assert_eq!(error.sqlstate(), Some("22012"));
    let failed = spans.named("dbmanager.query", "db.response.status_code", "22012");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].field("error.type"), "22012");
    assert_eq!(failed[0].field("otel.status_code"), "ERROR");

    // Opted in: the text, still no parameter.
    let opted = TestDb::create("spans_mux_text").await;
    let mut config = pg_config(&opted.url);
    config.postgres.trace_query_text = true;
    let manager = support::build(config).await;
    manager
        .postgres()
        .unwrap()
        .multiplexed()
        .query_one(SQL, &[&PARAMETER])
        .await
        .unwrap();
    let queries = spans.named("dbmanager.query", "db.namespace", &opted.name);
    assert_eq!(queries[0].field("db.query.text"), SQL);
    spans.assert_no_field_contains(&[PARAMETER, &password_of(&db.url)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_routing_decision_names_the_server_chosen_and_why() {
    let spans = Spans::installed();
    let primary = PgCluster::start_new("spans-replica-pw");
    let standby = primary.standby();
    let mut config = pg_config(&primary.url("postgres"));
    config.postgres.replicas.urls = vec![DatabaseUrl::new(standby.url("postgres"))];
    config.postgres.replicas.check_interval = std::time::Duration::from_millis(100);
    let manager = support::build(config).await;
    let pg = manager.postgres().unwrap();
    // Routable once its first check answered (bounded by the helper).
    let routable = support::eventually(std::time::Duration::from_secs(30), async || {
        pg.replica().routable() == 1
    })
    .await;
    assert!(routable, "the standby became routable");

    let connection = pg.replica().get().await.unwrap();
    drop(connection);
    let routes = spans.named("dbmanager.route", "server.port", &standby.port.to_string());
    let route = routes.last().expect("a routing span naming the standby");
    assert_eq!(route.field("db.system.name"), "postgresql");
    assert_eq!(route.field("db.namespace"), "postgres");
    assert_eq!(route.field("db.client.connection.pool.name"), "replica-1");
    assert_eq!(route.field("dbmanager.route.reason"), "least_busy");
    assert_eq!(route.field("dbmanager.route.tried"), "1");
    assert_eq!(route.get("error.type"), None);

    // With the standby stopped and found down, the decision is the
    // primary, and the span says why.
    standby.stop();
    let fell_back = support::eventually(std::time::Duration::from_secs(30), async || {
        pg.replica().routable() == 0
    })
    .await;
    assert!(fell_back, "the stopped standby is no longer routable");
    drop(pg.replica().get().await.unwrap());
    let routes = spans.named(
        "dbmanager.route",
        "dbmanager.route.reason",
        "no_replica_routable",
    );
    let route = routes.last().expect("a fallback routing span");
    assert_eq!(route.field("db.client.connection.pool.name"), "primary");
    assert_eq!(route.field("server.port"), primary.port.to_string());
    assert_eq!(route.field("dbmanager.route.fallback"), "primary");
    spans.assert_no_field_contains(&["spans-replica-pw"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_run_is_a_span_with_a_span_per_migration() {
    let spans = Spans::installed();
    let db = TestDb::create("spans_migrate").await;
    let dir = support::migrations_dir(&[
        ("1_one.up.sql", "CREATE TABLE one (id int)"),
        ("1_one.down.sql", "DROP TABLE one"),
        ("2_two.up.sql", "CREATE TABLE two (id int)"),
        ("2_two.down.sql", "DROP TABLE two"),
    ]);
    let migrations = dbmanager::migrate::Migrations::from_dir(dir.path()).unwrap();
    let manager = support::build(pg_config(&db.url)).await;
    manager.migrator(&migrations).unwrap().up().await.unwrap();

    let runs = spans.named("dbmanager.migrate", "db.namespace", &db.name);
    assert_eq!(runs.len(), 1, "{runs:#?}");
    let run = &runs[0];
    assert_eq!(run.field("db.system.name"), "postgresql");
    assert_eq!(run.field("db.operation.name"), "migrate up");
    assert_eq!(run.field("otel.name"), "migrate up");
    assert_eq!(run.field("server.port"), port_of(&db.url));
    let applied = spans.named("dbmanager.migration", "db.namespace", &db.name);
    let versions: Vec<&str> = applied
        .iter()
        .map(|m| m.field("dbmanager.migration.version"))
        .collect();
    assert_eq!(versions, ["1", "2"]);
    assert_eq!(applied[1].field("dbmanager.migration.name"), "two");
    assert_eq!(applied[1].field("dbmanager.migration.index"), "2");
    assert_eq!(applied[1].field("dbmanager.migration.total"), "2");
    assert_eq!(applied[1].field("db.operation.name"), "migration up");
    for migration in &applied {
        assert_eq!(spans.parent_name(migration), Some("dbmanager.migrate"));
    }
    // The migrations' SQL is not traced.
    spans.assert_no_field_contains(&["CREATE TABLE", &password_of(&db.url)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mongodb_transaction_attempt_is_a_span() {
    let spans = Spans::installed();
    let (url, _server) = support::mongo();
    let database = support::unique_name("spans_mongo");
    let mut config = dbmanager::Config::default();
    config.mongodb.url = Some(DatabaseUrl::new(&url));
    config.mongodb.database = Some(database.clone());
    let manager = support::build(config).await;
    let mongo = manager.mongo().unwrap();
    let error = support::commit_one_then_abort_one(mongo).await;
    assert!(matches!(error, Error::Aborted { .. }), "{error:?}");

    let attempts = spans.named("dbmanager.transaction", "db.namespace", &database);
    assert_eq!(attempts.len(), 2, "{attempts:#?}");
    assert_eq!(attempts[0].field("db.system.name"), "mongodb");
    assert_eq!(attempts[0].field("otel.kind"), "client");
    assert_eq!(
        attempts[0].field("dbmanager.transaction.outcome"),
        "committed"
    );
    assert_eq!(attempts[0].field("db.operation.name"), "commitTransaction");
    assert_eq!(attempts[1].field("dbmanager.transaction.outcome"), "failed");
    assert_eq!(attempts[1].field("db.operation.name"), "abortTransaction");
    assert_eq!(attempts[1].field("error.type"), "aborted");
    spans.assert_no_field_contains(&[&password_of(&url)]);
}
