//! Metric names and recording, through the [`metrics`](https://docs.rs/metrics)
//! facade (feature `metrics`).
//!
//! Any exporter works: install a recorder (Prometheus, StatsD, ...) in the
//! application and these metrics appear, provided it is built on the same
//! facade, `metrics` 0.24 (a recorder of another version never sees these
//! series; `cargo tree -i metrics` shows one version). docs/operations.md
//! shows a `/metrics` route with metrics-exporter-prometheus. Every metric has the labels
//! `database` (`postgres` or `mongodb`) and `pool`, which names the pool so
//! that two pools never share a series: `primary` (the PostgreSQL pool),
//! `replica-1`, `replica-2`, ... (read replicas, in configuration order),
//! `multiplex` (the multiplexed handle's connections), `direct` (connections
//! outside every pool: bootstrap, test databases, the command line) and
//! `mongodb`. Without the feature every function here compiles to nothing.
//!
//! | name | type | unit | labels | meaning |
//! | --- | --- | --- | --- | --- |
//! | `dbmanager_pool_max_connections` | gauge | connections | database, pool | pool's maximum size |
//! | `dbmanager_pool_open_connections` | gauge | connections | database, pool | open now (idle + in use) |
//! | `dbmanager_pool_idle_connections` | gauge | connections | database, pool | idle in the pool |
//! | `dbmanager_pool_in_use_connections` | gauge | connections | database, pool | checked out |
//! | `dbmanager_pool_waiting_requests` | gauge | requests | database, pool | callers waiting for a connection |
//! | `dbmanager_connections_created_total` | counter | connections | database, pool | connections opened |
//! | `dbmanager_connections_closed_total` | counter | connections | database, pool, reason | connections closed, by `reason`: `lifetime`, `idle`, `broken`, `excess`, `hook`, `discarded`, `abandoned`, `shutdown` |
//! | `dbmanager_acquire_timeouts_total` | counter | errors | database, pool | `get()` calls that timed out |
//! | `dbmanager_connect_errors_total` | counter | errors | database, pool, kind | failed connection attempts, by [`crate::FailureKind`] |
//! | `dbmanager_connect_retries_total` | counter | attempts | database, pool | start-up connect retries |
//! | `dbmanager_connection_leaks_total` | counter | connections | database, pool | connections held past `leak_detection_threshold` |
//! | `dbmanager_silent_connections_closed_total` | counter | connections | database, pool | connections closed after the server said nothing for `postgres.silence_timeout` while it owed an answer, and a check over another connection found it not working on it |
//! | `dbmanager_acquire_wait_seconds` | histogram | seconds | database, pool | time `get()` waited |
//! | `dbmanager_connection_hold_seconds` | histogram | seconds | database, pool | time a connection stayed checked out |
//! | `dbmanager_connect_seconds` | histogram | seconds | database, pool | time to open one connection |
//! | `dbmanager_health_probe_seconds` | histogram | seconds | database, pool | health probe latency |
//! | `dbmanager_multiplex_open_connections` | gauge | connections | database, pool | multiplexed connections open |
//! | `dbmanager_multiplex_in_flight` | gauge | statements | database, pool | statements in flight on multiplexed connections |
//! | `dbmanager_multiplex_waiting_requests` | gauge | requests | database, pool | callers waiting for room on a multiplexed connection |
//! | `dbmanager_multiplex_queue_wait_seconds` | histogram | seconds | database, pool | time a multiplexed call waited for room |
//! | `dbmanager_multiplex_statement_seconds` | histogram | seconds | database, pool | time a multiplexed statement took, from its place claimed to its answer |
//! | `dbmanager_replica_lag_seconds` | gauge | seconds | database, pool | a read replica's replay lag at its last check (absent until known) |
//! | `dbmanager_replica_lag_bytes` | gauge | bytes | database, pool | WAL bytes its replay is behind the primary (when the primary answered) |
//! | `dbmanager_replica_routable` | gauge | 0 or 1 | database, pool | whether it takes checkouts: up and within `max_lag` |
//! | `dbmanager_transaction_attempts_total` | counter | attempts | database, pool | attempts the transaction helpers started (a rerun is one more) |
//! | `dbmanager_transaction_reruns_total` | counter | attempts | database, pool, reason | attempts run again, by `reason`: PostgreSQL's SQLSTATE class (`40` conflicts, `57`/`08` sessions ended by the server, `other`) or `connection` (lost without an answer, or a commit found rolled back); MongoDB's `transient` (`TransientTransactionError`) or `commit_unknown` (the commit retried on `UnknownTransactionCommitResult`) |
//! | `dbmanager_transaction_retries_exhausted_total` | counter | transactions | database, pool | transactions that gave up as `TransactionRetriesExhausted` |
//! | `dbmanager_transaction_commit_unknown_total` | counter | commits | database, pool, outcome | commits whose answer was lost, by what the check found: `committed`, `aborted`, `no_write` (no transaction id: nothing written; run again) or `unknown` (`CommitOutcomeUnknown` returned) |
//! | `dbmanager_transaction_seconds` | histogram | seconds | database, pool, outcome | one helper call, every attempt and wait included, by `outcome`: `committed` or `failed` |
//!
//! The same figures under OpenTelemetry's database metric names, beside
//! those (labels `db.system.name`, `postgresql` or `mongodb`, and
//! `db.client.connection.pool.name`, the `pool` above):
//!
//! | name | type | unit | extra labels | meaning |
//! | --- | --- | --- | --- | --- |
//! | `db.client.connection.count` | gauge | connections | `db.client.connection.state` (`idle`, `used`) | open connections by state |
//! | `db.client.connection.max` | gauge | connections | | pool's maximum size |
//! | `db.client.connection.pending_requests` | gauge | requests | | callers waiting for a connection |
//! | `db.client.connection.timeouts` | counter | errors | | checkouts that timed out |
//! | `db.client.connection.wait_time` | histogram | seconds | | time a checkout waited |
//! | `db.client.connection.create_time` | histogram | seconds | | time to open one connection |
//! | `db.client.connection.use_time` | histogram | seconds | | time a connection stayed checked out |
//! | `db.client.operation.duration` | histogram | seconds | `db.operation.name` when known | a multiplexed statement (pool `multiplex`) |
//!
//! PostgreSQL gauges are sampled on every maintenance tick
//! (`postgres.pool.maintenance_interval`) and every health probe; MongoDB
//! gauges move with the driver's pool events. Multiplexed gauges are sampled
//! by its keeper task (every quarter of `postgres.multiplex.stall_threshold`,
//! at most every second) once the handle is in use; its connections count
//! in `dbmanager_connections_created_total` and `..._closed_total` too.

#![cfg_attr(not(feature = "metrics"), allow(unused_variables))]
// With one database compiled out, some recording points have no caller.
#![cfg_attr(not(all(feature = "postgres", feature = "mongodb")), allow(dead_code))]

use std::time::Duration;

use crate::error::{Backend, FailureKind};
use crate::pool_status::PoolStatus;

pub mod names;

/// Which pool a metric is about: the `database` and `pool` labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PoolLabel {
    pub backend: Backend,
    pub pool: &'static str,
}

impl PoolLabel {
    /// The PostgreSQL pool of `postgres.url`.
    pub const PRIMARY: PoolLabel = PoolLabel::postgres("primary");
    /// The connections of the multiplexed PostgreSQL handle.
    pub const MULTIPLEX: PoolLabel = PoolLabel::postgres("multiplex");
    /// The dedicated LISTEN connections (`db.postgres()?.listener()`).
    pub const LISTENER: PoolLabel = PoolLabel::postgres("listener");
    /// PostgreSQL connections outside every pool (bootstrap, test
    /// databases, the command line's admin commands).
    pub const DIRECT: PoolLabel = PoolLabel::postgres("direct");
    /// The MongoDB driver's pool.
    pub const MONGODB: PoolLabel = PoolLabel {
        backend: Backend::Mongodb,
        pool: "mongodb",
    };

    const fn postgres(pool: &'static str) -> PoolLabel {
        PoolLabel {
            backend: Backend::Postgres,
            pool,
        }
    }

    /// The `n`th read replica (from 1), `replica-n`.
    pub fn replica(n: usize) -> PoolLabel {
        PoolLabel::postgres(interned(format!("replica-{n}")))
    }

    /// The pool start-up connects for `backend`.
    pub fn main(backend: Backend) -> PoolLabel {
        match backend {
            Backend::Postgres => PoolLabel::PRIMARY,
            Backend::Mongodb => PoolLabel::MONGODB,
        }
    }
}

/// `name` as a `&'static str`, leaked once per distinct name: labels are
/// copied into every recording, and there are only as many names as
/// configured replicas.
fn interned(name: String) -> &'static str {
    static NAMES: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut names = NAMES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(known) = names.iter().find(|known| **known == name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.into_boxed_str());
    names.push(leaked);
    leaked
}

/// Why a connection was closed (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    Lifetime,
    Idle,
    Broken,
    Excess,
    Hook,
    Discarded,
    Abandoned,
    Shutdown,
}

impl CloseReason {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CloseReason::Lifetime => "lifetime",
            CloseReason::Idle => "idle",
            CloseReason::Broken => "broken",
            CloseReason::Excess => "excess",
            CloseReason::Hook => "hook",
            CloseReason::Discarded => "discarded",
            CloseReason::Abandoned => "abandoned",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// `db.system.name` of a backend.
#[cfg(feature = "metrics")]
fn system(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => "postgresql",
        Backend::Mongodb => "mongodb",
    }
}

/// Registers descriptions and units of every metric with the installed
/// recorder. Optional: call it once after installing an exporter so that
/// it can show help texts.
#[cfg(feature = "metrics")]
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    use names::*;
    describe_gauge!(POOL_MAX, Unit::Count, "Maximum size of the connection pool");
    describe_gauge!(POOL_OPEN, Unit::Count, "Open connections (idle + in use)");
    describe_gauge!(POOL_IDLE, Unit::Count, "Idle connections in the pool");
    describe_gauge!(POOL_IN_USE, Unit::Count, "Connections checked out");
    describe_gauge!(
        POOL_WAITING,
        Unit::Count,
        "Callers waiting for a connection"
    );
    describe_counter!(CREATED, Unit::Count, "Connections opened");
    describe_counter!(CLOSED, Unit::Count, "Connections closed, by reason");
    describe_counter!(
        ACQUIRE_TIMEOUTS,
        Unit::Count,
        "Acquire calls that timed out"
    );
    describe_counter!(
        CONNECT_ERRORS,
        Unit::Count,
        "Failed connection attempts, by kind"
    );
    describe_counter!(CONNECT_RETRIES, Unit::Count, "Start-up connect retries");
    describe_counter!(
        LEAKS,
        Unit::Count,
        "Connections held past the leak detection threshold"
    );
    describe_counter!(
        SILENT_CLOSED,
        Unit::Count,
        "Connections closed after the server said nothing for the silence timeout"
    );
    describe_histogram!(
        ACQUIRE_WAIT,
        Unit::Seconds,
        "Time spent waiting for a connection"
    );
    describe_histogram!(HOLD, Unit::Seconds, "Time a connection stayed checked out");
    describe_histogram!(CONNECT_TIME, Unit::Seconds, "Time to open one connection");
    describe_histogram!(PROBE, Unit::Seconds, "Health probe latency");
    describe_gauge!(MUX_OPEN, Unit::Count, "Multiplexed connections open");
    describe_gauge!(
        MUX_IN_FLIGHT,
        Unit::Count,
        "Statements in flight on multiplexed connections"
    );
    describe_gauge!(
        MUX_WAITING,
        Unit::Count,
        "Callers waiting for room on a multiplexed connection"
    );
    describe_histogram!(
        MUX_QUEUE_WAIT,
        Unit::Seconds,
        "Time a multiplexed call waited for room"
    );
    describe_histogram!(
        MUX_STATEMENT,
        Unit::Seconds,
        "Time a multiplexed statement took"
    );
    describe_gauge!(REPLICA_LAG, Unit::Seconds, "Read replica replay lag");
    describe_gauge!(
        REPLICA_LAG_BYTES,
        Unit::Bytes,
        "WAL bytes a read replica's replay is behind the primary"
    );
    describe_counter!(
        LISTENER_NOTIFICATIONS,
        Unit::Count,
        "Notifications received by LISTEN connections"
    );
    describe_counter!(
        LISTENER_DROPPED,
        Unit::Count,
        "Listener events dropped because the consumer fell behind"
    );
    describe_counter!(
        LISTENER_RECONNECTS,
        Unit::Count,
        "LISTEN connections replaced after a loss"
    );
    describe_gauge!(
        REPLICA_ROUTABLE,
        Unit::Count,
        "Whether a read replica takes checkouts (1) or not (0)"
    );
    describe_counter!(
        TX_ATTEMPTS,
        Unit::Count,
        "Attempts started by the transaction helpers"
    );
    describe_counter!(
        TX_RERUNS,
        Unit::Count,
        "Transaction attempts run again, by reason"
    );
    describe_counter!(
        TX_EXHAUSTED,
        Unit::Count,
        "Transactions that ran out of attempts"
    );
    describe_counter!(
        TX_COMMIT_UNKNOWN,
        Unit::Count,
        "Commits whose answer was lost, by the outcome the check found"
    );
    describe_histogram!(
        TX_DURATION,
        Unit::Seconds,
        "Time one transaction helper call took, every attempt included"
    );
    describe_gauge!(
        OTEL_CONNECTION_COUNT,
        Unit::Count,
        "Connections open, by state (idle, used)"
    );
    describe_gauge!(
        OTEL_CONNECTION_MAX,
        Unit::Count,
        "Maximum connections of the pool"
    );
    describe_gauge!(
        OTEL_PENDING_REQUESTS,
        Unit::Count,
        "Callers waiting for a connection"
    );
    describe_counter!(OTEL_TIMEOUTS, Unit::Count, "Checkouts that timed out");
    describe_histogram!(OTEL_WAIT_TIME, Unit::Seconds, "Time a checkout waited");
    describe_histogram!(OTEL_CREATE_TIME, Unit::Seconds, "Time to open a connection");
    describe_histogram!(
        OTEL_USE_TIME,
        Unit::Seconds,
        "Time a connection stayed checked out"
    );
    describe_histogram!(
        OTEL_OPERATION_DURATION,
        Unit::Seconds,
        "Time a multiplexed statement took"
    );
}

#[inline]
pub(crate) fn pool_gauges(label: PoolLabel, status: &PoolStatus) {
    #[cfg(feature = "metrics")]
    {
        let (db, pool) = (label.backend.as_str(), label.pool);
        metrics::gauge!(names::POOL_MAX, "database" => db, "pool" => pool)
            .set(status.max_size as f64);
        metrics::gauge!(names::POOL_OPEN, "database" => db, "pool" => pool).set(status.open as f64);
        metrics::gauge!(names::POOL_IDLE, "database" => db, "pool" => pool).set(status.idle as f64);
        metrics::gauge!(names::POOL_IN_USE, "database" => db, "pool" => pool)
            .set(status.in_use as f64);
        metrics::gauge!(names::POOL_WAITING, "database" => db, "pool" => pool)
            .set(status.waiting as f64);
        let system = system(label.backend);
        metrics::gauge!(names::OTEL_CONNECTION_COUNT, names::OTEL_SYSTEM => system, names::OTEL_POOL_NAME => pool, names::OTEL_STATE => "idle")
            .set(status.idle as f64);
        metrics::gauge!(names::OTEL_CONNECTION_COUNT, names::OTEL_SYSTEM => system, names::OTEL_POOL_NAME => pool, names::OTEL_STATE => "used")
            .set(status.in_use as f64);
        metrics::gauge!(names::OTEL_CONNECTION_MAX, names::OTEL_SYSTEM => system, names::OTEL_POOL_NAME => pool)
            .set(status.max_size as f64);
        metrics::gauge!(names::OTEL_PENDING_REQUESTS, names::OTEL_SYSTEM => system, names::OTEL_POOL_NAME => pool)
            .set(status.waiting as f64);
    }
}

#[inline]
pub(crate) fn connection_created(label: PoolLabel, took: Option<Duration>) {
    #[cfg(feature = "metrics")]
    {
        let (db, pool) = (label.backend.as_str(), label.pool);
        metrics::counter!(names::CREATED, "database" => db, "pool" => pool).increment(1);
        if let Some(took) = took {
            metrics::histogram!(names::CONNECT_TIME, "database" => db, "pool" => pool)
                .record(took.as_secs_f64());
            metrics::histogram!(names::OTEL_CREATE_TIME, names::OTEL_SYSTEM => system(label.backend), names::OTEL_POOL_NAME => pool)
                .record(took.as_secs_f64());
        }
    }
}

#[inline]
pub(crate) fn connections_closed(label: PoolLabel, reason: CloseReason, count: u64) {
    #[cfg(feature = "metrics")]
    if count > 0 {
        metrics::counter!(names::CLOSED, "database" => label.backend.as_str(), "pool" => label.pool, "reason" => reason.as_str())
            .increment(count);
    }
}

#[inline]
pub(crate) fn acquired(label: PoolLabel, waited: Duration) {
    #[cfg(feature = "metrics")]
    {
        metrics::histogram!(names::ACQUIRE_WAIT, "database" => label.backend.as_str(), "pool" => label.pool)
            .record(waited.as_secs_f64());
        metrics::histogram!(names::OTEL_WAIT_TIME, names::OTEL_SYSTEM => system(label.backend), names::OTEL_POOL_NAME => label.pool)
            .record(waited.as_secs_f64());
    }
}

#[inline]
pub(crate) fn acquire_timeout(label: PoolLabel) {
    #[cfg(feature = "metrics")]
    {
        metrics::counter!(names::ACQUIRE_TIMEOUTS, "database" => label.backend.as_str(), "pool" => label.pool).increment(1);
        metrics::counter!(names::OTEL_TIMEOUTS, names::OTEL_SYSTEM => system(label.backend), names::OTEL_POOL_NAME => label.pool).increment(1);
    }
}

/// A connection checked out at `since` came back at `now`. Takes the two
/// instants, not the hold time, so that without the feature not even the
/// subtraction is paid on every return.
#[inline]
pub(crate) fn released(label: PoolLabel, since: std::time::Instant, now: std::time::Instant) {
    #[cfg(feature = "metrics")]
    {
        let held = now.saturating_duration_since(since).as_secs_f64();
        metrics::histogram!(names::HOLD, "database" => label.backend.as_str(), "pool" => label.pool)
            .record(held);
        metrics::histogram!(names::OTEL_USE_TIME, names::OTEL_SYSTEM => system(label.backend), names::OTEL_POOL_NAME => label.pool)
            .record(held);
    }
}

#[inline]
pub(crate) fn connect_error(label: PoolLabel, kind: FailureKind) {
    #[cfg(feature = "metrics")]
    metrics::counter!(names::CONNECT_ERRORS, "database" => label.backend.as_str(), "pool" => label.pool, "kind" => kind.as_str())
        .increment(1);
}

/// A connection attempt that failed as [`crate::Error::Connect`]; other
/// errors (a failed hook, a password provider's error) are not connect
/// failures and are not counted.
pub(crate) fn connect_failed(label: PoolLabel, error: &crate::Error) {
    if let crate::Error::Connect { kind, .. } = error {
        connect_error(label, *kind);
    }
}

#[inline]
pub(crate) fn connect_retry(label: PoolLabel) {
    #[cfg(feature = "metrics")]
    metrics::counter!(names::CONNECT_RETRIES, "database" => label.backend.as_str(), "pool" => label.pool).increment(1);
}

#[inline]
pub(crate) fn leak(label: PoolLabel) {
    #[cfg(feature = "metrics")]
    metrics::counter!(names::LEAKS, "database" => label.backend.as_str(), "pool" => label.pool)
        .increment(1);
}

#[inline]
pub(crate) fn silent_closed(label: PoolLabel) {
    #[cfg(feature = "metrics")]
    metrics::counter!(names::SILENT_CLOSED, "database" => label.backend.as_str(), "pool" => label.pool)
        .increment(1);
}

#[inline]
pub(crate) fn probe(label: PoolLabel, latency: Duration) {
    #[cfg(feature = "metrics")]
    metrics::histogram!(names::PROBE, "database" => label.backend.as_str(), "pool" => label.pool)
        .record(latency.as_secs_f64());
}

#[inline]
pub(crate) fn multiplex_gauges(status: &crate::pool_status::MultiplexStatus) {
    #[cfg(feature = "metrics")]
    {
        let db = Backend::Postgres.as_str();
        metrics::gauge!(names::MUX_OPEN, "database" => db, "pool" => PoolLabel::MULTIPLEX.pool)
            .set(status.open as f64);
        metrics::gauge!(names::MUX_IN_FLIGHT, "database" => db, "pool" => PoolLabel::MULTIPLEX.pool).set(status.in_flight as f64);
        metrics::gauge!(names::MUX_WAITING, "database" => db, "pool" => PoolLabel::MULTIPLEX.pool)
            .set(status.waiting as f64);
    }
}

#[inline]
pub(crate) fn multiplex_waited(waited: Duration) {
    #[cfg(feature = "metrics")]
    metrics::histogram!(names::MUX_QUEUE_WAIT, "database" => Backend::Postgres.as_str(), "pool" => PoolLabel::MULTIPLEX.pool)
        .record(waited.as_secs_f64());
}

#[inline]
#[cfg(feature = "metrics")]
pub(crate) fn multiplex_statement(took: Duration, operation: Option<&'static str>) {
    metrics::histogram!(names::MUX_STATEMENT, "database" => Backend::Postgres.as_str(), "pool" => PoolLabel::MULTIPLEX.pool)
        .record(took.as_secs_f64());
    let pool = PoolLabel::MULTIPLEX.pool;
    match operation {
        Some(operation) => metrics::histogram!(names::OTEL_OPERATION_DURATION, names::OTEL_SYSTEM => "postgresql", names::OTEL_POOL_NAME => pool, "db.operation.name" => operation),
        None => metrics::histogram!(names::OTEL_OPERATION_DURATION, names::OTEL_SYSTEM => "postgresql", names::OTEL_POOL_NAME => pool),
    }
    .record(took.as_secs_f64());
}

/// A read replica's last check: whether it takes checkouts, and its lag
/// when known.
#[inline]
pub(crate) fn replica_state(
    label: PoolLabel,
    routable: bool,
    lag: Option<Duration>,
    bytes_behind: Option<u64>,
) {
    #[cfg(feature = "metrics")]
    {
        let (db, pool) = (label.backend.as_str(), label.pool);
        metrics::gauge!(names::REPLICA_ROUTABLE, "database" => db, "pool" => pool)
            .set(if routable { 1.0 } else { 0.0 });
        if let Some(lag) = lag {
            metrics::gauge!(names::REPLICA_LAG, "database" => db, "pool" => pool)
                .set(lag.as_secs_f64());
        }
        if let Some(bytes) = bytes_behind {
            metrics::gauge!(names::REPLICA_LAG_BYTES, "database" => db, "pool" => pool)
                .set(bytes as f64);
        }
    }
}

#[inline]
pub(crate) fn listener_notification() {
    #[cfg(feature = "metrics")]
    metrics::counter!(names::LISTENER_NOTIFICATIONS, "database" => Backend::Postgres.as_str(), "pool" => PoolLabel::LISTENER.pool)
        .increment(1);
}

#[inline]
pub(crate) fn listener_dropped() {
    #[cfg(feature = "metrics")]
    metrics::counter!(names::LISTENER_DROPPED, "database" => Backend::Postgres.as_str(), "pool" => PoolLabel::LISTENER.pool)
        .increment(1);
}

#[inline]
pub(crate) fn listener_reconnect() {
    #[cfg(feature = "metrics")]
    metrics::counter!(names::LISTENER_RECONNECTS, "database" => Backend::Postgres.as_str(), "pool" => PoolLabel::LISTENER.pool)
        .increment(1);
}

/// How a transaction helper call ended (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TransactionEnd {
    Committed,
    Failed,
}

#[inline]
pub(crate) fn transaction_attempt(label: PoolLabel) {
    #[cfg(feature = "metrics")]
    metrics::counter!(names::TX_ATTEMPTS, "database" => label.backend.as_str(), "pool" => label.pool)
        .increment(1);
}

#[inline]
pub(crate) fn transaction_rerun(label: PoolLabel, reason: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(names::TX_RERUNS, "database" => label.backend.as_str(), "pool" => label.pool, "reason" => reason)
        .increment(1);
}

#[inline]
pub(crate) fn transaction_exhausted(label: PoolLabel) {
    #[cfg(feature = "metrics")]
    metrics::counter!(names::TX_EXHAUSTED, "database" => label.backend.as_str(), "pool" => label.pool)
        .increment(1);
}

#[inline]
pub(crate) fn commit_outcome(label: PoolLabel, outcome: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(names::TX_COMMIT_UNKNOWN, "database" => label.backend.as_str(), "pool" => label.pool, "outcome" => outcome)
        .increment(1);
}

#[inline]
pub(crate) fn transaction_finished(label: PoolLabel, end: TransactionEnd, took: Duration) {
    #[cfg(feature = "metrics")]
    {
        let outcome = match end {
            TransactionEnd::Committed => "committed",
            TransactionEnd::Failed => "failed",
        };
        metrics::histogram!(names::TX_DURATION, "database" => label.backend.as_str(), "pool" => label.pool, "outcome" => outcome)
            .record(took.as_secs_f64());
    }
}
