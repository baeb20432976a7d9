//! Shutting the multiplexed handle down: no new statements, those in
//! flight get the grace period to be answered, then the connections close
//! (cancelling on the server what still runs).

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::state::MuxState;
use crate::clock::wait_until;
use crate::metrics::CloseReason;

/// How long cancel requests and closing sockets may take after the grace
/// period, as for the pool.
const CANCEL_LIMIT: Duration = Duration::from_secs(2);
const CLOSE_LIMIT: Duration = Duration::from_secs(5);

impl MuxState {
    fn in_flight(&self) -> usize {
        self.slots
            .read()
            .expect("multiplex slots lock")
            .iter()
            .flatten()
            .map(|c| c.in_flight.load(Ordering::Acquire))
            .sum()
    }

    /// Drains within `grace`; returns how many statements were still in
    /// flight when it ran out.
    pub async fn drain(&self, grace: Duration) -> usize {
        self.draining.store(true, Ordering::Release);
        // Waiting callers get `ShuttingDown` at once.
        self.room.notify_waiters();
        let keeper = self.keeper.lock().expect("keeper lock").take();
        if let Some(task) = keeper {
            task.abort();
            let _ = task.await;
        }
        let deadline = crate::clock::deadline_after(grace);
        wait_until(&self.drained, deadline, || self.in_flight() == 0).await;
        let forced = self.in_flight();
        let connections: Vec<_> = self
            .slots
            .write()
            .expect("multiplex slots lock")
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        self.closed(CloseReason::Shutdown, connections.len() as u64);
        if forced > 0 {
            tracing::warn!(target: "dbmanager::postgres", forced, "grace period over; cancelling statements still in flight on multiplexed connections and closing them");
            let busy: Vec<_> = connections
                .iter()
                .filter(|c| c.in_flight.load(Ordering::Acquire) > 0)
                .collect();
            // Everything on these connections is being ended: cancelling
            // the running statement can hit no caller that would live on.
            let cancels = futures_util::future::join_all(busy.iter().map(|c| c.cancel.cancel()));
            let _ = tokio::time::timeout(CANCEL_LIMIT, cancels).await;
            for conn in &connections {
                conn.abort();
            }
        }
        // Dropping the last handles closes the sockets (after the queue is
        // answered); wait briefly so the server sees the sessions end.
        drop(connections);
        let closed_by = crate::clock::deadline_after(CLOSE_LIMIT);
        wait_until(&self.wake, closed_by, || {
            self.live.load(Ordering::Acquire) == 0
        })
        .await;
        forced
    }
}
