//! Behind PgBouncer in transaction pooling mode (a real `pgbouncer`, a few
//! server connections shared by many client connections): with
//! `statement_cache = "unnamed"` or `"off"` nothing relies on a statement
//! outliving its transaction; with `"named"` it does, and fails.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dbmanager::config::{RecyclingMethod, StatementCache};
use dbmanager::{DatabaseManager, HealthStatus};
use support::{PgBouncer, TestDb, admin_url, pg_config};
use tokio_postgres::types::Type;

const TASKS: usize = 64;

/// What a load run saw.
#[derive(Debug, Default)]
struct Tally {
    statements: AtomicU64,
    errors: AtomicU64,
    missing_statement: AtomicU64,
    probes: AtomicU64,
    probes_down: AtomicU64,
}

/// SQLSTATE 26000, invalid_sql_statement_name: `prepared statement "s3"
/// does not exist`.
const MISSING_STATEMENT: &str = "26000";

impl Tally {
    fn failed(&self, sqlstate: Option<&str>, message: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if sqlstate == Some(MISSING_STATEMENT) {
            self.missing_statement.fetch_add(1, Ordering::Relaxed);
        } else if self.errors.load(Ordering::Relaxed) < 5 {
            println!("other error: {message}");
        }
    }

    fn failed_query(&self, error: &tokio_postgres::Error) {
        self.failed(
            error.code().map(|code| code.code()),
            &dbmanager::postgres::describe_error(error),
        );
    }
}

async fn manager(bouncer: &PgBouncer, db: &TestDb, mode: StatementCache) -> DatabaseManager {
    let mut config = pg_config(&bouncer.url(&db.name));
    config.postgres.statement_cache = mode;
    config.postgres.pool.max_size = 16;
    config.postgres.pool.min_idle = 4;
    config.postgres.pool.wait_timeout = Duration::from_secs(10);
    // The check on checkout is a round trip through pgbouncer too.
    config.postgres.pool.recycling = RecyclingMethod::Verified;
    support::build(config).await
}

/// One unit of work as an application behind PgBouncer writes it: a
/// transaction using the statement cache, then an autocommit statement
/// with typed parameters (one round trip, the unnamed statement).
async fn unit(db: &DatabaseManager, i: i64, tally: &Tally) {
    let mut client = match db.postgres().unwrap().get().await {
        Ok(client) => client,
        Err(e) => return tally.failed(e.sqlstate(), &e.to_string()),
    };
    let transaction = async {
        let tx = client.transaction().await?;
        let statement = tx.prepare_cached("SELECT $1::int8 + 1").await?;
        let row = tx.query_one(&statement, &[&i]).await?;
        assert_eq!(row.get::<_, i64>(0), i + 1);
        tx.commit().await
    };
    match transaction.await {
        Ok(()) => tally.statements.fetch_add(1, Ordering::Relaxed),
        Err(e) => return tally.failed_query(&e),
    };
    match client
        .query_typed_one("SELECT $1::int8 * 2", &[(&i, Type::INT8)])
        .await
    {
        Ok(row) => {
            assert_eq!(row.get::<_, i64>(0), i * 2);
            tally.statements.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => tally.failed_query(&e),
    }
}

/// Runs [`TASKS`] tasks of [`unit`] and one health prober until `until`
/// says stop (checked between units).
async fn load(
    db: &DatabaseManager,
    until: impl Fn(&Tally) -> bool + Send + Sync + 'static,
) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    let until = Arc::new(until);
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (db, tally, until) = (db.clone(), tally.clone(), until.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = task as i64 * 1_000_000;
            while !until(&tally) {
                unit(&db, i, &tally).await;
                i += 1;
            }
        }));
    }
    let (prober_db, prober_tally, prober_until) = (db.clone(), tally.clone(), until.clone());
    tasks.push(tokio::spawn(async move {
        while !prober_until(&prober_tally) {
            let report = prober_db.health().await;
            prober_tally.probes.fetch_add(1, Ordering::Relaxed);
            if report.status != HealthStatus::Up {
                prober_tally.probes_down.fetch_add(1, Ordering::Relaxed);
                let shown = serde_json::to_string(&report).unwrap();
                if shown.contains(&format!("SQLSTATE {MISSING_STATEMENT}")) {
                    prober_tally
                        .missing_statement
                        .fetch_add(1, Ordering::Relaxed);
                } else {
                    println!("probe: {shown}");
                }
            }
        }
    }));
    for task in tasks {
        task.await.unwrap();
    }
    tally
}

/// [`TASKS`] tasks of [`unit`] for three seconds through a pgbouncer
/// with 4 server connections, with `mode`.
async fn run(mode: StatementCache) -> Arc<Tally> {
    let db = TestDb::create("bouncer").await;
    let bouncer = PgBouncer::start(&admin_url(), 4);
    let manager = manager(&bouncer, &db, mode).await;
    let duration = Duration::from_secs(3);
    let started = Instant::now();
    let tally = load(&manager, move |_| started.elapsed() >= duration).await;
    println!(
        "{mode:?}: {TASKS} tasks for {:?} through pgbouncer (4 server connections): {} statements, {} errors ({} missing prepared statements, probes included), {} probes ({} not up)",
        started.elapsed(),
        tally.statements.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
        tally.missing_statement.load(Ordering::Relaxed),
        tally.probes.load(Ordering::Relaxed),
        tally.probes_down.load(Ordering::Relaxed),
    );
    manager.shutdown().await.unwrap();
    tally
}

fn assert_clean(tally: &Tally) {
    assert_eq!(tally.errors.load(Ordering::Relaxed), 0, "{tally:?}");
    assert_eq!(tally.probes_down.load(Ordering::Relaxed), 0, "{tally:?}");
    assert!(
        tally.statements.load(Ordering::Relaxed) > TASKS as u64,
        "{tally:?}"
    );
    assert!(tally.probes.load(Ordering::Relaxed) > 0, "{tally:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnamed_statements_work_through_transaction_pooling() {
    assert_clean(&*run(StatementCache::Unnamed).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_statement_cache_works_through_transaction_pooling() {
    assert_clean(&*run(StatementCache::Off).await);
}

/// The same load with the default `named`: a statement cached in one
/// checkout is executed in a later one, and the probe's statement is
/// prepared in one round trip and executed in the next, each on whichever
/// server connection pgbouncer picked, where it was never prepared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_break_under_transaction_pooling() {
    let tally = run(StatementCache::Named).await;
    assert!(
        tally.missing_statement.load(Ordering::Relaxed) > 0,
        "named statements did not break: {tally:?}"
    );
}
