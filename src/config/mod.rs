//! Typed, layered configuration.
//!
//! [`Config::load`] merges, each layer overriding the one before:
//!
//! 1. built-in defaults (documented on each field);
//! 2. `dbmanager.toml` in the working directory, or the file named by
//!    `DBMANAGER_CONFIG`;
//! 3. a `.env` file in the working directory, read as a provider (the
//!    process environment is not modified);
//! 4. the process environment.
//!
//! In layers 3 and 4 every setting has a variable `DBMANAGER_<SECTION>__<KEY>`
//! (`DBMANAGER_POSTGRES__POOL__MAX_SIZE=32`), and the well-known names
//! `DATABASE_URL`, `TEST_DATABASE_URL`, `MONGODB_URL` (`MONGODB_URI`),
//! `POSTGRES_*` / `MONGO_*` parts and SQLAlchemy's `DB_POOL_SIZE`,
//! `DB_MAX_OVERFLOW`, `DB_POOL_TIMEOUT` are understood. Where both a
//! `DBMANAGER_` variable and a well-known one set the same value in one
//! layer, the `DBMANAGER_` variable wins.
//!
//! Durations are written the human way: `"250ms"`, `"30s"`, `"10min"`.

#[cfg(feature = "postgres")]
pub(crate) mod libpq;
mod listener;
mod loader;
mod migrations;
mod mongo;
mod multiplex;
mod postgres;
mod read_preference;
mod replicas;
mod secret;
pub(crate) mod url;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use listener::PostgresListenerConfig;
pub use loader::{ConfigLoader, Setting};
pub use migrations::{BootstrapConfig, MigrationsConfig};
pub use mongo::{MongoConfig, MongoPoolConfig, MongoTlsConfig};
pub use multiplex::PostgresMultiplexConfig;
pub use postgres::{
    PostgresConfig, PostgresPoolConfig, QueueMode, RecyclingMethod, StatementCache,
};
pub use read_preference::{ReadPreferenceMode, TagSet, UnknownReadPreference};
pub use replicas::{PostgresReplicasConfig, ReplicaFallback};
pub use secret::{DatabaseUrl, REDACTED, Secret, redact_url};

#[cfg(feature = "migrate")]
pub(crate) use migrations::check_identifier;
#[cfg(feature = "postgres")]
pub(crate) use postgres::parse_driver_config;
pub(crate) use secret::scrub;

use crate::error::{Error, Problems, Result, at_most_a_year, positive};
// upward import: the `[retry]` section is the start-up retry policy itself;
// `retry` depends on nothing but the error layer, so this makes no circle.
use crate::retry::RetryPolicy;
use url::ConnectionString;

/// The default configuration file, relative to the working directory.
pub const DEFAULT_CONFIG_FILE: &str = "dbmanager.toml";

/// Everything `dbmanager` can be told. Every field has a default, so a
/// partial file or a few variables are enough.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// PostgreSQL (`[postgres]`).
    pub postgres: PostgresConfig,
    /// MongoDB (`[mongodb]`).
    pub mongodb: MongoConfig,
    /// Start-up connect retry (`[retry]`).
    pub retry: RetryPolicy,
    /// Health probes (`[health]`).
    pub health: HealthConfig,
    /// Graceful shutdown (`[shutdown]`).
    pub shutdown: ShutdownConfig,
    /// SQL migrations (`[migrations]`).
    pub migrations: MigrationsConfig,
    /// Database bootstrap (`[bootstrap]`).
    pub bootstrap: BootstrapConfig,
}

/// Health probe settings (`[health]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HealthConfig {
    /// How long one probe (a `SELECT 1` or a `ping`) may take before the
    /// component is reported down. Default: 2 s, well inside a Kubernetes
    /// probe's own 1–5 s timeout budget.
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            probe_timeout: Duration::from_secs(2),
        }
    }
}

/// Graceful shutdown settings (`[shutdown]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ShutdownConfig {
    /// How long [`crate::DatabaseManager::shutdown`] waits for checked-out
    /// connections and in-flight operations before closing them. Default:
    /// 30 s, Kubernetes' default termination grace period. Zero closes at
    /// once.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
    /// How long a rollout keeps serving after readiness turned false, before
    /// the HTTP listener closes: the time load balancers need to stop
    /// routing here (`dbmanager::http::Rollout`). Default: 5 s. Zero stops
    /// accepting at once.
    #[serde(with = "humantime_serde")]
    pub unready_period: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace_period: Duration::from_secs(30),
            unready_period: Duration::from_secs(5),
        }
    }
}

impl Config {
    /// Loads the configuration from defaults, `dbmanager.toml` (or
    /// `$DBMANAGER_CONFIG`), `.env` and the environment, and validates it.
    ///
    /// # Errors
    ///
    /// [`Error::ConfigFile`] when a file exists but cannot be read or
    /// parsed, [`Error::Config`] naming the key for any bad value.
    pub fn load() -> Result<Config> {
        ConfigLoader::new().load()
    }

    /// A loader to change where the layers come from (another file, another
    /// `.env`, given variables instead of the process environment).
    pub fn loader() -> ConfigLoader {
        ConfigLoader::new()
    }

    /// Checks every value and how they fit together.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first bad key and listing any others.
    pub fn validate(&self) -> Result<()> {
        let mut p = Problems::default();
        self.postgres.check(&mut p);
        self.mongodb.check(&mut p);
        self.retry.check(&mut p);
        positive("health.probe_timeout", self.health.probe_timeout, &mut p);
        at_most_a_year("shutdown.grace_period", self.shutdown.grace_period, &mut p);
        at_most_a_year(
            "shutdown.unready_period",
            self.shutdown.unready_period,
            &mut p,
        );
        self.migrations.check(&mut p);
        self.bootstrap.check(&mut p);
        p.into_result()
    }

    /// The configuration pointed at the test databases.
    ///
    /// PostgreSQL uses `TEST_DATABASE_URL` (`postgres.test_url`) when set,
    /// otherwise the main URL with its database name prefixed `test_`
    /// (`app` becomes `test_app`). MongoDB keeps its URL and uses the
    /// default database prefixed `test_`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the test database would be the development
    /// database itself (same hosts and database name), so tests cannot
    /// wipe development data; [`Error::NotConfigured`] without any database.
    pub fn for_tests(&self) -> Result<Config> {
        if !self.postgres.is_configured() && !self.mongodb.is_configured() {
            return Err(Error::NotConfigured {
                backend: crate::error::Backend::Postgres,
                hint: "DATABASE_URL or TEST_DATABASE_URL",
            });
        }
        let mut config = self.clone();
        if let Some(url) = &self.postgres.url {
            let dev = ConnectionString::parse(url.expose()).map_err(|p| {
                Error::config(
                    "postgres.url",
                    format!("is not a valid connection string: it {p}"),
                )
            })?;
            let test_url = match &self.postgres.test_url {
                Some(test) => test.clone(),
                None => {
                    let name = dev
                        .database()
                        .or_else(|| dev.user())
                        .unwrap_or_else(|| "postgres".into());
                    DatabaseUrl::new(dev.with_database(&test_database_name(&name)))
                }
            };
            let test = ConnectionString::parse(test_url.expose()).map_err(|p| {
                Error::config(
                    "postgres.test_url",
                    format!("is not a valid connection string: it {p}"),
                )
            })?;
            if same_database(&dev, &test) {
                return Err(Error::config(
                    "TEST_DATABASE_URL",
                    format!(
                        "points at the development database `{}` on {}; tests must use a database of their own",
                        test.database().unwrap_or_default(),
                        test.hosts()
                    ),
                ));
            }
            config.postgres.url = Some(test_url);
        } else if let Some(test_url) = &self.postgres.test_url {
            config.postgres.url = Some(test_url.clone());
        }
        if self.mongodb.is_configured() {
            config.mongodb.database = Some(test_database_name(&self.mongodb.database_name()));
        }
        config.validate()?;
        Ok(config)
    }
}

/// `app` -> `test_app`; a name that already starts with `test_` is kept.
fn test_database_name(name: &str) -> String {
    if name.starts_with("test_") {
        name.to_string()
    } else {
        format!("test_{name}")
    }
}

fn same_database(a: &ConnectionString, b: &ConnectionString) -> bool {
    let normalize = |hosts: String| {
        hosts
            .replace("127.0.0.1", "localhost")
            .replace("[::1]", "localhost")
            .to_ascii_lowercase()
    };
    normalize(a.hosts()) == normalize(b.hosts())
        && a.database().or_else(|| a.user()) == b.database().or_else(|| b.user())
}
