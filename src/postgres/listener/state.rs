//! What a listener's handle, its connection task and the health report
//! share: the buffer, the channels, and counters.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::buffer::Buffer;
use super::event::ListenerEvent;
use crate::health::ListenerHealth;
use crate::metrics;

pub(super) struct State {
    buffer: Mutex<Buffer>,
    /// Notified (one stored permit) when an event is buffered or the
    /// listener ended; its one waiter is the consumer.
    pub ready: Notify,
    /// The channels wanted: listened on the connection, and again on every
    /// connection that replaces it.
    pub channels: Mutex<BTreeSet<String>>,
    pub connected: AtomicBool,
    /// The connection task ended (shutdown, or the handle was dropped).
    ended: AtomicBool,
    /// Set by shutdown; `stop` wakes the connection task.
    pub stopping: AtomicBool,
    pub stop: Notify,
    /// Nanoseconds from `born` to the last event buffered; 0 for none.
    last_event: AtomicU64,
    born: Instant,
    received: AtomicU64,
    dropped: AtomicU64,
    reconnects: AtomicU64,
}

impl State {
    pub fn new(buffer_size: usize) -> Self {
        State {
            buffer: Mutex::new(Buffer::new(buffer_size)),
            ready: Notify::new(),
            channels: Mutex::new(BTreeSet::new()),
            connected: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            stop: Notify::new(),
            last_event: AtomicU64::new(0),
            born: Instant::now(),
            received: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
        }
    }

    fn push(&self, event: ListenerEvent) {
        let dropped = self
            .buffer
            .lock()
            .expect("listener buffer lock")
            .push(event);
        if dropped {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::listener_dropped();
        }
        let since = self.born.elapsed().as_nanos().max(1);
        self.last_event
            .store(u64::try_from(since).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.ready.notify_one();
    }

    pub fn notification(&self, channel: &str, payload: &str, process_id: i32) {
        self.received.fetch_add(1, Ordering::Relaxed);
        metrics::listener_notification();
        self.push(ListenerEvent::Notification {
            channel: channel.to_string(),
            payload: payload.to_string(),
            process_id,
        });
    }

    /// Notifications received so far: progress on the socket.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    pub fn reconnected(&self, gap: Duration) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
        metrics::listener_reconnect();
        self.push(ListenerEvent::Reconnected { gap });
    }

    /// The next unread event, if one is buffered.
    pub fn pop(&self) -> Option<ListenerEvent> {
        self.buffer.lock().expect("listener buffer lock").pop()
    }

    pub fn end(&self) {
        self.connected.store(false, Ordering::Release);
        self.ended.store(true, Ordering::Release);
        self.ready.notify_one();
    }

    pub fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Asks the connection task to close and end.
    pub fn request_stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.stop.notify_one();
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    pub fn channels(&self) -> Vec<String> {
        self.channels
            .lock()
            .expect("listener channels lock")
            .iter()
            .cloned()
            .collect()
    }

    pub fn health(&self) -> ListenerHealth {
        let last = self.last_event.load(Ordering::Relaxed);
        let last_event_age_ms = (last > 0).then(|| {
            let at = self.born + Duration::from_nanos(last);
            at.elapsed().as_secs_f64() * 1000.0
        });
        ListenerHealth {
            connected: self.connected.load(Ordering::Acquire),
            channels: self.channels(),
            lag: self.buffer.lock().expect("listener buffer lock").len(),
            received: self.received.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            last_event_age_ms,
        }
    }
}
