//! The statements one multiplexed connection keeps prepared, by SQL text,
//! at most `postgres.multiplex.statement_cache_capacity` of them.
//!
//! Every call reads the cache, so a hit takes only the read side of a lock
//! and two atomics: the connection's use counter and the entry's stamp.
//! Least recently used means the smallest stamp; it is looked for by a
//! scan when a new text arrives at a full cache. That scan costs a few
//! microseconds per hundred entries, on a path that also pays a round trip
//! to prepare the text, and keeps hits free of any write.
//!
//! An evicted statement is closed on the server by tokio-postgres when its
//! last handle is dropped ([`Statement`]'s `Drop` sends `Close`): at once
//! when no caller is using it, else when the last such caller is done.
//! So the backend holds at most `capacity` of the cache's statements plus
//! those evicted while still in use, which `max_in_flight` bounds.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_postgres::Statement;

struct Entry {
    statement: Statement,
    /// The connection's use counter when this entry was last used.
    used: AtomicU64,
}

pub(super) struct StatementCache {
    capacity: usize,
    /// Counts uses on this connection: the clock of the stamps.
    uses: AtomicU64,
    entries: RwLock<HashMap<Box<str>, Entry>>,
}

impl StatementCache {
    /// An empty cache for at most `capacity` statements (at least 1: the
    /// configuration refuses 0).
    pub fn new(capacity: usize) -> Self {
        StatementCache {
            capacity: capacity.max(1),
            uses: AtomicU64::new(0),
            entries: RwLock::new(HashMap::new()),
        }
    }

    /// The statement prepared for `sql`, marked as just used.
    pub fn get(&self, sql: &str) -> Option<Statement> {
        let entries = self.entries.read().expect("statement cache lock");
        let entry = entries.get(sql)?;
        let now = self.uses.fetch_add(1, Ordering::Relaxed);
        entry.used.store(now, Ordering::Relaxed);
        Some(entry.statement.clone())
    }

    /// Keeps `statement` for `sql`, evicting the least recently used entry
    /// when the cache is full; returns the statement to run, which is the
    /// one already kept when another caller prepared the same text first
    /// (then `statement` is dropped, and so closed on the server).
    pub fn insert(&self, sql: &str, statement: Statement) -> Statement {
        let now = self.uses.fetch_add(1, Ordering::Relaxed);
        let mut entries = self.entries.write().expect("statement cache lock");
        if let Some(kept) = entries.get(sql) {
            kept.used.store(now, Ordering::Relaxed);
            return kept.statement.clone();
        }
        let mut evicted = None;
        if entries.len() >= self.capacity
            && let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, e)| e.used.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone())
        {
            evicted = entries.remove(&oldest);
        }
        entries.insert(
            sql.into(),
            Entry {
                statement: statement.clone(),
                used: AtomicU64::new(now),
            },
        );
        drop(entries);
        // Dropped outside the lock: this sends the `Close` when no caller
        // still holds the statement.
        drop(evicted);
        statement
    }

    /// Statements kept now.
    pub fn len(&self) -> usize {
        self.entries.read().expect("statement cache lock").len()
    }
}
