//! The driver's own ceiling, for `scripts/bench`: pgbench's select-only
//! statement on bare tokio-postgres clients, one per task, no pool, no
//! harness. Same statement, same random `aid`, same prepared statement,
//! same warm-up and counting as `dbmanager bench --workload pgbench-S`, so
//! the difference between the two is what the pool and the harness cost,
//! and the difference between this and `pgbench -S -M prepared` is what the
//! driver costs.
//!
//! ```text
//! DATABASE_URL=postgres://... cargo run --release -p dbmanager-bench --example tokio_postgres_bench -- \
//!     --tasks 8 --duration 10s --warmup 2s
//! ```
//! Prints one JSON object: `{"tasks": 8, "duration_secs": 10.0, "operations": ..., "throughput": ...}`.

use std::time::{Duration, Instant};

use dbmanager::tokio_postgres::{self, NoTls};

const SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut tasks = 8usize;
    let mut duration = Duration::from_secs(10);
    let mut warmup = Duration::from_secs(2);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--tasks" => tasks = value()?.parse()?,
            "--duration" => duration = humantime::parse_duration(&value()?)?,
            "--warmup" => warmup = humantime::parse_duration(&value()?)?,
            "--json" => {}
            other => return Err(format!("unknown argument `{other}`").into()),
        }
    }
    let url = std::env::var("DATABASE_URL")
        .map_err(|_| "set DATABASE_URL to a database holding a pgbench -i dataset")?;

    let mut clients = Vec::with_capacity(tasks);
    for _ in 0..tasks {
        let (client, connection) = tokio_postgres::connect(&url, NoTls).await?;
        tokio::spawn(connection);
        clients.push(client);
    }
    let scale: i64 = clients[0]
        .query_one("SELECT count(*) FROM pgbench_branches", &[])
        .await?
        .get(0);
    let accounts = (scale * 100_000) as i32;

    let measure_from = Instant::now() + warmup;
    let end = measure_from + duration;
    let mut handles = Vec::with_capacity(tasks);
    for (task, client) in clients.into_iter().enumerate() {
        handles.push(tokio::spawn(async move {
            let statement = client.prepare(SELECT).await?;
            let mut rng = fastrand::Rng::with_seed(42 + task as u64);
            let mut operations = 0u64;
            loop {
                let aid = rng.i32(1..=accounts);
                client.query_one(&statement, &[&aid]).await?;
                let finished = Instant::now();
                if finished >= end {
                    break;
                }
                if finished >= measure_from {
                    operations += 1;
                }
            }
            Ok::<u64, tokio_postgres::Error>(operations)
        }));
    }
    let mut operations = 0;
    for handle in handles {
        operations += handle.await??;
    }
    let report = serde_json::json!({
        "driver": "tokio-postgres",
        "tasks": tasks,
        "duration_secs": duration.as_secs_f64(),
        "operations": operations,
        "throughput": operations as f64 / duration.as_secs_f64(),
    });
    println!("{report}");
    Ok(())
}
