//! A bound for silence on a live connection (`postgres.silence_timeout`).
//!
//! A server process that freezes (SIGSTOP, a stuck storage layer), or a
//! proxy that stops forwarding while it keeps TCP alive, leaves a request
//! unanswered forever: the kernel still acknowledges, so neither
//! `tcp_user_timeout` nor keepalives fire. A statement that runs for
//! minutes is silent too, so silence alone proves nothing.
//!
//! Each connection has a watchdog. When the server has owed an answer (the
//! session model knows what is owed, [`super::protocol`]) and sent no byte
//! for the bound, the watchdog asks the server over another connection,
//! opened at the same address by the pool's own connect path within the
//! connect timeout, what the connection's backend is doing
//! (`pg_stat_activity`):
//!
//! - `active`: it is running the request; the statement is legitimate.
//!   Ask again after another period.
//! - `idle` or `idle in transaction`, or no such backend: the request never
//!   reached it, or its answer was lost on the way (a frozen backend, a
//!   proxy that stopped forwarding). Close the connection.
//! - the check cannot connect or get an answer within its bound (the whole
//!   server frozen, a proxy stalled both ways): close the connection.
//! - anything else (the server refused the check, a pooler in between whose
//!   process ids are not the server's): inconclusive; the server answers,
//!   so ask again after another period.
//!
//! Closing hands the caller waiting for the answer an error naming the
//! bound and the setting (SQLSTATE 08006, transient) through the byte tap
//! ([`super::wire_tap::Tap::close_for_silence`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::task::AbortHandle;
use tokio_postgres::SimpleQueryMessage;
use tokio_postgres::config::TargetSessionAttrs;

use super::connect::Driver;
use super::credentials::secrets_of;
use super::open::{Canceller, open_beside, per_host_timeout};
use super::wire_tap::Tap;
use crate::error::{Error, FailureKind, SILENCE_ROUTINE};
use crate::metrics::{self, PoolLabel};

/// What a pool's watchdogs share: how to open the check's connection.
pub(crate) struct Watch {
    /// The pool's driver: the check connects like the pool does.
    pub driver: Driver,
    /// Credential-free `user@host:port/db`, for logs.
    pub target: String,
    /// Secrets to scrub from messages.
    pub secrets: Vec<String>,
    /// The pool, for the metric.
    pub label: PoolLabel,
}

impl Watch {
    /// The watchdog of one connection, or `None` when the bound is off
    /// (`postgres.silence_timeout = "0s"`). Dropping the guard ends it:
    /// the connection's task holds it.
    pub fn start(self: &Arc<Self>, tap: Arc<Tap>, canceller: Canceller) -> Option<WatchdogGuard> {
        let bound = self.driver.silence_timeout;
        if bound.is_zero() {
            return None;
        }
        let task = tokio::spawn(watchdog(self.clone(), tap, canceller, bound));
        Some(WatchdogGuard(task.abort_handle()))
    }
}

/// Ends a connection's watchdog when the connection's task ends.
pub(crate) struct WatchdogGuard(AbortHandle);

impl Drop for WatchdogGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the check over another connection found.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The backend is running a statement: legitimate silence.
    Working,
    /// The backend is not working on the request, or the server cannot be
    /// reached: why.
    Stuck(String),
    /// The check could not tell: why.
    Unknown(String),
}

/// Sleeps while the server owes nothing or has been silent for less than
/// `bound`; after that, checks; ends the connection when the check finds
/// it stuck.
async fn watchdog(watch: Arc<Watch>, tap: Arc<Tap>, canceller: Canceller, bound: Duration) {
    loop {
        let Some(since) = tap.silent_since() else {
            // Owing nothing: a request written from now on is silent for a
            // whole bound at the earliest one bound from now.
            tokio::time::sleep(bound).await;
            continue;
        };
        let silent = since.elapsed();
        if silent < bound {
            tokio::time::sleep(bound - silent).await;
            continue;
        }
        match check(&watch, &tap, &canceller).await {
            Verdict::Working => {
                tracing::debug!(target: "dbmanager::postgres", target_db = %watch.target, backend_pid = tap.backend_pid().unwrap_or(0), silent_ms = since.elapsed().as_millis() as u64, "a connection's server has been silent past postgres.silence_timeout; its backend is running a statement, so the connection is kept");
            }
            Verdict::Unknown(why) => {
                tracing::info!(target: "dbmanager::postgres", target_db = %watch.target, silent_ms = since.elapsed().as_millis() as u64, reason = %why, "a connection's server has been silent past postgres.silence_timeout; the check could not tell whether it is working, so the connection is kept");
            }
            Verdict::Stuck(why) => {
                // The server may have spoken while the check ran.
                if tap.silent_since() == Some(since) {
                    close(&watch, &tap, since.elapsed(), bound, &why);
                    return;
                }
            }
        }
        tokio::time::sleep(bound).await;
    }
}

/// Ends the connection: the caller waiting gets the error, the pool
/// replaces the connection.
fn close(watch: &Watch, tap: &Tap, silent: Duration, bound: Duration, why: &str) {
    let pid = tap.backend_pid().unwrap_or(0);
    tracing::warn!(target: "dbmanager::postgres", target_db = %watch.target, backend_pid = pid, silent_ms = silent.as_millis() as u64, bound_ms = bound.as_millis() as u64, reason = %why, "closing a connection whose server said nothing past postgres.silence_timeout while it owed an answer");
    metrics::silent_closed(watch.label);
    tap.close_for_silence(message(silent, bound, why));
}

/// The error the caller gets.
fn message(silent: Duration, bound: Duration, why: &str) -> String {
    format!(
        "the server sent nothing for {:.1}s while it owed an answer, past the silence bound \
         (postgres.silence_timeout = {}), and {why}; the connection was closed",
        silent.as_secs_f64(),
        humantime::format_duration(bound)
    )
}

/// `owed` answers made of an `ErrorResponse` (severity FATAL, SQLSTATE
/// 08006 `connection_failure`, routine [`SILENCE_ROUTINE`]) carrying
/// `message` and a `ReadyForQuery`.
pub(crate) fn silence_errors(message: &str, owed: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(message.len() + 32);
    for (field, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "08006"),
        (b'M', message),
        (b'R', SILENCE_ROUTINE),
    ] {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut one = vec![b'E'];
    one.extend_from_slice(
        &u32::try_from(body.len() + 4)
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    one.extend(body);
    one.extend_from_slice(&[b'Z', 0, 0, 0, 5, b'I']);
    one.repeat(owed)
}

/// Asks the server, over another connection to the same address, what
/// the silent connection's backend is doing.
async fn check(watch: &Watch, tap: &Tap, canceller: &Canceller) -> Verdict {
    let Some(pid) = tap.backend_pid() else {
        return Verdict::Unknown("the connection's backend process id is unknown".into());
    };
    let limit = per_host_timeout(&watch.driver.config);
    let connect = async {
        let mut driver = watch.driver.for_next_connection().await?;
        // The same server whatever its role now: the check only reads.
        driver.config.target_session_attrs(TargetSessionAttrs::Any);
        let secrets = secrets_of(&driver.config, &watch.secrets);
        open_beside(canceller, &driver, &watch.target, &secrets).await
    };
    // A safety net: the password provider and the attempt are bounded by
    // the connect timeout each.
    let opened = match tokio::time::timeout(limit.saturating_mul(2), connect).await {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) => return connect_failed(&e),
        Err(_) => {
            return Verdict::Stuck(format!(
                "a check over another connection could not connect within {}",
                humantime::format_duration(limit.saturating_mul(2))
            ));
        }
    };
    // The check's connection ends when its client is dropped; one to a
    // server that stopped answering is cut after its bound, also when this
    // watchdog is ended mid-check (its connection closed).
    let connection = opened.connection;
    tokio::spawn(async move {
        let _ = tokio::time::timeout(limit.saturating_mul(2), connection).await;
    });
    let sql = format!(
        "SELECT pg_backend_pid()::text, (a.pid IS NOT NULL)::text, a.state \
         FROM (VALUES (1)) AS one LEFT JOIN pg_stat_activity AS a ON a.pid = {pid}"
    );
    let answer = tokio::time::timeout(limit, opened.client.simple_query(&sql)).await;
    let own_pid = opened.tap.backend_pid();
    drop(opened.client);
    let messages = match answer {
        Ok(Ok(messages)) => messages,
        Ok(Err(e)) => {
            return Verdict::Unknown(format!("the check's query failed: {e}"));
        }
        Err(_) => {
            return Verdict::Stuck(format!(
                "a check over another connection got no answer within {}",
                humantime::format_duration(limit)
            ));
        }
    };
    let Some(row) = messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    }) else {
        return Verdict::Unknown("the check's query returned no row".into());
    };
    judge(
        pid,
        own_pid,
        row.get(0).and_then(|p| p.parse().ok()),
        row.get(1) == Some("true"),
        row.get(2),
    )
}

/// A failed connect: a server that cannot be reached (or does not answer
/// within the connect timeout) is stuck; one that answered with a refusal
/// (too many connections, starting up, credentials) is alive.
fn connect_failed(error: &Error) -> Verdict {
    match error {
        Error::Connect {
            kind: FailureKind::Timeout | FailureKind::Refused | FailureKind::Reset | FailureKind::Io,
            code: None,
            ..
        } => Verdict::Stuck(format!(
            "a check over another connection could not reach the server ({error})"
        )),
        _ => Verdict::Unknown(format!("the check could not connect: {error}")),
    }
}

/// The verdict from the check's row: the silent connection's backend
/// `pid`, the check's own backend process id as its start-up said
/// (`own_pid`) and as the server says (`server_pid`), whether the server
/// knows `pid` (`found`) and its state.
fn judge(
    pid: i32,
    own_pid: Option<i32>,
    server_pid: Option<i32>,
    found: bool,
    state: Option<&str>,
) -> Verdict {
    if own_pid.is_none() || own_pid != server_pid {
        // PgBouncer and the like hand out process ids of their own: the
        // server's view cannot be matched to the connection.
        return Verdict::Unknown(
            "a pooler sits between the client and the server (its process ids are not the server's)"
                .into(),
        );
    }
    if !found {
        return Verdict::Stuck(format!(
            "its backend (pid {pid}) no longer exists on the server"
        ));
    }
    match state {
        Some("active") => Verdict::Working,
        Some(state @ ("idle" | "idle in transaction" | "idle in transaction (aborted)")) => {
            Verdict::Stuck(format!(
                "its backend (pid {pid}) is `{state}` on the server, not working on the request \
                 (a frozen backend, or a proxy that stopped forwarding)"
            ))
        }
        Some(other) => Verdict::Unknown(format!("its backend (pid {pid}) is `{other}`")),
        None => Verdict::Unknown(format!("the server does not show the state of pid {pid}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_active_backend_is_working() {
        assert_eq!(
            judge(7, Some(9), Some(9), true, Some("active")),
            Verdict::Working
        );
    }

    #[test]
    fn an_idle_or_missing_backend_is_stuck() {
        for state in [
            "idle",
            "idle in transaction",
            "idle in transaction (aborted)",
        ] {
            let verdict = judge(7, Some(9), Some(9), true, Some(state));
            assert!(
                matches!(verdict, Verdict::Stuck(ref why) if why.contains("pid 7")),
                "{verdict:?}"
            );
        }
        assert!(matches!(
            judge(7, Some(9), Some(9), false, None),
            Verdict::Stuck(_)
        ));
    }

    #[test]
    fn a_pooler_in_between_is_inconclusive() {
        assert!(matches!(
            judge(7, Some(9), Some(12), false, None),
            Verdict::Unknown(_)
        ));
        assert!(matches!(
            judge(7, None, Some(12), true, Some("idle")),
            Verdict::Unknown(_)
        ));
    }

    #[test]
    fn the_message_names_the_setting_and_the_bound() {
        let text = message(
            Duration::from_millis(31_200),
            Duration::from_secs(30),
            "why",
        );
        assert!(text.contains("postgres.silence_timeout = 30s"), "{text}");
        assert!(text.contains("31.2s"), "{text}");
    }
}
