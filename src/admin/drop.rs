//! Dropping the configured database: what `dbmanager db drop` and
//! `db reset` run.

use crate::config::Config;
use crate::error::{Backend, Error, Result};

use super::connection::{Server, database_exists, drop_database};

/// Whether a database name looks like a test database (`test_app`,
/// `app_test`, `test`): the command line drops others only when forced.
pub fn looks_like_test_database(name: &str) -> bool {
    name == "test" || name.starts_with("test_") || name.ends_with("_test")
}

/// Drops the database of `config.postgres.url`, disconnecting its sessions
/// first, through the maintenance database (`bootstrap.maintenance_database`).
/// Returns whether it existed.
///
/// # Errors
///
/// [`Error::NotConfigured`] without a PostgreSQL URL; [`Error::Config`] when
/// the database is the maintenance database itself; [`Error::Connect`] when
/// the server cannot be reached within `bootstrap.wait_timeout`;
/// [`Error::Privilege`] when the role may not drop it.
pub async fn drop_configured_database(config: &Config) -> Result<bool> {
    let url = config.postgres.url.as_ref().ok_or(Error::NotConfigured {
        backend: Backend::Postgres,
        hint: "DATABASE_URL, the POSTGRES_* variables or postgres.url",
    })?;
    let server = Server::new(&config.postgres, url)?;
    let database = server.database();
    let maintenance = &config.bootstrap.maintenance_database;
    if &database == maintenance {
        return Err(Error::config(
            "postgres.url",
            format!("names the maintenance database `{maintenance}`, which is never dropped"),
        ));
    }
    let policy = config
        .retry
        .clone()
        .unlimited_attempts()
        .max_elapsed(config.bootstrap.wait_timeout);
    let client = server.connect_with_retry(maintenance, &policy).await?;
    let existed = database_exists(&client, &database).await?;
    if existed {
        drop_database(&client, &database, server.secrets()).await?;
        tracing::info!(target: "dbmanager::migrate", database, "dropped the database");
    }
    Ok(existed)
}
