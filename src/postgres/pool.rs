//! The PostgreSQL pool handle: checkout, status, warm-up and drain.

use std::future::Future;
use std::panic::Location;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool::Runtime;
use deadpool::managed::{Pool, Timeouts};
use tokio::task::JoinHandle;

use super::connect::driver_config;
use super::connection::PooledConnection;
use super::hooks::Hooks;
use super::maintenance;
use super::recycler::PgManager;
use super::replicas::{ReadReplicas, ReplicaSet};
use super::shared::{Endpoint, Shared};
use crate::config::{PostgresConfig, QueueMode, ReplicaFallback, url::ConnectionString};
use crate::error::{Backend, Error, Result};
use crate::metrics::{CloseReason, PoolLabel};
use crate::pool_status::PoolStatus;
use crate::spans::Peer;

/// The PostgreSQL connection pool of a [`crate::DatabaseManager`].
///
/// A cheap `Clone` handle. Get one with `db.postgres()?`.
#[derive(Clone)]
pub struct PostgresPool {
    pub(super) pool: Pool<PgManager>,
    pub(super) shared: Arc<Shared>,
    maintenance: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// Statements pipelined over connections of its own (multiplex/).
    pub(super) multiplexed: super::multiplex::Multiplexed,
    /// Dedicated LISTEN connections (listener/).
    pub(super) listeners: super::listener::Listeners,
    /// The read replicas of `[postgres.replicas]`, if any (none on a
    /// replica's own pool).
    replicas: Option<Arc<ReplicaSet>>,
    /// `postgres.replicas.fallback`.
    replica_fallback: ReplicaFallback,
}

/// Counters of a pool's life since it was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[non_exhaustive]
pub struct PoolStats {
    /// Connections opened.
    pub created: u64,
    /// Closed because they reached `max_lifetime`.
    pub closed_lifetime: u64,
    /// Closed after idling past `idle_timeout`.
    pub closed_idle: u64,
    /// Closed because they were found broken.
    pub closed_broken: u64,
    /// Closed on return because `max_idle` connections were already idle.
    pub closed_excess: u64,
    /// Closed because a checkout or checkin hook failed.
    pub closed_hook: u64,
    /// Closed by [`PooledConnection::discard`].
    pub closed_discarded: u64,
    /// Closed because work its caller abandoned (a dropped query future)
    /// did not end within `recycle_timeout` of the return.
    pub closed_abandoned: u64,
    /// Closed by shutdown.
    pub closed_shutdown: u64,
    /// Statements cancelled on the server because their caller stopped
    /// waiting and returned the connection.
    pub abandoned_cancelled: u64,
    /// Connections returned inside a transaction block (a manual `BEGIN`
    /// never ended) and rolled back before being handed out again.
    pub rolled_back: u64,
    /// `get()` calls that timed out.
    pub acquire_timeouts: u64,
    /// Connections reported as held past `leak_detection_threshold`.
    pub leaks: u64,
    /// Whether the maintenance task is running.
    pub maintenance_running: bool,
}

/// What draining the pool found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Drain {
    pub forced: usize,
}

pub(crate) fn status_of(pool: &Pool<PgManager>, shared: &Shared) -> PoolStatus {
    let status = pool.status();
    let in_use = shared.checked_out.load(Ordering::Acquire).min(status.size);
    PoolStatus {
        name: shared.label.pool,
        max_size: shared.settings.max_size,
        open: status.size,
        idle: status.size - in_use,
        in_use,
        waiting: status.waiting,
    }
}

impl PostgresPool {
    /// The pool of `postgres.url`, with a pool per read replica.
    pub(crate) fn new(config: &PostgresConfig, hooks: Hooks) -> Result<Self> {
        let mut primary = Self::single(config, hooks.clone(), PoolLabel::PRIMARY)?;
        // The set keeps a handle of the primary without the set, so that
        // neither keeps the other alive.
        primary.replicas = ReplicaSet::new(config, &hooks, primary.clone())?;
        Ok(primary)
    }

    /// A pool of `config.url` for work outside the service's pools
    /// (bootstrap's and test databases' migrations): `pool="direct"` in
    /// metrics, no replicas, no hooks.
    pub(crate) fn direct(config: &PostgresConfig) -> Result<Self> {
        Self::single(config, Hooks::default(), PoolLabel::DIRECT)
    }

    /// One pool of `config.url`, named `label` in metrics and health.
    pub(super) fn single(config: &PostgresConfig, hooks: Hooks, label: PoolLabel) -> Result<Self> {
        let url = config.url.as_ref().ok_or(Error::NotConfigured {
            backend: Backend::Postgres,
            hint: "DATABASE_URL, the POSTGRES_* variables or postgres.url",
        })?;
        let mut driver = driver_config(config, url)?;
        driver.credentials = hooks.password_provider.clone();
        let pg = &driver.config;
        let parsed = ConnectionString::parse(url.expose()).ok();
        let target = parsed
            .as_ref()
            .map(ConnectionString::target)
            .unwrap_or_default();
        let database = pg
            .get_dbname()
            .or(pg.get_user())
            .unwrap_or("postgres")
            .to_string();
        let secrets = url.password().into_iter().collect();
        let settings = config.pool.clone();
        let timeouts = Timeouts {
            wait: Some(settings.wait_timeout),
            // Room for the on_connect hook on top of the socket connect.
            create: Some(driver.attempt_timeout()),
            // The manager times the checks that make a round trip itself
            // (`recycle_timeout`): a deadpool timer here would cost every
            // checkout a clock read and a timer entry.
            recycle: None,
        };
        let queue_mode = match settings.queue_mode {
            QueueMode::Lifo => deadpool::managed::QueueMode::Lifo,
            QueueMode::Fifo => deadpool::managed::QueueMode::Fifo,
        };
        let max_size = settings.max_size;
        let require_writable = driver.config.get_target_session_attrs()
            == tokio_postgres::config::TargetSessionAttrs::ReadWrite;
        let peer = peer_of(&driver.config, &database);
        let endpoint = Endpoint {
            label,
            target,
            database,
            secrets,
            require_writable,
            peer,
            trace_query_text: config.trace_query_text,
        };
        let shared = Arc::new(Shared::new(
            endpoint,
            settings,
            config.statement_cache,
            hooks,
        ));
        let multiplexed = super::multiplex::Multiplexed::new(
            config.multiplex.clone(),
            driver.clone(),
            shared.clone(),
        );
        let listeners = super::listener::Listeners::new(
            config.listener.clone(),
            driver.clone(),
            shared.clone(),
        );
        let pool = Pool::builder(PgManager::new(driver, shared.clone()))
            .max_size(max_size)
            .timeouts(timeouts)
            .queue_mode(queue_mode)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| Error::config("postgres.pool", e.to_string()))?;
        Ok(PostgresPool {
            pool,
            shared,
            maintenance: Arc::new(Mutex::new(None)),
            multiplexed,
            listeners,
            replicas: None,
            replica_fallback: config.replicas.fallback,
        })
    }

    /// Checkouts from the read replicas of `[postgres.replicas]`:
    /// `db.postgres()?.replica().get().await`. See [`ReadReplicas`].
    pub fn replica(&self) -> ReadReplicas<'_> {
        ReadReplicas::new(self, self.replicas.as_ref())
    }

    /// The read replicas, when configured.
    pub(crate) fn replica_set(&self) -> Option<&Arc<ReplicaSet>> {
        self.replicas.as_ref()
    }

    pub(super) fn replica_fallback(&self) -> ReplicaFallback {
        self.replica_fallback
    }

    pub(super) fn wait_timeout(&self) -> Duration {
        self.shared.settings.wait_timeout
    }

    /// The pool's name in metrics and health.
    pub(super) fn label(&self) -> PoolLabel {
        self.shared.label
    }

    /// Checks out a connection, waiting up to `postgres.pool.wait_timeout`.
    ///
    /// The location of the call is remembered for leak reports.
    ///
    /// # Errors
    ///
    /// [`Error::PoolTimeout`] with the pool's status when none became free
    /// in time; [`Error::Connect`] when a new connection could not be opened;
    /// [`Error::ShuttingDown`] once shutdown has begun; [`Error::Hook`] when
    /// `on_checkout` failed on every connection tried.
    #[track_caller]
    pub fn get(&self) -> impl Future<Output = Result<PooledConnection>> + Send + '_ {
        let caller = Location::caller();
        self.acquire(caller, None)
    }

    /// Like [`PostgresPool::get`] with another wait limit.
    ///
    /// # Errors
    ///
    /// As [`PostgresPool::get`].
    #[track_caller]
    pub fn get_timeout(
        &self,
        wait: Duration,
    ) -> impl Future<Output = Result<PooledConnection>> + Send + '_ {
        let caller = Location::caller();
        self.acquire(caller, Some(wait))
    }

    /// The pool right now: the same figures as the `dbmanager_pool_*`
    /// gauges.
    pub fn status(&self) -> PoolStatus {
        status_of(&self.pool, &self.shared)
    }

    /// Counters since the pool was built.
    pub fn stats(&self) -> PoolStats {
        let c = &self.shared.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        PoolStats {
            created: load(&c.created),
            closed_lifetime: load(&c.closed_lifetime),
            closed_idle: load(&c.closed_idle),
            closed_broken: load(&c.closed_broken),
            closed_excess: load(&c.closed_excess),
            closed_hook: load(&c.closed_hook),
            closed_discarded: load(&c.closed_discarded),
            closed_abandoned: load(&c.closed_abandoned),
            abandoned_cancelled: load(&c.abandoned_cancelled),
            rolled_back: load(&c.rolled_back),
            closed_shutdown: load(&c.closed_shutdown),
            acquire_timeouts: load(&c.acquire_timeouts),
            leaks: load(&c.leaks),
            maintenance_running: self
                .maintenance
                .lock()
                .expect("maintenance lock")
                .as_ref()
                .is_some_and(|task| !task.is_finished()),
        }
    }

    /// The database name connections use.
    pub fn database(&self) -> &str {
        &self.shared.database
    }

    /// Where the pool connects, without credentials (`user@host:port/db`).
    pub fn target(&self) -> &str {
        &self.shared.target
    }

    /// The database and server spans of this pool name.
    #[cfg(feature = "migrate")]
    pub(crate) fn peer(&self) -> &Peer {
        &self.shared.peer
    }

    /// `postgres.statement_cache`, for the crate's own statements.
    pub(crate) fn statement_cache(&self) -> crate::config::StatementCache {
        self.shared.statement_cache
    }

    /// Secrets to scrub from messages before they are shown.
    pub(crate) fn secrets(&self) -> &[String] {
        &self.shared.secrets
    }

    /// Opens one connection now: the eager start-up proof.
    pub(crate) async fn connect_once(&self) -> Result<()> {
        let connection = self
            .get_timeout(self.pool.timeouts().create.unwrap_or_default())
            .await?;
        drop(connection);
        Ok(())
    }

    /// Opens connections in parallel until `min_idle` are idle; returns how
    /// many were opened.
    pub(crate) async fn warm_up(&self) -> usize {
        maintenance::fill(&self.pool, &self.shared, self.shared.settings.min_idle).await
    }

    /// Starts the maintenance task (once).
    pub(crate) fn start_maintenance(&self) {
        let mut slot = self.maintenance.lock().expect("maintenance lock");
        if slot.is_none() && !self.shared.is_draining() {
            *slot = Some(maintenance::spawn(self.pool.weak(), self.shared.clone()));
        }
    }

    /// Whether shutdown has begun.
    pub(crate) fn is_draining(&self) -> bool {
        self.shared.is_draining()
    }

    /// Stops handing out connections, waits up to `grace` for checked-out
    /// ones, then closes everything (forcibly what is still in use).
    pub(crate) async fn drain(&self, grace: Duration) -> Drain {
        let shared = &self.shared;
        shared.draining.store(true, Ordering::Release);
        let task = self.maintenance.lock().expect("maintenance lock").take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        // Closing deadpool's pool now refuses the callers queued for a
        // connection at once (`ShuttingDown`) instead of letting them take
        // connections as they come back during the grace period; it closes
        // the idle connections, and each in-use one as it comes back.
        let open = self.pool.status().size;
        self.pool.close();
        shared.closed(CloseReason::Shutdown, open as u64);
        let deadline = crate::clock::deadline_after(grace);
        loop {
            let returned = shared.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if shared.checked_out.load(Ordering::Acquire) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, returned).await.is_err() {
                break;
            }
        }
        let forced = shared.checked_out.load(Ordering::Acquire);
        if forced > 0 {
            tracing::warn!(target: "dbmanager::postgres", forced, "grace period over; cancelling and closing connections still in use");
            // Idle connections are closed already: what is left is in use.
            let tokens: Vec<_> = shared
                .live
                .lock()
                .expect("live connections lock")
                .values()
                .map(|entry| entry.cancel.clone())
                .collect();
            let cancels = futures_util::future::join_all(tokens.iter().map(|t| t.cancel()));
            let _ = tokio::time::timeout(Duration::from_secs(2), cancels).await;
            shared.abort_all();
        }
        // Wait (briefly) for the sockets to be closed, so the server sees the
        // sessions end before shutdown returns.
        let closed_by = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let ended = shared.connection_ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if shared.live_connections.load(Ordering::Acquire) == 0 {
                break;
            }
            if tokio::time::timeout_at(closed_by, ended).await.is_err() {
                break;
            }
        }
        maintenance::record_gauges(shared.label, &self.status());
        Drain { forced }
    }
}

impl std::fmt::Debug for PostgresPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresPool")
            .field("target", &self.shared.target)
            .field("status", &self.status())
            .field("replicas", &self.replica())
            .finish()
    }
}

/// The database and first server of a connection configuration, for spans:
/// a multi-host URL names its first host (a connect attempt's own span
/// names the host it tried).
pub(super) fn peer_of(config: &tokio_postgres::Config, database: &str) -> Peer {
    use tokio_postgres::config::Host;
    let address = match config.get_hosts().first() {
        Some(Host::Tcp(name)) => name.clone(),
        #[cfg(unix)]
        Some(Host::Unix(dir)) => dir.display().to_string(),
        None => String::new(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(crate::config::libpq::DEFAULT_PORT);
    Peer {
        namespace: database.to_string(),
        address,
        port,
    }
}
