//! What the multiplexed handle, its callers and its keeper task share: the
//! connections, the waiting callers and the shutdown flag.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::connection::MuxConnection;
use crate::config::PostgresMultiplexConfig;
use crate::metrics::{CloseReason, PoolLabel};
use crate::pool_status::{MultiplexStatus, PoolStatus};
use crate::postgres::connect::Driver;
use crate::postgres::shared::Shared;

pub(super) struct MuxState {
    pub settings: PostgresMultiplexConfig,
    pub driver: Driver,
    /// The pool's shared state, for its target, secrets and hooks.
    pub pool: Arc<Shared>,
    /// One entry per configured connection; `None` until it is open.
    /// Written only when a connection is opened or replaced.
    pub slots: RwLock<Vec<Option<Arc<MuxConnection>>>>,
    /// Callers waiting for room.
    pub waiting: AtomicUsize,
    /// Notified when room appears: a place given back, a connection opened
    /// or answering again, shutdown.
    pub room: Notify,
    /// Wakes the keeper: a connection closed, or the first caller arrived.
    pub wake: Arc<Notify>,
    /// Connection tasks alive.
    pub live: Arc<AtomicUsize>,
    /// Whether the keeper task was started (on first use, or by warm-up).
    pub started: AtomicBool,
    pub keeper: Mutex<Option<JoinHandle<()>>>,
    /// Set when shutdown begins: no new statements.
    pub draining: AtomicBool,
    /// Notified, while draining, whenever a statement ends.
    pub drained: Notify,
}

impl MuxState {
    pub fn new(settings: PostgresMultiplexConfig, driver: Driver, pool: Arc<Shared>) -> Self {
        let slots = vec![None; settings.connections];
        MuxState {
            settings,
            driver,
            pool,
            slots: RwLock::new(slots),
            waiting: AtomicUsize::new(0),
            room: Notify::new(),
            wake: Arc::new(Notify::new()),
            live: Arc::new(AtomicUsize::new(0)),
            started: AtomicBool::new(false),
            keeper: Mutex::new(None),
            draining: AtomicBool::new(false),
            drained: Notify::new(),
        }
    }

    /// Counts `count` connections closed for `reason`, in the metrics
    /// under the `multiplex` pool and in the pool's `stats()`.
    pub fn closed(&self, reason: CloseReason, count: u64) {
        if count == 0 {
            return;
        }
        let counters = &self.pool.counters;
        let counter = match reason {
            CloseReason::Lifetime => &counters.closed_lifetime,
            CloseReason::Shutdown => &counters.closed_shutdown,
            // Found closed when replaced: the only other reason here.
            _ => &counters.closed_broken,
        };
        counter.fetch_add(count, Ordering::Relaxed);
        crate::metrics::connections_closed(PoolLabel::MULTIPLEX, reason, count);
    }

    /// A caller gave up waiting for room, in the metrics and in the pool's
    /// `stats()`.
    pub fn acquire_timed_out(&self) {
        self.pool
            .counters
            .acquire_timeouts
            .fetch_add(1, Ordering::Relaxed);
        crate::metrics::acquire_timeout(PoolLabel::MULTIPLEX);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// The connections open now.
    pub fn open_connections(&self) -> Vec<Arc<MuxConnection>> {
        self.slots
            .read()
            .expect("multiplex slots lock")
            .iter()
            .flatten()
            .filter(|c| c.is_open())
            .cloned()
            .collect()
    }

    pub fn status(&self) -> MultiplexStatus {
        let open = self.open_connections();
        MultiplexStatus {
            connections: self.settings.connections,
            open: open.len(),
            max_in_flight: self.settings.max_in_flight,
            in_flight: open
                .iter()
                .map(|c| c.in_flight.load(Ordering::Relaxed))
                .sum(),
            stalled: open
                .iter()
                .filter(|c| c.stalled.load(Ordering::Relaxed))
                .count(),
            waiting: self.waiting.load(Ordering::Relaxed),
            statements: open.iter().map(|c| c.statements_cached()).sum(),
        }
    }

    /// The status in the pool's terms, for [`crate::Error::PoolTimeout`]:
    /// connections with statements in flight are in use.
    pub fn pool_status(&self) -> PoolStatus {
        let open = self.open_connections();
        let in_use = open
            .iter()
            .filter(|c| c.in_flight.load(Ordering::Relaxed) > 0)
            .count();
        PoolStatus {
            name: PoolLabel::MULTIPLEX.pool,
            max_size: self.settings.connections,
            open: open.len(),
            idle: open.len() - in_use,
            in_use,
            waiting: self.waiting.load(Ordering::Relaxed),
        }
    }
}
