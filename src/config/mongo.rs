//! MongoDB settings: where to connect, authentication, topology (read
//! preference, replica set, direct connection), TLS, and the pool.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::read_preference::{ReadPreferenceMode, TagSet, deserialize_tag_sets};
use super::secret::DatabaseUrl;
use super::url::{ConnectionString, UrlParts};
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
    /// Which members serve reads: `primary`, `primaryPreferred`,
    /// `secondary`, `secondaryPreferred` or `nearest` (case, `_` and `-`
    /// ignored). When set, it replaces the URL's whole read preference
    /// (`readPreference`, `readPreferenceTags`, `maxStalenessSeconds`).
    /// Default: as the URL says, else `primary`.
    pub read_preference: Option<ReadPreferenceMode>,
    /// Tag sets for `read_preference`, tried in order until one matches a
    /// member (`[{ dc = "east" }, {}]`). Needs `read_preference` set to a
    /// mode other than `primary`. Default: none.
    #[serde(deserialize_with = "deserialize_tag_sets")]
    pub read_preference_tags: Vec<TagSet>,
    /// How far a secondary may lag behind the primary and still serve
    /// reads. Needs `read_preference` set to a mode other than `primary`;
    /// at least 90 s and at least `heartbeat_frequency` + 10 s (the
    /// driver's minimum). Default: none (no limit).
    #[serde(with = "humantime_serde")]
    pub max_staleness: Option<Duration>,
    /// The replica set the servers must belong to: a server reporting
    /// another set name, or none (a standalone), is not used. Default: as
    /// the URL says (`replicaSet=`), else none.
    pub replica_set: Option<String>,
    /// `true`: talk to the URL's single host only, whatever its role, with
    /// no discovery of the other members; `false`: discover the deployment
    /// from the hosts given. Default: as the URL says
    /// (`directConnection=`), else `false`.
    pub direct_connection: Option<bool>,
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
            read_preference: None,
            read_preference_tags: Vec::new(),
            max_staleness: None,
            replica_set: None,
            direct_connection: None,
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
        let mut url_parts = None;
        if let Some(url) = &self.url {
            match ConnectionString::parse(url.expose()) {
                Ok(ConnectionString::Url(parts))
                    if parts.scheme == "mongodb" || parts.scheme == "mongodb+srv" =>
                {
                    if parts.hosts.is_empty() {
                        p.push("mongodb.url", "has no host");
                    }
                    url_parts = Some(parts);
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
        self.check_topology(url_parts.as_ref(), p);
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

impl MongoConfig {
    /// Read preference, replica set and direct connection, alone and with
    /// the URL's own options: what the driver would refuse (or, for a
    /// `mongodb+srv` URL with a direct connection set here, silently
    /// accept) is an error naming the key.
    fn check_topology(&self, url: Option<&UrlParts>, p: &mut Problems) {
        match self.read_preference {
            None => {
                let needs_mode = "is set without `mongodb.read_preference`: set the mode too \
                    (without it the URL's read preference is used as it is)";
                if !self.read_preference_tags.is_empty() {
                    p.push("mongodb.read_preference_tags", needs_mode);
                }
                if self.max_staleness.is_some() {
                    p.push("mongodb.max_staleness", needs_mode);
                }
            }
            Some(ReadPreferenceMode::Primary) => {
                let not_primary = "cannot be used with read_preference = \"primary\": \
                    reads go to the primary whatever its tags and lag";
                if !self.read_preference_tags.is_empty() {
                    p.push("mongodb.read_preference_tags", not_primary);
                }
                if self.max_staleness.is_some() {
                    p.push("mongodb.max_staleness", not_primary);
                }
            }
            Some(_) => {}
        }
        if let Some(staleness) = self.max_staleness {
            let least = MIN_MAX_STALENESS.max(
                self.heartbeat_frequency
                    .saturating_add(STALENESS_IDLE_WRITE_PERIOD),
            );
            if staleness < least {
                p.push(
                    "mongodb.max_staleness",
                    format!(
                        "is {staleness:?} but must be at least {least:?} (90 s, and \
                         heartbeat_frequency + 10 s: the driver's minimum)"
                    ),
                );
            }
            at_most_a_year("mongodb.max_staleness", staleness, p);
        }
        if let Some(name) = &self.replica_set
            && name.trim().is_empty()
        {
            p.push(
                "mongodb.replica_set",
                "is empty; leave it unset for no replica set",
            );
        }
        let Some(url) = url else {
            return;
        };
        let url_direct =
            url_option(url, "directConnection").map(|v| v.eq_ignore_ascii_case("true"));
        let load_balanced =
            url_option(url, "loadBalanced").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        // The key that set the effective value, for the error to name it.
        let direct_key = match (self.direct_connection, url_direct) {
            (Some(true), _) => Some("mongodb.direct_connection"),
            (None, Some(true)) => Some("mongodb.url"),
            _ => None,
        };
        if let Some(key) = direct_key {
            let hosts = url.hosts.split(',').filter(|h| !h.is_empty()).count();
            if url.scheme == "mongodb+srv" {
                p.push(
                    key,
                    "asks for a direct connection, but the URL is `mongodb+srv://`, \
                     which names a deployment, not one server",
                );
            } else if hosts > 1 {
                p.push(
                    key,
                    format!(
                        "asks for a direct connection, but the URL names {hosts} hosts; \
                         a direct connection talks to exactly one"
                    ),
                );
            }
            if load_balanced {
                p.push(
                    key,
                    "asks for a direct connection, which loadBalanced=true in the URL excludes",
                );
            }
        }
        if self.replica_set.is_some() && load_balanced {
            p.push(
                "mongodb.replica_set",
                "is set, which loadBalanced=true in the URL excludes",
            );
        }
    }
}

/// The driver's floor for `max_staleness` (the server selection
/// specification's 90 s).
const MIN_MAX_STALENESS: Duration = Duration::from_secs(90);
/// How often a primary writes when idle; `max_staleness` must also exceed
/// the heartbeat by this.
const STALENESS_IDLE_WRITE_PERIOD: Duration = Duration::from_secs(10);

/// A connection string option; MongoDB's option names ignore case.
fn url_option<'a>(url: &'a UrlParts, name: &str) -> Option<&'a str> {
    url.query
        .iter()
        .rev()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
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
