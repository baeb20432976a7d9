//! The PostgreSQL side: a deadpool pool of tokio-postgres connections with
//! lifetimes, idle reaping, warm-up, hooks, leak detection and drain.

mod acquire;
#[cfg(feature = "tls")]
mod channel_binding;
mod connect;
mod connection;
mod credentials;
mod hooks;
mod listener;
mod maintenance;
mod multiplex;
mod open;
mod pool;
mod probe;
mod protocol;
mod recycler;
mod replicas;
mod reuse;
mod shared;
mod silence;
mod statements;
#[cfg(feature = "tls")]
mod tls;
mod transaction;
mod wire_tap;

pub use crate::error::describe_postgres as describe_error;
pub use connection::PooledConnection;
pub use credentials::Credential;
pub(crate) use credentials::PasswordProvider;
pub use deadpool_postgres::ClientWrapper;
/// The transaction a [`PostgresPool::transaction`] closure receives:
/// deadpool-postgres' wrapper of `tokio_postgres::Transaction`, so every
/// query method works, plus `prepare_cached`.
pub use deadpool_postgres::Transaction;
pub use hooks::{Hook, HookFuture};
pub use listener::{Listener, ListenerEvent};
pub use multiplex::{MultiplexSql, Multiplexed, MultiplexedStatement};
pub use pool::{PoolStats, PostgresPool};
pub use replicas::ReadReplicas;
pub use tokio_postgres::IsolationLevel;
pub use transaction::TransactionOptions;

#[cfg(feature = "migrate")]
pub(crate) use connect::{Driver, create_timeout, driver_config};
pub(crate) use hooks::Hooks;
#[cfg(feature = "migrate")]
pub(crate) use open::Canceller;
