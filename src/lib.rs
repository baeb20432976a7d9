#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "migrate")]
pub mod admin;
mod builder;
mod clock;
pub mod config;
mod error;
pub mod health;
#[cfg(feature = "axum")]
pub mod http;
mod manager;
pub mod metrics;
#[cfg(feature = "migrate")]
pub mod migrate;
#[cfg(feature = "mongodb")]
pub mod mongo;
mod pool_status;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod retry;
mod spans;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(any(feature = "postgres", feature = "mongodb"))]
mod tx_future;

pub use builder::DatabaseManagerBuilder;
pub use config::{Config, ConfigLoader, DatabaseUrl, MongoConfig, PostgresConfig, Secret};
pub use error::{Backend, BoxError, Error, FailureKind, Result};
pub use health::{ComponentHealth, HealthReport, HealthStatus, ListenerHealth, ReplicaHealth};
pub use manager::{DatabaseManager, Phase, ShutdownReport};
pub use pool_status::{MultiplexStatus, PoolStatus};
pub use retry::RetryPolicy;
#[cfg(any(feature = "postgres", feature = "mongodb"))]
pub use tx_future::{TxFuture, TxFutureExt};

#[cfg(feature = "migrate")]
pub use migrate::{MigrateError, Migrations, Migrator};
#[cfg(feature = "mongodb")]
pub use mongo::MongoHandle;
#[cfg(feature = "postgres")]
pub use postgres::{
    Credential, Listener, ListenerEvent, Multiplexed, PooledConnection, PostgresPool,
};
#[cfg(feature = "testing")]
pub use testing::TestDatabase;

/// axum (0.8), re-exported for the `axum` feature's [`http`] module: build
/// the service's router with `dbmanager::axum` to match its version.
#[cfg(feature = "axum")]
pub use axum;
/// The driver crates, re-exported so applications use exactly the versions
/// `dbmanager` was built with.
#[cfg(feature = "postgres")]
pub use deadpool_postgres;
#[cfg(feature = "mongodb")]
pub use mongodb;
#[cfg(feature = "postgres")]
pub use tokio_postgres;

// The Rust blocks of docs/*.md, compiled as doctests like the README's
// (tests/docs_snippets.rs checks that every file is listed here).
#[cfg(doctest)]
#[doc = include_str!("../docs/architecture.md")]
mod architecture_md {}
#[cfg(doctest)]
#[doc = include_str!("../docs/benchmarks.md")]
mod benchmarks_md {}
#[cfg(doctest)]
#[doc = include_str!("../docs/configuration.md")]
mod configuration_md {}
#[cfg(doctest)]
#[doc = include_str!("../docs/decisions.md")]
mod decisions_md {}
#[cfg(doctest)]
#[doc = include_str!("../docs/from-python.md")]
mod from_python_md {}
#[cfg(all(doctest, feature = "axum", feature = "migrate", feature = "mongodb"))]
#[doc = include_str!("../docs/guide.md")]
mod guide_md {}
#[cfg(all(doctest, feature = "migrate", feature = "testing"))]
#[doc = include_str!("../docs/migrations.md")]
mod migrations_md {}
#[cfg(doctest)]
#[doc = include_str!("../docs/operations.md")]
mod operations_md {}
#[cfg(doctest)]
#[doc = include_str!("../docs/reliability.md")]
mod reliability_md {}

/// What `embed_migrations!` expands to needs; not part of the API.
#[cfg(feature = "migrate")]
#[doc(hidden)]
pub mod __private {
    pub use include_dir;
}
