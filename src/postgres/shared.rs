//! State shared by the pool handle, its connections and its maintenance
//! task: drain flags, counters and the forced-close signal.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::AbortHandle;

use super::hooks::Hooks;
use crate::config::{PostgresPoolConfig, StatementCache};
use crate::metrics::{self, CloseReason, PoolLabel};
use crate::spans::Peer;

/// Counters of a pool's life, readable without locks.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub created: AtomicU64,
    pub closed_lifetime: AtomicU64,
    pub closed_idle: AtomicU64,
    pub closed_broken: AtomicU64,
    pub closed_excess: AtomicU64,
    pub closed_hook: AtomicU64,
    pub closed_discarded: AtomicU64,
    pub closed_abandoned: AtomicU64,
    pub closed_shutdown: AtomicU64,
    pub abandoned_cancelled: AtomicU64,
    pub rolled_back: AtomicU64,
    pub acquire_timeouts: AtomicU64,
    pub leaks: AtomicU64,
}

pub(crate) struct Shared {
    /// The pool's name in metrics and health (`primary`, `replica-1`).
    pub label: PoolLabel,
    pub settings: PostgresPoolConfig,
    /// `postgres.statement_cache`: whether caches are emptied on return.
    pub statement_cache: StatementCache,
    pub hooks: Hooks,
    /// Credential-free `user@host:port/db`, for logs and errors.
    pub target: String,
    /// The database name.
    pub database: String,
    /// Secrets to scrub from server messages.
    pub secrets: Vec<String>,
    /// The URL asks for a writable server (`target_session_attrs=read-write`).
    pub require_writable: bool,
    /// The database and server its spans name (`db.namespace`, ...).
    pub peer: Peer,
    /// `postgres.trace_query_text`.
    pub trace_query_text: bool,
    /// Set when shutdown begins: no new checkouts.
    pub draining: AtomicBool,
    /// Connections checked out by callers right now.
    pub checked_out: AtomicUsize,
    /// Notified when a checked-out connection comes back during a drain.
    pub returned: Notify,
    /// Connection tasks alive (one per open connection).
    pub live_connections: AtomicUsize,
    /// Notified when a connection task ends.
    pub connection_ended: Notify,
    /// Set when a forced close (after the grace period) began: a connection
    /// task registered after it is ended at once.
    pub closing: AtomicBool,
    /// The open connections: their cancel requests, so a forced close can stop
    /// their queries on the server too (a backend busy in a query does not
    /// notice its client is gone), and their tasks, so it can end them
    /// (which drops the socket under whoever still holds the client).
    /// Aborting the task, rather than having it also wait for a close
    /// signal, keeps every wake-up of a busy connection task free of a
    /// second future to poll.
    pub live: Mutex<HashMap<u64, LiveEntry>>,
    next_connection_id: AtomicU64,
    pub counters: Counters,
}

/// Which server a pool reaches and how it is named, for [`Shared::new`].
pub(crate) struct Endpoint {
    pub label: PoolLabel,
    pub target: String,
    pub database: String,
    pub secrets: Vec<String>,
    pub require_writable: bool,
    pub peer: Peer,
    pub trace_query_text: bool,
}

impl Shared {
    pub fn new(
        endpoint: Endpoint,
        settings: PostgresPoolConfig,
        statement_cache: StatementCache,
        hooks: Hooks,
    ) -> Self {
        let Endpoint {
            label,
            target,
            database,
            secrets,
            require_writable,
            peer,
            trace_query_text,
        } = endpoint;
        Shared {
            label,
            settings,
            statement_cache,
            hooks,
            target,
            database,
            secrets,
            require_writable,
            peer,
            trace_query_text,
            draining: AtomicBool::new(false),
            checked_out: AtomicUsize::new(0),
            returned: Notify::new(),
            live_connections: AtomicUsize::new(0),
            connection_ended: Notify::new(),
            closing: AtomicBool::new(false),
            live: Mutex::new(HashMap::new()),
            next_connection_id: AtomicU64::new(0),
            counters: Counters::default(),
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn closed(&self, reason: CloseReason, count: u64) {
        if count == 0 {
            return;
        }
        let counter = match reason {
            CloseReason::Lifetime => &self.counters.closed_lifetime,
            CloseReason::Idle => &self.counters.closed_idle,
            CloseReason::Broken => &self.counters.closed_broken,
            CloseReason::Excess => &self.counters.closed_excess,
            CloseReason::Hook => &self.counters.closed_hook,
            CloseReason::Discarded => &self.counters.closed_discarded,
            CloseReason::Abandoned => &self.counters.closed_abandoned,
            CloseReason::Shutdown => &self.counters.closed_shutdown,
        };
        counter.fetch_add(count, Ordering::Relaxed);
        metrics::connections_closed(self.label, reason, count);
    }

    pub fn created(&self, took: Duration) {
        self.counters.created.fetch_add(1, Ordering::Relaxed);
        metrics::connection_created(self.label, Some(took));
    }

    /// A checked-out connection came back (or was discarded).
    pub fn checked_in(&self) {
        let before = self.checked_out.fetch_sub(1, Ordering::AcqRel);
        if before == 1 && self.is_draining() {
            self.returned.notify_waiters();
        }
    }
}

/// What a forced close needs of one open connection.
pub(crate) struct LiveEntry {
    pub cancel: super::open::Canceller,
    /// Set once the connection task is spawned.
    pub task: Option<AbortHandle>,
}

/// Counts a connection task as alive, and keeps its cancel token and task
/// handle, for as long as it exists.
pub(crate) struct LiveConnection {
    shared: std::sync::Arc<Shared>,
    id: u64,
}

impl LiveConnection {
    pub fn new(shared: std::sync::Arc<Shared>, cancel: super::open::Canceller) -> Self {
        let id = shared.next_connection_id.fetch_add(1, Ordering::Relaxed);
        shared
            .live
            .lock()
            .expect("live connections lock")
            .insert(id, LiveEntry { cancel, task: None });
        shared.live_connections.fetch_add(1, Ordering::AcqRel);
        LiveConnection { shared, id }
    }

    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Shared {
    /// Records the task of live connection `id`, ending it at once when a
    /// forced close has already begun.
    pub fn attach_task(&self, id: u64, task: AbortHandle) {
        let mut live = self.live.lock().expect("live connections lock");
        if self.closing.load(Ordering::Acquire) {
            task.abort();
        } else if let Some(entry) = live.get_mut(&id) {
            entry.task = Some(task);
        }
    }

    /// Ends every connection task (forced close).
    pub fn abort_all(&self) {
        let live = self.live.lock().expect("live connections lock");
        self.closing.store(true, Ordering::Release);
        for task in live.values().filter_map(|entry| entry.task.as_ref()) {
            task.abort();
        }
    }
}

impl Drop for LiveConnection {
    fn drop(&mut self) {
        self.shared
            .live
            .lock()
            .expect("live connections lock")
            .remove(&self.id);
        self.shared.live_connections.fetch_sub(1, Ordering::AcqRel);
        self.shared.connection_ended.notify_waiters();
    }
}
