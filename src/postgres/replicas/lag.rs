//! One check of a replica: does it answer, is it a standby, and how far
//! behind is its replay, in time and (when the primary answers too) in
//! bytes of WAL.

use std::time::{Duration, Instant};

use crate::config::scrub;
use crate::error::Error;
use crate::postgres::PostgresPool;

/// The replica's state, replay lag in seconds, and replay position.
///
/// The lag is `now() - pg_last_xact_replay_timestamp()`, except that a
/// standby whose WAL receiver is connected and which has replayed all it
/// received is 0 behind: on an idle primary the last replayed commit ages
/// while the replica is fully caught up. A standby that has replayed no
/// commit yet and is not caught up has no lag figure (NULL): unknown, so
/// it is not routed to. A server out of recovery (a promoted standby, or a
/// primary listed as a replica) is 0 behind.
const REPLICA_STATE: &str = "SELECT pg_is_in_recovery()::text, \
    (CASE WHEN NOT pg_is_in_recovery() THEN 0 \
          WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() \
               AND EXISTS (SELECT 1 FROM pg_stat_wal_receiver) THEN 0 \
          ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END)::float8::text, \
    pg_last_wal_replay_lsn()::text";

/// Where the primary writes now.
const PRIMARY_POSITION: &str = "SELECT pg_current_wal_lsn()::text";

/// What one check found.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Observation {
    /// Not checked yet.
    Unknown,
    /// It answered.
    Answered {
        /// When the check finished.
        at: Instant,
        /// The round trip of the check.
        latency: Duration,
        /// `pg_is_in_recovery()`: false for a promoted standby.
        in_recovery: bool,
        /// Replay lag; `None` when the server cannot tell yet.
        lag: Option<Duration>,
        /// Replay position (`pg_last_wal_replay_lsn()`), for standbys.
        replayed: Option<u64>,
        /// WAL bytes between the primary's position and the replay
        /// position, when the primary answered too.
        bytes_behind: Option<u64>,
    },
    /// It did not answer in time, or refused.
    Failed {
        /// When the check (or the checkout that failed) finished.
        at: Instant,
        /// Why, without secrets.
        error: String,
    },
}

/// How far behind a replica may be and still take checkouts
/// (`postgres.replicas.max_lag`, `max_lag_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub max_lag: Duration,
    pub max_bytes: Option<u64>,
}

/// Why a replica takes no checkouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unroutable<'a> {
    NotChecked,
    /// Its check failed: why.
    Down(&'a str),
    /// Out of recovery: a primary.
    Primary,
    /// Nothing replayed yet and not caught up.
    LagUnknown,
    Behind {
        lag: Duration,
        max: Duration,
    },
    BytesBehind {
        bytes: u64,
        max: u64,
    },
}

impl std::fmt::Display for Unroutable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unroutable::NotChecked => f.write_str("not checked yet"),
            Unroutable::Down(error) => f.write_str(error),
            Unroutable::Primary => f.write_str(
                "not in recovery: a primary (a promoted standby, or the current leader), which replica() does not read from",
            ),
            Unroutable::LagUnknown => f.write_str(
                "replication lag unknown: nothing replayed yet and not caught up",
            ),
            Unroutable::Behind { lag, max } => write!(
                f,
                "{:.1} s behind, over postgres.replicas.max_lag ({max:?})",
                lag.as_secs_f64()
            ),
            Unroutable::BytesBehind { bytes, max } => write!(
                f,
                "{bytes} WAL bytes behind the primary, over postgres.replicas.max_lag_bytes ({max})"
            ),
        }
    }
}

impl Observation {
    /// Why checkouts may not go to this replica, or `None` when they may:
    /// a standby (in recovery, as libpq's `target_session_attrs=standby`
    /// means it) whose lag is known and within the limits. A server out of
    /// recovery is a primary (a promoted standby, or the leader among a
    /// cluster's members listed as replicas) and gets no replica reads.
    pub fn unroutable(&self, limits: Limits) -> Option<Unroutable<'_>> {
        match self {
            Observation::Unknown => Some(Unroutable::NotChecked),
            Observation::Failed { error, .. } => Some(Unroutable::Down(error)),
            Observation::Answered {
                in_recovery: false, ..
            } => Some(Unroutable::Primary),
            Observation::Answered { lag: None, .. } => Some(Unroutable::LagUnknown),
            Observation::Answered { lag: Some(lag), .. } if *lag > limits.max_lag => {
                Some(Unroutable::Behind {
                    lag: *lag,
                    max: limits.max_lag,
                })
            }
            Observation::Answered {
                bytes_behind: Some(bytes),
                ..
            } => limits
                .max_bytes
                .filter(|max| bytes > max)
                .map(|max| Unroutable::BytesBehind { bytes: *bytes, max }),
            Observation::Answered { .. } => None,
        }
    }

    /// Whether checkouts may go to this replica.
    pub fn is_routable(&self, limits: Limits) -> bool {
        self.unroutable(limits).is_none()
    }

    /// When it was made.
    pub fn at(&self) -> Option<Instant> {
        match self {
            Observation::Unknown => None,
            Observation::Answered { at, .. } | Observation::Failed { at, .. } => Some(*at),
        }
    }
}

/// Checks one replica within `timeout`.
pub(crate) async fn check(pool: &PostgresPool, timeout: Duration) -> Observation {
    let started = Instant::now();
    let outcome = pool
        .first_row_within(timeout, "checking a replica", REPLICA_STATE)
        .await;
    let at = Instant::now();
    match outcome {
        Some(Ok(row)) => {
            let mut columns = row.into_iter();
            let in_recovery = columns.next().flatten().as_deref() != Some("false");
            let lag = columns
                .next()
                .flatten()
                .and_then(|seconds| seconds.parse::<f64>().ok())
                .filter(|seconds| seconds.is_finite())
                // A replica's clock a little ahead of the primary's makes
                // the difference negative: it is caught up.
                .map(|seconds| Duration::from_secs_f64(seconds.max(0.0)));
            let replayed = columns.next().flatten().as_deref().and_then(parse_lsn);
            Observation::Answered {
                at,
                latency: at - started,
                in_recovery,
                lag,
                replayed,
                bytes_behind: None,
            }
        }
        Some(Err(error)) => {
            let waited = matches!(error, Error::PoolTimeout { .. });
            let error = scrub(&error.to_string(), pool.secrets());
            let error = match waited {
                true => format!(
                    "no connection within postgres.replicas.check_timeout ({timeout:?}): {error}"
                ),
                false => error,
            };
            Observation::Failed { at, error }
        }
        None => Observation::Failed {
            at,
            error: format!("no answer within postgres.replicas.check_timeout ({timeout:?})"),
        },
    }
}

/// The primary's WAL position, or `None` when it does not answer within
/// `timeout` (replicas are still checked and routed by time lag).
pub(crate) async fn primary_position(primary: &PostgresPool, timeout: Duration) -> Option<u64> {
    let row = primary
        .first_row_within(
            timeout,
            "reading the primary's WAL position",
            PRIMARY_POSITION,
        )
        .await?
        .ok()?;
    row.into_iter()
        .next()
        .flatten()
        .as_deref()
        .and_then(parse_lsn)
}

/// A `pg_lsn` in its text form (`16/B374D848`: two hexadecimal halves) as
/// a byte position.
fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    let high = u32::from_str_radix(high, 16).ok()?;
    let low = u32::from_str_radix(low, 16).ok()?;
    Some((u64::from(high) << 32) | u64::from(low))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_is_a_byte_position() {
        assert_eq!(parse_lsn("0/3000148"), Some(0x0300_0148));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert_eq!(parse_lsn("nonsense"), None);
        assert_eq!(parse_lsn("1/"), None);
    }

    #[test]
    fn only_a_known_lag_within_the_limit_is_routable() {
        let answered = |lag| Observation::Answered {
            at: Instant::now(),
            latency: Duration::ZERO,
            in_recovery: true,
            lag,
            replayed: None,
            bytes_behind: None,
        };
        let max_lag = Duration::from_secs(10);
        let limit = Limits {
            max_lag,
            max_bytes: None,
        };
        assert!(answered(Some(Duration::from_secs(3))).is_routable(limit));
        assert!(answered(Some(max_lag)).is_routable(limit));
        assert!(!answered(Some(Duration::from_secs(11))).is_routable(limit));
        assert!(!answered(None).is_routable(limit));
        let bytes = |behind| Observation::Answered {
            at: Instant::now(),
            latency: Duration::ZERO,
            in_recovery: true,
            lag: Some(Duration::ZERO),
            replayed: Some(0),
            bytes_behind: behind,
        };
        let byte_limit = Limits {
            max_lag,
            max_bytes: Some(1000),
        };
        assert!(bytes(Some(1000)).is_routable(byte_limit));
        assert!(!bytes(Some(1001)).is_routable(byte_limit));
        assert!(bytes(Some(1001)).is_routable(limit));
        // The primary did not answer: the bytes are unknown, time decides.
        assert!(bytes(None).is_routable(byte_limit));
        let promoted = Observation::Answered {
            at: Instant::now(),
            latency: Duration::ZERO,
            in_recovery: false,
            lag: Some(Duration::ZERO),
            replayed: None,
            bytes_behind: None,
        };
        assert!(!promoted.is_routable(limit));
        assert!(!Observation::Unknown.is_routable(limit));
        let failed = Observation::Failed {
            at: Instant::now(),
            error: "refused".into(),
        };
        assert!(!failed.is_routable(limit));
    }
}
