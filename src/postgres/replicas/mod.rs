//! Read replicas: a pool per replica, a monitor that checks each one's
//! state and lag, and checkouts routed to the least busy replica that is
//! up and within `max_lag`, else to the fallback.

mod lag;

use std::future::Future;
use std::panic::Location;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;
use tokio::task::JoinHandle;
use tracing::field::Empty;
use tracing::{Instrument, Span};

use super::PooledConnection;
use super::hooks::Hooks;
use super::pool::PostgresPool;
use crate::config::{PostgresConfig, PostgresReplicasConfig, ReplicaFallback};
use crate::error::{Backend, Error, Result};
use crate::health::{HealthStatus, ReplicaHealth};
use crate::metrics::{self, PoolLabel};
use lag::{Limits, Observation};

/// The replicas of one primary.
pub(crate) struct ReplicaSet {
    members: Vec<Member>,
    settings: PostgresReplicasConfig,
    /// The primary, for the fallback and for its WAL position. It holds no
    /// reference back to this set.
    primary: PostgresPool,
    /// The first round of checks: checkouts before it wait for it, so that
    /// no read goes to a replica whose lag is not known yet.
    first_round: OnceCell<()>,
    /// Where the search for the least busy replica starts, turning on each
    /// checkout so that equally busy replicas share the load.
    next: AtomicUsize,
    monitor: Mutex<Option<JoinHandle<()>>>,
}

struct Member {
    pool: PostgresPool,
    observed: Mutex<Observation>,
}

impl Member {
    fn observed(&self) -> Observation {
        self.observed.lock().expect("replica state lock").clone()
    }

    fn record(&self, observation: Observation, limits: Limits) {
        let label = self.pool.label();
        match &observation {
            Observation::Answered {
                lag, bytes_behind, ..
            } => {
                metrics::replica_state(label, observation.is_routable(limits), *lag, *bytes_behind)
            }
            _ => metrics::replica_state(label, false, None, None),
        }
        let mut observed = self.observed.lock().expect("replica state lock");
        // A slower check that began earlier must not undo a newer finding
        // (the monitor and a failed checkout may race).
        if observed.at().is_none_or(|at| observation.at() >= Some(at)) {
            *observed = observation;
        }
    }

    fn is_routable(&self, limits: Limits) -> bool {
        self.observed
            .lock()
            .expect("replica state lock")
            .is_routable(limits)
    }

    /// What checkouts compete with: connections in use and callers queued.
    fn load(&self) -> usize {
        let status = self.pool.status();
        status.in_use + status.waiting
    }

    /// `replica-1 (app@host:5432/app): why it takes no checkouts`.
    fn describe(&self, limits: Limits) -> String {
        let observed = self.observed();
        let state = match observed.unroutable(limits) {
            Some(reason) => reason.to_string(),
            None => "usable".into(),
        };
        format!(
            "{} ({}): {state}",
            self.pool.label().pool,
            self.pool.target()
        )
    }
}

impl ReplicaSet {
    /// A pool per configured replica; `None` when there are none.
    pub(crate) fn new(
        config: &PostgresConfig,
        hooks: &Hooks,
        primary: PostgresPool,
    ) -> Result<Option<Arc<ReplicaSet>>> {
        let urls = config.replicas.replica_urls(config.url.as_ref());
        if urls.is_empty() {
            return Ok(None);
        }
        let members = urls
            .into_iter()
            .enumerate()
            .map(|(i, url)| {
                let mut replica = config.clone();
                replica.url = Some(url);
                replica.replicas = PostgresReplicasConfig::default();
                let pool =
                    PostgresPool::single(&replica, hooks.clone(), PoolLabel::replica(i + 1))?;
                Ok(Member {
                    pool,
                    observed: Mutex::new(Observation::Unknown),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(Arc::new(ReplicaSet {
            members,
            settings: config.replicas.clone(),
            primary,
            first_round: OnceCell::new(),
            next: AtomicUsize::new(0),
            monitor: Mutex::new(None),
        })))
    }

    /// Checks every replica (and the primary's position) concurrently,
    /// each within `check_timeout`.
    async fn check_all(&self) {
        let timeout = self.settings.check_timeout;
        let (position, observations) = tokio::join!(
            lag::primary_position(&self.primary, timeout),
            futures_util::future::join_all(
                self.members.iter().map(|m| lag::check(&m.pool, timeout))
            )
        );
        for (member, mut observation) in self.members.iter().zip(observations) {
            if let (
                Some(primary),
                Observation::Answered {
                    replayed: Some(replayed),
                    bytes_behind,
                    ..
                },
            ) = (position, &mut observation)
            {
                *bytes_behind = Some(primary.saturating_sub(*replayed));
            }
            member.record(observation, self.limits());
        }
    }

    async fn first_round(&self) {
        self.first_round.get_or_init(|| self.check_all()).await;
    }

    /// Checks every replica and opens `min_idle` connections on those that
    /// can serve: an eager build's start-up, bounded by `check_timeout`
    /// and `connect_timeout`. A replica that is down fails nothing.
    pub(crate) async fn warm_up(&self) {
        self.first_round().await;
        let limits = self.limits();
        let usable = self.members.iter().filter(|m| m.is_routable(limits));
        futures_util::future::join_all(usable.map(|m| m.pool.warm_up())).await;
    }

    /// Starts the replicas' maintenance and the monitor (once).
    pub(crate) fn start(self: &Arc<Self>) {
        let mut slot = self.monitor.lock().expect("replica monitor lock");
        if slot.is_some() || self.primary.is_draining() {
            return;
        }
        for member in &self.members {
            member.pool.start_maintenance();
        }
        *slot = Some(tokio::spawn(monitor(Arc::downgrade(self))));
    }

    /// Drains every replica pool within `grace`; returns the connections
    /// closed while still in use.
    pub(crate) async fn drain(&self, grace: Duration) -> usize {
        let monitor = self.monitor.lock().expect("replica monitor lock").take();
        if let Some(task) = monitor {
            task.abort();
        }
        let drains = self.members.iter().map(|m| m.pool.drain(grace));
        futures_util::future::join_all(drains)
            .await
            .iter()
            .map(|drain| drain.forced)
            .sum()
    }

    /// Each replica in the health report: its last check and its pool now.
    /// Right after a lazy build, waits up to `wait` for the first check
    /// rather than report replicas nobody has looked at.
    pub(crate) async fn health(&self, wait: Duration) -> Vec<ReplicaHealth> {
        let _ = tokio::time::timeout(wait, self.first_round()).await;
        let limits = self.limits();
        self.members
            .iter()
            .map(|member| {
                let observed = member.observed();
                let status = member.pool.status();
                // Sampled on every probe, as the primary's are.
                super::maintenance::record_gauges(member.pool.label(), &status);
                let mut health =
                    ReplicaHealth::new(member.pool.label().pool, member.pool.target(), status);
                let unroutable = observed.unroutable(limits);
                health.routable = unroutable.is_none();
                health.error = unroutable.map(|reason| reason.to_string());
                health.checked_ms_ago = observed.at().map(|at| at.elapsed().as_secs_f64() * 1000.0);
                if let Observation::Answered {
                    latency,
                    in_recovery,
                    lag,
                    bytes_behind,
                    ..
                } = observed
                {
                    health.status = if health.routable {
                        HealthStatus::Up
                    } else {
                        HealthStatus::Degraded
                    };
                    health.latency_ms = Some(latency.as_secs_f64() * 1000.0);
                    health.in_recovery = Some(in_recovery);
                    health.lag_ms = lag.map(|lag| lag.as_secs_f64() * 1000.0);
                    health.lag_bytes = bytes_behind;
                }
                health
            })
            .collect()
    }

    fn limits(&self) -> Limits {
        Limits {
            max_lag: self.settings.max_lag,
            max_bytes: self.settings.max_lag_bytes,
        }
    }

    /// The least busy routable replica not yet tried, if any.
    fn pick(&self, tried: &[bool]) -> Option<usize> {
        let count = self.members.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % count;
        let limits = self.limits();
        (0..count)
            .map(|offset| (start + offset) % count)
            .filter(|&i| !tried[i] && self.members[i].is_routable(limits))
            .min_by_key(|&i| self.members[i].load())
    }
}

impl Drop for ReplicaSet {
    fn drop(&mut self) {
        if let Some(task) = self.monitor.lock().expect("replica monitor lock").take() {
            task.abort();
        }
    }
}

/// Checks every replica each `check_interval` while the set exists.
async fn monitor(set: Weak<ReplicaSet>) {
    let interval = match set.upgrade() {
        Some(set) => set.settings.check_interval,
        None => return,
    };
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        ticks.tick().await;
        let Some(set) = set.upgrade() else { return };
        if std::mem::take(&mut first) {
            set.first_round().await;
        } else {
            set.check_all().await;
        }
    }
}

/// Checkouts from the read replicas: `db.postgres()?.replica()`.
///
/// A connection comes from the least busy replica that answers its checks
/// and is within `postgres.replicas.max_lag`; when none can serve (or none
/// is configured), from the primary or [`Error::NoReplica`], as
/// `postgres.replicas.fallback` says. Whichever server it comes from, the
/// connection is an ordinary [`PooledConnection`]; a write on a replica
/// fails with SQLSTATE 25006 (read-only transaction).
#[derive(Clone, Copy)]
pub struct ReadReplicas<'a> {
    primary: &'a PostgresPool,
    set: Option<&'a Arc<ReplicaSet>>,
}

impl<'a> ReadReplicas<'a> {
    pub(crate) fn new(primary: &'a PostgresPool, set: Option<&'a Arc<ReplicaSet>>) -> Self {
        ReadReplicas { primary, set }
    }

    /// Checks out a connection to a replica, waiting up to
    /// `postgres.pool.wait_timeout` in all.
    ///
    /// Before the replicas' first check has finished (right after a lazy
    /// build), it waits for that check, up to
    /// `postgres.replicas.check_timeout`. A replica that cannot be
    /// connected to is marked down at once and the next one is tried.
    ///
    /// # Errors
    ///
    /// As [`PostgresPool::get`]; and [`Error::NoReplica`] when no replica
    /// can serve and `fallback = "error"`.
    #[track_caller]
    pub fn get(&self) -> impl Future<Output = Result<PooledConnection>> + Send + 'a {
        let wait = self.primary.wait_timeout();
        self.get_timeout(wait)
    }

    /// Like [`ReadReplicas::get`] with another wait limit.
    ///
    /// # Errors
    ///
    /// As [`ReadReplicas::get`].
    #[track_caller]
    pub fn get_timeout(
        &self,
        wait: Duration,
    ) -> impl Future<Output = Result<PooledConnection>> + Send + 'a {
        let caller = Location::caller();
        let (primary, set) = (self.primary, self.set);
        async move {
            let span = route_span(primary, caller);
            let result = route(primary, set, wait, caller, &span)
                .instrument(span.clone())
                .await;
            if let Err(error) = &result {
                crate::spans::record_error(&span, error);
            }
            result
        }
    }

    /// How many replicas are configured.
    pub fn len(&self) -> usize {
        self.set.map_or(0, |set| set.members.len())
    }

    /// Whether no replica is configured (every checkout takes the
    /// fallback).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many replicas can take checkouts now: standbys that answered
    /// their last check within `max_lag` (and `max_lag_bytes`).
    pub fn routable(&self) -> usize {
        self.set.map_or(0, |set| {
            let limits = set.limits();
            set.members.iter().filter(|m| m.is_routable(limits)).count()
        })
    }
}

impl std::fmt::Debug for ReadReplicas<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadReplicas")
            .field("replicas", &self.len())
            .field("routable", &self.routable())
            .finish()
    }
}

/// The span of one routing decision (`dbmanager.route`): which pool
/// served (`db.client.connection.pool.name`, `server.address`,
/// `server.port`) and why (`dbmanager.route.reason`: `least_busy`,
/// `no_replica_configured`, `no_replica_routable`), with how many replicas
/// were tried.
fn route_span(primary: &PostgresPool, caller: &'static Location<'static>) -> Span {
    tracing::info_span!(
        target: "dbmanager::postgres",
        "dbmanager.route",
        db.system.name = crate::spans::POSTGRESQL,
        db.namespace = %primary.shared.peer.namespace,
        server.address = Empty,
        server.port = Empty,
        db.client.connection.pool.name = Empty,
        dbmanager.route.reason = Empty,
        dbmanager.route.fallback = Empty,
        dbmanager.route.tried = Empty,
        code.file.path = caller.file(),
        code.line.number = caller.line(),
        error.type = Empty,
        db.response.status_code = Empty,
        otel.status_code = Empty,
    )
}

/// Records on `span` that `pool` was chosen, for `reason`.
fn chosen(span: &Span, pool: &PostgresPool, reason: &'static str, tried: usize) {
    if span.is_disabled() {
        return;
    }
    let peer = &pool.shared.peer;
    span.record("db.client.connection.pool.name", pool.label().pool);
    span.record("server.address", peer.address.as_str());
    span.record("server.port", peer.port);
    span.record("dbmanager.route.reason", reason);
    span.record("dbmanager.route.tried", tried);
}

/// Routes one checkout: the least busy routable replica, trying the next
/// one past a replica that cannot be connected to, else the fallback.
async fn route(
    primary: &PostgresPool,
    set: Option<&Arc<ReplicaSet>>,
    wait: Duration,
    caller: &'static Location<'static>,
    span: &Span,
) -> Result<PooledConnection> {
    let started = Instant::now();
    let Some(set) = set else {
        return fallback(
            primary,
            wait,
            caller,
            span,
            "no_replica_configured",
            0,
            || "no read replica is configured (postgres.replicas)".into(),
        )
        .await;
    };
    if primary.is_draining() {
        return Err(Error::ShuttingDown {
            backend: Backend::Postgres,
        });
    }
    let _ = tokio::time::timeout(wait, set.first_round()).await;
    let mut tried = vec![false; set.members.len()];
    let mut attempts = 0;
    while let Some(i) = set.pick(&tried) {
        tried[i] = true;
        attempts += 1;
        let member = &set.members[i];
        let left = wait.saturating_sub(started.elapsed());
        chosen(span, &member.pool, "least_busy", attempts);
        match member.pool.acquire(caller, Some(left)).await {
            Ok(connection) => return Ok(connection),
            // It went down since its last check: mark it so, and
            // try the next one.
            Err(error @ Error::Connect { .. }) => {
                tracing::warn!(target: "dbmanager::postgres", replica = member.pool.label().pool, error = %error, "a read replica could not be connected to; routing around it until its next check");
                member.record(
                    Observation::Failed {
                        at: Instant::now(),
                        error: error.to_string(),
                    },
                    set.limits(),
                );
            }
            Err(other) => return Err(other),
        }
    }
    let left = wait.saturating_sub(started.elapsed());
    let limits = set.limits();
    fallback(
        primary,
        left,
        caller,
        span,
        "no_replica_routable",
        attempts,
        || {
            set.members
                .iter()
                .map(|m| m.describe(limits))
                .collect::<Vec<_>>()
                .join("; ")
        },
    )
    .await
}

/// No replica could serve: the primary, or [`Error::NoReplica`].
async fn fallback(
    primary: &PostgresPool,
    wait: Duration,
    caller: &'static Location<'static>,
    span: &Span,
    reason: &'static str,
    tried: usize,
    why: impl FnOnce() -> String,
) -> Result<PooledConnection> {
    let policy = primary.replica_fallback();
    if !span.is_disabled() {
        span.record(
            "dbmanager.route.fallback",
            match policy {
                ReplicaFallback::Primary => "primary",
                ReplicaFallback::Error => "error",
            },
        );
    }
    match policy {
        ReplicaFallback::Primary => {
            chosen(span, primary, reason, tried);
            primary.acquire(caller, Some(wait)).await
        }
        ReplicaFallback::Error => {
            if !span.is_disabled() {
                span.record("dbmanager.route.reason", reason);
                span.record("dbmanager.route.tried", tried);
            }
            Err(Error::NoReplica { reason: why() })
        }
    }
}
