//! The baseline of the MongoDB comparison in `scripts/bench`: the harness's
//! `ping` or `find-by-id` workload on a bare `mongodb` driver client, with
//! the pool settings `dbmanager bench --pool-size N` gives the manager, and
//! the same tasks, phases and clock. What differs from
//! `dbmanager bench --workload ping` is only the manager's layer: its pool
//! event handler and the `db.mongo()?` call on every operation.
//!
//! ```text
//! MONGODB_URL=mongodb://... cargo run --release -p dbmanager-bench --example mongo_driver_bench -- \
//!     --workload ping --tasks 8 --pool-size 8 --duration 10s --warmup 2s --json
//! ```

use std::time::Duration;

use dbmanager::mongodb::options::ClientOptions;
use dbmanager_bench::{self as bench, BenchOptions, Workload};

/// Default database when the URL names none, as the manager's default.
const DEFAULT_DATABASE: &str = "app";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut options = BenchOptions::new(Workload::MongoPing);
    let mut pool_size: u32 = 20;
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--workload" => options.workload = value()?.parse()?,
            "--tasks" => options.tasks = value()?.parse()?,
            "--pool-size" => pool_size = value()?.parse()?,
            "--duration" => options.duration = humantime::parse_duration(&value()?)?,
            "--warmup" => options.warmup = humantime::parse_duration(&value()?)?,
            "--json" => json = true,
            other => return Err(format!("unknown argument `{other}`").into()),
        }
    }
    let url = std::env::var("MONGODB_URL")
        .or_else(|_| std::env::var("MONGODB_URI"))
        .map_err(|_| "set MONGODB_URL to the MongoDB server to benchmark")?;
    let mut client_options = ClientOptions::parse(&url).await?;
    // The settings the manager applies (see src/mongo), without its pool
    // event handler.
    client_options.app_name = client_options.app_name.or(Some("dbmanager".into()));
    client_options.connect_timeout = Some(Duration::from_secs(5));
    client_options.server_selection_timeout = Some(Duration::from_secs(5));
    client_options.max_pool_size = Some(pool_size);
    client_options.min_pool_size = Some(pool_size);
    client_options.max_idle_time = Some(Duration::from_secs(600));
    let database = client_options
        .default_database
        .clone()
        .unwrap_or_else(|| DEFAULT_DATABASE.into());
    let report = bench::run_mongo_driver(client_options, &database, &options).await?;
    if json {
        println!("{}", report.to_json());
    } else {
        println!("{report}");
    }
    Ok(())
}
