//! A randomized oracle over the whole client API: tasks share a
//! two-connection pool and the multiplexed handle, each running a seeded
//! random mix of every tokio-postgres entry point a service uses, each
//! wrapped in a random timeout (none, 0 ms, 1 ms, a few ms) so futures are
//! dropped at random awaits, while backends are terminated now and then.
//! Every write carries a unique id. At the end:
//!
//! - every acknowledged id is present exactly once;
//! - no write whose caller got a definite error (a SQLSTATE that means the
//!   statement did not happen) or that was never committed is present;
//! - no checkout waited past its bound (`wait_timeout`, plus the slack of
//!   a loaded machine);
//! - no caller was handed a connection inside a transaction block;
//! - the pool's counters add up (opened = closed + open).
//!
//! The seed is printed; `DBMANAGER_ORACLE_SEED=<seed>` replays its
//! operation mix (the interleaving of tasks still varies), and
//! `DBMANAGER_ORACLE_SECS` sets how long it runs (60 s by default;
//! `scripts/soak` runs it for 30 minutes with server faults).

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dbmanager::{DatabaseManager, Error, TxFutureExt};
use futures_util::{SinkExt, StreamExt};
use support::{FaultProxy, PgCluster, TestDb, admin_url, build, pg_config, sql};

/// What became of one id's write, as its caller saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The API said it happened: must be present exactly once.
    Acknowledged,
    /// The API said it did not (or it was never committed): must be absent.
    Absent,
    /// The caller stopped waiting, or the connection was lost: either.
    Unknown,
}

/// Every id's outcome, shared by the tasks.
#[derive(Default)]
struct Ledger {
    outcomes: Mutex<HashMap<i64, (Outcome, &'static str)>>,
    next_id: AtomicI64,
    dirty_sessions: AtomicI64,
    slow_checkouts: Mutex<Vec<Duration>>,
    errors: Mutex<HashMap<String, u64>>,
    /// Operation latencies (µs) since the last sample.
    latencies: Mutex<Vec<u64>>,
}

impl Ledger {
    fn ids(&self, n: usize) -> Vec<i64> {
        let first = self.next_id.fetch_add(n as i64, Ordering::Relaxed);
        (first..first + n as i64).collect()
    }

    fn record(&self, ids: &[i64], outcome: Outcome, op: &'static str) {
        let mut outcomes = self.outcomes.lock().unwrap();
        for id in ids {
            outcomes.insert(*id, (outcome, op));
        }
    }

    fn error(&self, class: String) {
        *self.errors.lock().unwrap().entry(class).or_default() += 1;
    }
}

/// How an error the API returned bears on a write.
fn classify(error: &Error) -> (Outcome, String) {
    match error.sqlstate() {
        // The connection went away mid-request (terminated backend):
        // the statement may have committed before the answer was lost.
        Some(code) if code.starts_with("57P") || code.starts_with("08") => {
            (Outcome::Unknown, format!("sqlstate {code}"))
        }
        Some(code) => (Outcome::Absent, format!("sqlstate {code}")),
        None => match error {
            Error::CommitOutcomeUnknown { .. } => {
                (Outcome::Unknown, "commit outcome unknown".into())
            }
            Error::PoolTimeout { .. } => (Outcome::Absent, "pool timeout".into()),
            // No SQLSTATE: the connection was closed or broke.
            _ => (Outcome::Unknown, "connection lost".into()),
        },
    }
}

fn pg(error: tokio_postgres::Error) -> Error {
    Error::from(error)
}

/// The operations the oracle mixes.
#[derive(Debug, Clone, Copy)]
enum Op {
    Execute,
    QueryReturning,
    QueryTyped,
    SimpleMulti,
    BatchCommitted,
    BatchLeftOpen,
    PreparedPortal,
    CopyIn,
    CopyInDropped,
    CopyOut,
    Helper,
    HelperSwallowed,
    Listen,
    Multiplexed,
    Sleep,
}

const OPS: [Op; 15] = [
    Op::Execute,
    Op::QueryReturning,
    Op::QueryTyped,
    Op::SimpleMulti,
    Op::BatchCommitted,
    Op::BatchLeftOpen,
    Op::PreparedPortal,
    Op::CopyIn,
    Op::CopyInDropped,
    Op::CopyOut,
    Op::Helper,
    Op::HelperSwallowed,
    Op::Listen,
    Op::Multiplexed,
    Op::Sleep,
];

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Execute => "execute",
            Op::QueryReturning => "query returning",
            Op::QueryTyped => "query_typed",
            Op::SimpleMulti => "simple_query (two statements)",
            Op::BatchCommitted => "batch_execute BEGIN..COMMIT",
            Op::BatchLeftOpen => "batch_execute BEGIN left open",
            Op::PreparedPortal => "prepare + portal",
            Op::CopyIn => "copy_in",
            Op::CopyInDropped => "copy_in dropped",
            Op::CopyOut => "copy_out",
            Op::Helper => "transaction helper",
            Op::HelperSwallowed => "transaction helper, error swallowed",
            Op::Listen => "LISTEN/NOTIFY",
            Op::Multiplexed => "multiplexed",
            Op::Sleep => "pg_sleep",
        }
    }

    /// How many ids it writes, and what success means for them.
    fn writes(self) -> (usize, Outcome) {
        match self {
            Op::Execute | Op::QueryReturning | Op::QueryTyped | Op::Helper | Op::Multiplexed => {
                (1, Outcome::Acknowledged)
            }
            Op::SimpleMulti | Op::BatchCommitted | Op::PreparedPortal | Op::CopyIn => {
                (2, Outcome::Acknowledged)
            }
            // Never committed: the pool rolls it back, the COPY is aborted,
            // the server rolls the swallowed error's transaction back.
            Op::BatchLeftOpen | Op::CopyInDropped | Op::HelperSwallowed => (2, Outcome::Absent),
            Op::CopyOut | Op::Listen | Op::Sleep => (0, Outcome::Acknowledged),
        }
    }
}

/// Runs one operation to its end (the caller wraps it in a timeout).
async fn run(db: &DatabaseManager, ledger: &Ledger, op: Op, ids: &[i64]) -> Result<(), Error> {
    let pool = db.postgres()?;
    if let Op::Multiplexed = op {
        pool.multiplexed()
            .execute(
                "INSERT INTO oracle (id, op) VALUES ($1, 'multiplexed')",
                &[&ids[0]],
            )
            .await?;
        return Ok(());
    }
    if let Op::Helper | Op::HelperSwallowed = op {
        let (a, b) = (ids[0], ids.get(1).copied().unwrap_or(-1));
        let swallow = matches!(op, Op::HelperSwallowed);
        return pool
            .transaction(|tx| {
                async move {
                    tx.execute("INSERT INTO oracle (id, op) VALUES ($1, 'helper')", &[&a])
                        .await?;
                    if swallow {
                        tx.execute("INSERT INTO oracle (id, op) VALUES ($1, 'helper')", &[&b])
                            .await?;
                        let _ = tx.simple_query("SELECT 1/0").await;
                    }
                    Ok(())
                }
                .scoped()
            })
            .await;
    }
    let began = Instant::now();
    let mut client = pool.get().await?;
    let waited = began.elapsed();
    if waited > Duration::from_secs(12) {
        ledger.slow_checkouts.lock().unwrap().push(waited);
    }
    // Never handed a session inside a transaction block: SAVEPOINT is
    // refused outside one.
    if let Ok(rows) = client.simple_query("SAVEPOINT oracle_probe").await {
        drop(rows);
        ledger.dirty_sessions.fetch_add(1, Ordering::Relaxed);
        client.batch_execute("ROLLBACK").await.map_err(pg)?;
    }
    match op {
        Op::Execute => {
            client
                .execute(
                    "INSERT INTO oracle (id, op) VALUES ($1, 'execute')",
                    &[&ids[0]],
                )
                .await
                .map_err(pg)?;
        }
        Op::QueryReturning => {
            let row = client
                .query_one(
                    "INSERT INTO oracle (id, op) VALUES ($1, 'returning') RETURNING id",
                    &[&ids[0]],
                )
                .await
                .map_err(pg)?;
            assert_eq!(row.get::<_, i64>(0), ids[0]);
        }
        Op::QueryTyped => {
            client
                .query_typed(
                    "INSERT INTO oracle (id, op) VALUES ($1, 'typed')",
                    &[(&ids[0], tokio_postgres::types::Type::INT8)],
                )
                .await
                .map_err(pg)?;
        }
        Op::SimpleMulti => {
            client
                .simple_query(&format!(
                    "INSERT INTO oracle (id, op) VALUES ({}, 'simple'); INSERT INTO oracle (id, op) VALUES ({}, 'simple')",
                    ids[0], ids[1]
                ))
                .await
                .map_err(pg)?;
        }
        Op::BatchCommitted => {
            client
                .batch_execute(&format!(
                    "BEGIN; INSERT INTO oracle (id, op) VALUES ({}, 'batch'); INSERT INTO oracle (id, op) VALUES ({}, 'batch'); COMMIT",
                    ids[0], ids[1]
                ))
                .await
                .map_err(pg)?;
        }
        Op::BatchLeftOpen => {
            client
                .batch_execute(&format!(
                    "BEGIN; INSERT INTO oracle (id, op) VALUES ({}, 'open'); INSERT INTO oracle (id, op) VALUES ({}, 'open')",
                    ids[0], ids[1]
                ))
                .await
                .map_err(pg)?;
        }
        Op::PreparedPortal => {
            let tx = client.transaction().await.map_err(pg)?;
            let statement = tx
                .prepare("INSERT INTO oracle (id, op) SELECT x, 'portal' FROM unnest($1::int8[]) x RETURNING id")
                .await
                .map_err(pg)?;
            let list: Vec<i64> = ids.to_vec();
            let portal = tx.bind(&statement, &[&list]).await.map_err(pg)?;
            let mut rows = tx.query_portal(&portal, 1).await.map_err(pg)?;
            rows.extend(tx.query_portal(&portal, 10).await.map_err(pg)?);
            assert_eq!(rows.len(), 2);
            tx.commit().await.map_err(pg)?;
        }
        Op::CopyIn | Op::CopyInDropped => {
            let sink = client
                .copy_in("COPY oracle (id, op) FROM STDIN")
                .await
                .map_err(pg)?;
            let mut sink = Box::pin(sink);
            let data = format!("{}\tcopy\n{}\tcopy\n", ids[0], ids[1]);
            sink.send(Bytes::from(data)).await.map_err(pg)?;
            if let Op::CopyIn = op {
                sink.as_mut().finish().await.map_err(pg)?;
            }
        }
        Op::CopyOut => {
            let stream = client
                .copy_out("COPY (SELECT id FROM oracle ORDER BY id DESC LIMIT 200) TO STDOUT")
                .await
                .map_err(pg)?;
            let mut stream = Box::pin(stream);
            // Read some of it; the rest is dropped.
            for _ in 0..(ids.len() % 3) {
                if stream.next().await.transpose().map_err(pg)?.is_none() {
                    break;
                }
            }
        }
        Op::Listen => {
            client
                .batch_execute("LISTEN oracle_channel")
                .await
                .map_err(pg)?;
            client
                .batch_execute("NOTIFY oracle_channel, 'hello'")
                .await
                .map_err(pg)?;
            client
                .batch_execute("UNLISTEN oracle_channel")
                .await
                .map_err(pg)?;
        }
        Op::Sleep => {
            client
                .simple_query("SELECT pg_sleep(0.02)")
                .await
                .map_err(pg)?;
        }
        Op::Multiplexed | Op::Helper | Op::HelperSwallowed => unreachable!("handled above"),
    }
    Ok(())
}

/// One task: `rng` picks the operations and their timeouts until `stop`.
async fn task(
    db: DatabaseManager,
    ledger: Arc<Ledger>,
    mut rng: fastrand::Rng,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let op = OPS[rng.usize(..OPS.len())];
        let (count, success) = op.writes();
        // At least one id: an operation that writes none uses it for its
        // own choices.
        let ids = ledger.ids(count.max(1));
        let ids = &ids[..];
        let limit = match rng.u8(..10) {
            0 => Some(Duration::ZERO),
            1 => Some(Duration::from_millis(1)),
            2 => Some(Duration::from_millis(rng.u64(2..8))),
            _ => None,
        };
        let written = &ids[..count];
        let began = Instant::now();
        let result = match limit {
            Some(limit) => tokio::time::timeout(limit, run(&db, &ledger, op, ids)).await,
            None => Ok(run(&db, &ledger, op, ids).await),
        };
        ledger
            .latencies
            .lock()
            .unwrap()
            .push(began.elapsed().as_micros() as u64);
        match result {
            Ok(Ok(())) => ledger.record(written, success, op.name()),
            Ok(Err(error)) => {
                let (outcome, class) = classify(&error);
                // An error on an operation that never commits still means
                // absent; on one that does, the class decides.
                let outcome = if success == Outcome::Absent {
                    Outcome::Absent
                } else {
                    outcome
                };
                ledger.record(written, outcome, op.name());
                ledger.error(format!("{}: {class}", op.name()));
            }
            Err(_) => {
                let outcome = if success == Outcome::Absent {
                    Outcome::Absent
                } else {
                    Outcome::Unknown
                };
                ledger.record(written, outcome, op.name());
                ledger.error(format!("{}: timed out", op.name()));
            }
        }
    }
}

/// The server faults of a run: `terminate` (the default, for CI) ends one
/// of the pool's backends now and then; `all` (the soak) also restarts the
/// server, freezes every flow through a proxy and stalls new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Faults {
    Terminate,
    All,
}

fn faults() -> Faults {
    match std::env::var("DBMANAGER_ORACLE_FAULTS").as_deref() {
        Ok("all") => Faults::All,
        Ok("terminate") | Err(_) => Faults::Terminate,
        Ok(other) => panic!("DBMANAGER_ORACLE_FAULTS is `terminate` or `all`, not {other:?}"),
    }
}

/// Where the oracle's server runs: the suite's, or (for `all`) a cluster
/// of its own behind a fault proxy.
struct Server {
    /// The pool's URL.
    url: String,
    /// A superuser URL that bypasses the proxy.
    admin: String,
    cluster: Option<PgCluster>,
    proxy: Option<FaultProxy>,
    _db: Option<TestDb>,
}

impl Server {
    async fn start(faults: Faults) -> Server {
        match faults {
            Faults::Terminate => {
                let db = TestDb::create("oracle").await;
                Server {
                    url: db.url.clone(),
                    admin: admin_url(),
                    cluster: None,
                    proxy: None,
                    _db: Some(db),
                }
            }
            Faults::All => {
                let cluster = tokio::task::spawn_blocking(|| PgCluster::start_new("oracle-pw"))
                    .await
                    .unwrap();
                let admin = cluster.url("postgres");
                let (proxy, url) = FaultProxy::in_front_of(&admin).await;
                Server {
                    url,
                    admin,
                    cluster: Some(cluster),
                    proxy: Some(proxy),
                    _db: None,
                }
            }
        }
    }
}

/// Injects faults now and then until `stop`; returns what it did.
async fn fault_injector(
    server: Arc<Server>,
    faults: Faults,
    application_name: String,
    mut rng: fastrand::Rng,
    stop: Arc<AtomicBool>,
) -> HashMap<&'static str, u64> {
    let mut done: HashMap<&'static str, u64> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(rng.u64(200..1500))).await;
        let fault = match faults {
            Faults::Terminate => 0,
            Faults::All => rng.u8(..20),
        };
        match fault {
            // Mostly terminations; now and then the rest.
            0..=15 => {
                if terminate_one(&server.admin, &application_name).await {
                    *done.entry("terminate").or_default() += 1;
                }
            }
            16 => {
                let cluster = server.clone();
                tokio::task::spawn_blocking(move || {
                    let cluster = cluster.cluster.as_ref().expect("its own cluster");
                    cluster.stop();
                    std::thread::sleep(Duration::from_millis(500));
                    cluster.start();
                })
                .await
                .unwrap();
                *done.entry("restart").or_default() += 1;
            }
            17 | 18 => {
                let proxy = server.proxy.as_ref().expect("a proxy");
                proxy.freeze();
                tokio::time::sleep(Duration::from_millis(rng.u64(500..3000))).await;
                proxy.thaw();
                *done.entry("freeze").or_default() += 1;
            }
            _ => {
                let proxy = server.proxy.as_ref().expect("a proxy");
                proxy.stall_new(Duration::from_millis(rng.u64(500..3000)));
                tokio::time::sleep(Duration::from_secs(3)).await;
                proxy.stall_new(Duration::ZERO);
                *done.entry("stall new connections").or_default() += 1;
            }
        }
    }
    done
}

async fn terminate_one(admin: &str, application_name: &str) -> bool {
    let Ok((client, connection)) = tokio_postgres::connect(admin, tokio_postgres::NoTls).await
    else {
        return false;
    };
    tokio::spawn(connection);
    client
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = $1 AND pid <> pg_backend_pid() \
             ORDER BY random() LIMIT 1",
            &[&application_name],
        )
        .await
        .is_ok_and(|rows| !rows.is_empty())
}

/// Every `every`, one line of figures to `path` (CSV): seconds, client
/// RSS (KiB), open connections, errors so far, p99 latency (ms) of the
/// operations since the last line.
async fn sampler(
    path: std::path::PathBuf,
    every: Duration,
    db: DatabaseManager,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
) {
    use std::io::Write;
    let mut file = std::fs::File::create(&path).expect("the samples file");
    writeln!(
        file,
        "seconds,rss_kib,open_connections,errors,p99_ms,acknowledged"
    )
    .unwrap();
    let began = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(every).await;
        let rss = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .unwrap_or(0);
        let open = db.postgres().map(|p| p.status().open).unwrap_or(0);
        let errors: u64 = ledger.errors.lock().unwrap().values().sum();
        let acknowledged = ledger
            .outcomes
            .lock()
            .unwrap()
            .values()
            .filter(|(o, _)| *o == Outcome::Acknowledged)
            .count();
        let mut window = std::mem::take(&mut *ledger.latencies.lock().unwrap());
        window.sort_unstable();
        let p99 = window
            .get((window.len() * 99 / 100).min(window.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0);
        writeln!(
            file,
            "{},{rss},{open},{errors},{:.2},{acknowledged}",
            began.elapsed().as_secs(),
            p99 as f64 / 1000.0
        )
        .unwrap();
        file.flush().unwrap();
    }
}

fn seed() -> u64 {
    std::env::var("DBMANAGER_ORACLE_SEED")
        .ok()
        .map(|s| s.parse().expect("DBMANAGER_ORACLE_SEED is a number"))
        .unwrap_or_else(|| fastrand::u64(..))
}

fn duration() -> Duration {
    let secs = std::env::var("DBMANAGER_ORACLE_SECS")
        .ok()
        .map(|s| {
            s.parse()
                .expect("DBMANAGER_ORACLE_SECS is a number of seconds")
        })
        .unwrap_or(60);
    Duration::from_secs(secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_is_present_exactly_once_and_no_session_is_dirty() {
    let seed = seed();
    let run_for = duration();
    let faults = faults();
    println!(
        "oracle seed {seed} (replay: DBMANAGER_ORACLE_SEED={seed}), running {run_for:?} with faults {faults:?}"
    );
    let server = Arc::new(Server::start(faults).await);
    // No primary key: a write applied twice must show as two rows.
    sql(
        &server.url,
        "CREATE TABLE oracle (id bigint NOT NULL, op text NOT NULL)",
    )
    .await;
    let mut config = pg_config(&server.url);
    config.postgres.pool.max_size = 2;
    config.postgres.pool.min_idle = 2;
    config.postgres.pool.wait_timeout = Duration::from_secs(10);
    config.postgres.pool.recycle_timeout = Duration::from_secs(2);
    config.postgres.multiplex.connections = 1;
    let application_name = config.postgres.application_name.clone();
    let manager = build(config).await;
    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut rng = fastrand::Rng::with_seed(seed);
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            tokio::spawn(task(
                manager.clone(),
                ledger.clone(),
                fastrand::Rng::with_seed(rng.u64(..)),
                stop.clone(),
            ))
        })
        .collect();
    let injector = tokio::spawn(fault_injector(
        server.clone(),
        faults,
        application_name,
        fastrand::Rng::with_seed(rng.u64(..)),
        stop.clone(),
    ));
    let sampling = std::env::var_os("DBMANAGER_ORACLE_SAMPLES").map(|path| {
        let every = if run_for >= Duration::from_secs(600) {
            30
        } else {
            5
        };
        tokio::spawn(sampler(
            path.into(),
            Duration::from_secs(every),
            manager.clone(),
            ledger.clone(),
            stop.clone(),
        ))
    });
    tokio::time::sleep(run_for).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("a task ended within its bounds")
            .expect("a task panicked");
    }
    let injected = injector.await.unwrap();
    if let Some(sampling) = sampling {
        sampling.await.unwrap();
    }
    if let Some(proxy) = &server.proxy {
        proxy.thaw();
    }
    manager.shutdown().await.expect("shutdown");
    let stats = manager.postgres().unwrap().stats();

    // The table is read directly, past the proxy.
    let direct = match &server.cluster {
        Some(cluster) => cluster.url("postgres"),
        None => server.url.clone(),
    };
    let (client, connection) = tokio_postgres::connect(&direct, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut present: HashMap<i64, i64> = HashMap::new();
    for row in client
        .query("SELECT id, count(*) FROM oracle GROUP BY id", &[])
        .await
        .unwrap()
    {
        present.insert(row.get(0), row.get(1));
    }

    let outcomes = ledger.outcomes.lock().unwrap();
    let mut by_outcome: HashMap<&str, u64> = HashMap::new();
    let mut violations = Vec::new();
    for (id, (outcome, op)) in outcomes.iter() {
        let copies = present.get(id).copied().unwrap_or(0);
        let key = match outcome {
            Outcome::Acknowledged => "acknowledged",
            Outcome::Absent => "absent",
            Outcome::Unknown => "unknown",
        };
        *by_outcome.entry(key).or_default() += 1;
        let ok = match outcome {
            Outcome::Acknowledged => copies == 1,
            Outcome::Absent => copies == 0,
            Outcome::Unknown => copies <= 1,
        };
        if !ok {
            violations.push(format!("id {id} ({op}): {outcome:?} but {copies} rows"));
        }
    }
    for id in present.keys() {
        if !outcomes.contains_key(id) {
            violations.push(format!("id {id}: present but never written"));
        }
    }
    let mut errors: Vec<_> = ledger.errors.lock().unwrap().clone().into_iter().collect();
    errors.sort();
    println!("outcomes: {by_outcome:?}; faults: {injected:?}");
    println!("pool: {stats:?}");
    for (class, count) in &errors {
        println!("  {count:>6}  {class}");
    }
    violations.sort();
    assert!(
        violations.is_empty(),
        "seed {seed}: {} violations:\n{}",
        violations.len(),
        violations
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        ledger.dirty_sessions.load(Ordering::Relaxed),
        0,
        "seed {seed}: a caller was handed a connection inside a transaction block"
    );
    let slow = ledger.slow_checkouts.lock().unwrap();
    assert!(
        slow.is_empty(),
        "seed {seed}: checkouts past their bound: {slow:?}"
    );
    assert!(
        by_outcome.get("acknowledged").copied().unwrap_or(0) > 0,
        "seed {seed}: nothing was acknowledged: the oracle exercised nothing"
    );
    let closed = stats.closed_lifetime
        + stats.closed_idle
        + stats.closed_broken
        + stats.closed_excess
        + stats.closed_hook
        + stats.closed_discarded
        + stats.closed_abandoned
        + stats.closed_shutdown;
    assert_eq!(
        stats.created, closed,
        "seed {seed}: after shutdown every connection opened is counted closed: {stats:?}"
    );
}
