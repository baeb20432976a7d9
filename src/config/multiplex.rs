//! Settings of the multiplexed PostgreSQL handle (`[postgres.multiplex]`):
//! a few connections shared by many callers, each pipelining statements.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Problems, pool_size, positive, positive_opt};

/// The most statements one multiplexed connection may have in flight: far
/// above any useful pipeline depth, low enough that a typo (`640000`)
/// cannot make callers queue without bound.
const MAX_IN_FLIGHT: usize = 100_000;

/// The most statements one multiplexed connection may keep prepared: room
/// for any real application's distinct texts, low enough that a typo
/// cannot make the cache (and the backend's memory) unbounded in practice.
const MAX_STATEMENT_CACHE_CAPACITY: usize = 100_000;

/// Multiplexed mode settings (`[postgres.multiplex]`), used by
/// `db.postgres()?.multiplexed()`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PostgresMultiplexConfig {
    /// Connections the multiplexed handle opens and shares among all its
    /// callers. They are its own, apart from the pool's. Default: 4 (four
    /// pipelined connections outrun sixteen pooled ones; see
    /// docs/benchmarks.md).
    pub connections: usize,
    /// Statements one connection may have in flight (sent, not yet
    /// answered). Callers beyond `connections * max_in_flight` wait:
    /// back-pressure instead of an unbounded queue. Default: 64.
    pub max_in_flight: usize,
    /// How long a caller waits for room on a connection before
    /// [`crate::Error::PoolTimeout`]. Default: 30 s.
    #[serde(with = "humantime_serde")]
    pub wait_timeout: Duration,
    /// A connection that has had statements in flight and answered none of
    /// them for this long (a slow statement at the head of its pipeline)
    /// receives no new work until it answers again. Default: 100 ms.
    #[serde(with = "humantime_serde")]
    pub stall_threshold: Duration,
    /// Connections older than this (less up to 2.5 % jitter) are replaced:
    /// new work goes to a fresh connection and the old one closes once its
    /// statements are answered. Default: 30 min.
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Option<Duration>,
    /// Whether an eager `build()` opens the connections (with the start-up
    /// retry), proving them before it returns. Otherwise they open on the
    /// first call to the handle, so a service that never uses it pays
    /// nothing. Default: `false`.
    pub warm_up: bool,
    /// Prepared statements each connection keeps, by SQL text. A new text
    /// beyond it closes the least recently used statement on the server,
    /// so a backend never holds more than this many of the handle's
    /// statements (each costs the backend memory: about 6 KB for a trivial
    /// one, much more for a large plan). At least 1. Default: 100 (sqlx's
    /// default).
    pub statement_cache_capacity: usize,
}

impl Default for PostgresMultiplexConfig {
    fn default() -> Self {
        PostgresMultiplexConfig {
            connections: 4,
            max_in_flight: 64,
            wait_timeout: Duration::from_secs(30),
            stall_threshold: Duration::from_millis(100),
            max_lifetime: Some(Duration::from_secs(30 * 60)),
            warm_up: false,
            statement_cache_capacity: 100,
        }
    }
}

impl PostgresMultiplexConfig {
    pub(super) fn check(&self, p: &mut Problems) {
        if self.connections == 0 {
            p.push("postgres.multiplex.connections", "must be at least 1");
        }
        pool_size("postgres.multiplex.connections", self.connections, p);
        if self.max_in_flight == 0 {
            p.push("postgres.multiplex.max_in_flight", "must be at least 1");
        }
        if self.max_in_flight > MAX_IN_FLIGHT {
            p.push(
                "postgres.multiplex.max_in_flight",
                format!("must be at most {MAX_IN_FLIGHT}"),
            );
        }
        positive("postgres.multiplex.wait_timeout", self.wait_timeout, p);
        positive(
            "postgres.multiplex.stall_threshold",
            self.stall_threshold,
            p,
        );
        positive_opt("postgres.multiplex.max_lifetime", self.max_lifetime, p);
        if self.statement_cache_capacity == 0 {
            // No cache would mean an unnamed statement per call, which a
            // pipeline shared by many callers cannot use safely: refused
            // rather than given a meaning (docs/decisions.md).
            p.push(
                "postgres.multiplex.statement_cache_capacity",
                "must be at least 1",
            );
        }
        if self.statement_cache_capacity > MAX_STATEMENT_CACHE_CAPACITY {
            p.push(
                "postgres.multiplex.statement_cache_capacity",
                format!("must be at most {MAX_STATEMENT_CACHE_CAPACITY}"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_connections_in_flight_or_cache_capacity_are_refused_naming_the_key() {
        let config = PostgresMultiplexConfig {
            connections: 0,
            max_in_flight: 0,
            statement_cache_capacity: 0,
            ..PostgresMultiplexConfig::default()
        };
        let mut problems = Problems::default();
        config.check(&mut problems);
        let error = problems.into_result().unwrap_err().to_string();
        assert!(error.contains("postgres.multiplex.connections"), "{error}");
        assert!(
            error.contains("postgres.multiplex.max_in_flight"),
            "{error}"
        );
        assert!(
            error.contains("postgres.multiplex.statement_cache_capacity"),
            "{error}"
        );
    }

    #[test]
    fn a_statement_cache_past_its_ceiling_is_refused() {
        let config = PostgresMultiplexConfig {
            statement_cache_capacity: MAX_STATEMENT_CACHE_CAPACITY + 1,
            ..PostgresMultiplexConfig::default()
        };
        let mut problems = Problems::default();
        config.check(&mut problems);
        let error = problems.into_result().unwrap_err().to_string();
        assert!(
            error.contains("postgres.multiplex.statement_cache_capacity"),
            "{error}"
        );
    }
}
