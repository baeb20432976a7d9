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

use criterion::{Criterion, Throughput};
use dbmanager::config::{QueueMode, RecyclingMethod};
use dbmanager::deadpool_postgres as deadpool;
use dbmanager::tokio_postgres::{self, NoTls};
use dbmanager::{Config, DatabaseManager, DatabaseUrl};
use futures_util::future::join_all;

const WAIT: Duration = Duration::from_secs(30);

fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .or_else(|_| std::env::var("PG_ADMIN_URL"))
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| {
            eprintln!(
                "error: the overhead bench needs a PostgreSQL server: set DATABASE_URL (or \
                 PG_ADMIN_URL), or run scripts/test or scripts/bench, which start one"
            );
            std::process::exit(2)
        })
}

async fn manager(url: &str, size: usize) -> DatabaseManager {
    let mut config = Config::default();
    config.postgres.url = Some(DatabaseUrl::new(url));
    config.postgres.application_name = "bench-overhead-dbmanager".into();
    let pool = &mut config.postgres.pool;
    pool.max_size = size;
    pool.min_idle = size;
    pool.wait_timeout = WAIT;
    pool.recycling = RecyclingMethod::Fast;
    pool.queue_mode = QueueMode::Lifo;
    DatabaseManager::builder()
        .config(config)
        .build()
        .await
        .expect("building the DatabaseManager")
}

async fn deadpool(url: &str, size: usize) -> deadpool::Pool {
    let mut pg: tokio_postgres::Config = url.parse().expect("a PostgreSQL URL");
    pg.application_name("bench-overhead-deadpool");
    let manager = deadpool::Manager::from_config(
        pg,
        NoTls,
        deadpool::ManagerConfig {
            recycling_method: deadpool::RecyclingMethod::Fast,
        },
    );
    let pool = deadpool::Pool::builder(manager)
        .max_size(size)
        .queue_mode(deadpool::QueueMode::Lifo)
        .wait_timeout(Some(WAIT))
        .create_timeout(Some(Duration::from_secs(10)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .expect("building the deadpool pool");
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
        let db = rt.block_on(manager(&url, size));
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
