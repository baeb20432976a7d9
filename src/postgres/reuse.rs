//! Makes a connection a caller let go of ready for the next one, by doing
//! what the protocol policy ([`super::protocol::decide`]) says until it
//! says `Ready`: wait for answers still due, cancel a statement its caller
//! abandoned, settle a failed COPY, roll back a transaction left open — or
//! close the connection. The return path (off the caller's way) and the
//! checkout path both run it, so a connection is judged by one rule.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::protocol::{Action, decide};
use super::recycler::PgConnection;
use crate::metrics::CloseReason;

/// Why a connection could not be made ready: it is to be closed, counted
/// under this reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotReusable {
    /// Its session is broken or ended, or a command to restore it failed.
    Broken,
    /// Its abandoned work did not end within the limit.
    TimedOut,
}

impl NotReusable {
    pub fn close_reason(self) -> CloseReason {
        match self {
            NotReusable::Broken => CloseReason::Broken,
            NotReusable::TimedOut => CloseReason::Abandoned,
        }
    }
}

/// Whether a connection can be handed out as it is, without waiting: its
/// task has written everything it was given and its session is clean.
pub(crate) fn is_ready_now(conn: &PgConnection) -> bool {
    conn.tap.is_quiet() && decide(&conn.tap.view(), false) == Action::Ready
}

/// Brings `conn` to a clean session within `limit`, or says why not.
pub(crate) async fn make_ready(conn: &PgConnection, limit: Duration) -> Result<(), NotReusable> {
    match tokio::time::timeout(limit, steps(conn)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(NotReusable::TimedOut),
    }
}

async fn steps(conn: &PgConnection) -> Result<(), NotReusable> {
    let tap = &conn.tap;
    let shared = &conn.shared;
    let mut cancelled = false;
    loop {
        // Whatever the last caller queued must be written before the
        // session tells the whole story (no round trip: the connection's
        // task only has to run).
        tap.wait_until(|tap| tap.is_quiet()).await;
        let view = tap.view();
        match decide(&view, cancelled) {
            Action::Ready => return Ok(()),
            Action::Close(why) => {
                tracing::debug!(target: "dbmanager::postgres", why, detail = tap.broken_reason(), "closing a returned connection");
                return Err(NotReusable::Broken);
            }
            Action::Wait => {
                let before = view;
                let began = Instant::now();
                tap.wait_until(|tap| !tap.is_quiet() || tap.view() != before)
                    .await;
                tracing::trace!(target: "dbmanager::postgres", waited_us = began.elapsed().as_micros() as u64, "answers still due arrived");
            }
            Action::Cancel => {
                tracing::info!(target: "dbmanager::postgres", "a connection came back with its statement still running (its caller stopped waiting); cancelling the statement");
                shared
                    .counters
                    .abandoned_cancelled
                    .fetch_add(1, Ordering::Relaxed);
                // Waits until the server has taken the request (the cancel
                // connection closed): a cancel cannot then reach a later
                // caller's statement, and PostgreSQL ignores one that finds
                // the backend idle.
                if let Err(e) = conn.canceller.cancel().await {
                    tracing::debug!(target: "dbmanager::postgres", error = %e, "the cancel request failed");
                }
                cancelled = true;
            }
            Action::Probe => {
                // After a failed COPY FROM STDIN: the empty query's answer
                // shows whether a stray ReadyForQuery came before it (the
                // session then breaks, and the connection is closed).
                if conn.client.simple_query("").await.is_err() {
                    return Err(NotReusable::Broken);
                }
            }
            Action::Rollback => {
                tracing::info!(target: "dbmanager::postgres", "a connection came back inside a transaction block; rolling it back before handing it out");
                if let Err(e) = conn.client.simple_query("ROLLBACK").await {
                    tracing::info!(target: "dbmanager::postgres", error = %e, "discarding a connection whose roll-back failed");
                    return Err(NotReusable::Broken);
                }
                shared.counters.rolled_back.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
