#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "bench")]
pub mod bench;
mod builder;
pub mod config;
mod error;
pub mod health;
mod manager;
pub mod metrics;
#[cfg(feature = "mongodb")]
pub mod mongo;
mod pool_status;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod retry;

pub use builder::DatabaseManagerBuilder;
pub use config::{Config, ConfigLoader, DatabaseUrl, MongoConfig, PostgresConfig, Secret};
pub use error::{Backend, BoxError, Error, FailureKind, Result};
pub use health::{ComponentHealth, HealthReport, HealthStatus};
pub use manager::{DatabaseManager, Phase, ShutdownReport};
pub use pool_status::PoolStatus;
pub use retry::RetryPolicy;

#[cfg(feature = "mongodb")]
pub use mongo::MongoHandle;
#[cfg(feature = "postgres")]
pub use postgres::{PooledConnection, PostgresPool};

/// The driver crates, re-exported so applications use exactly the versions
/// `dbmanager` was built with.
#[cfg(feature = "postgres")]
pub use deadpool_postgres;
#[cfg(feature = "mongodb")]
pub use mongodb;
#[cfg(feature = "postgres")]
pub use tokio_postgres;
