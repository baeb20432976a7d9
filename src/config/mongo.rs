//! MongoDB settings: where to connect, authentication, TLS, and the pool.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::secret::DatabaseUrl;
use super::url::ConnectionString;
use crate::error::{Problems, at_most_a_year, pool_size, positive, positive_opt};

/// MongoDB settings (`[mongodb]`).
///
/// MongoDB is configured when `url` is set: by `MONGODB_URL` (or
/// `MONGODB_URI`), by the `MONGO_HOST/PORT/USER/PASSWORD/AUTH_SOURCE/DB`
/// parts, by `DBMANAGER_MONGODB__URL`, or in code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MongoConfig {
    /// Connection string (`mongodb://user:password@host:27017/?authSource=admin`
    /// or `mongodb+srv://...`). Default: none (not configured).
    pub url: Option<DatabaseUrl>,
    /// The default database of [`crate::MongoHandle::database`]. Default: the
    /// database in the URL's path, else `app`.
    pub database: Option<String>,
    /// Whether the service cannot work without MongoDB. When `false`, its
    /// failure makes health `degraded` instead of `down`. Default: `true`.
    pub required: bool,
    /// Application name sent in the handshake and shown in server logs.
    /// Default: `dbmanager`.
    pub app_name: String,
    /// Authentication mechanism (`SCRAM-SHA-256`, `SCRAM-SHA-1`, `MONGODB-X509`,
    /// `PLAIN`, ...). Default: negotiated by the driver.
    pub auth_mechanism: Option<String>,
    /// Database holding the user's credentials. Default: from the URL, else
    /// the driver's default (`admin`).
    pub auth_source: Option<String>,
    /// How long opening one connection may take. Default: 5 s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long an operation waits for a suitable server. Default: 5 s (the
    /// driver's 30 s hides a down server for half a minute).
    #[serde(with = "humantime_serde")]
    pub server_selection_timeout: Duration,
    /// How often the driver checks each server. A server that stops
    /// answering (a frozen network path) is noticed at its next check:
    /// operations in flight to it then fail (transiently) within about this
    /// plus `connect_timeout`. Default: 10 s (the driver's); at least
    /// 500 ms (the driver's minimum).
    #[serde(with = "humantime_serde")]
    pub heartbeat_frequency: Duration,
    /// TLS options, passed through to the driver.
    pub tls: MongoTlsConfig,
    /// Connection pool settings.
    pub pool: MongoPoolConfig,
}

impl Default for MongoConfig {
    fn default() -> Self {
        MongoConfig {
            url: None,
            database: None,
            required: true,
            app_name: "dbmanager".into(),
            auth_mechanism: None,
            auth_source: None,
            connect_timeout: Duration::from_secs(5),
            server_selection_timeout: Duration::from_secs(5),
            heartbeat_frequency: Duration::from_secs(10),
            tls: MongoTlsConfig::default(),
            pool: MongoPoolConfig::default(),
        }
    }
}

/// MongoDB TLS settings (`[mongodb.tls]`); unset values leave the URL's
/// `tls=...` options in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MongoTlsConfig {
    /// Use TLS. Default: as the URL says (`tls=true`, `mongodb+srv`).
    pub enabled: Option<bool>,
    /// CA certificates (PEM) to verify the server with.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM), for X.509 authentication.
    pub cert_key_file: Option<PathBuf>,
    /// Accept invalid server certificates. Only for local testing.
    pub allow_invalid_certificates: Option<bool>,
}

/// MongoDB pool settings (`[mongodb.pool]`), per server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MongoPoolConfig {
    /// Connections opened before an eager `build()` returns and kept by the
    /// driver. Default: 5.
    pub min_size: u32,
    /// The most connections per server. Default: 20.
    pub max_size: u32,
    /// Connections idle longer than this are closed by the driver. Default:
    /// 10 min.
    #[serde(with = "humantime_serde")]
    pub max_idle_time: Option<Duration>,
}

impl Default for MongoPoolConfig {
    fn default() -> Self {
        MongoPoolConfig {
            min_size: 5,
            max_size: 20,
            max_idle_time: Some(Duration::from_secs(10 * 60)),
        }
    }
}

/// The default database name when neither the config nor the URL names one.
pub(crate) const DEFAULT_MONGO_DATABASE: &str = "app";

impl MongoConfig {
    /// Whether MongoDB is configured (has a URL).
    pub fn is_configured(&self) -> bool {
        self.url.is_some()
    }

    /// The default database: `database`, else the URL's, else `app`.
    pub fn database_name(&self) -> String {
        self.database
            .clone()
            .or_else(|| {
                self.url
                    .as_ref()
                    .and_then(|u| ConnectionString::parse(u.expose()).ok())
                    .and_then(|c| c.database())
            })
            .unwrap_or_else(|| DEFAULT_MONGO_DATABASE.to_string())
    }

    pub(super) fn check(&self, p: &mut Problems) {
        if let Some(url) = &self.url {
            match ConnectionString::parse(url.expose()) {
                Ok(ConnectionString::Url(parts))
                    if parts.scheme == "mongodb" || parts.scheme == "mongodb+srv" =>
                {
                    if parts.hosts.is_empty() {
                        p.push("mongodb.url", "has no host");
                    }
                }
                Ok(ConnectionString::Url(parts)) => p.push(
                    "mongodb.url",
                    format!(
                        "has scheme `{}`; expected `mongodb://` or `mongodb+srv://`",
                        parts.scheme
                    ),
                ),
                Ok(ConnectionString::KeyValue(_)) => {
                    p.push("mongodb.url", "is not a URL; expected `mongodb://...`")
                }
                Err(problem) => p.push("mongodb.url", format!("is not a valid URL: it {problem}")),
            }
        }
        if let Err(problem) = check_database_name(&self.database_name()) {
            p.push("mongodb.database", problem);
        }
        if self.app_name.len() > 128 {
            p.push("mongodb.app_name", "is longer than 128 bytes");
        }
        positive("mongodb.connect_timeout", self.connect_timeout, p);
        positive(
            "mongodb.server_selection_timeout",
            self.server_selection_timeout,
            p,
        );
        if self.heartbeat_frequency < Duration::from_millis(500) {
            p.push(
                "mongodb.heartbeat_frequency",
                "must be at least 500ms (the driver's minimum)",
            );
        }
        at_most_a_year("mongodb.heartbeat_frequency", self.heartbeat_frequency, p);
        if self.pool.max_size == 0 {
            p.push("mongodb.pool.max_size", "must be at least 1");
        }
        pool_size(
            "mongodb.pool.max_size",
            usize::try_from(self.pool.max_size).unwrap_or(usize::MAX),
            p,
        );
        if self.pool.min_size > self.pool.max_size {
            p.push(
                "mongodb.pool.min_size",
                format!(
                    "is {} but max_size is {}: min_size must not exceed max_size",
                    self.pool.min_size, self.pool.max_size
                ),
            );
        }
        positive_opt("mongodb.pool.max_idle_time", self.pool.max_idle_time, p);
    }
}

/// MongoDB's rules for database names.
pub(crate) fn check_database_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > 63 {
        return Err("is longer than 63 bytes".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| "/\\. \"$*<>:|?".contains(*c) || *c == '\0')
    {
        return Err(format!(
            "contains `{c}`, which MongoDB does not allow in database names"
        ));
    }
    Ok(())
}
