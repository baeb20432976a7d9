//! The keeper task of the multiplexed handle: opens its connections,
//! replaces dead and expired ones, watches for stalled pipelines and
//! samples the gauges.
//!
//! It runs from the first use of the handle (or from an eager warm-up)
//! until shutdown, and holds only a weak reference between rounds, so a
//! handle that is dropped takes its task with it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::connection::MuxConnection;
use super::state::MuxState;
use crate::error::Result;
use crate::metrics;

/// The first wait after a failed connect; it doubles up to
/// [`MAX_BACKOFF`] while connects keep failing.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl MuxState {
    /// Starts the keeper (once).
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) || self.is_draining() {
            return;
        }
        let task = tokio::spawn(keep(Arc::downgrade(self), self.wake.clone()));
        *self.keeper.lock().expect("keeper lock") = Some(task);
    }

    /// Opens a connection into the first empty slot (the eager build's
    /// proof, retried by the start-up policy).
    pub async fn open_first(&self) -> Result<()> {
        let conn = self.open().await?;
        let mut slots = self.slots.write().expect("multiplex slots lock");
        if let Some(slot) = slots.iter_mut().find(|s| s.is_none()) {
            *slot = Some(conn);
        }
        drop(slots);
        self.room.notify_waiters();
        Ok(())
    }

    async fn open(&self) -> Result<Arc<MuxConnection>> {
        MuxConnection::open(
            &self.driver,
            &self.pool,
            self.settings.max_lifetime,
            self.settings.statement_cache_capacity,
            self.wake.clone(),
            self.live.clone(),
        )
        .await
    }

    /// Fills empty slots and replaces closed and expired connections, one
    /// at a time; stops at the first failed connect, which is returned.
    async fn replenish(&self) -> Result<()> {
        let n = self.settings.connections;
        for i in 0..n {
            let now = Instant::now();
            let needed = match &self.slots.read().expect("multiplex slots lock")[i] {
                None => true,
                Some(conn) => !conn.is_open() || conn.is_expired(now),
            };
            if !needed || self.is_draining() {
                continue;
            }
            let fresh = self.open().await?;
            let old = self.slots.write().expect("multiplex slots lock")[i].replace(fresh);
            if let Some(old) = old {
                let reason = if old.is_open() {
                    metrics::CloseReason::Lifetime
                } else {
                    metrics::CloseReason::Broken
                };
                self.closed(reason, 1);
                // Statements still in flight on an expired connection are
                // answered; it closes when their callers let go of it.
            }
            self.room.notify_waiters();
        }
        Ok(())
    }

    /// Marks connections whose pipeline head has not moved for
    /// `stall_threshold`, and clears the mark of those that moved.
    /// `watch` keeps, per connection, the answered count last seen and
    /// since when it has not changed while work was in flight.
    fn watch_stalls(&self, watch: &mut HashMap<usize, (u64, Instant)>, now: Instant) {
        let threshold = self.settings.stall_threshold;
        let slots = self.slots.read().expect("multiplex slots lock");
        let mut freed = false;
        for (i, conn) in slots.iter().enumerate() {
            let Some(conn) = conn else {
                watch.remove(&i);
                continue;
            };
            let answered = conn.answered.load(Ordering::Relaxed);
            let busy = conn.in_flight.load(Ordering::Relaxed) > 0;
            let entry = watch.entry(i).or_insert((answered, now));
            if !busy || entry.0 != answered {
                *entry = (answered, now);
                freed |= conn.stalled.swap(false, Ordering::Relaxed);
            } else if now.duration_since(entry.1) >= threshold
                && !conn.stalled.swap(true, Ordering::Relaxed)
            {
                tracing::debug!(target: "dbmanager::postgres", slot = i, "a multiplexed connection's pipeline stalled behind a slow statement; routing new work elsewhere");
            }
        }
        drop(slots);
        if freed {
            self.room.notify_waiters();
        }
    }
}

async fn keep(state: Weak<MuxState>, wake: Arc<tokio::sync::Notify>) {
    let mut watch = HashMap::new();
    let mut backoff = FIRST_BACKOFF;
    let mut next_connect = Instant::now();
    loop {
        let Some(state) = state.upgrade() else {
            return;
        };
        if state.is_draining() {
            return;
        }
        // A quarter of the threshold: a stall is seen between 1 and 1.25
        // thresholds after the head stopped moving.
        let tick = (state.settings.stall_threshold / 4)
            .clamp(Duration::from_millis(5), Duration::from_secs(1));
        let now = Instant::now();
        if now >= next_connect {
            match state.replenish().await {
                Ok(()) => backoff = FIRST_BACKOFF,
                Err(e) => {
                    tracing::warn!(target: "dbmanager::postgres", error = %e, retry_in_ms = backoff.as_millis() as u64, "could not open a multiplexed connection");
                    next_connect = Instant::now() + backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        state.watch_stalls(&mut watch, Instant::now());
        metrics::multiplex_gauges(&state.status());
        drop(state);
        let _ = tokio::time::timeout(tick, wake.notified()).await;
    }
}
