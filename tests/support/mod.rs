//! Fixtures shared by the integration tests: real servers, real
//! connections.
//!
//! - [`postgres`]: the shared PostgreSQL server (`PG_ADMIN_URL`, which
//!   `scripts/test` starts, or `DATABASE_URL`), a database of its own per
//!   test ([`TestDb`]), one-off SQL and test configurations.
//! - [`cluster`]: a PostgreSQL cluster owned by one test, for tests that
//!   stop, restart or break a server ([`PgCluster`]).
//! - [`mongo`]: MongoDB from `MONGODB_URL`, or a `mongoeco` server started
//!   for the test ([`MongoServer`]).
//! - [`pgbouncer`]: a PgBouncer in transaction pooling mode in front of a
//!   server ([`PgBouncer`]).
//! - [`migrations`]: migration folders, catalog dumps and history reads.
//! - [`patroni`]: a three-member Patroni cluster with etcd, for failover;
//!   [`ports`]: ports reserved outside the ephemeral range ([`ReservedPort`]).
//! - [`load`]: a write load that records what the server acknowledged.
//! - [`proxy`]: TCP proxies between a client and a server; [`blackhole`]:
//!   flows whose peer vanishes (packets dropped by the kernel).
//! - [`retries`]: retry policies for tests, and builds meant to fail.
//! - [`example`]: the example services run as processes.
//! - [`logs`]: the process-wide log capture; [`http`]: a plain HTTP client;
//!   [`metrics`]: what a test's metrics recorder holds; [`listener`]: a
//!   managed listener's events within a bound.
//!
//! Every helper is re-exported here, so a test names `support::pg_config`
//! whatever file it lives in.
#![allow(dead_code, unused_imports)]

pub mod blackhole;
pub mod cluster;
pub mod example;
pub mod http;
pub mod listener;
pub mod load;
pub mod logs;
pub mod metrics;
pub mod migrations;
pub mod mongo;
pub mod patroni;
pub mod pgbouncer;
pub mod ports;
pub mod postgres;
pub mod proxy;
pub mod retries;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub use blackhole::*;
pub use cluster::*;
pub use example::*;
pub use http::*;
pub use listener::*;
pub use load::*;
pub use logs::*;
pub use metrics::*;
pub use migrations::*;
pub use mongo::*;
pub use patroni::Patroni;
pub use pgbouncer::*;
pub use ports::ReservedPort;
pub use postgres::*;
pub use proxy::*;
pub use retries::*;

/// The workspace's root folder (where `scripts/` and `migrations/` are),
/// from whichever member's tests include this module.
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|dir| dir.join("scripts/mongoeco_server.py").exists())
        .expect("the workspace root holds scripts/mongoeco_server.py")
        .to_path_buf()
}

/// A name no other test (or test process) uses.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A TCP port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `future` to its end on a current-thread runtime of its own, on the
/// calling thread. For a thread that stands for a whole test (as
/// `#[tokio::test]` gives each test a runtime), and for async clean-up in
/// `Drop`, which runs inside the test's runtime and may not block it.
pub fn block_on_own_runtime<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
        .block_on(future)
}

/// Polls `check` until it is true or `limit` passes; returns whether it
/// became true. For waiting on asynchronous effects (sessions closing),
/// never for asserting speed.
pub async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
