//! What the library's overhead bench and the side-by-side grid of the
//! `dbmanager-bench` member (which includes this file by path) build the
//! same way: the server, the manager's pool and raw deadpool-postgres with
//! the same settings.

use std::time::Duration;

use dbmanager::config::{QueueMode, RecyclingMethod};
pub use dbmanager::deadpool_postgres as deadpool;
use dbmanager::tokio_postgres::{self, NoTls};
use dbmanager::{Config, DatabaseManager, DatabaseUrl};

/// How long a checkout may wait, for every pool.
pub const WAIT: Duration = Duration::from_secs(30);

/// The server: `DATABASE_URL`, else `PG_ADMIN_URL`; exits with a message
/// when neither is set.
pub fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .or_else(|_| std::env::var("PG_ADMIN_URL"))
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| {
            eprintln!(
                "error: the pool benches need a PostgreSQL server: set DATABASE_URL (or \
                 PG_ADMIN_URL) to its URL, or run scripts/test or scripts/bench, which start one"
            );
            std::process::exit(2)
        })
}

/// A manager whose pool has `size` connections, all opened, LIFO, with the
/// cheapest recycle check.
pub async fn manager(url: &str, size: usize, application_name: &str) -> DatabaseManager {
    let mut config = Config::default();
    config.postgres.url = Some(DatabaseUrl::new(url));
    config.postgres.application_name = application_name.into();
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

/// deadpool-postgres on its own, with the timeouts the crate sets on its
/// own deadpool pool; opens connections on demand.
pub fn raw_deadpool(url: &str, size: usize, application_name: &str) -> deadpool::Pool {
    let mut pg: tokio_postgres::Config = url.parse().expect("a PostgreSQL URL");
    pg.application_name(application_name);
    let manager = deadpool::Manager::from_config(
        pg,
        NoTls,
        deadpool::ManagerConfig {
            recycling_method: deadpool::RecyclingMethod::Fast,
        },
    );
    deadpool::Pool::builder(manager)
        .max_size(size)
        .queue_mode(deadpool::QueueMode::Lifo)
        .wait_timeout(Some(WAIT))
        .create_timeout(Some(Duration::from_secs(10)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .expect("building the deadpool pool")
}
