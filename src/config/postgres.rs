//! PostgreSQL settings: where to connect, session settings, and the pool.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::listener::PostgresListenerConfig;
use super::multiplex::PostgresMultiplexConfig;
use super::replicas::PostgresReplicasConfig;
use super::secret::DatabaseUrl;
#[cfg(feature = "postgres")]
use super::secret::scrub;
use super::url::ConnectionString;
use crate::error::{Problems, at_most_a_year, pool_size, positive, positive_opt};

/// PostgreSQL settings (`[postgres]`).
///
/// PostgreSQL is configured when `url` is set, by `DATABASE_URL`, by
/// `DBMANAGER_POSTGRES__URL`, by the `POSTGRES_USER/PASSWORD/SERVER/PORT/DB`
/// parts, or in code. Without a URL, [`crate::DatabaseManager::postgres`]
/// returns [`crate::Error::NotConfigured`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PostgresConfig {
    /// Connection URL (`postgres://user:password@host:5432/db?sslmode=...`)
    /// or libpq key/value string. Default: none (not configured).
    pub url: Option<DatabaseUrl>,
    /// URL of the test database (`TEST_DATABASE_URL`). Default: the main URL
    /// with the database name prefixed `test_`. See [`super::Config::for_tests`].
    pub test_url: Option<DatabaseUrl>,
    /// `application_name` reported in `pg_stat_activity`, so operators can
    /// tell whose sessions they see. Default: `dbmanager`.
    pub application_name: String,
    /// Whether the service cannot work without PostgreSQL. When `false`, its
    /// failure makes health `degraded` instead of `down`. Default: `true`.
    pub required: bool,
    /// `statement_timeout` for every session: a runaway query is cancelled
    /// by the server. Default: none (the server's setting).
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Option<Duration>,
    /// `idle_in_transaction_session_timeout` for every session: a
    /// transaction left open by a forgotten connection is ended by the
    /// server, releasing its locks. Default: none (the server's setting).
    #[serde(with = "humantime_serde")]
    pub idle_in_transaction_session_timeout: Option<Duration>,
    /// TCP keepalives on every connection, so a peer that vanished (a
    /// failed-over host, a dropped NAT entry) is noticed. Default: `true`.
    pub keepalives: bool,
    /// Idle time before the first keepalive probe. Default: 30 s (the OS
    /// default of two hours lets dead connections linger). With the
    /// interval and retries below, an idle connection to a vanished peer is
    /// closed within about 60 s.
    #[serde(with = "humantime_serde")]
    pub keepalives_idle: Duration,
    /// Time between unanswered keepalive probes. Default: 10 s.
    #[serde(with = "humantime_serde")]
    pub keepalives_interval: Duration,
    /// Unanswered probes before the connection is closed. Default: 3.
    pub keepalives_retries: u32,
    /// How long sent data may stay unacknowledged before the kernel closes
    /// the connection (`TCP_USER_TIMEOUT`, Linux): bounds a query in flight
    /// to a peer that vanished without FIN or RST, which would otherwise
    /// wait for about 15 minutes of retransmissions. Default: 30 s; unset
    /// for the operating system's behaviour.
    #[serde(with = "humantime_serde")]
    pub tcp_user_timeout: Option<Duration>,
    /// How long the server may say nothing while it owes an answer before
    /// the pool checks, over another connection, whether the connection's
    /// backend is working on it: a connection whose backend is not (a
    /// frozen backend, a proxy that stopped forwarding) or whose server
    /// cannot be reached within the connect timeout is closed, and the
    /// caller gets a transient error; a running statement is left alone
    /// and checked again each period. Bounds what `tcp_user_timeout` and
    /// keepalives cannot see: a peer that keeps TCP alive and says
    /// nothing. Default: 30 s; `"0s"` turns it off.
    #[serde(with = "humantime_serde")]
    pub silence_timeout: Duration,
    /// Whether prepared statements may outlive a transaction. Set `unnamed`
    /// (or `off`) behind PgBouncer in transaction mode, where consecutive
    /// transactions of one client may run on different server connections.
    /// Default: `named`.
    pub statement_cache: StatementCache,
    /// Connection pool settings.
    pub pool: PostgresPoolConfig,
    /// Multiplexed mode settings (`db.postgres()?.multiplexed()`).
    pub multiplex: PostgresMultiplexConfig,
    /// Read replicas (`db.postgres()?.replica()`).
    pub replicas: PostgresReplicasConfig,
    /// The managed LISTEN connection (`db.postgres()?.listener()`).
    pub listener: PostgresListenerConfig,
    /// Whether spans of statements the crate runs for callers (the
    /// multiplexed handle) carry the SQL text as `db.query.text`. The text
    /// only, never parameters; off by default because SQL written with
    /// literals can hold personal data. Default: `false`.
    pub trace_query_text: bool,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: None,
            test_url: None,
            application_name: "dbmanager".into(),
            required: true,
            statement_timeout: None,
            idle_in_transaction_session_timeout: None,
            keepalives: true,
            keepalives_idle: Duration::from_secs(30),
            keepalives_interval: Duration::from_secs(10),
            keepalives_retries: 3,
            tcp_user_timeout: Some(Duration::from_secs(30)),
            silence_timeout: Duration::from_secs(30),
            statement_cache: StatementCache::Named,
            pool: PostgresPoolConfig::default(),
            multiplex: PostgresMultiplexConfig::default(),
            replicas: PostgresReplicasConfig::default(),
            listener: PostgresListenerConfig::default(),
            trace_query_text: false,
        }
    }
}

/// How a pooled connection is checked before it is handed out again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum RecyclingMethod {
    /// Check that the connection is not closed (free); verify it with an
    /// empty round trip only when it sat idle longer than
    /// `verify_after_idle`. Safe and fast: a connection used moments ago is
    /// not re-checked, one that idled through a network change is.
    #[default]
    Auto,
    /// Only check that the connection is not closed.
    Fast,
    /// Verify every connection with a round trip before handing it out.
    Verified,
    /// Reset session state (`CLOSE ALL; RESET ALL; UNLISTEN *; ...`) on
    /// every checkout, keeping prepared statements.
    Clean,
    /// Run this SQL on every checkout.
    Custom(String),
}

/// Whether prepared statements may outlive a transaction
/// (`postgres.statement_cache`).
///
/// tokio-postgres prepares a named statement for every `query(&str)`; a
/// transaction-pooling proxy (PgBouncer's `pool_mode = transaction`) may
/// run the prepare and the execution, or two checkouts, on different
/// server connections, where the name does not exist. See "Running behind
/// PgBouncer" in docs/operations.md for what application code must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum StatementCache {
    /// Named statements, kept per connection for its whole life
    /// (`prepare_cached`): fastest, for a direct connection or a
    /// session-pooling proxy.
    #[default]
    Named,
    /// Nothing named outlives a checkout: the crate's own statements are
    /// unnamed (one round trip, parse-bind-execute), and a connection's
    /// statement and type caches are emptied when it returns to the pool,
    /// so `prepare_cached` inside a checkout's (one) transaction is safe.
    Unnamed,
    /// As `unnamed`, and the crate's own statements use the simple query
    /// protocol: no statement is parsed apart from its execution, for
    /// proxies that do not support the extended protocol.
    Off,
}

/// In which order idle connections are handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum QueueMode {
    /// Most recently returned first: a few hot connections serve a light
    /// load, so surplus ones go idle and are reaped by `idle_timeout`.
    #[default]
    Lifo,
    /// Least recently returned first: load is spread over all connections.
    Fifo,
}

/// PostgreSQL pool settings (`[postgres.pool]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PostgresPoolConfig {
    /// The most connections the pool opens. Default: 16. `DB_POOL_SIZE` +
    /// `DB_MAX_OVERFLOW` set it the way SQLAlchemy users know.
    pub max_size: usize,
    /// Connections opened before an eager `build()` returns and kept open
    /// by the maintenance task. Default: 2.
    pub min_idle: usize,
    /// The most idle connections kept: one returned beyond it is closed
    /// (SQLAlchemy's `pool_size`; `DB_POOL_SIZE` sets it). Default: none
    /// (up to `max_size`).
    pub max_idle: Option<usize>,
    /// How long `get()` waits for a connection before
    /// [`crate::Error::PoolTimeout`]. Default: 30 s (`DB_POOL_TIMEOUT`;
    /// deadpool's own default waits forever).
    #[serde(with = "humantime_serde")]
    pub wait_timeout: Duration,
    /// How long opening one connection may take. Default: 5 s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long checking a pooled connection may take before it is
    /// discarded. Default: 5 s.
    #[serde(with = "humantime_serde")]
    pub recycle_timeout: Duration,
    /// How connections are checked on checkout. Default: `auto`.
    pub recycling: RecyclingMethod,
    /// With `recycling = "auto"`, connections idle longer than this are
    /// verified with a round trip. Default: 500 ms (HikariCP's bypass
    /// window).
    #[serde(with = "humantime_serde")]
    pub verify_after_idle: Duration,
    /// Connections older than this (less up to 2.5 % jitter, so they do not
    /// all reconnect at once) are closed when idle and replaced. Default: 30
    /// min; set it below any server- or proxy-side connection limit.
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Option<Duration>,
    /// Connections idle longer than this are closed, down to `min_idle`.
    /// Default: 10 min.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// A connection held longer than this logs one warning naming where it
    /// was acquired. Default: none (off).
    #[serde(with = "humantime_serde")]
    pub leak_detection_threshold: Option<Duration>,
    /// An acquire slower than this logs a warning with the pool status.
    /// Default: 1 s.
    #[serde(with = "humantime_serde")]
    pub slow_acquire_threshold: Option<Duration>,
    /// How often the maintenance task reaps idle and expired connections
    /// and tops the pool up to `min_idle`. Default: 5 s.
    #[serde(with = "humantime_serde")]
    pub maintenance_interval: Duration,
    /// Order in which idle connections are reused. Default: `lifo`.
    pub queue_mode: QueueMode,
}

impl Default for PostgresPoolConfig {
    fn default() -> Self {
        PostgresPoolConfig {
            max_size: 16,
            min_idle: 2,
            max_idle: None,
            wait_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            recycle_timeout: Duration::from_secs(5),
            recycling: RecyclingMethod::Auto,
            verify_after_idle: Duration::from_millis(500),
            max_lifetime: Some(Duration::from_secs(30 * 60)),
            idle_timeout: Some(Duration::from_secs(10 * 60)),
            leak_detection_threshold: None,
            slow_acquire_threshold: Some(Duration::from_secs(1)),
            maintenance_interval: Duration::from_secs(5),
            queue_mode: QueueMode::Lifo,
        }
    }
}

/// Whether this build connects with TLS (feature `tls`).
const TLS: bool = cfg!(feature = "tls");

/// sslmode values libpq knows, and whether this build can honour them.
const SSLMODES: &[(&str, bool)] = &[
    ("disable", true),
    ("allow", TLS),
    ("prefer", true),
    ("require", TLS),
    ("verify-ca", TLS),
    ("verify-full", TLS),
];

impl PostgresConfig {
    /// Whether PostgreSQL is configured (has a URL).
    pub fn is_configured(&self) -> bool {
        self.url.is_some()
    }

    pub(super) fn check(&self, p: &mut Problems) {
        if let Some(url) = &self.url {
            check_url("postgres.url", url, p);
        }
        if let Some(url) = &self.test_url {
            check_url("postgres.test_url", url, p);
        }
        if self.application_name.len() > 63 {
            p.push("postgres.application_name", "is longer than 63 bytes");
        }
        positive_opt("postgres.statement_timeout", self.statement_timeout, p);
        positive_opt(
            "postgres.idle_in_transaction_session_timeout",
            self.idle_in_transaction_session_timeout,
            p,
        );
        positive("postgres.keepalives_idle", self.keepalives_idle, p);
        positive("postgres.keepalives_interval", self.keepalives_interval, p);
        if self.keepalives_retries == 0 {
            p.push("postgres.keepalives_retries", "must be at least 1");
        }
        positive_opt("postgres.tcp_user_timeout", self.tcp_user_timeout, p);
        // Zero turns the bound off; anything else stays within the clock
        // arithmetic every other duration is held to.
        at_most_a_year("postgres.silence_timeout", self.silence_timeout, p);
        self.pool.check(p);
        self.multiplex.check(p);
        self.listener.check(p);
        self.replicas.check(self.url.as_ref(), p);
    }
}

impl PostgresPoolConfig {
    fn check(&self, p: &mut Problems) {
        if self.max_size == 0 {
            p.push("postgres.pool.max_size", "must be at least 1");
        }
        pool_size("postgres.pool.max_size", self.max_size, p);
        if self.min_idle > self.max_size {
            p.push(
                "postgres.pool.min_idle",
                format!(
                    "is {} but max_size is {}: min_idle must not exceed max_size",
                    self.min_idle, self.max_size
                ),
            );
        }
        if let Some(max_idle) = self.max_idle
            && max_idle < self.min_idle
        {
            p.push(
                "postgres.pool.max_idle",
                format!(
                    "is {max_idle} but min_idle is {}: max_idle must be at least min_idle",
                    self.min_idle
                ),
            );
        }
        positive("postgres.pool.wait_timeout", self.wait_timeout, p);
        positive("postgres.pool.connect_timeout", self.connect_timeout, p);
        positive("postgres.pool.recycle_timeout", self.recycle_timeout, p);
        positive("postgres.pool.verify_after_idle", self.verify_after_idle, p);
        positive_opt("postgres.pool.max_lifetime", self.max_lifetime, p);
        positive_opt("postgres.pool.idle_timeout", self.idle_timeout, p);
        positive_opt(
            "postgres.pool.leak_detection_threshold",
            self.leak_detection_threshold,
            p,
        );
        positive_opt(
            "postgres.pool.slow_acquire_threshold",
            self.slow_acquire_threshold,
            p,
        );
        positive(
            "postgres.pool.maintenance_interval",
            self.maintenance_interval,
            p,
        );
        if let RecyclingMethod::Custom(sql) = &self.recycling
            && sql.trim().is_empty()
        {
            p.push("postgres.pool.recycling", "custom recycling SQL is empty");
        }
    }
}

pub(super) fn check_url(key: &str, url: &DatabaseUrl, p: &mut Problems) {
    let parsed = match ConnectionString::parse(url.expose()) {
        Ok(parsed) => parsed,
        Err(problem) => {
            return p.push(
                key,
                format!("is not a valid connection string: it {problem}"),
            );
        }
    };
    if let ConnectionString::Url(parts) = &parsed
        && parts.scheme != "postgres"
        && parts.scheme != "postgresql"
    {
        return p.push(
            key,
            format!(
                "has scheme `{}`; expected `postgres://` or `postgresql://`",
                parts.scheme
            ),
        );
    }
    if let Some(mode) = parsed.param("sslmode") {
        match SSLMODES.iter().find(|(name, _)| *name == mode) {
            None => {
                return p.push(
                    key,
                    format!("has unknown sslmode `{mode}`; expected one of disable, allow, prefer, require, verify-ca, verify-full"),
                );
            }
            Some((_, false)) => {
                return p.push(
                    key,
                    format!("has sslmode `{mode}`, which needs the `tls` feature (on by default), disabled in this build"),
                );
            }
            Some(_) => {}
        }
    }
    #[cfg(feature = "postgres")]
    if let Err(error) = parse_driver_config(url) {
        p.push(key, error);
    }
}

/// Parses a URL or key/value string once into typed options
/// ([`super::libpq::PgOptions`]), describing a failure without the secret.
#[cfg(feature = "postgres")]
pub(crate) fn parse_driver_config(url: &DatabaseUrl) -> Result<super::libpq::PgOptions, String> {
    let secrets: Vec<String> = url.password().into_iter().collect();
    super::libpq::PgOptions::parse(url.expose()).map_err(|problem| {
        format!(
            "is not a valid connection string: it {}",
            scrub(&problem, &secrets)
        )
    })
}
