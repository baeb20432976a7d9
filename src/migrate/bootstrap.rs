//! Preparing a server for the service: wait until it accepts connections,
//! create the database (and the test database) if missing, ensure
//! extensions, migrate. Every step is idempotent.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::migrator::Migrator;
use super::report::MigrateReport;
use super::source::Migrations;
use crate::admin::{Server, create_database, ensure_extension};
use crate::config::Config;
use crate::error::{Backend, Error, FailureKind, Result};
use crate::manager::DatabaseManager;
use crate::postgres::PostgresPool;

/// Prepares the configured PostgreSQL server, as the `init_db.sh` scripts
/// of container set-ups do, but idempotently and with typed errors.
///
/// 1. Waits (up to `bootstrap.wait_timeout`, retrying only transient
///    failures) until the server accepts connections.
/// 2. Creates the database when it does not exist and
///    `bootstrap.create_database` is set, connected to
///    `bootstrap.maintenance_database`.
/// 3. Does the same for the test database ([`Config::for_tests`]) when
///    `bootstrap.create_test_database` is set.
/// 4. Creates each of `bootstrap.extensions` missing in each database.
/// 5. Applies the migrations, when given, to each database.
///
/// ```no_run
/// # async fn demo(migrations: dbmanager::migrate::Migrations) -> dbmanager::Result<()> {
/// use dbmanager::migrate::Bootstrap;
///
/// let config = dbmanager::Config::load()?;
/// let report = Bootstrap::new(&config).migrations(&migrations).run().await?;
/// if report.is_noop() {
///     println!("database already prepared");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a bootstrap does nothing until run() is awaited"]
pub struct Bootstrap<'a> {
    config: &'a Config,
    migrations: Option<&'a Migrations>,
    manager: Option<&'a DatabaseManager>,
}

/// What [`Bootstrap::run`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct BootstrapReport {
    /// One entry per database prepared: the database, then the test
    /// database.
    pub databases: Vec<DatabaseBootstrap>,
    /// The whole run, waiting included.
    #[serde(with = "humantime_serde")]
    pub took: Duration,
}

/// What bootstrap did to one database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DatabaseBootstrap {
    /// The database name.
    pub database: String,
    /// Whether it was created.
    pub created: bool,
    /// Extensions created (those already present are not listed).
    pub extensions_created: Vec<String>,
    /// The migrations run, when migrations were given.
    pub migrations: Option<MigrateReport>,
}

impl BootstrapReport {
    /// Whether nothing needed doing: no database or extension created, no
    /// migration applied.
    pub fn is_noop(&self) -> bool {
        self.databases.iter().all(|d| {
            !d.created
                && d.extensions_created.is_empty()
                && d.migrations.as_ref().is_none_or(MigrateReport::is_empty)
        })
    }
}

impl DatabaseManager {
    /// Runs [`Bootstrap`] with this manager's configuration, migrating its
    /// database through its own pool (so `on_connect` hooks apply).
    ///
    /// Build the manager with `build_lazy()` when the database may not
    /// exist yet: an eager `build()` fails on a missing database.
    ///
    /// # Errors
    ///
    /// As [`Bootstrap::run`].
    pub async fn bootstrap(&self, migrations: &Migrations) -> Result<BootstrapReport> {
        Bootstrap {
            config: self.config(),
            migrations: Some(migrations),
            manager: Some(self),
        }
        .run()
        .await
    }
}

impl<'a> Bootstrap<'a> {
    /// Bootstraps the PostgreSQL server of `config`, following its
    /// `[bootstrap]` and `[migrations]` settings.
    pub fn new(config: &'a Config) -> Self {
        Bootstrap {
            config,
            migrations: None,
            manager: None,
        }
    }

    /// Applies these migrations to each database prepared. Default: none.
    pub fn migrations(mut self, migrations: &'a Migrations) -> Self {
        self.migrations = Some(migrations);
        self
    }

    /// Runs every step; safe to run again and from several processes at
    /// once.
    ///
    /// # Errors
    ///
    /// - [`Error::NotConfigured`] without a PostgreSQL URL;
    /// - [`Error::Connect`] when the server did not accept connections
    ///   within `bootstrap.wait_timeout`, refused the credentials, or the
    ///   database is missing and `create_database` is off;
    /// - [`Error::Privilege`] when the role may not create the database or
    ///   an extension (SQLSTATE 42501), naming what it tried;
    /// - anything [`super::Migrator::up`] returns.
    pub async fn run(self) -> Result<BootstrapReport> {
        let started = Instant::now();
        let config = self.config;
        let url = config.postgres.url.as_ref().ok_or(Error::NotConfigured {
            backend: Backend::Postgres,
            hint: "DATABASE_URL, the POSTGRES_* variables or postgres.url",
        })?;
        let mut targets = vec![(config.clone(), Server::new(&config.postgres, url)?)];
        if config.bootstrap.create_test_database {
            let test = config.for_tests()?;
            let test_url = test.postgres.url.clone().ok_or(Error::NotConfigured {
                backend: Backend::Postgres,
                hint: "TEST_DATABASE_URL or DATABASE_URL",
            })?;
            let server = Server::new(&test.postgres, &test_url)?;
            targets.push((test, server));
        }
        let mut databases = Vec::with_capacity(targets.len());
        for (index, (target_config, server)) in targets.iter().enumerate() {
            // The manager's pool serves the main database only.
            let manager = if index == 0 { self.manager } else { None };
            databases.push(self.prepare(target_config, server, manager).await?);
        }
        let report = BootstrapReport {
            databases,
            took: started.elapsed(),
        };
        tracing::info!(
            target: "dbmanager::migrate",
            noop = report.is_noop(),
            took_ms = report.took.as_millis() as u64,
            "bootstrap finished"
        );
        Ok(report)
    }

    async fn prepare(
        &self,
        config: &Config,
        server: &Server,
        manager: Option<&DatabaseManager>,
    ) -> Result<DatabaseBootstrap> {
        let settings = &config.bootstrap;
        let database = server.database();
        let policy = config
            .retry
            .clone()
            .unlimited_attempts()
            .max_elapsed(settings.wait_timeout);
        let mut created = false;
        let connection = match server.connect_with_retry(&database, &policy).await {
            Ok(connection) => connection,
            Err(Error::Connect {
                kind: FailureKind::UnknownDatabase,
                ..
            }) if settings.create_database => {
                let admin = server
                    .connect_with_retry(&settings.maintenance_database, &policy)
                    .await?;
                created = create_database(&admin, &database, None, server.secrets()).await?;
                drop(admin);
                if created {
                    tracing::info!(target: "dbmanager::migrate", database = %database, "created database");
                }
                server.connect_with_retry(&database, &policy).await?
            }
            Err(e) => return Err(e),
        };
        let mut extensions_created = Vec::new();
        for extension in &settings.extensions {
            if ensure_extension(&connection, extension, &database, server.secrets()).await? {
                tracing::info!(target: "dbmanager::migrate", database = %database, extension = %extension, "created extension");
                extensions_created.push(extension.clone());
            }
        }
        drop(connection);
        let migrations = match self.migrations {
            None => None,
            Some(migrations) => Some(match manager {
                Some(manager) => manager.migrate(migrations).await?,
                None => migrate_with_temporary_pool(config, server, &database, migrations).await?,
            }),
        };
        Ok(DatabaseBootstrap {
            database,
            created,
            extensions_created,
            migrations,
        })
    }
}

/// Migrates a database through a small pool of its own (`pool="direct"`
/// in metrics: it is not the service's pool), closed afterwards. Not a
/// manager: a manager's shutdown would log "shutting down" in the middle
/// of a start-up.
pub(crate) async fn migrate_with_temporary_pool(
    config: &Config,
    server: &Server,
    database: &str,
    migrations: &Migrations,
) -> Result<MigrateReport> {
    let mut config = config.clone();
    config.postgres.url = Some(server.url_for(database));
    config.postgres.test_url = None;
    config.postgres.pool.min_idle = 0;
    config.postgres.pool.max_size = config.postgres.pool.max_size.clamp(1, 2);
    config.postgres.pool.max_idle = None;
    config.mongodb.url = None;
    config.validate()?;
    let pool = PostgresPool::direct(&config.postgres)?;
    tracing::debug!(target: "dbmanager::migrate", database, "migrating through a direct connection");
    let result = Migrator::on_pool(pool.clone(), migrations, &config)
        .up()
        .await;
    pool.drain(config.shutdown.grace_period).await;
    result
}
