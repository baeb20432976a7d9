//! The MongoDB side: the official driver's client, with connect retry,
//! warm-up, pool figures from driver events, health, indexes and drain.

mod events;
mod indexes;
mod probe;
mod topology;
mod transaction;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use mongodb::bson::doc;
use mongodb::options::{ClientOptions, Credential, Tls, TlsOptions};
use mongodb::{Client, Database};

pub use crate::error::describe_mongo as describe_error;
pub use indexes::{CollectionIndexes, IndexRef, IndexReport, IndexSpec};
pub use transaction::TransactionOptions;

use crate::config::{MongoConfig, scrub, url::ConnectionString};
use crate::error::classify_mongo;
use crate::error::{Backend, Error, Result};
use crate::metrics::PoolLabel;
use crate::pool_status::PoolStatus;
use events::PoolEvents;
use topology::ClientTopology;

/// How long closing the client (ending server sessions, closing sockets) may
/// take at the end of a drain.
const CLIENT_SHUTDOWN_LIMIT: Duration = Duration::from_secs(5);

/// The MongoDB client of a [`crate::DatabaseManager`] and its default
/// database. A cheap `Clone` handle; get it with `db.mongo()?`.
#[derive(Clone)]
pub struct MongoHandle {
    client: Client,
    database: String,
    shared: Arc<Shared>,
}

struct Shared {
    target: String,
    secrets: Vec<String>,
    min_size: u32,
    max_size: usize,
    warm_up_timeout: Duration,
    events: Arc<PoolEvents>,
    draining: AtomicBool,
    topology: ClientTopology,
}

/// Counters of the MongoDB pool since the client was built, from the
/// driver's pool events.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
#[non_exhaustive]
pub struct MongoPoolStats {
    /// Connections opened.
    pub created: u64,
    /// Connections closed.
    pub closed: u64,
    /// Successful checkouts.
    pub checkouts: u64,
    /// Failed checkouts (connection errors and timeouts).
    pub checkout_failures: u64,
    /// Checkouts that timed out waiting for a connection.
    pub checkout_timeouts: u64,
    /// Mean checkout wait, in milliseconds.
    pub mean_checkout_wait_ms: f64,
    /// Longest checkout wait, in milliseconds.
    pub max_checkout_wait_ms: f64,
}

impl MongoHandle {
    /// Builds the client without connecting (the driver connects on first
    /// use). `mongodb+srv` URLs need a DNS lookup and cannot be built
    /// synchronously: use an eager `build()` for them.
    pub(crate) fn new(config: &MongoConfig) -> Result<Self> {
        match Self::with_parse(config).now_or_never() {
            Some(result) => result,
            None => Err(Error::config(
                "mongodb.url",
                "is a mongodb+srv URL, which needs a DNS lookup: use the eager build() for it",
            )),
        }
    }

    /// Builds the client, resolving `mongodb+srv` URLs.
    pub(crate) async fn with_parse(config: &MongoConfig) -> Result<Self> {
        let url = config.url.as_ref().ok_or(Error::NotConfigured {
            backend: Backend::Mongodb,
            hint: "MONGODB_URL, the MONGO_* variables or mongodb.url",
        })?;
        let secrets: Vec<String> = url.password().into_iter().collect();
        let mut options = ClientOptions::parse(url.expose()).await.map_err(|e| {
            Error::config(
                "mongodb.url",
                format!(
                    "is not accepted by the MongoDB driver: {}",
                    scrub(&describe_error(&e), &secrets)
                ),
            )
        })?;
        let events = Arc::new(PoolEvents::default());
        let max_size = config.pool.max_size as usize;
        options.app_name = options.app_name.or_else(|| Some(config.app_name.clone()));
        options.connect_timeout = Some(config.connect_timeout);
        options.server_selection_timeout = Some(config.server_selection_timeout);
        options.heartbeat_freq = Some(config.heartbeat_frequency);
        options.min_pool_size = Some(config.pool.min_size);
        options.max_pool_size = Some(config.pool.max_size);
        options.max_idle_time = config.pool.max_idle_time;
        options.cmap_event_handler = Some(events::handler(events.clone(), max_size));
        if config.auth_mechanism.is_some() || config.auth_source.is_some() {
            let credential = options.credential.get_or_insert_with(Credential::default);
            if let Some(mechanism) = &config.auth_mechanism {
                credential.mechanism =
                    Some(mechanism.parse().map_err(|e: mongodb::error::Error| {
                        Error::config("mongodb.auth_mechanism", describe_error(&e))
                    })?);
            }
            if let Some(source) = &config.auth_source {
                credential.source = Some(source.clone());
            }
        }
        apply_tls(&mut options, config);
        topology::apply(&mut options, config);
        let topology = ClientTopology::of(&options);
        let client = Client::with_options(options).map_err(|e| {
            Error::config(
                "mongodb",
                format!(
                    "is not accepted by the MongoDB driver: {}",
                    scrub(&describe_error(&e), &secrets)
                ),
            )
        })?;
        let target = ConnectionString::parse(url.expose())
            .map(|c| c.target())
            .unwrap_or_default();
        Ok(MongoHandle {
            client,
            database: config.database_name(),
            shared: Arc::new(Shared {
                target,
                secrets,
                min_size: config.pool.min_size,
                max_size,
                warm_up_timeout: config
                    .connect_timeout
                    .saturating_add(config.server_selection_timeout),
                events,
                draining: AtomicBool::new(false),
                topology,
            }),
        })
    }

    /// The driver's client, for anything this handle does not wrap.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The default database (`mongodb.database`, else the URL's, else `app`).
    pub fn database(&self) -> Database {
        self.client.database(&self.database)
    }

    /// Another database on the same client.
    pub fn database_named(&self, name: &str) -> Database {
        self.client.database(name)
    }

    /// The default database's name.
    pub fn database_name(&self) -> &str {
        &self.database
    }

    /// Where the client connects, without credentials.
    pub fn target(&self) -> &str {
        &self.shared.target
    }

    /// The pool right now, from the driver's events: the same figures as
    /// the `dbmanager_pool_*` gauges with `database="mongodb"`.
    pub fn status(&self) -> PoolStatus {
        events::status(&self.shared.events, self.shared.max_size)
    }

    /// Counters since the client was built.
    pub fn stats(&self) -> MongoPoolStats {
        let e = &self.shared.events;
        let checkouts = e.checkouts.load(Ordering::Relaxed);
        let total_us = e.checkout_wait_total_us.load(Ordering::Relaxed);
        MongoPoolStats {
            created: e.created.load(Ordering::Relaxed),
            closed: e.closed.load(Ordering::Relaxed),
            checkouts,
            checkout_failures: e.checkout_failures.load(Ordering::Relaxed),
            checkout_timeouts: e.checkout_timeouts.load(Ordering::Relaxed),
            mean_checkout_wait_ms: if checkouts == 0 {
                0.0
            } else {
                total_us as f64 / checkouts as f64 / 1000.0
            },
            max_checkout_wait_ms: e.checkout_wait_max_us.load(Ordering::Relaxed) as f64 / 1000.0,
        }
    }

    /// One `{ping: 1}`: the eager start-up proof.
    pub(crate) async fn ping_once(&self) -> Result<()> {
        let started = Instant::now();
        let admin = self.client.database("admin");
        let mut result = admin.run_command(doc! { "ping": 1 }).await;
        if let Err(e) = &result
            && matches!(
                e.kind.as_ref(),
                mongodb::error::ErrorKind::ConnectionPoolCleared { .. }
            )
        {
            // The driver's background task filling the pool to min_size
            // failed first (a wrong password, say) and cleared the pool
            // under this ping. Asking again at once shows the cause
            // itself, so a permanent failure is not retried as a reset.
            result = admin.run_command(doc! { "ping": 1 }).await;
        }
        result
            .map(|_| ())
            .map_err(|e| self.connect_error(&e, started.elapsed()))
    }

    pub(crate) fn connect_error(&self, error: &mongodb::error::Error, elapsed: Duration) -> Error {
        let kind = classify_mongo(error);
        crate::metrics::connect_error(PoolLabel::MONGODB, kind);
        let code = match error.kind.as_ref() {
            mongodb::error::ErrorKind::Command(c) => Some(c.code.to_string()),
            _ => None,
        };
        Error::Connect {
            backend: Backend::Mongodb,
            target: self.shared.target.clone(),
            kind,
            reason: scrub(&describe_error(error), &self.shared.secrets),
            code,
            attempts: 1,
            elapsed,
        }
    }

    /// Opens connections up to `min_size` and waits until they are open.
    /// Returns how many are open.
    pub(crate) async fn warm_up(&self) -> usize {
        let events = &self.shared.events;
        let want = self.shared.min_size as usize;
        let deadline = crate::clock::deadline_after(self.shared.warm_up_timeout);
        let _ = tokio::time::timeout_at(deadline, self.client.warm_connection_pool()).await;
        // The driver reports connections through events, which may trail the
        // warm-up by a moment.
        while events.open() < want && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        events.open()
    }

    /// Stops new work through the manager, waits up to `grace` for
    /// checked-out connections (operations in flight), then shuts the
    /// client down. Returns how many connections were still in use.
    pub(crate) async fn drain(&self, grace: Duration) -> usize {
        self.shared.draining.store(true, Ordering::Release);
        let events = &self.shared.events;
        let deadline = crate::clock::deadline_after(grace);
        loop {
            let changed = events.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if events.in_use() == 0 {
                break;
            }
            // Check-in events are delivered on the driver's tasks; poll as a
            // backstop in case one raced the registration above.
            let tick = tokio::time::Instant::now() + Duration::from_millis(50);
            if tokio::time::timeout_at(deadline.min(tick), changed)
                .await
                .is_err()
                && tokio::time::Instant::now() >= deadline
            {
                break;
            }
        }
        let forced = events.in_use();
        if forced > 0 {
            tracing::warn!(target: "dbmanager::mongodb", forced, "grace period over; closing the MongoDB client with operations in flight");
        }
        // The driver ends server sessions on shutdown; a server that does
        // not answer must not hold the service's exit hostage.
        let closing = self.client.clone().shutdown().immediate(true);
        if tokio::time::timeout(CLIENT_SHUTDOWN_LIMIT, closing)
            .await
            .is_err()
        {
            tracing::warn!(target: "dbmanager::mongodb", "the MongoDB client did not shut down within {CLIENT_SHUTDOWN_LIMIT:?}; dropping it");
        } else {
            let unreported = events.closed_with_client();
            if unreported > 0 {
                tracing::debug!(target: "dbmanager::mongodb", unreported, "connections closed with the client without a close event");
            }
        }
        forced
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::Acquire)
    }

    pub(crate) fn secrets(&self) -> &[String] {
        &self.shared.secrets
    }

    pub(crate) fn events(&self) -> &PoolEvents {
        &self.shared.events
    }

    /// The read preference, replica set and direct connection the client
    /// was built with (the URL's options and the typed settings together).
    pub(crate) fn client_topology(&self) -> &ClientTopology {
        &self.shared.topology
    }
}

fn apply_tls(options: &mut ClientOptions, config: &MongoConfig) {
    let tls = &config.tls;
    if tls.enabled == Some(false) {
        options.tls = Some(Tls::Disabled);
        return;
    }
    let wants_options = tls.ca_file.is_some()
        || tls.cert_key_file.is_some()
        || tls.allow_invalid_certificates.is_some();
    if tls.enabled == Some(true) || wants_options {
        let mut tls_options = match options.tls.take() {
            Some(Tls::Enabled(existing)) => existing,
            _ => TlsOptions::default(),
        };
        if let Some(ca) = &tls.ca_file {
            tls_options.ca_file_path = Some(ca.clone());
        }
        if let Some(cert) = &tls.cert_key_file {
            tls_options.cert_key_file_path = Some(cert.clone());
        }
        if let Some(allow) = tls.allow_invalid_certificates {
            tls_options.allow_invalid_certificates = Some(allow);
        }
        options.tls = Some(Tls::Enabled(tls_options));
    }
}

impl std::fmt::Debug for MongoHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoHandle")
            .field("target", &self.shared.target)
            .field("database", &self.database)
            .field("status", &self.status())
            .finish()
    }
}
