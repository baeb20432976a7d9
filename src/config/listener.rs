//! Settings of the managed LISTEN connection (`[postgres.listener]`):
//! `db.postgres()?.listener()`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Problems, positive};

/// The largest buffer a listener may keep: far above any useful backlog,
/// low enough that a typo cannot let a stalled consumer hold gigabytes.
const MAX_BUFFER: usize = 10_000_000;

/// Settings of the dedicated LISTEN connection (`[postgres.listener]`),
/// used by `db.postgres()?.listener()`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PostgresListenerConfig {
    /// Events a listener keeps for a consumer that has not read them yet.
    /// The connection is read whatever the consumer does (so the server's
    /// notification queue never backs up); past this many unread events the
    /// oldest are dropped and the consumer is told with `Lagged`.
    /// Default: 65 536.
    pub buffer_size: usize,
    /// How often the listener makes a round trip on its own connection to
    /// prove it is alive: an idle LISTEN connection that went half-open or
    /// whose server froze otherwise hears nothing, forever. Default: 10 s.
    #[serde(with = "humantime_serde")]
    pub liveness_interval: Duration,
    /// How long that round trip (and a `listen`/`unlisten`) may take before
    /// the connection is declared dead and replaced. Default: 5 s.
    #[serde(with = "humantime_serde")]
    pub liveness_timeout: Duration,
    /// The longest wait between two reconnect attempts (the waits grow
    /// from 100 ms, doubling, with full jitter; the listener never gives
    /// up before shutdown). Default: 5 s.
    #[serde(with = "humantime_serde")]
    pub reconnect_max_delay: Duration,
}

impl Default for PostgresListenerConfig {
    fn default() -> Self {
        PostgresListenerConfig {
            buffer_size: 65_536,
            liveness_interval: Duration::from_secs(10),
            liveness_timeout: Duration::from_secs(5),
            reconnect_max_delay: Duration::from_secs(5),
        }
    }
}

impl PostgresListenerConfig {
    pub(super) fn check(&self, p: &mut Problems) {
        if self.buffer_size == 0 {
            p.push("postgres.listener.buffer_size", "must be at least 1");
        }
        if self.buffer_size > MAX_BUFFER {
            p.push(
                "postgres.listener.buffer_size",
                format!("must be at most {MAX_BUFFER}"),
            );
        }
        positive(
            "postgres.listener.liveness_interval",
            self.liveness_interval,
            p,
        );
        positive(
            "postgres.listener.liveness_timeout",
            self.liveness_timeout,
            p,
        );
        positive(
            "postgres.listener.reconnect_max_delay",
            self.reconnect_max_delay,
            p,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_buffer_and_zero_durations_are_refused_naming_the_key() {
        let config = PostgresListenerConfig {
            buffer_size: 0,
            liveness_interval: Duration::ZERO,
            liveness_timeout: Duration::ZERO,
            reconnect_max_delay: Duration::ZERO,
        };
        let mut problems = Problems::default();
        config.check(&mut problems);
        let error = problems.into_result().unwrap_err().to_string();
        for key in [
            "buffer_size",
            "liveness_interval",
            "liveness_timeout",
            "reconnect_max_delay",
        ] {
            assert!(
                error.contains(&format!("postgres.listener.{key}")),
                "{error}"
            );
        }
    }
}
