//! Which connection a statement goes to, and waiting for room when every
//! connection has `max_in_flight` statements in flight.
//!
//! The hot path takes no lock but the read side of the connection list and
//! touches only atomics: a scan of the in-flight counts from a random
//! start, one compare-and-swap to claim a place, one decrement to give it
//! back. Callers wait on a [`Notify`] only when there is no room, bounded
//! by `wait_timeout`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::connection::MuxConnection;
use super::state::MuxState;
use crate::error::{Backend, Error, Result};
use crate::metrics;

/// A place in one connection's pipeline, held for one statement until the
/// server has answered it. Dropping it after [`InFlight::answered`] (or a
/// failure) gives the place back at once. Dropped before (its caller gave
/// up), the statement may still be in the pipeline: the place stays taken
/// until a `Sync` sent behind it is answered, so routing never sees a
/// connection still busy with abandoned work as free.
pub(super) struct InFlight {
    pub conn: Arc<MuxConnection>,
    state: Arc<MuxState>,
    /// Whether the statement is known to be over (answered or failed).
    over: bool,
}

impl InFlight {
    /// The statement was answered: the head of this connection's pipeline
    /// moved. A connection answering again is no longer stalled.
    pub fn answered(&mut self) {
        self.over = true;
        self.conn.answered();
        if self.conn.stalled.load(Ordering::Relaxed) {
            self.conn.stalled.store(false, Ordering::Relaxed);
            self.state.room.notify_waiters();
        }
    }

    /// The statement ended without an answer the pipeline moved on from
    /// (refused before sending, or the connection is gone).
    pub fn over(&mut self) {
        self.over = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.over
            && self.conn.is_open()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            // The caller gave up with its statement possibly still queued
            // or running: a `Sync` written now is answered only after it,
            // in order, and then the place is given back. No cancel
            // request: on a shared pipeline it could stop another caller's
            // statement (docs/decisions.md).
            let (conn, state) = (self.conn.clone(), self.state.clone());
            runtime.spawn(async move {
                if conn.client.check_connection().await.is_ok() {
                    conn.answered();
                }
                release(&conn, &state);
            });
            return;
        }
        release(&self.conn, &self.state);
    }
}

/// Gives a place back and wakes whoever waits for one.
fn release(conn: &MuxConnection, state: &MuxState) {
    // SeqCst pairs with the waiters' increment of `waiting` before they
    // look for room: either they see this place free, or this sees them.
    conn.in_flight.fetch_sub(1, Ordering::SeqCst);
    if state.waiting.load(Ordering::SeqCst) > 0 {
        state.room.notify_one();
    }
    if state.is_draining() {
        state.drained.notify_waiters();
    }
}

/// Counts a caller as waiting for as long as it waits.
struct Waiting<'a>(&'a MuxState);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl MuxState {
    /// A place on the connection with the fewest statements in flight,
    /// waiting up to `wait_timeout` for one. `vet` runs when no place is
    /// free at once, before the handle connects or waits: a statement it
    /// refuses costs no connection.
    ///
    /// # Errors
    ///
    /// [`Error::ShuttingDown`] once shutdown began; [`Error::PoolTimeout`]
    /// when no connection had room in time; `vet`'s error.
    pub async fn acquire(self: &Arc<Self>, vet: impl FnOnce() -> Result<()>) -> Result<InFlight> {
        if self.is_draining() {
            return Err(shutting_down());
        }
        if let Some(place) = self.try_route() {
            metrics::multiplex_waited(std::time::Duration::ZERO);
            return Ok(place);
        }
        vet()?;
        self.start();
        let started = Instant::now();
        let deadline = crate::clock::deadline_after(self.settings.wait_timeout);
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(self);
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.is_draining() {
                return Err(shutting_down());
            }
            if let Some(place) = self.try_route() {
                metrics::multiplex_waited(started.elapsed());
                return Ok(place);
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                let pool = self.pool_status();
                self.acquire_timed_out();
                tracing::warn!(target: "dbmanager::postgres", status = %self.status(), "timed out waiting for room on a multiplexed connection");
                return Err(Error::PoolTimeout {
                    backend: Backend::Postgres,
                    waited: started.elapsed(),
                    status: pool,
                });
            }
        }
    }

    /// Claims a place on the open, unstalled connection with the fewest
    /// statements in flight; on a stalled one only when every open
    /// connection is stalled (routing around them all would stop the
    /// handle). `None` when every open connection is full, or none is open.
    fn try_route(self: &Arc<Self>) -> Option<InFlight> {
        let max = self.settings.max_in_flight;
        let slots = self.slots.read().expect("multiplex slots lock");
        let n = slots.len();
        // A random start: equally loaded connections share the work
        // instead of the first taking it all.
        let start = fastrand::usize(..n);
        for _attempt in 0..3 {
            let mut best: Option<(&Arc<MuxConnection>, usize)> = None;
            let mut best_stalled: Option<(&Arc<MuxConnection>, usize)> = None;
            let mut any_unstalled = false;
            for i in 0..n {
                let Some(conn) = &slots[(start + i) % n] else {
                    continue;
                };
                if !conn.is_open() {
                    continue;
                }
                let stalled = conn.stalled.load(Ordering::Relaxed);
                any_unstalled |= !stalled;
                let in_flight = conn.in_flight.load(Ordering::Relaxed);
                if in_flight >= max {
                    continue;
                }
                let slot = if stalled {
                    &mut best_stalled
                } else {
                    &mut best
                };
                if slot.is_none_or(|(_, f)| in_flight < f) {
                    *slot = Some((conn, in_flight));
                }
            }
            let chosen = match (best, any_unstalled) {
                (Some((conn, _)), _) => conn,
                (None, false) => best_stalled?.0,
                (None, true) => return None,
            };
            let claimed = chosen
                .in_flight
                .fetch_update(Ordering::SeqCst, Ordering::Relaxed, |f| {
                    (f < max).then_some(f + 1)
                })
                .is_ok();
            if claimed {
                return Some(InFlight {
                    conn: chosen.clone(),
                    state: self.clone(),
                    over: false,
                });
            }
        }
        None
    }
}

fn shutting_down() -> Error {
    Error::ShuttingDown {
        backend: Backend::Postgres,
    }
}
