//! Metric names, for exporters' allow-lists and dashboards.

/// Gauge: the pool's maximum size.
pub const POOL_MAX: &str = "dbmanager_pool_max_connections";
/// Gauge: open connections.
pub const POOL_OPEN: &str = "dbmanager_pool_open_connections";
/// Gauge: idle connections.
pub const POOL_IDLE: &str = "dbmanager_pool_idle_connections";
/// Gauge: connections in use.
pub const POOL_IN_USE: &str = "dbmanager_pool_in_use_connections";
/// Gauge: callers waiting for a connection.
pub const POOL_WAITING: &str = "dbmanager_pool_waiting_requests";
/// Counter: connections opened.
pub const CREATED: &str = "dbmanager_connections_created_total";
/// Counter: connections closed, label `reason`.
pub const CLOSED: &str = "dbmanager_connections_closed_total";
/// Counter: acquire timeouts.
pub const ACQUIRE_TIMEOUTS: &str = "dbmanager_acquire_timeouts_total";
/// Counter: failed connection attempts, label `kind`.
pub const CONNECT_ERRORS: &str = "dbmanager_connect_errors_total";
/// Counter: start-up connect retries.
pub const CONNECT_RETRIES: &str = "dbmanager_connect_retries_total";
/// Counter: connections held past the leak threshold.
pub const LEAKS: &str = "dbmanager_connection_leaks_total";
/// Counter: connections closed for silence (`postgres.silence_timeout`).
pub const SILENT_CLOSED: &str = "dbmanager_silent_connections_closed_total";
/// Histogram: seconds `get()` waited.
pub const ACQUIRE_WAIT: &str = "dbmanager_acquire_wait_seconds";
/// Histogram: seconds a connection was held.
pub const HOLD: &str = "dbmanager_connection_hold_seconds";
/// Histogram: seconds to open a connection.
pub const CONNECT_TIME: &str = "dbmanager_connect_seconds";
/// Histogram: seconds a health probe took.
pub const PROBE: &str = "dbmanager_health_probe_seconds";
/// Gauge: multiplexed connections open.
pub const MUX_OPEN: &str = "dbmanager_multiplex_open_connections";
/// Gauge: statements in flight on multiplexed connections.
pub const MUX_IN_FLIGHT: &str = "dbmanager_multiplex_in_flight";
/// Gauge: callers waiting for room on a multiplexed connection.
pub const MUX_WAITING: &str = "dbmanager_multiplex_waiting_requests";
/// Histogram: seconds a multiplexed call waited for room.
pub const MUX_QUEUE_WAIT: &str = "dbmanager_multiplex_queue_wait_seconds";
/// Histogram: seconds a multiplexed statement took.
pub const MUX_STATEMENT: &str = "dbmanager_multiplex_statement_seconds";
/// Gauge: a read replica's replay lag at its last check.
pub const REPLICA_LAG: &str = "dbmanager_replica_lag_seconds";
/// Gauge: WAL bytes a read replica's replay is behind the primary.
pub const REPLICA_LAG_BYTES: &str = "dbmanager_replica_lag_bytes";
/// Gauge: 1 while a read replica takes checkouts, 0 while it is down
/// or lagging.
pub const REPLICA_ROUTABLE: &str = "dbmanager_replica_routable";
/// Counter: notifications received by LISTEN connections.
pub const LISTENER_NOTIFICATIONS: &str = "dbmanager_listener_notifications_total";
/// Counter: listener events dropped because their consumer fell more
/// than `postgres.listener.buffer_size` behind.
pub const LISTENER_DROPPED: &str = "dbmanager_listener_dropped_total";
/// Counter: LISTEN connections replaced after a loss (each ends in a
/// `Reconnected` event).
pub const LISTENER_RECONNECTS: &str = "dbmanager_listener_reconnects_total";
/// Counter: attempts started by the transaction helpers.
pub const TX_ATTEMPTS: &str = "dbmanager_transaction_attempts_total";
/// Counter: transaction attempts run again, label `reason`.
pub const TX_RERUNS: &str = "dbmanager_transaction_reruns_total";
/// Counter: transactions that ran out of attempts.
pub const TX_EXHAUSTED: &str = "dbmanager_transaction_retries_exhausted_total";
/// Counter: commits whose answer was lost, label `outcome`.
pub const TX_COMMIT_UNKNOWN: &str = "dbmanager_transaction_commit_unknown_total";
/// Histogram: seconds one transaction helper call took, label `outcome`.
pub const TX_DURATION: &str = "dbmanager_transaction_seconds";

/// OpenTelemetry's name. Gauge: connections open, label
/// `db.client.connection.state` (`idle` or `used`).
pub const OTEL_CONNECTION_COUNT: &str = "db.client.connection.count";
/// OpenTelemetry's name. Gauge: the pool's maximum size.
pub const OTEL_CONNECTION_MAX: &str = "db.client.connection.max";
/// OpenTelemetry's name. Gauge: callers waiting for a connection.
pub const OTEL_PENDING_REQUESTS: &str = "db.client.connection.pending_requests";
/// OpenTelemetry's name. Counter: checkouts that timed out.
pub const OTEL_TIMEOUTS: &str = "db.client.connection.timeouts";
/// OpenTelemetry's name. Histogram: seconds a checkout waited.
pub const OTEL_WAIT_TIME: &str = "db.client.connection.wait_time";
/// OpenTelemetry's name. Histogram: seconds to open a connection.
pub const OTEL_CREATE_TIME: &str = "db.client.connection.create_time";
/// OpenTelemetry's name. Histogram: seconds a connection stayed
/// checked out.
pub const OTEL_USE_TIME: &str = "db.client.connection.use_time";
/// OpenTelemetry's name. Histogram: seconds a multiplexed statement
/// took, label `db.operation.name` when known.
pub const OTEL_OPERATION_DURATION: &str = "db.client.operation.duration";

/// Label of the OpenTelemetry-named series: the pool's name.
pub const OTEL_POOL_NAME: &str = "db.client.connection.pool.name";
/// Label of the OpenTelemetry-named series: `postgresql` or `mongodb`.
pub const OTEL_SYSTEM: &str = "db.system.name";
/// Label of `db.client.connection.count`: `idle` or `used`.
pub const OTEL_STATE: &str = "db.client.connection.state";
