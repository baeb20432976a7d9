//! Direct connections to any database of the configured server, and the
//! statements that create or drop databases and extensions.

use std::ops::Deref;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::config::url::ConnectionString;
use crate::config::{DatabaseUrl, PostgresConfig, scrub};
use crate::error::describe_postgres;
use crate::error::{Error, Result};
use crate::metrics::PoolLabel;
use crate::postgres::{Driver, create_timeout, driver_config};
use crate::retry::{RetryPolicy, retry_notify};

/// `"name"`, with embedded quotes doubled: safe for any identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A connection outside the pool; closed when dropped.
pub(crate) struct DirectConnection {
    client: Client,
    task: JoinHandle<()>,
}

impl Deref for DirectConnection {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Drop for DirectConnection {
    fn drop(&mut self) {
        // Ends the session at once (the server sees the socket close),
        // releasing its session locks.
        self.task.abort();
    }
}

/// Opens direct connections to the databases of one server, with the
/// credentials and session settings of `[postgres]`.
#[derive(Clone)]
pub(crate) struct Server {
    driver: Driver,
    parsed: ConnectionString,
    secrets: Vec<String>,
    /// The bound on one connection attempt, handshake included (the pool's,
    /// [`attempt_timeout`]): a server, or a proxy in front of a dead one,
    /// that accepts and then says nothing would otherwise hold the caller
    /// forever.
    attempt_timeout: Duration,
}

impl Server {
    pub fn new(config: &PostgresConfig, url: &DatabaseUrl) -> Result<Server> {
        let driver = driver_config(config, url)?;
        let parsed = ConnectionString::parse(url.expose()).map_err(|p| {
            Error::config(
                "postgres.url",
                format!("is not a valid connection string: it {p}"),
            )
        })?;
        Ok(Server {
            attempt_timeout: driver.attempt_timeout(),
            driver,
            parsed,
            secrets: url.password().into_iter().collect(),
        })
    }

    /// The database the URL names (else the user name, as libpq does).
    pub fn database(&self) -> String {
        self.driver
            .config
            .get_dbname()
            .or(self.driver.config.get_user())
            .unwrap_or("postgres")
            .to_string()
    }

    /// The URL with another database.
    pub fn url_for(&self, database: &str) -> DatabaseUrl {
        DatabaseUrl::new(self.parsed.with_database(database))
    }

    /// `user@host:port/db`, without credentials.
    pub fn target(&self, database: &str) -> String {
        ConnectionString::parse(&self.parsed.with_database(database))
            .map(|c| c.target())
            .unwrap_or_default()
    }

    /// Secrets to scrub from server messages.
    pub fn secrets(&self) -> &[String] {
        &self.secrets
    }

    /// One connection attempt, within the attempt timeout.
    pub async fn connect(&self, database: &str) -> Result<DirectConnection> {
        let mut config = self.driver.config.clone();
        config.dbname(database);
        let target = self.target(database);
        let attempt = tokio::time::timeout(
            self.attempt_timeout,
            self.driver.connect(&config, &target, &self.secrets),
        );
        let (client, connection) = attempt
            .await
            .map_err(|_| create_timeout(&target, self.attempt_timeout))
            .and_then(|connected| connected)
            .inspect_err(|e| crate::metrics::connect_failed(PoolLabel::DIRECT, e))?;
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(DirectConnection { client, task })
    }

    /// Connects, retrying transient failures (refused, starting up, too
    /// many connections) under `policy`.
    pub async fn connect_with_retry(
        &self,
        database: &str,
        policy: &RetryPolicy,
    ) -> Result<DirectConnection> {
        let started = Instant::now();
        let attempts = AtomicU32::new(0);
        retry_notify(
            policy,
            "connect",
            || {
                attempts.fetch_add(1, Ordering::Relaxed);
                self.connect(database)
            },
            |_, _, _| {},
        )
        .await
        .map_err(|mut e| {
            if let Error::Connect {
                attempts: a,
                elapsed,
                ..
            } = &mut e
            {
                *a = attempts.load(Ordering::Relaxed);
                *elapsed = started.elapsed();
            }
            e
        })
    }
}

/// A failed administrative statement: [`Error::Privilege`] for SQLSTATE
/// 42501 (insufficient privilege), [`Error::Postgres`] otherwise.
pub(crate) fn admin_error(
    action: String,
    what: &'static str,
    error: tokio_postgres::Error,
    secrets: &[String],
) -> Error {
    if error.code().map(|c| c.code()) == Some("42501") {
        return Error::Privilege {
            action,
            reason: scrub(&describe_postgres(&error), secrets),
        };
    }
    Error::postgres(what, error)
}

pub(crate) async fn database_exists(client: &Client, name: &str) -> Result<bool> {
    let row = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .map_err(|e| Error::postgres("looking up a database", e))?;
    Ok(row.is_some())
}

/// Creates a database (from `template` when given); `false` when it
/// already existed, also when another session created it concurrently.
pub(crate) async fn create_database(
    client: &Client,
    name: &str,
    template: Option<&str>,
    secrets: &[String],
) -> Result<bool> {
    if database_exists(client, name).await? {
        return Ok(false);
    }
    let mut sql = format!("CREATE DATABASE {}", quote_ident(name));
    if let Some(template) = template {
        sql.push_str(&format!(" TEMPLATE {}", quote_ident(template)));
    }
    match client.batch_execute(&sql).await {
        Ok(()) => Ok(true),
        // duplicate_database, or the catalog's unique index when two
        // sessions create it at the same moment.
        Err(e) if matches!(e.code().map(|c| c.code()), Some("42P04" | "23505")) => Ok(false),
        Err(e) => Err(admin_error(
            format!("create database {}", quote_ident(name)),
            "creating a database",
            e,
            secrets,
        )),
    }
}

/// Drops a database, disconnecting its sessions (`WITH (FORCE)`).
pub(crate) async fn drop_database(client: &Client, name: &str, secrets: &[String]) -> Result<()> {
    let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name));
    client.batch_execute(&sql).await.map_err(|e| {
        admin_error(
            format!("drop database {}", quote_ident(name)),
            "dropping a database",
            e,
            secrets,
        )
    })
}

/// Creates an extension in the connected database unless present; `true`
/// when it was created.
pub(crate) async fn ensure_extension(
    client: &Client,
    extension: &str,
    database: &str,
    secrets: &[String],
) -> Result<bool> {
    let present = client
        .query_opt(
            "SELECT 1 FROM pg_extension WHERE extname = $1",
            &[&extension],
        )
        .await
        .map_err(|e| Error::postgres("looking up an extension", e))?
        .is_some();
    if present {
        return Ok(false);
    }
    let sql = format!("CREATE EXTENSION IF NOT EXISTS {}", quote_ident(extension));
    match client.batch_execute(&sql).await {
        Ok(()) => Ok(true),
        Err(e) if e.code().map(|c| c.code()) == Some("23505") => Ok(false),
        Err(e) => Err(admin_error(
            format!(
                "create extension {} in database {}",
                quote_ident(extension),
                quote_ident(database)
            ),
            "creating an extension",
            e,
            secrets,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_with_inner_quotes_doubled() {
        assert_eq!(quote_ident("app"), "\"app\"");
        assert_eq!(quote_ident("we\"ird db"), "\"we\"\"ird db\"");
    }
}
