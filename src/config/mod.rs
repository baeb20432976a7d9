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

mod env;
mod explain;
mod migrations;
mod mongo;
mod postgres;
mod secret;
pub(crate) mod url;
pub(crate) mod validate;

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use explain::Setting;
pub use migrations::{BootstrapConfig, MigrationsConfig};
pub use mongo::{MongoConfig, MongoPoolConfig, MongoTlsConfig};
pub use postgres::{PostgresConfig, PostgresPoolConfig, QueueMode, RecyclingMethod};
pub use secret::{DatabaseUrl, REDACTED, Secret, redact_url};

#[cfg(feature = "migrate")]
pub(crate) use migrations::check_identifier;
pub(crate) use secret::scrub;

use crate::error::{Error, Result};
use crate::retry::RetryPolicy;
use env::EnvLayer;
use url::ConnectionString;
use validate::{Problems, positive};

/// The default configuration file, relative to the working directory.
pub const DEFAULT_CONFIG_FILE: &str = "dbmanager.toml";

/// Everything `dbmanager` can be told. Every field has a default, so a
/// partial file or a few variables are enough.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
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
pub struct ShutdownConfig {
    /// How long [`crate::DatabaseManager::shutdown`] waits for checked-out
    /// connections and in-flight operations before closing them. Default:
    /// 30 s, Kubernetes' default termination grace period. Zero closes at
    /// once.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace_period: Duration::from_secs(30),
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

    /// Extracts and validates a configuration from any figment, for custom
    /// layering. Start from [`ConfigLoader::figment`] to keep the standard
    /// layers.
    ///
    /// # Errors
    ///
    /// As [`Config::load`].
    pub fn from_figment(figment: &Figment) -> Result<Config> {
        let config: Config = figment.extract().map_err(from_figment_error)?;
        config.validate()?;
        Ok(config)
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
                backend: crate::Backend::Postgres,
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

/// Where the configuration layers come from; [`Config::load`] uses the
/// defaults.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ConfigLoader {
    file: Option<PathBuf>,
    dotenv: Option<Option<PathBuf>>,
    env: Option<Vec<(String, String)>>,
}

impl ConfigLoader {
    /// The standard layers.
    pub fn new() -> Self {
        ConfigLoader::default()
    }

    /// Read this TOML file; it must exist. Default: `$DBMANAGER_CONFIG`
    /// (must exist) or `dbmanager.toml` (optional).
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(path.into());
        self
    }

    /// Read this `.env` file (optional). Default: `.env`.
    pub fn dotenv(mut self, path: impl Into<PathBuf>) -> Self {
        self.dotenv = Some(Some(path.into()));
        self
    }

    /// Read no `.env` file.
    pub fn no_dotenv(mut self) -> Self {
        self.dotenv = Some(None);
        self
    }

    /// Use these variables instead of the process environment. Default: the
    /// process environment.
    pub fn env_vars<K: Into<String>, V: Into<String>>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.env = Some(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        );
        self
    }

    fn env_var(&self, name: &str) -> Option<String> {
        match &self.env {
            Some(vars) => vars
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone()),
            None => std::env::var(name).ok(),
        }
        .filter(|v| !v.is_empty())
    }

    /// The TOML file to read and whether it must exist.
    fn config_file(&self) -> (PathBuf, bool) {
        match (&self.file, self.env_var(env::CONFIG_FILE_VAR)) {
            (Some(path), _) => (path.clone(), true),
            (None, Some(path)) => (PathBuf::from(path), true),
            (None, None) => (PathBuf::from(DEFAULT_CONFIG_FILE), false),
        }
    }

    fn env_layers(&self) -> Result<(EnvLayer, EnvLayer)> {
        let dotenv = match &self.dotenv {
            None => EnvLayer::dotenv(Path::new(".env"))?,
            Some(Some(path)) => EnvLayer::dotenv(path)?,
            Some(None) => EnvLayer::empty(),
        };
        let process = match &self.env {
            Some(vars) => EnvLayer::from_vars("environment", vars.clone(), &dotenv),
            None => EnvLayer::process(&dotenv),
        };
        dotenv.check()?;
        process.check()?;
        Ok((dotenv, process))
    }

    /// The layered figment, before extraction: defaults, file, `.env`,
    /// environment.
    ///
    /// # Errors
    ///
    /// [`Error::ConfigFile`] for a named file that does not exist or a
    /// `.env` that cannot be parsed; [`Error::Config`] for a bad well-known
    /// variable (`DB_POOL_SIZE=abc`).
    pub fn figment(&self) -> Result<Figment> {
        let (file, must_exist) = self.config_file();
        if must_exist && !file.is_file() {
            return Err(Error::ConfigFile {
                path: file,
                problem: "does not exist (named by DBMANAGER_CONFIG or --config)".into(),
            });
        }
        let (dotenv, process) = self.env_layers()?;
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if file.exists() {
            figment = figment.merge(Toml::file_exact(file));
        }
        Ok(figment.merge(dotenv).merge(process))
    }

    /// Loads and validates the configuration.
    ///
    /// # Errors
    ///
    /// As [`Config::load`].
    pub fn load(&self) -> Result<Config> {
        Config::from_figment(&self.figment()?)
    }

    /// Every effective setting with the layer it came from, secrets
    /// redacted; what `dbmanager config show` prints.
    ///
    /// # Errors
    ///
    /// As [`Config::load`].
    pub fn explain(&self) -> Result<Vec<Setting>> {
        let figment = self.figment()?;
        let config = Config::from_figment(&figment)?;
        explain::settings(&figment, &config)
    }
}

/// Turns figment's error into ours: the key as a dotted path (or the file),
/// where it came from, and no secret value.
fn from_figment_error(error: figment::Error) -> Error {
    let error = error
        .into_iter()
        .next()
        .expect("a figment error holds at least one error");
    let key = error.path.join(".");
    let file = error
        .metadata
        .as_ref()
        .and_then(|m| m.source.as_ref())
        .and_then(|s| s.file_path())
        .map(Path::to_path_buf);
    let secret_key = key.contains("url") || key.contains("password");
    let mut problem = match &error.kind {
        figment::error::Kind::InvalidType(_, expected)
        | figment::error::Kind::InvalidValue(_, expected)
            if secret_key =>
        {
            format!("has an invalid value; expected {expected}")
        }
        figment::error::Kind::UnknownField(field, _) => {
            let full = if key.is_empty() {
                field.clone()
            } else if key == *field || key.ends_with(&format!(".{field}")) {
                key.clone()
            } else {
                format!("{key}.{field}")
            };
            return Error::config(full, unknown_field_problem(&error));
        }
        kind => kind.to_string(),
    };
    if key.is_empty() {
        if let Some(path) = file {
            return Error::ConfigFile {
                path,
                problem: one_line(&problem),
            };
        }
        return Error::config("(configuration)", problem);
    }
    if let Some(metadata) = &error.metadata {
        let profile = error.profile.clone().unwrap_or_default();
        let parts: Vec<&str> = error.path.iter().map(String::as_str).collect();
        match &file {
            Some(path) => problem.push_str(&format!(" (in {})", path.display())),
            None => problem.push_str(&format!(
                " (from {} {})",
                metadata.name,
                metadata.interpolate(&profile, &parts)
            )),
        }
    }
    Error::config(key, problem)
}

/// Parser messages draw the offending line with a caret; keep the words
/// only, so the error stays one line (and shows no value from the file).
fn one_line(message: &str) -> String {
    let is_drawing = |line: &str| {
        line.starts_with('|')
            || line
                .split_once(" |")
                .is_some_and(|(n, _)| n.parse::<u32>().is_ok())
    };
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !is_drawing(l))
        .collect::<Vec<_>>()
        .join(": ")
}

fn unknown_field_problem(error: &figment::Error) -> String {
    let profile = error.profile.clone().unwrap_or_default();
    let parts: Vec<&str> = error.path.iter().map(String::as_str).collect();
    let origin = error
        .metadata
        .as_ref()
        .map(|m| match m.source.as_ref().and_then(|s| s.file_path()) {
            Some(path) => format!(" in {}", path.display()),
            None => format!(" (from {} {})", m.name, m.interpolate(&profile, &parts)),
        })
        .unwrap_or_default();
    match &error.kind {
        figment::error::Kind::UnknownField(_, expected) if !expected.is_empty() => {
            format!(
                "is not a known setting{origin}; expected one of {}",
                expected.join(", ")
            )
        }
        _ => format!("is not a known setting{origin}"),
    }
}
