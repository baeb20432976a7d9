//! A transaction whose `COMMIT` went unanswered (the connection was lost
//! after it was sent): the transaction's id, read just before `COMMIT`,
//! is looked up with `txid_status` on another connection, within a bound,
//! so the caller learns whether it committed.

use std::panic::Location;
use std::time::Duration;

use tokio_postgres::SimpleQueryMessage;

use crate::error::describe_postgres;
use crate::postgres::pool::PostgresPool;

/// What the server says became of a transaction whose COMMIT went
/// unanswered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Resolved {
    Committed,
    Aborted,
    /// No transaction id was assigned: it wrote nothing.
    NoWrite,
}

impl PostgresPool {
    /// Asks the server, on another connection and within `bound`, what
    /// became of transaction `xid` whose COMMIT went unanswered. `Err`
    /// says why it could not tell.
    pub(super) async fn resolve_commit(
        &self,
        xid: Option<i64>,
        backend_pid: Option<i32>,
        bound: Duration,
        caller: &'static Location<'static>,
    ) -> std::result::Result<Resolved, String> {
        let Some(xid) = xid else {
            return Ok(Resolved::NoWrite);
        };
        let deadline = tokio::time::Instant::now() + bound;
        let within = |what: &'static str| {
            format!("the outcome could not be checked within {bound:?} ({what})")
        };
        let check = async {
            let connection = self
                .acquire(caller, Some(bound))
                .await
                .map_err(|e| format!("no connection for the check within {bound:?}: {e}"))?;
            let mut pause = Duration::from_millis(10);
            let mut terminated = false;
            loop {
                let status = connection
                    .simple_query(&format!("SELECT txid_status({xid})"))
                    .await
                    .map_err(|e| format!("txid_status failed: {}", describe_postgres(&e)))?;
                match first_text(&status).as_deref() {
                    Some("committed") => return Ok(Resolved::Committed),
                    Some("aborted") => return Ok(Resolved::Aborted),
                    Some("in progress") => {}
                    other => return Err(format!("txid_status answered {other:?}")),
                }
                // Still open on the server: its session has not seen the
                // connection go. If it sits idle in that transaction, the
                // COMMIT never arrived; ending the session makes the
                // outcome final (aborted). One that is running the COMMIT
                // is left to finish.
                if let (Some(pid), false) = (backend_pid, terminated) {
                    terminated = true;
                    let xid32 = xid.rem_euclid(1 << 32);
                    let _ = connection
                        .simple_query(&format!(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                             WHERE pid = {pid} AND state = 'idle in transaction' \
                             AND backend_xid::text = '{xid32}'"
                        ))
                        .await;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(250));
            }
        };
        match tokio::time::timeout_at(deadline, check).await {
            Ok(resolved) => resolved,
            Err(_) => Err(within(
                "the server still reports it in progress or did not answer",
            )),
        }
    }
}

impl Resolved {
    pub(super) fn as_label(self) -> &'static str {
        match self {
            Resolved::Committed => "committed",
            Resolved::Aborted => "aborted",
            Resolved::NoWrite => "no_write",
        }
    }
}

/// The first column of the first row of a simple query, as text.
fn first_text(messages: &[SimpleQueryMessage]) -> Option<String> {
    messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    })
}

/// The transaction id and backend pid read just before `COMMIT`.
pub(super) fn xid_and_pid(messages: &[SimpleQueryMessage]) -> (Option<i64>, Option<i32>) {
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some((
                row.get(0).and_then(|v| v.parse().ok()),
                row.get(1).and_then(|v| v.parse().ok()),
            )),
            _ => None,
        })
        .unwrap_or((None, None))
}
