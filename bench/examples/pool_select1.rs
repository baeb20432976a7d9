//! A fixed number of acquire + `SELECT 1` + release operations through one
//! pool, the manager's or raw deadpool-postgres' (built as the criterion
//! grid builds them), for instruction counts: under
//! `valgrind --tool=callgrind`, two runs of different lengths give the
//! client's instructions per operation, (Ir₂ − Ir₁) / (ops₂ − ops₁), with
//! the start-up (connects, SCRAM) cancelled out.
//!
//! ```text
//! DATABASE_URL=postgres://... cargo build --release -p dbmanager-bench --example pool_select1
//! valgrind --tool=callgrind target/release/examples/pool_select1 --pool dbmanager --tasks 1 --size 1 --operations 2000
//! valgrind --tool=callgrind target/release/examples/pool_select1 --pool dbmanager --tasks 1 --size 1 --operations 6000
//! ```
//! `--pool deadpool` for the baseline. Prints the operations run, and the
//! wall and CPU time per operation.

#[path = "../../benches/common/mod.rs"]
mod common;

use std::time::Instant;

/// The process's user + system CPU seconds, from `/proc/self/stat`.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    // utime and stime, in clock ticks of 1/100 s on Linux.
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// The pool measured.
#[derive(Clone)]
enum Pool {
    Manager(dbmanager::DatabaseManager),
    Deadpool(common::deadpool::Pool),
}

impl Pool {
    async fn select1(&self) {
        match self {
            Pool::Manager(db) => {
                let conn = db.postgres().unwrap().get().await.unwrap();
                conn.simple_query("SELECT 1").await.unwrap();
            }
            Pool::Deadpool(raw) => {
                let conn = raw.get().await.unwrap();
                conn.simple_query("SELECT 1").await.unwrap();
            }
        }
    }
}

#[tokio::main(worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut pool = String::from("dbmanager");
    let (mut tasks, mut size, mut operations) = (1usize, 1usize, 10_000u64);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--pool" => pool = value()?,
            "--tasks" => tasks = value()?.parse()?,
            "--size" => size = value()?.parse()?,
            "--operations" => operations = value()?.parse()?,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    if tasks == 0 || size == 0 {
        return Err("--tasks and --size must be at least 1".into());
    }
    let url = common::server_url();
    // Both pools are opened in full before the clock starts.
    let checkout = match pool.as_str() {
        "dbmanager" => Pool::Manager(common::manager(&url, size, "pool-select1").await),
        "deadpool" => {
            let raw = common::raw_deadpool(&url, size, "pool-select1");
            let mut opened = Vec::with_capacity(size);
            for _ in 0..size {
                opened.push(raw.get().await?);
            }
            drop(opened);
            Pool::Deadpool(raw)
        }
        other => return Err(format!("--pool is dbmanager or deadpool, not {other}").into()),
    };
    let per_task = operations / tasks as u64;
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    let mut handles = Vec::with_capacity(tasks);
    for _ in 0..tasks {
        let checkout = checkout.clone();
        handles.push(tokio::spawn(async move {
            for _ in 0..per_task {
                checkout.select1().await;
            }
        }));
    }
    for handle in handles {
        handle.await?;
    }
    let done = per_task * tasks as u64;
    let wall = started.elapsed().as_secs_f64() / done as f64;
    let cpu = cpu_before
        .zip(cpu_seconds())
        .map(|(before, after)| (after - before) / done as f64);
    println!(
        "{pool}: {done} operations, {tasks} tasks on {size} connections: {:.1} µs wall per operation, {} CPU",
        wall * 1e6,
        cpu.map_or("unknown".into(), |c| format!("{:.1} µs", c * 1e6))
    );
    Ok(())
}
