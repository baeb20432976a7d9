//! Opening and recycling PostgreSQL connections: the deadpool [`Manager`].
//!
//! Compared with deadpool-postgres' own manager it adds: the `on_connect`
//! hook, a per-connection expiry (max lifetime with jitter), verification
//! only after idling (`recycling = "auto"`), a forced-close signal for
//! shutdown, and counters for every connection opened and closed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use deadpool::managed::{Manager, Metrics, RecycleError, RecycleResult};
use deadpool_postgres::ClientWrapper;

use super::connect::Driver;
use super::credentials::secrets_of;
use super::open::{Canceller, Opened, open};
use super::shared::{LiveConnection, Shared};
use super::wire_tap::{Tap, TransactionStatus};
use crate::config::RecyclingMethod;
use crate::error::Error;
use crate::metrics::CloseReason;

/// What `RecyclingMethod::Clean` runs: resets session state but keeps
/// prepared statements, so the statement cache stays valid.
const CLEAN_SQL: &str = "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; \
                         SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES;";

/// The largest share of `max_lifetime` taken off a connection's life, so
/// connections opened together do not all expire together (HikariCP uses
/// the same 2.5 %).
const LIFETIME_JITTER: f64 = 0.025;

/// A pooled connection: the client with its statement cache, and when it
/// must be retired.
///
/// The pool holds it boxed ([`PgManager`]'s `Type`): deadpool moves its
/// objects on every checkout and return, and a pointer is cheaper to move
/// than the client (a few hundred bytes).
pub(crate) struct PgConnection {
    pub client: ClientWrapper,
    /// When the connection has lived its `max_lifetime`.
    pub expires_at: Option<Instant>,
    /// When it was last returned to the pool (or opened).
    pub last_released: Instant,
    /// When opening it began: a checkout that opened it waited from here.
    pub opening_began: Instant,
    /// What the wire tap saw: requests in flight, transaction status.
    pub tap: Arc<Tap>,
    /// Cancel requests for this connection's backend.
    pub canceller: Canceller,
    /// The pool's shared state, reached through the connection so that a
    /// checkout does not clone an `Arc` (two contended atomic operations).
    pub shared: Arc<Shared>,
}

impl std::fmt::Debug for PgConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConnection")
            .field("client", &self.client)
            .field("expires_at", &self.expires_at)
            .field("last_released", &self.last_released)
            .finish_non_exhaustive()
    }
}

impl PgConnection {
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }
}

pub(crate) struct PgManager {
    driver: Driver,
    shared: Arc<Shared>,
}

impl PgManager {
    pub fn new(driver: Driver, shared: Arc<Shared>) -> Self {
        PgManager { driver, shared }
    }

    fn expiry(&self, opened: Instant) -> Option<Instant> {
        self.shared.settings.max_lifetime.map(|lifetime| {
            let jitter = lifetime.mul_f64(LIFETIME_JITTER * fastrand::f64());
            opened + (lifetime - jitter)
        })
    }
}

impl Manager for PgManager {
    type Type = Box<PgConnection>;
    type Error = Error;

    async fn create(&self) -> Result<Box<PgConnection>, Error> {
        let started = Instant::now();
        // Boxed: the connect future is several kilobytes, and this future is
        // part of every checkout's future (deadpool's `get` may create), so
        // inline it would be copied on every checkout.
        let driver = self.driver.for_next_connection().await?;
        let opened = Box::pin(open(
            &driver,
            &self.shared.target,
            &secrets_of(&driver.config, &self.shared.secrets),
        ))
        .await
        .inspect_err(|e| crate::metrics::connect_failed(self.shared.label, e))?;
        let Opened {
            client,
            connection,
            tap,
            canceller,
        } = opened;
        let live = LiveConnection::new(self.shared.clone(), canceller.clone());
        let id = live.id();
        let task = tokio::spawn(async move {
            let _live = live;
            if let Err(e) = connection.await {
                tracing::debug!(target: "dbmanager::postgres", error = %e, "connection ended with an error");
            }
        });
        // A forced close at the end of a shutdown grace period aborts this
        // task: the socket is dropped under whoever still holds the client.
        self.shared.attach_task(id, task.abort_handle());
        let client = ClientWrapper::new(client, task);
        if let Some(hook) = &self.shared.hooks.on_connect
            && let Err(e) = hook.call(&client).await
        {
            return Err(Error::Hook {
                hook: "on_connect",
                reason: crate::config::scrub(&e.to_string(), &self.shared.secrets),
            });
        }
        let now = Instant::now();
        self.shared.created(now - started);
        tracing::debug!(target: "dbmanager::postgres", took_ms = (now - started).as_millis() as u64, "opened a connection");
        Ok(Box::new(PgConnection {
            client,
            expires_at: self.expiry(started),
            last_released: now,
            opening_began: started,
            tap,
            canceller,
            shared: self.shared.clone(),
        }))
    }

    /// deadpool's check on checkout: only whether the socket is closed,
    /// which costs nothing. The checks that need the time (max lifetime,
    /// `recycling = "auto"`) run in [`check_out`] against deadpool's
    /// checkout stamp, so a checkout reads no clock of its own; deadpool
    /// sets no timer around this (the pool's recycle timeout is `None`).
    async fn recycle(&self, conn: &mut Box<PgConnection>, _: &Metrics) -> RecycleResult<Error> {
        if conn.client.is_closed() {
            self.shared.closed(CloseReason::Broken, 1);
            return Err(RecycleError::message("connection closed"));
        }
        Ok(())
    }
}

/// What [`check_out`] decided about a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Checked {
    /// Hand it out; `verified` when a round trip proved it.
    Usable { verified: bool },
    /// Close it (counted) and take another.
    Discard,
    /// It did not answer its check within `recycle_timeout`: close it
    /// (counted); its peer may have vanished, and so may the others'.
    Unresponsive,
    /// The caller's wait ran out before it answered: close it (counted).
    OutOfTime,
}

/// The checks on a pooled connection that is being handed out again, at
/// `at` (deadpool's checkout stamp): past its max lifetime it is closed;
/// otherwise `recycling` decides whether a round trip (timed by
/// `recycle_timeout`, or the caller's remaining `budget` when shorter)
/// proves it first. Whatever the method, a connection the wire tap shows
/// busy or inside a transaction is dealt with first ([`restore`]). A
/// connection opened by this checkout is not checked.
pub(crate) async fn check_out(
    conn: &mut PgConnection,
    reused: bool,
    at: Instant,
    budget: Duration,
) -> Checked {
    if !reused {
        return Checked::Usable { verified: false };
    }
    let shared = &conn.shared;
    if conn.is_expired(at) {
        shared.closed(CloseReason::Lifetime, 1);
        return Checked::Discard;
    }
    let mut budget = budget;
    let tap = &conn.tap;
    if tap.in_flight() > 0
        || tap.ended()
        || tap.transaction_status() != TransactionStatus::Idle
        || tap.refused_write()
    {
        let began = Instant::now();
        if let Some(checked) = restore(conn, budget).await {
            return checked;
        }
        budget = budget.saturating_sub(began.elapsed());
    }
    let shared = &conn.shared;
    let settings = &shared.settings;
    let query = match &settings.recycling {
        RecyclingMethod::Fast => None,
        RecyclingMethod::Auto => {
            let idle = at.saturating_duration_since(conn.last_released);
            (idle >= settings.verify_after_idle).then_some("")
        }
        RecyclingMethod::Verified => Some(""),
        RecyclingMethod::Clean => Some(CLEAN_SQL),
        RecyclingMethod::Custom(sql) => Some(sql.as_str()),
    };
    let Some(sql) = query else {
        return Checked::Usable { verified: false };
    };
    // Boxed: kept out of the checkout future, which every checkout moves,
    // when no check runs.
    let check = Box::pin(conn.client.simple_query(sql));
    let limit = settings.recycle_timeout.min(budget);
    match tokio::time::timeout(limit, check).await {
        Ok(Ok(_)) => Checked::Usable { verified: true },
        Ok(Err(e)) => {
            tracing::info!(target: "dbmanager::postgres", error = %e, "discarding a connection that failed its check");
            shared.closed(CloseReason::Broken, 1);
            Checked::Discard
        }
        Err(_) => check_timed_out(shared, limit),
    }
}

/// A pooled connection that is not ready for a new caller: a request still
/// in flight (work handed back before it ended, normally settled on
/// return, see `connection.rs`), or a transaction block left open or
/// failed (a manual `BEGIN` never ended, an early return before `COMMIT`).
/// The first is closed, its statement cancelled; the second rolled back.
/// `None` when the connection is ready now.
async fn restore(conn: &mut PgConnection, budget: Duration) -> Option<Checked> {
    let shared = &conn.shared;
    let settings = &shared.settings;
    let limit = settings.recycle_timeout.min(budget);
    if conn.tap.in_flight() > 0 && (conn.tap.only_housekeeping_in_flight() || conn.tap.finishing())
    {
        // Answered in a moment (see `Tap::finishing`).
        if tokio::time::timeout(limit, conn.tap.settle())
            .await
            .is_err()
        {
            return Some(check_timed_out(shared, limit));
        }
    }
    if conn.tap.ended() {
        shared.closed(CloseReason::Broken, 1);
        return Some(Checked::Discard);
    }
    if conn.tap.in_flight() > 0 {
        shared.closed(CloseReason::Abandoned, 1);
        let canceller = conn.canceller.clone();
        tokio::spawn(async move { canceller.cancel().await });
        return Some(Checked::Discard);
    }
    if conn.tap.transaction_status() != TransactionStatus::Idle {
        tracing::info!(target: "dbmanager::postgres", "a connection came back inside a transaction block; rolling it back before handing it out");
        let rollback = Box::pin(conn.client.simple_query("ROLLBACK"));
        match tokio::time::timeout(limit, rollback).await {
            Ok(Ok(_)) => {
                shared.counters.rolled_back.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                tracing::info!(target: "dbmanager::postgres", error = %e, "discarding a connection whose roll-back failed");
                shared.closed(CloseReason::Broken, 1);
                return Some(Checked::Discard);
            }
            Err(_) => return Some(check_timed_out(shared, limit)),
        }
    }
    if conn.tap.refused_write() {
        conn.tap.clear_refused_write();
        if shared.require_writable {
            return still_writable(conn, limit).await;
        }
    }
    None
}

/// The server refused a write as read-only on a pool that asks for a
/// writable server (`target_session_attrs=read-write`): after a failover
/// the connection may be on a demoted primary, where every write would
/// fail for as long as the connection lives. One round trip tells (a
/// caller's own `READ ONLY` transaction also refuses writes); a read-only
/// server's connection is closed, and the next one opened finds the
/// writable host.
async fn still_writable(conn: &mut PgConnection, limit: Duration) -> Option<Checked> {
    let shared = &conn.shared;
    let check = Box::pin(conn.client.simple_query("SHOW transaction_read_only"));
    match tokio::time::timeout(limit, check).await {
        Ok(Ok(messages)) => {
            let read_only = messages.iter().any(|m| {
                matches!(m, tokio_postgres::SimpleQueryMessage::Row(row) if row.get(0) == Some("on"))
            });
            if !read_only {
                return None;
            }
            tracing::warn!(target: "dbmanager::postgres", "the server of a pooled connection is read-only now (a failover or switchover?); closing the connection");
            shared.closed(CloseReason::Broken, 1);
            Some(Checked::Discard)
        }
        Ok(Err(_)) => {
            shared.closed(CloseReason::Broken, 1);
            Some(Checked::Discard)
        }
        Err(_) => Some(check_timed_out(shared, limit)),
    }
}

/// A check that ran past `limit`: the caller's wait (when that was the
/// shorter) or `recycle_timeout`. The connection is counted closed.
fn check_timed_out(shared: &Shared, limit: Duration) -> Checked {
    shared.closed(CloseReason::Broken, 1);
    if limit < shared.settings.recycle_timeout {
        Checked::OutOfTime
    } else {
        tracing::warn!(target: "dbmanager::postgres", timeout_ms = shared.settings.recycle_timeout.as_millis() as u64, "discarding a connection whose check took longer than recycle_timeout");
        Checked::Unresponsive
    }
}

/// How long a connection has been idle, for reaping.
pub(crate) fn idle_for(conn: &PgConnection, now: Instant) -> Duration {
    now.saturating_duration_since(conn.last_released)
}
