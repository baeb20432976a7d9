//! What the crate's layer costs on top of deadpool-postgres: checkout and
//! return through `DatabaseManager` against raw deadpool-postgres with the
//! same settings (size, LIFO queue, the cheapest recycle check), one task
//! alone and 32 tasks sharing 8 connections.
//!
//! ```text
//! DATABASE_URL=postgres://user:pw@127.0.0.1:5432/db cargo bench --bench overhead
//! ```
//!
//! The side-by-side grid against bb8 and sqlx, and the load harness, live
//! in the `dbmanager-bench` workspace member (`scripts/bench` runs them).

use std::time::{Duration, Instant};

mod common;

use criterion::{Criterion, Throughput};
use futures_util::future::join_all;

use common::{manager, raw_deadpool, server_url};

async fn deadpool(url: &str, size: usize) -> common::deadpool::Pool {
    let pool = raw_deadpool(url, size, "bench-overhead-deadpool");
    drop(join_all((0..size).map(|_| pool.get())).await);
    pool
}

/// `iterations` checkouts spread over `tasks` tasks; the wall time.
async fn spread<F, Fut>(tasks: usize, iterations: u64, checkout: F) -> Duration
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks as u64)
        .map(|task| {
            let count = iterations / tasks as u64 + u64::from(task < iterations % tasks as u64);
            let checkout = checkout.clone();
            tokio::spawn(async move {
                for _ in 0..count {
                    checkout().await;
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("a bench task panicked");
    }
    started.elapsed()
}

fn overhead(c: &mut Criterion) {
    let url = server_url();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    for (tasks, size) in [(1, 1), (32, 8)] {
        let mut group = c.benchmark_group(format!("checkout_t{tasks}_p{size}"));
        group.throughput(Throughput::Elements(1));
        let db = rt.block_on(manager(&url, size, "bench-overhead-dbmanager"));
        group.bench_function("dbmanager", |b| {
            b.iter_custom(|n| {
                let db = db.clone();
                rt.block_on(spread(tasks, n, move || {
                    let db = db.clone();
                    async move { drop(db.postgres().unwrap().get().await.unwrap()) }
                }))
            })
        });
        rt.block_on(db.shutdown())
            .expect("shutting the manager down");
        let pool = rt.block_on(deadpool(&url, size));
        group.bench_function("deadpool", |b| {
            b.iter_custom(|n| {
                let pool = pool.clone();
                rt.block_on(spread(tasks, n, move || {
                    let pool = pool.clone();
                    async move { drop(pool.get().await.unwrap()) }
                }))
            })
        });
        pool.close();
        group.finish();
    }
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    overhead(&mut criterion);
    criterion.final_summary();
}
