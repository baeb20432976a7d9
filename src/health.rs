//! Health reports with liveness/readiness semantics.
//!
//! - **Liveness** ([`crate::DatabaseManager::liveness`]) never touches a
//!   database: a database outage must not make an orchestrator restart a
//!   healthy process.
//! - **Readiness** ([`crate::DatabaseManager::readiness`]) is false while
//!   connecting, while a required database is down, and while draining.
//! - **Health** ([`crate::DatabaseManager::health`]) is the detailed report:
//!   one component per configured database, each probed under its own
//!   timeout.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::pool_status::{MultiplexStatus, PoolStatus};

/// The state of a component or of the whole report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum HealthStatus {
    /// Working.
    Up,
    /// An optional component is down; the service works with less.
    Degraded,
    /// A required component is down.
    Down,
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HealthStatus::Up => "up",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Down => "down",
        })
    }
}

/// MongoDB's view of the deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Topology {
    /// `standalone`, `replica_set` or `sharded`.
    pub kind: String,
    /// The servers the driver knows, `host:port`.
    pub servers: Vec<String>,
    /// The replica set name, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set_name: Option<String>,
    /// The client's read preference mode: `primary` (the default),
    /// `primaryPreferred`, `secondary`, `secondaryPreferred` or `nearest`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_preference: Option<String>,
    /// The read preference's tag sets, when it has any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub read_preference_tags: Vec<std::collections::BTreeMap<String, String>>,
    /// The read preference's max staleness in seconds, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_staleness_secs: Option<u64>,
    /// The replica set name the client requires of its servers, when it
    /// requires one (compare `set_name`, what the server reports).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica_set: Option<String>,
    /// Whether the client talks to its one host only, without discovery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_connection: Option<bool>,
}

/// One database's health.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ComponentHealth {
    /// `up` or `down`.
    pub status: HealthStatus,
    /// Whether its failure makes the whole report `down` (else `degraded`).
    pub required: bool,
    /// How long the probe took, in milliseconds (absent when it failed).
    pub latency_ms: Option<f64>,
    /// The server's version (`15.18`, `7.0.0`).
    pub server_version: Option<String>,
    /// The database name.
    pub database: Option<String>,
    /// MongoDB's topology (absent for PostgreSQL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topology: Option<Topology>,
    /// The connection pool.
    pub pool: Option<PoolStatus>,
    /// PostgreSQL's read replicas (absent when none is configured).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Vec<ReplicaHealth>>,
    /// PostgreSQL's multiplexed handle, once it has been used (absent
    /// before, and for MongoDB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multiplex: Option<MultiplexStatus>,
    /// PostgreSQL's dedicated LISTEN connections
    /// (`db.postgres()?.listener()`), one entry per live listener (absent
    /// when there is none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listeners: Option<Vec<ListenerHealth>>,
    /// Mean wait for a pooled connection since the previous probe, in
    /// milliseconds (MongoDB, from the driver's pool events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkout_wait_ms: Option<f64>,
    /// Why the probe failed, without secrets.
    pub error: Option<String>,
}

impl ComponentHealth {
    /// A component that has not (yet) answered: down, with nothing known.
    pub(crate) fn new(required: bool) -> Self {
        ComponentHealth {
            status: HealthStatus::Down,
            required,
            latency_ms: None,
            server_version: None,
            database: None,
            topology: None,
            pool: None,
            replicas: None,
            multiplex: None,
            listeners: None,
            checkout_wait_ms: None,
            error: None,
        }
    }
}

/// One LISTEN connection (`components.postgres.listeners[]`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ListenerHealth {
    /// Whether its connection is up (false while it is being replaced).
    pub connected: bool,
    /// The channels it listens to.
    pub channels: Vec<String>,
    /// Events buffered that its consumer has not read yet.
    pub lag: usize,
    /// Notifications received since it was opened.
    pub received: u64,
    /// Events dropped because the consumer fell behind the buffer.
    pub dropped: u64,
    /// Connections replaced since it was opened.
    pub reconnects: u64,
    /// Milliseconds since its last event (absent before the first).
    pub last_event_age_ms: Option<f64>,
}

/// One read replica (`components.postgres.replicas[]`), as its last check
/// (every `postgres.replicas.check_interval`) found it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ReplicaHealth {
    /// Its name, as in the metrics' `pool` label: `replica-1`, ...
    pub name: &'static str,
    /// Where it connects, without credentials (`user@host:port/db`).
    pub target: String,
    /// `up`: takes checkouts; `degraded`: answers but is further behind
    /// than `max_lag`, its lag is unknown, or it is not in recovery (a
    /// primary); `down`: does not answer.
    pub status: HealthStatus,
    /// Whether `replica().get()` hands out its connections now.
    pub routable: bool,
    /// Replay lag in milliseconds; 0 when it has replayed all the WAL it
    /// received and its WAL receiver is connected.
    pub lag_ms: Option<f64>,
    /// WAL bytes its replay is behind the primary's position (absent when
    /// the primary did not answer).
    pub lag_bytes: Option<u64>,
    /// Whether it is a standby (`pg_is_in_recovery()`); `false` after a
    /// promotion.
    pub in_recovery: Option<bool>,
    /// How long its check took, in milliseconds.
    pub latency_ms: Option<f64>,
    /// How long ago it was checked, in milliseconds.
    pub checked_ms_ago: Option<f64>,
    /// Its connection pool.
    pub pool: PoolStatus,
    /// Why it is not routable, without secrets.
    pub error: Option<String>,
}

impl ReplicaHealth {
    /// A replica known only by name: down until its check says otherwise.
    pub(crate) fn new(name: &'static str, target: &str, pool: PoolStatus) -> Self {
        ReplicaHealth {
            name,
            target: target.to_string(),
            status: HealthStatus::Down,
            routable: false,
            lag_ms: None,
            lag_bytes: None,
            in_recovery: None,
            latency_ms: None,
            checked_ms_ago: None,
            pool,
            error: None,
        }
    }
}

/// The health of every configured database.
///
/// Serializes to the stable JSON documented in `docs/operations.md`:
/// `{"status": "up", "components": {"postgres": {...}, "mongodb": {...}}}`.
/// A database that is not configured is absent, not `down`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct HealthReport {
    /// `up` when every component is up; `degraded` when only optional ones
    /// are down; `down` when a required one is down or the manager is
    /// shutting down.
    pub status: HealthStatus,
    /// One entry per configured database: `postgres`, `mongodb`.
    pub components: BTreeMap<String, ComponentHealth>,
}

impl HealthReport {
    /// Builds a report, deriving the overall status from the components.
    pub(crate) fn from_components(components: BTreeMap<String, ComponentHealth>) -> Self {
        let status = overall(components.values());
        HealthReport { status, components }
    }

    /// Whether the report is `up` or `degraded`: the service can work.
    pub fn is_healthy(&self) -> bool {
        self.status != HealthStatus::Down
    }
}

/// Down if a required component is down, degraded if an optional one is,
/// up otherwise.
pub(crate) fn overall<'a>(
    components: impl IntoIterator<Item = &'a ComponentHealth>,
) -> HealthStatus {
    let mut status = HealthStatus::Up;
    for c in components {
        if c.status == HealthStatus::Down {
            if c.required {
                return HealthStatus::Down;
            }
            status = HealthStatus::Degraded;
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component(status: HealthStatus, required: bool) -> ComponentHealth {
        ComponentHealth {
            status,
            ..ComponentHealth::new(required)
        }
    }

    #[test]
    fn optional_down_is_degraded_required_down_is_down() {
        let up = component(HealthStatus::Up, true);
        let optional_down = component(HealthStatus::Down, false);
        let required_down = component(HealthStatus::Down, true);
        assert_eq!(overall([&up]), HealthStatus::Up);
        assert_eq!(overall([&up, &optional_down]), HealthStatus::Degraded);
        assert_eq!(
            overall([&optional_down, &required_down]),
            HealthStatus::Down
        );
        assert_eq!(overall([]), HealthStatus::Up);
    }
}
