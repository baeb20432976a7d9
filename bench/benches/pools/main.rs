//! Pool overhead, side by side: checkout and return (no query), and
//! checkout, `SELECT 1` and return, through `DatabaseManager`, raw
//! deadpool-postgres with the same settings, bb8-postgres and sqlx's
//! `PgPool`, for tasks / pool size 1/1, 8/8, 32/8 and 256/16.
//!
//! One iteration is one operation; `T` tasks share the iterations of a
//! sample, so a figure is wall time per operation with `T` tasks running
//! (the inverse of throughput). Lower is better.
//!
//! ```text
//! DATABASE_URL=postgres://user:pw@127.0.0.1:5432/db cargo bench -p dbmanager-bench --bench pools
//! cargo bench -p dbmanager-bench --bench pools -- acquire_release_t32   # one grid point
//! ```
//!
//! The server comes from `DATABASE_URL` (else `PG_ADMIN_URL`);
//! `scripts/bench` starts one and runs this grid among its comparisons.
//! `POOL_BENCH_REVERSE=1` measures the pools in reverse order.

// The server and the two pools the library's own bench builds the same way.
#[path = "../../../benches/common/mod.rs"]
mod common;
mod contenders;

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use tokio::runtime::Runtime;

use common::server_url;
use contenders::{Contender, NAMES};

/// (tasks, pool size).
const GRID: [(usize, usize); 4] = [(1, 1), (8, 8), (32, 8), (256, 16)];

/// What one operation does.
#[derive(Clone, Copy)]
enum Operation {
    AcquireRelease,
    Select1,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::AcquireRelease => "acquire_release",
            Operation::Select1 => "select1",
        }
    }
}

/// The pools in bench order; `POOL_BENCH_REVERSE=1` reverses it, so that
/// alternating runs (scripts/bench) do not always measure the same pool
/// first at each grid point.
fn contender_order() -> Vec<&'static str> {
    let mut names = NAMES.to_vec();
    if std::env::var_os("POOL_BENCH_REVERSE").is_some_and(|v| v == "1") {
        names.reverse();
    }
    names
}

/// The runtime the tasks run on: `POOL_BENCH_WORKERS` worker threads,
/// default 2.
fn runtime() -> Runtime {
    let workers = std::env::var("POOL_BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Runs `iterations` operations spread over `tasks` tasks; returns the wall
/// time from the first start to the last finish.
async fn run(
    contender: &Contender,
    operation: Operation,
    tasks: usize,
    iterations: u64,
) -> Duration {
    let per_task = iterations / tasks as u64;
    let extra = iterations % tasks as u64;
    let started = Instant::now();
    let mut handles = Vec::with_capacity(tasks);
    for task in 0..tasks as u64 {
        let contender = contender.clone();
        let count = per_task + u64::from(task < extra);
        handles.push(tokio::spawn(async move {
            for _ in 0..count {
                match operation {
                    Operation::AcquireRelease => contender.acquire_release().await,
                    Operation::Select1 => contender.select1().await,
                }
            }
        }));
    }
    for handle in handles {
        handle.await.expect("a bench task panicked");
    }
    started.elapsed()
}

fn pools(c: &mut Criterion) {
    let url = server_url();
    let rt = runtime();
    for operation in [Operation::AcquireRelease, Operation::Select1] {
        for (tasks, size) in GRID {
            let mut group = c.benchmark_group(format!("{}_t{tasks}_p{size}", operation.name()));
            group.throughput(Throughput::Elements(1));
            for name in contender_order() {
                let contender = rt.block_on(Contender::open(name, &url, size));
                group.bench_function(name, |b| {
                    b.iter_custom(|iterations| {
                        rt.block_on(run(&contender, operation, tasks, iterations))
                    })
                });
                rt.block_on(contender.close());
            }
            group.finish();
        }
    }
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    pools(&mut criterion);
    criterion.final_summary();
}
