//! `dbmanager bench`: the load harness (the `dbmanager-bench` crate) from
//! the command line.

use std::process::ExitCode;

use dbmanager::{Config, DatabaseManager};
use dbmanager_bench::{self as bench, BenchOptions, Mode};

use crate::args::BenchArgs;

pub async fn run(mut config: Config, args: BenchArgs) -> bench::Result<ExitCode> {
    match (args.mode, args.pool_size) {
        (Mode::Pooled, Some(pool_size)) => bench::configure_pools(&mut config, pool_size),
        (Mode::Multiplexed, connections) => {
            let connections = connections.unwrap_or(config.postgres.multiplex.connections);
            bench::configure_multiplexed(&mut config, connections, args.tasks);
        }
        (Mode::Pooled, None) => {}
    }
    let mut options = BenchOptions::new(args.workload);
    options.mode = args.mode;
    options.slow_statement = args.slow_statement;
    options.tasks = args.tasks;
    options.duration = args.duration;
    options.warmup = args.warmup;
    let db = DatabaseManager::builder().config(config).build().await?;
    let report = bench::run(&db, &options).await;
    let closed = db.shutdown().await;
    let report = report?;
    closed?;
    if args.json {
        crate::emit(&report.to_json());
    } else {
        crate::emit(&report.to_string());
    }
    if report.errors > 0 {
        eprintln!(
            "dbmanager: error: {} of {} operations failed{}",
            report.errors,
            report.operations + report.errors,
            report
                .first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
