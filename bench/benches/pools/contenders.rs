//! The pools compared, each with the same size, the same wait limit, the
//! same LIFO reuse order and the cheapest check on checkout its design
//! allows.
//!
//! | pool | checkout check | return |
//! | --- | --- | --- |
//! | `DatabaseManager` | `recycling = "fast"`: `is_closed()` and the max-lifetime deadline, no round trip | inline; hold-time and drain accounting |
//! | deadpool-postgres | `RecyclingMethod::Fast`: `is_closed()` | inline |
//! | bb8-postgres | `test_on_check_out(false)`; `is_closed()` on return | inline |
//! | sqlx `PgPool` | `test_before_acquire(false)` | a spawned task per return (sqlx's design: it keeps `min_connections` there) |
//!
//! `SELECT 1` goes over the simple query protocol everywhere
//! (`simple_query` for the tokio-postgres pools, `raw_sql` for sqlx): one
//! round trip and the same messages on the wire for all four, with no
//! statement cache involved.

use std::time::Duration;

use dbmanager::DatabaseManager;
use dbmanager::deadpool_postgres as deadpool;
use dbmanager::tokio_postgres::{self, NoTls};
use futures_util::future::join_all;

use crate::common::{WAIT, manager, raw_deadpool};

/// sqlx's `SELECT 1`. A `&str` without arguments goes over the simple
/// query protocol, like `raw_sql`; through `Executor::execute` directly,
/// because `raw_sql(..).execute(..)` defeats the `Send` check of a spawned
/// task (its executor lifetime is higher-ranked).
async fn sqlx_select1(pool: &sqlx::PgPool) {
    let mut connection = pool.acquire().await.unwrap();
    sqlx::Executor::execute(&mut *connection, "SELECT 1")
        .await
        .unwrap();
}

/// A pool under test.
#[derive(Clone)]
pub enum Contender {
    /// The crate's pool, through `DatabaseManager`.
    Manager(DatabaseManager),
    /// deadpool-postgres on its own.
    Deadpool(deadpool::Pool),
    /// bb8 with bb8-postgres.
    Bb8(bb8::Pool<bb8_postgres::PostgresConnectionManager<NoTls>>),
    /// sqlx's PostgreSQL pool.
    Sqlx(sqlx::PgPool),
}

/// The names used as criterion function ids, in bench order.
pub const NAMES: [&str; 4] = ["dbmanager", "deadpool", "bb8", "sqlx"];

impl Contender {
    /// Builds the pool `name` with `size` connections, all opened.
    pub async fn open(name: &str, url: &str, size: usize) -> Contender {
        let contender = match name {
            "dbmanager" => Contender::Manager(manager(url, size, "bench-dbmanager").await),
            "deadpool" => Contender::Deadpool(raw_deadpool(url, size, "bench-deadpool")),
            "bb8" => {
                let mut pg: tokio_postgres::Config = url.parse().expect("a PostgreSQL URL");
                pg.application_name("bench-bb8");
                let manager = bb8_postgres::PostgresConnectionManager::new(pg, NoTls);
                let pool = bb8::Pool::builder()
                    .max_size(size as u32)
                    .min_idle(Some(size as u32))
                    .test_on_check_out(false)
                    .connection_timeout(WAIT)
                    .queue_strategy(bb8::QueueStrategy::Lifo)
                    .build(manager)
                    .await
                    .expect("building the bb8 pool");
                Contender::Bb8(pool)
            }
            "sqlx" => {
                let options: sqlx::postgres::PgConnectOptions =
                    url.parse().expect("a PostgreSQL URL");
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(size as u32)
                    .min_connections(size as u32)
                    .test_before_acquire(false)
                    .acquire_timeout(WAIT)
                    .connect_with(options.application_name("bench-sqlx"))
                    .await
                    .expect("building the sqlx pool");
                Contender::Sqlx(pool)
            }
            other => panic!("unknown contender {other}"),
        };
        contender.warm(size).await;
        contender
    }

    /// Checks `size` connections out at once and returns them, so every
    /// connection is open before measuring.
    async fn warm(&self, size: usize) {
        match self {
            Contender::Manager(db) => {
                let pool = db.postgres().expect("postgres configured");
                let held = join_all((0..size).map(|_| pool.get())).await;
                drop(held);
            }
            Contender::Deadpool(pool) => drop(join_all((0..size).map(|_| pool.get())).await),
            Contender::Bb8(pool) => drop(join_all((0..size).map(|_| pool.get())).await),
            Contender::Sqlx(pool) => drop(join_all((0..size).map(|_| pool.acquire())).await),
        }
        // Let returns that happen on spawned tasks (sqlx) land.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// Checks a connection out and returns it.
    #[inline]
    pub async fn acquire_release(&self) {
        match self {
            Contender::Manager(db) => {
                let client = db.postgres().unwrap().get().await.unwrap();
                drop(client);
            }
            Contender::Deadpool(pool) => drop(pool.get().await.unwrap()),
            Contender::Bb8(pool) => drop(pool.get().await.unwrap()),
            Contender::Sqlx(pool) => drop(pool.acquire().await.unwrap()),
        }
    }

    /// Checks a connection out, runs `SELECT 1`, returns it.
    #[inline]
    pub async fn select1(&self) {
        match self {
            Contender::Manager(db) => {
                let client = db.postgres().unwrap().get().await.unwrap();
                client.simple_query("SELECT 1").await.unwrap();
            }
            Contender::Deadpool(pool) => {
                let client = pool.get().await.unwrap();
                client.simple_query("SELECT 1").await.unwrap();
            }
            Contender::Bb8(pool) => {
                let client = pool.get().await.unwrap();
                client.simple_query("SELECT 1").await.unwrap();
            }
            Contender::Sqlx(pool) => sqlx_select1(pool).await,
        }
    }

    /// Closes every connection.
    pub async fn close(self) {
        match self {
            Contender::Manager(db) => {
                db.shutdown().await.expect("shutting the manager down");
            }
            Contender::Deadpool(pool) => pool.close(),
            Contender::Bb8(pool) => drop(pool),
            Contender::Sqlx(pool) => pool.close().await,
        }
    }
}
