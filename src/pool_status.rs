//! A snapshot of a connection pool, the same for PostgreSQL and MongoDB.

use std::fmt;

/// How many connections a pool has and what they are doing, at one moment.
///
/// The figures are read without stopping the pool, so under load they are
/// a consistent-enough picture rather than an exact one. They are the same
/// numbers the `dbmanager_pool_*` gauges report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[non_exhaustive]
pub struct PoolStatus {
    /// The pool's name, as in the metrics' `pool` label: `primary`,
    /// `replica-1`, ..., `multiplex` or `mongodb`.
    pub name: &'static str,
    /// The most connections the pool will open.
    pub max_size: usize,
    /// Connections open now (idle + in use).
    pub open: usize,
    /// Open connections waiting in the pool for a caller.
    pub idle: usize,
    /// Connections checked out by callers.
    pub in_use: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
}

impl fmt::Display for PoolStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: max_size {}, open {}, idle {}, in_use {}, waiting {}",
            self.name, self.max_size, self.open, self.idle, self.in_use, self.waiting
        )
    }
}

/// The multiplexed PostgreSQL handle at one moment
/// (`components.postgres.multiplex` in the health report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[non_exhaustive]
pub struct MultiplexStatus {
    /// Connections it keeps open (`postgres.multiplex.connections`).
    pub connections: usize,
    /// Connections open now.
    pub open: usize,
    /// Statements one connection may have in flight.
    pub max_in_flight: usize,
    /// Statements sent and not yet answered, over all connections.
    pub in_flight: usize,
    /// Connections receiving no new work because a statement at the head
    /// of their pipeline has run past `stall_threshold`.
    pub stalled: usize,
    /// Callers waiting for room on a connection.
    pub waiting: usize,
    /// Prepared statements kept over all open connections, each
    /// connection at most `postgres.multiplex.statement_cache_capacity`.
    pub statements: usize,
}

impl fmt::Display for MultiplexStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connections {}, open {}, in_flight {} (at most {} each), stalled {}, waiting {}, statements {}",
            self.connections,
            self.open,
            self.in_flight,
            self.max_in_flight,
            self.stalled,
            self.waiting,
            self.statements
        )
    }
}
