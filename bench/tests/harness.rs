//! The load harness (`dbmanager_bench`) runs each workload for about a
//! second against real servers and reports consistent figures. Speed is
//! never asserted here: scripts/bench measures it.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use dbmanager::{Config, DatabaseManager};
use dbmanager_bench::{
    self as bench, BenchError, BenchOptions, BenchReport, Mode, Percentiles, Workload,
};
use support::{TestDb, pg_config, query_i64, sql, unique_name};

const DURATION: Duration = Duration::from_millis(1000);
const WARMUP: Duration = Duration::from_millis(200);

fn options(workload: Workload, tasks: usize) -> BenchOptions {
    BenchOptions {
        workload,
        tasks,
        duration: DURATION,
        warmup: WARMUP,
        ..BenchOptions::default()
    }
}

fn assert_ordered(what: &str, p: &Percentiles) {
    assert!(
        p.p50_us <= p.p90_us && p.p90_us <= p.p99_us && p.p99_us <= p.p999_us,
        "{what} percentiles out of order: {p:?}"
    );
    assert!(p.p999_us <= p.max_us, "{what} p99.9 above max: {p:?}");
    assert!(p.max_us > 0.0, "{what}: nothing recorded: {p:?}");
}

/// Operations ran without errors and every figure is consistent.
fn assert_sound(report: &BenchReport, tasks: usize) {
    assert!(report.operations > 0, "no operations: {report}");
    assert_eq!(report.errors, 0, "errors: {report}");
    assert_eq!(report.acquire_timeouts, 0, "{report}");
    assert_eq!(report.tasks, tasks);
    assert_eq!(report.duration, DURATION);
    let expected = report.operations as f64 / DURATION.as_secs_f64();
    assert!((report.throughput - expected).abs() < 1e-6, "{report}");
    assert_ordered("latency", &report.latency);
    assert!(report.latency.p50_us <= report.latency.max_us);
}

/// A database of its own, and a manager on it whose pool has `pool_size`
/// connections, as the harness configures it.
async fn pg_bench_database(prefix: &str, pool_size: usize) -> (TestDb, DatabaseManager) {
    let database = TestDb::create(prefix).await;
    let mut config = pg_config(&database.url);
    bench::configure_pools(&mut config, pool_size);
    let db = DatabaseManager::builder()
        .config(config)
        .build()
        .await
        .expect("manager for the benchmark database");
    (database, db)
}

/// Runs the workload of `options` and returns its report, once it is
/// proved sound for that many tasks.
async fn run_sound(db: &DatabaseManager, options: &BenchOptions) -> BenchReport {
    let report = bench::run(db, options).await.unwrap();
    assert_sound(&report, options.tasks);
    report
}

/// A `pgbench -i -s 1` dataset, made with the SQL pgbench runs (without
/// needing the pgbench binary).
async fn create_pgbench_dataset(url: &str) {
    sql(
        url,
        "CREATE TABLE pgbench_branches (bid int NOT NULL PRIMARY KEY, bbalance int, filler char(88));
         CREATE TABLE pgbench_tellers (tid int NOT NULL PRIMARY KEY, bid int, tbalance int, filler char(84));
         CREATE TABLE pgbench_accounts (aid int NOT NULL PRIMARY KEY, bid int, abalance int, filler char(84));
         CREATE TABLE pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22));
         INSERT INTO pgbench_branches (bid, bbalance) VALUES (1, 0);
         INSERT INTO pgbench_tellers (tid, bid, tbalance) SELECT t, 1, 0 FROM generate_series(1, 10) t;
         INSERT INTO pgbench_accounts (aid, bid, abalance, filler)
             SELECT a, 1, 0, '' FROM generate_series(1, 100000) a;
         ANALYZE;",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select1_runs_every_task_and_reports_ordered_latency_and_acquire_wait() {
    let (_database, db) = pg_bench_database("bench_select1", 4).await;
    let report = run_sound(&db, &options(Workload::Select1, 4)).await;
    assert_eq!(report.pool_size, 4);
    assert_ordered("acquire wait", report.acquire_wait.as_ref().unwrap());
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_tasks_than_connections_queue_without_acquire_timeouts() {
    let (_database, db) = pg_bench_database("bench_queue", 2).await;
    let report = run_sound(&db, &options(Workload::Select1, 16)).await;
    assert_eq!(report.pool_size, 2);
    let wait = report.acquire_wait.unwrap();
    assert_ordered("acquire wait", &wait);
    // 16 tasks share 2 connections: most acquires wait for a return.
    assert!(wait.p90_us > 0.0, "{wait:?}");
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_s_reads_the_pgbench_dataset_and_names_its_scale() {
    let (database, db) = pg_bench_database("bench_pgbench", 4).await;
    create_pgbench_dataset(&database.url).await;
    let report = run_sound(&db, &options(Workload::PgbenchS, 4)).await;
    assert_eq!(
        report.dataset.as_deref(),
        Some("pgbench scale 1: 100000 accounts")
    );
    assert_ordered("acquire wait", report.acquire_wait.as_ref().unwrap());
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_s_runs_multiplexed_also_beside_a_slow_statement() {
    let database = TestDb::create("bench_mux").await;
    create_pgbench_dataset(&database.url).await;
    let mut config = pg_config(&database.url);
    bench::configure_multiplexed(&mut config, 2, 64);
    assert_eq!(config.postgres.multiplex.max_in_flight, 64);
    let db = DatabaseManager::builder()
        .config(config)
        .build()
        .await
        .expect("manager for the benchmark database");
    let mut options = options(Workload::PgbenchS, 64);
    options.mode = Mode::Multiplexed;
    let report = run_sound(&db, &options).await;
    assert_eq!((report.mode, report.pool_size), (Mode::Multiplexed, 2));
    assert!(report.acquire_wait.is_none(), "no checkout to time");
    assert!(
        report
            .to_string()
            .contains("64 on multiplexed 2 connections"),
        "{report}"
    );

    options.slow_statement = Some(Duration::from_millis(300));
    let report = run_sound(&db, &options).await;
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["mode"], "multiplexed");
    assert_eq!(json["slow_statement_secs"], 0.3);
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mongodb_workload_is_refused_in_multiplexed_mode() {
    let database = TestDb::create("bench_mux_mongo").await;
    let db = support::manager(&database.url).await;
    let mut options = options(Workload::MongoPing, 1);
    options.mode = Mode::Multiplexed;
    let error = bench::run(&db, &options).await.unwrap_err();
    assert!(error.to_string().contains("bench.mode"), "{error}");
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_s_without_a_dataset_is_refused_with_a_typed_error() {
    let (_database, db) = pg_bench_database("bench_nodata", 2).await;
    let error = bench::run(&db, &options(Workload::PgbenchS, 2))
        .await
        .unwrap_err();
    match &error {
        BenchError::MissingDataset {
            workload, problem, ..
        } => {
            assert_eq!(*workload, Workload::PgbenchS);
            assert!(problem.contains("pgbench_branches"), "{problem}");
        }
        other => panic!("expected MissingDataset, got {other:?}"),
    }
    assert!(error.to_string().contains("pgbench -i"), "{error}");
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_creates_its_table_and_every_counted_operation_left_a_row() {
    let (database, db) = pg_bench_database("bench_insert", 4).await;
    let mut options = options(Workload::Insert, 4);
    options.insert_table = "bench rows".into();
    let report = run_sound(&db, &options).await;
    db.shutdown().await.unwrap();
    // Priming and warm-up insert too, and operations ending after the
    // window are not counted: at least as many rows as operations.
    let rows = query_i64(&database.url, "SELECT count(*) FROM \"bench rows\"").await;
    assert!(rows as u64 >= report.operations, "{rows} rows, {report}");
}

async fn mongo_manager(url: &str, pool_size: usize) -> DatabaseManager {
    let mut config = Config::default();
    config.mongodb.url = Some(dbmanager::DatabaseUrl::new(url));
    config.mongodb.database = Some(unique_name("bench"));
    bench::configure_pools(&mut config, pool_size);
    DatabaseManager::builder()
        .config(config)
        .build()
        .await
        .expect("manager for the MongoDB server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_ping_through_the_manager_reports_latency_without_acquire_wait() {
    let (url, _server) = support::mongo();
    let db = mongo_manager(&url, 2).await;
    let report = run_sound(&db, &options(Workload::MongoPing, 2)).await;
    assert_eq!(report.pool_size, 2);
    assert!(report.acquire_wait.is_none());
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_find_by_id_seeds_its_documents_and_finds_every_one_it_asks_for() {
    let (url, _server) = support::mongo();
    let db = mongo_manager(&url, 2).await;
    let mut options = options(Workload::MongoFindById, 2);
    options.mongo_documents = 50;
    let report = run_sound(&db, &options).await;
    let seeded = db
        .mongo()
        .unwrap()
        .database()
        .collection::<dbmanager::mongodb::bson::Document>(&options.mongo_collection)
        .count_documents(dbmanager::mongodb::bson::doc! {})
        .await
        .unwrap();
    assert_eq!(seeded, 50);
    assert_eq!(
        report
            .dataset
            .as_deref()
            .map(|d| d.ends_with(": 50 documents")),
        Some(true)
    );
    db.mongo().unwrap().database().drop().await.unwrap();
    db.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_driver_baseline_runs_the_same_workload_on_a_bare_client() {
    let (url, _server) = support::mongo();
    let mut client_options = dbmanager::mongodb::options::ClientOptions::parse(&url)
        .await
        .unwrap();
    client_options.max_pool_size = Some(2);
    let report = bench::run_mongo_driver(client_options, "admin", &options(Workload::MongoPing, 2))
        .await
        .unwrap();
    assert_sound(&report, 2);
    assert_eq!(report.pool_size, 2);
    let refused = bench::run_mongo_driver(
        dbmanager::mongodb::options::ClientOptions::parse(&url)
            .await
            .unwrap(),
        "admin",
        &options(Workload::Select1, 1),
    )
    .await
    .unwrap_err();
    assert!(
        refused.to_string().contains("PostgreSQL workload"),
        "{refused}"
    );
}
