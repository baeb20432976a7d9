//! `dbmanager bench`: the load harness (the `dbmanager-bench` crate) from
//! the command line.

use std::process::ExitCode;

use dbmanager::{Config, DatabaseManager};
use dbmanager_bench::{self as bench, BenchOptions};

use crate::args::BenchArgs;

pub async fn run(mut config: Config, args: BenchArgs) -> bench::Result<ExitCode> {
    if let Some(pool_size) = args.pool_size {
        bench::configure_pools(&mut config, pool_size);
    }
    let mut options = BenchOptions::new(args.workload);
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
