//! The load harness behind `dbmanager bench`.
//!
//! [`run`] starts [`BenchOptions::tasks`] tasks on the current tokio
//! runtime, each running one [`Workload`] operation after another through a
//! [`DatabaseManager`], and returns a [`BenchReport`]: throughput, latency
//! and acquire-wait percentiles (HDR histograms), errors and acquire
//! timeouts, as JSON (serde) or text (`Display`).
//!
//! A run has three phases:
//!
//! 1. **Prime**: every task runs one operation, untimed, so connections are
//!    opened and statements prepared before the clock starts (pgbench also
//!    connects first). A failure here ends the run with that error.
//! 2. **Warm up** for [`BenchOptions::warmup`]: operations run, nothing is
//!    recorded.
//! 3. **Measure** for [`BenchOptions::duration`]: each task records into
//!    histograms of its own (no shared state, no lock on the hot path);
//!    they are merged when the run ends.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use dbmanager_bench::{self as bench, BenchOptions, Workload};
//! use dbmanager::{Config, DatabaseManager};
//!
//! let mut config = Config::load()?;
//! bench::configure_pools(&mut config, 16);
//! let db = DatabaseManager::builder().config(config).build().await?;
//! let report = bench::run(
//!     &db,
//!     &BenchOptions {
//!         workload: Workload::PgbenchS,
//!         tasks: 16,
//!         duration: Duration::from_secs(10),
//!         ..BenchOptions::default()
//!     },
//! )
//! .await?;
//! println!("{report}");
//! println!("{}", report.to_json());
//! db.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! This crate's criterion bench (`benches/pools`) measures the pool itself
//! against raw deadpool-postgres, bb8 and sqlx; `scripts/bench` runs it and
//! compares the harness with `pgbench`. See docs/benchmarks.md.

mod error;
mod mode;
mod mongo;
mod options;
mod postgres;
mod recorder;
mod report;
mod runner;
mod workload;

pub use error::{BenchError, Result};
pub use mode::{Mode, ParseModeError};
pub use options::BenchOptions;
pub use report::{BenchReport, Percentiles};
pub use workload::{ParseWorkloadError, Workload};

use dbmanager::{Backend, Config, DatabaseManager};
use recorder::TaskRecord;

/// Runs the benchmark `options` describes against `db` and reports what it
/// measured.
///
/// The tasks are spawned on the current tokio runtime: use a multi-thread
/// runtime (`#[tokio::main]`) to load more than one core. The run takes
/// the priming operations plus `warmup + duration`. Operation errors do not
/// stop it: they are counted in [`BenchReport::errors`].
///
/// # Errors
///
/// [`BenchError::Option`] for unusable options; [`BenchError::Database`]
/// with `NotConfigured` when the workload's database is not configured;
/// [`BenchError::MissingDataset`] for `pgbench-S` without a `pgbench -i`
/// dataset; the error of the first failed priming operation (the pool's,
/// the server's) otherwise.
pub async fn run(db: &DatabaseManager, options: &BenchOptions) -> Result<BenchReport> {
    options.check()?;
    match options.workload.backend() {
        Backend::Postgres => run_postgres(db, options).await,
        _ => run_mongo(db, options).await,
    }
}

async fn run_postgres(db: &DatabaseManager, options: &BenchOptions) -> Result<BenchReport> {
    let pool = db.postgres()?;
    let pool_size = match options.mode {
        Mode::Pooled => pool.status().max_size,
        Mode::Multiplexed => pool.multiplexed().status().connections,
    };
    let (steps, dataset) = postgres::prepare(db, options).await?;
    let slow = options
        .slow_statement
        .map(|sleep| tokio::spawn(postgres::slow_statements(db.clone(), options.mode, sleep)));
    let record = runner::drive(steps, options.warmup, options.duration).await;
    if let Some(slow) = slow {
        slow.abort();
    }
    let record = record?;
    Ok(report(
        options,
        Backend::Postgres,
        pool_size,
        dataset,
        &record,
        options.mode == Mode::Pooled,
    ))
}

async fn run_mongo(db: &DatabaseManager, options: &BenchOptions) -> Result<BenchReport> {
    let pool_size = db.mongo()?.status().max_size;
    measure_mongo(mongo::Source::Manager(db.clone()), options, pool_size).await
}

/// Prepares and drives a MongoDB workload through `source` (the manager or
/// a bare driver client) and reports it.
async fn measure_mongo(
    source: mongo::Source,
    options: &BenchOptions,
    pool_size: usize,
) -> Result<BenchReport> {
    let (steps, dataset) = mongo::prepare(source, options).await?;
    let record = runner::drive(steps, options.warmup, options.duration).await?;
    Ok(report(
        options,
        Backend::Mongodb,
        pool_size,
        dataset,
        &record,
        false,
    ))
}

/// Runs a MongoDB workload (`ping`, `find-by-id`) on a driver client built
/// from `client_options` alone, without the manager: the baseline that
/// the manager's MongoDB overhead is measured against. The same tasks,
/// phases and clock as [`run`]; `database` holds the `find-by-id`
/// collection. The client is shut down before this returns.
///
/// # Errors
///
/// [`BenchError::Option`] for a PostgreSQL workload or unusable options
/// or client options; the first failed priming operation's error otherwise.
pub async fn run_mongo_driver(
    client_options: dbmanager::mongodb::options::ClientOptions,
    database: &str,
    options: &BenchOptions,
) -> Result<BenchReport> {
    options.check()?;
    if options.workload.backend() != Backend::Mongodb {
        return Err(BenchError::option(
            "bench.workload",
            format!(
                "`{}` is a PostgreSQL workload; the driver baseline runs `ping` and `find-by-id`",
                options.workload
            ),
        ));
    }
    // The driver's default maximum pool size.
    let pool_size = client_options.max_pool_size.unwrap_or(10) as usize;
    let client = dbmanager::mongodb::Client::with_options(client_options)
        .map_err(|e| BenchError::option("mongodb", e.to_string()))?;
    let source = mongo::Source::Driver {
        client: client.clone(),
        database: database.to_string(),
    };
    let outcome = measure_mongo(source, options, pool_size).await;
    client.shutdown().immediate(true).await;
    outcome
}

/// Sets `config` up for a multiplexed benchmark on `connections`
/// connections: the handle opens them all at build (`warm_up`, as pgbench
/// connects first) with room for every task ([`BenchOptions::tasks`]
/// spread evenly), and the pool keeps one connection for the harness's own
/// set-up queries.
pub fn configure_multiplexed(config: &mut Config, connections: usize, tasks: usize) {
    let connections = connections.max(1);
    let multiplex = &mut config.postgres.multiplex;
    multiplex.connections = connections;
    multiplex.warm_up = true;
    multiplex.max_in_flight = multiplex.max_in_flight.max(tasks.div_ceil(connections));
    config.postgres.pool.min_idle = config.postgres.pool.min_idle.min(1);
}

/// Sizes `config`'s pools for a benchmark on `pool_size` connections:
/// PostgreSQL `max_size` and `min_idle` (so every connection is open
/// before the run, as pgbench opens its clients' first) and MongoDB
/// `max_size` and `min_size` all become `pool_size`. Every other setting
/// (recycling, timeouts, lifetimes) stays as configured, so the run
/// measures the pool a service would use.
pub fn configure_pools(config: &mut Config, pool_size: usize) {
    let pool_size = pool_size.max(1);
    config.postgres.pool.max_size = pool_size;
    config.postgres.pool.min_idle = pool_size;
    if config
        .postgres
        .pool
        .max_idle
        .is_some_and(|max_idle| max_idle < pool_size)
    {
        config.postgres.pool.max_idle = None;
    }
    let mongo_size = u32::try_from(pool_size).unwrap_or(u32::MAX);
    config.mongodb.pool.max_size = mongo_size;
    config.mongodb.pool.min_size = mongo_size;
}

fn report(
    options: &BenchOptions,
    backend: Backend,
    pool_size: usize,
    dataset: Option<String>,
    record: &TaskRecord,
    acquires: bool,
) -> BenchReport {
    BenchReport {
        workload: options.workload,
        backend,
        tasks: options.tasks,
        mode: options.mode,
        slow_statement: options.slow_statement,
        pool_size,
        duration: options.duration,
        warmup: options.warmup,
        operations: record.operations,
        errors: record.errors,
        acquire_timeouts: record.acquire_timeouts,
        throughput: record.operations as f64 / options.duration.as_secs_f64(),
        latency: Percentiles::of(&record.latency),
        acquire_wait: acquires.then(|| Percentiles::of(&record.acquire_wait)),
        dataset,
        first_error: record.first_error.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configure_pools_sizes_both_pools_and_keeps_other_settings() {
        let mut config = Config::default();
        config.postgres.pool.max_idle = Some(2);
        config.postgres.pool.wait_timeout = std::time::Duration::from_secs(7);
        configure_pools(&mut config, 24);
        let pool = &config.postgres.pool;
        assert_eq!(
            (pool.max_size, pool.min_idle, pool.max_idle),
            (24, 24, None)
        );
        assert_eq!(pool.wait_timeout, std::time::Duration::from_secs(7));
        let mongo = &config.mongodb.pool;
        assert_eq!((mongo.max_size, mongo.min_size), (24, 24));
        config.validate().unwrap();
    }
}
