//! The `DatabaseManager` handle: accessors, health, readiness, shutdown.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OnceCell, watch};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::error::{Backend, Error, Result};
use crate::health::{HealthReport, HealthStatus};
#[cfg(feature = "mongodb")]
use crate::mongo::MongoHandle;
#[cfg(feature = "postgres")]
use crate::postgres::PostgresPool;

/// Where a manager is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Phase {
    /// Connecting (with retry) in the background; not ready.
    Connecting,
    /// Connected, or built lazily; readiness depends on the probes.
    Ready,
    /// The background connect gave up; see [`DatabaseManager::wait_ready`].
    Failed,
    /// A rollout announced the shutdown
    /// ([`DatabaseManager::announce_shutdown`]): readiness is false so load
    /// balancers stop routing here, while every database keeps serving the
    /// requests that still arrive.
    Stopping,
    /// Shutdown has begun: no new connections, in-flight work finishing.
    Draining,
    /// Shut down.
    Closed,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Connecting => "connecting",
            Phase::Ready => "ready",
            Phase::Failed => "failed",
            Phase::Stopping => "stopping",
            Phase::Draining => "draining",
            Phase::Closed => "closed",
        })
    }
}

/// What [`DatabaseManager::shutdown`] did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Whether everything in flight finished within the grace period.
    pub drained: bool,
    /// PostgreSQL connections still checked out at the deadline, closed under
    /// their users.
    pub postgres_forced: usize,
    /// MongoDB connections still in use at the deadline.
    pub mongodb_forced: usize,
    /// How long the shutdown took.
    #[serde(with = "humantime_serde")]
    pub took: Duration,
}

impl ShutdownReport {
    /// Connections closed while still in use, over both databases.
    pub fn forced(&self) -> usize {
        self.postgres_forced + self.mongodb_forced
    }
}

/// Owns a service's database connections.
///
/// A cheap `Clone` handle (an `Arc` inside), `Send + Sync`: build one at
/// start-up and pass clones to every task and request handler.
///
/// ```no_run
/// # async fn demo() -> dbmanager::Result<()> {
/// use dbmanager::{Config, DatabaseManager};
///
/// let db = DatabaseManager::builder()
///     .config(Config::load()?) // its [retry] drives the connect retry
///     .build()
///     .await?;
/// let client = db.postgres()?.get().await?;
/// let one: i32 = client.query_one("SELECT 1", &[]).await?.get(0);
/// db.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DatabaseManager {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub config: Config,
    #[cfg(feature = "postgres")]
    pub postgres: Option<PostgresPool>,
    #[cfg(feature = "mongodb")]
    pub mongo: Option<MongoHandle>,
    pub phase: watch::Sender<Phase>,
    /// Why the background connect failed.
    pub startup_failure: Mutex<Option<String>>,
    pub background: Mutex<Option<JoinHandle<()>>>,
    pub shutdown: OnceCell<ShutdownReport>,
}

impl DatabaseManager {
    pub(crate) fn from_inner(inner: Inner) -> Self {
        DatabaseManager {
            inner: Arc::new(inner),
        }
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// The PostgreSQL pool.
    ///
    /// # Errors
    ///
    /// [`Error::NotConfigured`] when PostgreSQL is not configured.
    #[cfg(feature = "postgres")]
    pub fn postgres(&self) -> Result<&PostgresPool> {
        // `ok_or_else`: this runs on every checkout, and an eagerly built
        // error costs a drop even when it is not returned.
        self.inner
            .postgres
            .as_ref()
            .ok_or_else(|| Error::NotConfigured {
                backend: Backend::Postgres,
                hint: "DATABASE_URL, the POSTGRES_* variables or postgres.url",
            })
    }

    /// The MongoDB client and default database.
    ///
    /// # Errors
    ///
    /// [`Error::NotConfigured`] when MongoDB is not configured,
    /// [`Error::ShuttingDown`] once shutdown has begun.
    #[cfg(feature = "mongodb")]
    pub fn mongo(&self) -> Result<&MongoHandle> {
        let handle = self
            .inner
            .mongo
            .as_ref()
            .ok_or_else(|| Error::NotConfigured {
                backend: Backend::Mongodb,
                hint: "MONGODB_URL, the MONGO_* variables or mongodb.url",
            })?;
        if matches!(self.phase(), Phase::Draining | Phase::Closed) {
            return Err(Error::ShuttingDown {
                backend: Backend::Mongodb,
            });
        }
        Ok(handle)
    }

    /// The configuration the manager was built with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Where the manager is in its life.
    pub fn phase(&self) -> Phase {
        *self.inner.phase.borrow()
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        self.inner.phase.send_replace(phase);
    }

    /// Ends the start-up connect with `phase` (`Ready` or `Failed`), unless
    /// a shutdown already moved the manager on: a connect finishing while
    /// `shutdown()` drains must not make it ready (or dead) again.
    pub(crate) fn finish_connecting(&self, phase: Phase) {
        self.inner.phase.send_if_modified(|current| {
            let connecting = *current == Phase::Connecting;
            if connecting {
                *current = phase;
            }
            connecting
        });
    }

    /// Liveness: whether the process should keep running. It never touches
    /// a database, so an outage does not get a healthy process restarted;
    /// it is false only when the background connect failed for good (a
    /// wrong password will not fix itself).
    pub fn liveness(&self) -> bool {
        self.phase() != Phase::Failed
    }

    /// Readiness: whether to send traffic here. False while connecting,
    /// once a shutdown was announced or began, and while a required database
    /// fails its probe.
    pub async fn readiness(&self) -> bool {
        if self.phase() != Phase::Ready {
            return false;
        }
        let report = self.health().await;
        self.phase() == Phase::Ready
            && report
                .components
                .values()
                .all(|c| !c.required || c.status == HealthStatus::Up)
    }

    /// Waits until the background connect of
    /// [`crate::DatabaseManagerBuilder::build_in_background`] has finished.
    ///
    /// # Errors
    ///
    /// [`Error::Startup`] when it gave up, [`Error::ShuttingDown`] when the
    /// manager was shut down first.
    pub async fn wait_ready(&self) -> Result<()> {
        let mut phase = self.inner.phase.subscribe();
        let reached = phase
            .wait_for(|p| *p != Phase::Connecting)
            .await
            .map(|p| *p)
            .unwrap_or(Phase::Closed);
        match reached {
            Phase::Ready => Ok(()),
            Phase::Failed => Err(Error::Startup {
                reason: self
                    .inner
                    .startup_failure
                    .lock()
                    .expect("startup failure lock")
                    .clone()
                    .unwrap_or_default(),
            }),
            _ => Err(Error::ShuttingDown {
                backend: self.first_backend(),
            }),
        }
    }

    fn first_backend(&self) -> Backend {
        #[cfg(feature = "postgres")]
        if self.inner.postgres.is_some() {
            return Backend::Postgres;
        }
        Backend::Mongodb
    }

    /// Probes every configured database, concurrently, each within
    /// `health.probe_timeout`.
    pub async fn health(&self) -> HealthReport {
        let timeout = self.inner.config.health.probe_timeout;
        let mut components = BTreeMap::new();
        #[cfg(feature = "postgres")]
        let postgres = async {
            match &self.inner.postgres {
                Some(pool) => Some(
                    pool.probe(timeout, self.inner.config.postgres.required)
                        .await,
                ),
                None => None,
            }
        };
        #[cfg(not(feature = "postgres"))]
        let postgres = async { None::<crate::health::ComponentHealth> };
        #[cfg(feature = "mongodb")]
        let mongo = async {
            match &self.inner.mongo {
                Some(handle) => Some(
                    handle
                        .probe(timeout, self.inner.config.mongodb.required)
                        .await,
                ),
                None => None,
            }
        };
        #[cfg(not(feature = "mongodb"))]
        let mongo = async { None::<crate::health::ComponentHealth> };
        let span = tracing::debug_span!("dbmanager.health");
        let (postgres, mongo) =
            tracing::Instrument::instrument(async { tokio::join!(postgres, mongo) }, span).await;
        if let Some(c) = postgres {
            components.insert(Backend::Postgres.as_str().to_string(), c);
        }
        if let Some(c) = mongo {
            components.insert(Backend::Mongodb.as_str().to_string(), c);
        }
        let mut report = HealthReport::from_components(components);
        // A read replica down or lagging leaves the service working (reads
        // go elsewhere, per `postgres.replicas.fallback`) but not whole.
        let replica_trouble = report
            .components
            .values()
            .flat_map(|c| c.replicas.iter().flatten())
            .any(|r| r.status != HealthStatus::Up);
        // So does a LISTEN connection being replaced: its consumer hears
        // nothing until `Reconnected`.
        let listener_down = report
            .components
            .values()
            .flat_map(|c| c.listeners.iter().flatten())
            .any(|l| !l.connected);
        if (replica_trouble || listener_down) && report.status == HealthStatus::Up {
            report.status = HealthStatus::Degraded;
        }
        if matches!(self.phase(), Phase::Draining | Phase::Closed) {
            report.status = HealthStatus::Down;
        }
        report
    }

    /// Turns readiness false at once and keeps everything else working: the
    /// first step of a rollout, so load balancers stop sending requests here
    /// while those still arriving are served. The phase becomes
    /// [`Phase::Stopping`]; [`shutdown`](Self::shutdown) follows once the
    /// service has stopped accepting requests. With the `axum` feature,
    /// `dbmanager::http::Rollout` runs the whole sequence on SIGTERM.
    ///
    /// Does nothing once the background connect failed or a shutdown began.
    pub fn announce_shutdown(&self) {
        let announced = self.inner.phase.send_if_modified(|phase| {
            let live = matches!(phase, Phase::Connecting | Phase::Ready);
            if live {
                *phase = Phase::Stopping;
            }
            live
        });
        if announced {
            tracing::info!(target: "dbmanager", "shutdown announced: readiness is false, requests are still served");
        }
    }

    /// Shuts down gracefully: readiness turns false at once, new checkouts
    /// fail with [`Error::ShuttingDown`], checked-out connections and
    /// in-flight MongoDB operations get up to `shutdown.grace_period` to
    /// finish, then every connection is closed.
    ///
    /// Idempotent: later and concurrent calls wait for the first and return
    /// its report.
    ///
    /// # Errors
    ///
    /// None today; the `Result` leaves room for failures to close.
    pub async fn shutdown(&self) -> Result<ShutdownReport> {
        let report = self.inner.shutdown.get_or_init(|| self.drain()).await;
        Ok(report.clone())
    }

    async fn drain(&self) -> ShutdownReport {
        let started = Instant::now();
        let grace = self.inner.config.shutdown.grace_period;
        self.set_phase(Phase::Draining);
        tracing::info!(target: "dbmanager", grace_ms = grace.as_millis() as u64, "shutting down: draining connections");
        let background = self
            .inner
            .background
            .lock()
            .expect("background lock")
            .take();
        if let Some(task) = background {
            task.abort();
        }
        #[cfg(feature = "postgres")]
        let postgres = async {
            match &self.inner.postgres {
                Some(pool) => {
                    // The pool's checkouts, the replicas' and the
                    // multiplexed handle's statements share the grace
                    // period.
                    let replicas = async {
                        match pool.replica_set() {
                            Some(set) => set.drain(grace).await,
                            None => 0,
                        }
                    };
                    let (pooled, replicas, multiplexed, listeners) = tokio::join!(
                        pool.drain(grace),
                        replicas,
                        pool.multiplexed().drain(grace),
                        pool.listeners().drain(grace)
                    );
                    pooled.forced + replicas + multiplexed + listeners
                }
                None => 0,
            }
        };
        #[cfg(not(feature = "postgres"))]
        let postgres = async { 0usize };
        #[cfg(feature = "mongodb")]
        let mongo = async {
            match &self.inner.mongo {
                Some(handle) => handle.drain(grace).await,
                None => 0,
            }
        };
        #[cfg(not(feature = "mongodb"))]
        let mongo = async { 0usize };
        let (postgres_forced, mongodb_forced) = tokio::join!(postgres, mongo);
        self.set_phase(Phase::Closed);
        let report = ShutdownReport {
            drained: postgres_forced + mongodb_forced == 0,
            postgres_forced,
            mongodb_forced,
            took: started.elapsed(),
        };
        tracing::info!(
            target: "dbmanager",
            drained = report.drained,
            forced = report.forced(),
            took_ms = report.took.as_millis() as u64,
            "shut down"
        );
        report
    }
}

impl fmt::Debug for DatabaseManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("DatabaseManager");
        d.field("phase", &self.phase());
        #[cfg(feature = "postgres")]
        d.field("postgres", &self.inner.postgres);
        #[cfg(feature = "mongodb")]
        d.field("mongodb", &self.inner.mongo);
        d.finish()
    }
}

impl fmt::Display for DatabaseManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseManager ({}", self.phase())?;
        #[cfg(feature = "postgres")]
        if let Some(pool) = &self.inner.postgres {
            write!(f, "; postgres {}", pool.target())?;
        }
        #[cfg(feature = "mongodb")]
        if let Some(handle) = &self.inner.mongo {
            write!(f, "; mongodb {}", handle.target())?;
        }
        f.write_str(")")
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn check<T: Send + Sync + Clone>() {}
    check::<DatabaseManager>();
}
