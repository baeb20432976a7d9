//! The PostgreSQL side: a deadpool pool of tokio-postgres connections with
//! lifetimes, idle reaping, warm-up, hooks, leak detection and drain.

mod connect;
mod connection;
mod hooks;
mod maintenance;
mod manager;
mod pool;
mod probe;
mod shared;
#[cfg(feature = "tls")]
mod tls;

pub use connect::describe_error;
pub use connection::PooledConnection;
pub use deadpool_postgres::{ClientWrapper, Transaction};
pub use hooks::{Hook, HookFuture};
pub use pool::{PoolStats, PostgresPool};

pub(crate) use connect::parse_config;
#[cfg(feature = "migrate")]
pub(crate) use connect::{Connector, connect_error, driver_config};
pub(crate) use hooks::Hooks;
