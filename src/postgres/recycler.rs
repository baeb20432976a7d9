//! Opening and recycling PostgreSQL connections: the deadpool [`Manager`].
//!
//! Compared with deadpool-postgres' own manager it adds: the `on_connect`
//! hook, a per-connection expiry (max lifetime with jitter), verification
//! only after idling (`recycling = "auto"`), a forced-close signal for
//! shutdown, and counters for every connection opened and closed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool::managed::{Manager, Metrics, RecycleError, RecycleResult};
use deadpool_postgres::ClientWrapper;

use super::connect::Driver;
use super::credentials::secrets_of;
use super::open::{Canceller, Opened, open};
use super::reuse::{self, NotReusable};
use super::shared::{LiveConnection, Shared};
use super::silence::Watch;
use super::wire_tap::{Tap, Watched};
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
    /// What the connections' silence watchdogs share.
    watch: Arc<Watch>,
}

impl PgManager {
    pub fn new(driver: Driver, shared: Arc<Shared>) -> Self {
        let watch = Arc::new(Watch {
            driver: driver.clone(),
            target: shared.target.clone(),
            secrets: shared.secrets.clone(),
            label: shared.label,
        });
        PgManager {
            driver,
            shared,
            watch,
        }
    }

    fn expiry(&self, opened: Instant) -> Option<Instant> {
        self.shared.settings.max_lifetime.map(|lifetime| {
            let jitter = lifetime.mul_f64(LIFETIME_JITTER * fastrand::f64());
            opened + (lifetime - jitter)
        })
    }

    /// Opens one pooled connection: the connect (credentials of the moment,
    /// every address in turn), its task under the tap's watch, its silence
    /// watchdog, then `on_connect`.
    async fn open_connection(&self) -> Result<Box<PgConnection>, Error> {
        let started = Instant::now();
        let driver = self.driver.for_next_connection().await?;
        let opened = open(
            &driver,
            &self.shared.target,
            &secrets_of(&driver.config, &self.shared.secrets),
        )
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
        let connection = Watched::new(connection, tap.clone());
        let watchdog = self.watch.start(tap.clone(), canceller.clone());
        let task = tokio::spawn(async move {
            let _live = live;
            let _watchdog = watchdog;
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
}

impl Manager for PgManager {
    type Type = Box<PgConnection>;
    type Error = Error;

    async fn create(&self) -> Result<Box<PgConnection>, Error> {
        // Boxed: opening a connection is a future of several kilobytes (the
        // connect, the TLS stream, the connection held across the
        // `on_connect` hook), and this future is part of every checkout's
        // future (deadpool's `get` may create): inline, every checkout would
        // carry and copy it. Only a connect pays for the allocation.
        Box::pin(self.open_connection()).await
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
    if !reuse::is_ready_now(conn) {
        // Normally settled on return (`connection.rs`); here when the
        // return could not wait (no runtime) or something came after it.
        let began = Instant::now();
        let limit = shared.settings.recycle_timeout.min(budget);
        // Boxed: a cancel request's connect and the statements that settle
        // a session are large futures only this rare path needs.
        match Box::pin(reuse::make_ready(conn, limit)).await {
            Ok(()) => {}
            Err(NotReusable::Broken) => {
                shared.closed(CloseReason::Broken, 1);
                return Checked::Discard;
            }
            Err(NotReusable::TimedOut) => return check_timed_out(shared, limit),
        }
        budget = budget.saturating_sub(began.elapsed());
    }
    if conn.tap.take_refused_write() && shared.require_writable {
        let limit = shared.settings.recycle_timeout.min(budget);
        if let Some(checked) = Box::pin(still_writable(conn, limit)).await {
            return checked;
        }
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
    // `clean` resets every session setting, `on_connect`'s too: the hook
    // runs again after the reset, so every caller sees the session the hook
    // made (docs/configuration.md).
    let reapply = matches!(settings.recycling, RecyclingMethod::Clean)
        .then_some(shared.hooks.on_connect.as_ref())
        .flatten();
    let check = Box::pin(async {
        conn.client
            .simple_query(sql)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(hook) = reapply {
            hook.call(&conn.client).await.map_err(|e| {
                format!(
                    "on_connect after the reset: {}",
                    crate::config::scrub(&e.to_string(), &shared.secrets)
                )
            })?;
        }
        Ok::<(), String>(())
    });
    let limit = settings.recycle_timeout.min(budget);
    match tokio::time::timeout(limit, check).await {
        Ok(Ok(())) => Checked::Usable { verified: true },
        Ok(Err(e)) => {
            tracing::info!(target: "dbmanager::postgres", error = %e, "discarding a connection that failed its check");
            shared.closed(CloseReason::Broken, 1);
            Checked::Discard
        }
        Err(_) => check_timed_out(shared, limit),
    }
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
