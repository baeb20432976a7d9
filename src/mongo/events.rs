//! Pool figures computed from the driver's connection-pool (CMAP) events:
//! the driver publishes events but no pool statistics of its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mongodb::event::EventHandler;
use mongodb::event::cmap::{CmapEvent, ConnectionCheckoutFailedReason, ConnectionClosedReason};
use tokio::sync::Notify;

use crate::metrics::{self, CloseReason, PoolLabel};

/// Counters fed by the event handler.
#[derive(Debug, Default)]
pub(crate) struct PoolEvents {
    pub open: AtomicI64,
    /// Connections checked out, by server and connection id, with when. The
    /// driver also reports a check-in for connections its background task
    /// adds to the pool, which were never checked out, so check-ins are
    /// matched against check-outs rather than counted blindly.
    checked_out: Mutex<HashMap<(String, u32), Instant>>,
    pub waiting: AtomicI64,
    pub created: AtomicU64,
    pub closed: AtomicU64,
    pub checkouts: AtomicU64,
    pub checkout_failures: AtomicU64,
    pub checkout_timeouts: AtomicU64,
    pub checkout_wait_total_us: AtomicU64,
    pub checkout_wait_max_us: AtomicU64,
    /// Sum and count of checkout waits since the last health probe.
    pub recent_wait_us: AtomicU64,
    pub recent_checkouts: AtomicU64,
    /// Notified on every check-in and close, for drain and warm-up.
    pub changed: Notify,
}

fn clamp(value: i64) -> usize {
    usize::try_from(value).unwrap_or(0)
}

impl PoolEvents {
    pub fn open(&self) -> usize {
        clamp(self.open.load(Ordering::Acquire))
    }

    pub fn in_use(&self) -> usize {
        self.checked_out.lock().expect("checked-out set lock").len()
    }

    /// Forgets a checked-out connection; `true` (and the hold time is
    /// recorded) when it was checked out.
    fn check_in(&self, address: String, id: u32) -> bool {
        let since = self
            .checked_out
            .lock()
            .expect("checked-out set lock")
            .remove(&(address, id));
        if let Some(since) = since {
            metrics::released(PoolLabel::MONGODB, since, Instant::now());
        }
        since.is_some()
    }

    pub fn waiting(&self) -> usize {
        clamp(self.waiting.load(Ordering::Acquire))
    }

    /// Mean checkout wait since the previous call, in milliseconds; `None`
    /// when nothing was checked out meanwhile.
    pub fn take_recent_wait_ms(&self) -> Option<f64> {
        let count = self.recent_checkouts.swap(0, Ordering::AcqRel);
        let total = self.recent_wait_us.swap(0, Ordering::AcqRel);
        (count > 0).then(|| total as f64 / count as f64 / 1000.0)
    }

    fn handle(&self, event: CmapEvent) {
        match event {
            CmapEvent::ConnectionCreated(_) => {
                self.open.fetch_add(1, Ordering::AcqRel);
                self.created.fetch_add(1, Ordering::Relaxed);
            }
            CmapEvent::ConnectionReady(e) => {
                metrics::connection_created(PoolLabel::MONGODB, Some(e.duration))
            }
            CmapEvent::ConnectionClosed(e) => {
                self.open.fetch_sub(1, Ordering::AcqRel);
                self.check_in(e.address.to_string(), e.connection_id);
                self.closed.fetch_add(1, Ordering::Relaxed);
                let reason = match e.reason {
                    ConnectionClosedReason::Idle => CloseReason::Idle,
                    ConnectionClosedReason::PoolClosed => CloseReason::Shutdown,
                    _ => CloseReason::Broken,
                };
                metrics::connections_closed(PoolLabel::MONGODB, reason, 1);
                self.changed.notify_waiters();
            }
            CmapEvent::ConnectionCheckoutStarted(_) => {
                self.waiting.fetch_add(1, Ordering::AcqRel);
            }
            CmapEvent::ConnectionCheckoutFailed(e) => {
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                self.checkout_failures.fetch_add(1, Ordering::Relaxed);
                if e.reason == ConnectionCheckoutFailedReason::Timeout {
                    self.checkout_timeouts.fetch_add(1, Ordering::Relaxed);
                    metrics::acquire_timeout(PoolLabel::MONGODB);
                }
            }
            CmapEvent::ConnectionCheckedOut(e) => {
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                self.checked_out
                    .lock()
                    .expect("checked-out set lock")
                    .insert((e.address.to_string(), e.connection_id), Instant::now());
                self.record_wait(e.duration);
            }
            CmapEvent::ConnectionCheckedIn(e)
                if self.check_in(e.address.to_string(), e.connection_id) =>
            {
                self.changed.notify_waiters();
            }
            _ => {}
        }
    }

    /// The client has shut down, and its pool with it: any connection still
    /// counted as open is gone. The driver does not always report the close
    /// of a connection it was still establishing when the pool closed, which
    /// would leave `open` above zero for good. Returns how many were
    /// counted closed here.
    pub fn closed_with_client(&self) -> usize {
        let left = clamp(self.open.swap(0, Ordering::AcqRel));
        self.checked_out
            .lock()
            .expect("checked-out set lock")
            .clear();
        if left > 0 {
            self.closed.fetch_add(left as u64, Ordering::Relaxed);
            metrics::connections_closed(PoolLabel::MONGODB, CloseReason::Shutdown, left as u64);
        }
        self.changed.notify_waiters();
        left
    }

    fn record_wait(&self, wait: Duration) {
        let us = u64::try_from(wait.as_micros()).unwrap_or(u64::MAX);
        self.checkouts.fetch_add(1, Ordering::Relaxed);
        self.checkout_wait_total_us.fetch_add(us, Ordering::Relaxed);
        self.checkout_wait_max_us.fetch_max(us, Ordering::Relaxed);
        self.recent_wait_us.fetch_add(us, Ordering::Relaxed);
        self.recent_checkouts.fetch_add(1, Ordering::Relaxed);
        metrics::acquired(PoolLabel::MONGODB, wait);
    }
}

/// The handler to install in the client options.
pub(crate) fn handler(events: Arc<PoolEvents>, max_size: usize) -> EventHandler<CmapEvent> {
    EventHandler::callback(move |event| {
        events.handle(event);
        // Computing the status takes a lock: only when there are gauges to
        // set (the driver sends three events per operation).
        #[cfg(feature = "metrics")]
        metrics::pool_gauges(PoolLabel::MONGODB, &status(&events, max_size));
        #[cfg(not(feature = "metrics"))]
        let _ = max_size;
    })
}

pub(crate) fn status(events: &PoolEvents, max_size: usize) -> crate::pool_status::PoolStatus {
    let open = events.open();
    let in_use = events.in_use().min(open);
    crate::pool_status::PoolStatus {
        name: PoolLabel::MONGODB.pool,
        max_size,
        open,
        idle: open - in_use,
        in_use,
        waiting: events.waiting(),
    }
}
