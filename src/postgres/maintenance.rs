//! Keeping the pool healthy between checkouts: closing broken, expired and
//! surplus idle connections, and topping idle connections up to `min_idle`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use deadpool::managed::{Object, Pool, Timeouts, WeakPool};
use futures_util::future::join_all;
use tokio::task::JoinHandle;

use super::recycler::{PgManager, idle_for};
use super::shared::Shared;
use crate::metrics::{self, CloseReason, PoolLabel};

/// Closes idle connections that are broken, past their lifetime, or idle
/// past `idle_timeout` while more than `min_idle` are idle. Connections in
/// use are not in the idle queue, so they are never closed here.
pub(crate) fn reap(pool: &Pool<PgManager>, shared: &Shared) {
    let now = Instant::now();
    let (mut broken, mut expired) = (0u64, 0u64);
    let removed = pool.retain(|conn, _| {
        if conn.client.is_closed() {
            broken += 1;
            false
        } else if conn.is_expired(now) {
            expired += 1;
            false
        } else {
            true
        }
    });
    drop(removed.removed);
    shared.closed(CloseReason::Broken, broken);
    shared.closed(CloseReason::Lifetime, expired);

    let Some(idle_timeout) = shared.settings.idle_timeout else {
        return;
    };
    let mut surplus = removed.retained.saturating_sub(shared.settings.min_idle);
    if surplus == 0 {
        return;
    }
    let mut idle = 0u64;
    let removed = pool.retain(|conn, _| {
        if surplus > 0 && idle_for(conn, now) >= idle_timeout {
            surplus -= 1;
            idle += 1;
            false
        } else {
            true
        }
    });
    drop(removed.removed);
    shared.closed(CloseReason::Idle, idle);
    if idle + broken + expired > 0 {
        tracing::debug!(target: "dbmanager::postgres", broken, expired, idle, "reaped connections");
    }
}

/// Opens connections, all at once, until `target` are idle (or the pool is
/// full). Returns how many were opened.
///
/// deadpool opens a connection only for a checkout that finds none idle, so
/// the idle ones are taken first; they go back as soon as every new
/// checkout has started its connect, not after the connects finish, so
/// callers are kept from them for no I/O at all.
pub(crate) async fn fill(pool: &Pool<PgManager>, shared: &Shared, target: usize) -> usize {
    let status = pool.status();
    let in_use = shared.checked_out.load(Ordering::Acquire);
    let idle = status.size.saturating_sub(in_use);
    let room = status.max_size.saturating_sub(status.size);
    let missing = target.saturating_sub(idle).min(room);
    if missing == 0 {
        return 0;
    }
    let base = pool.timeouts();
    let timeouts = Timeouts {
        wait: Some(Duration::ZERO),
        ..base
    };
    // The idle connections are held while the missing ones open, so each
    // checkout below opens a connection instead of taking an idle one. A
    // connection just returned may not be ready at the first poll (the
    // reuse policy waits for its task to settle, within the recycle
    // timeout): awaited, not skipped, or the warm-up would take it below
    // and open one connection too few.
    let mut held = Vec::with_capacity(idle);
    for _ in 0..idle {
        match pool.timeout_get(&timeouts).await {
            Ok(object) => held.push(object),
            Err(_) => break,
        }
    }
    let mut opening = std::pin::pin!(join_all((0..missing).map(|_| pool.timeout_get(&timeouts))));
    // One poll takes each checkout past its permit and the empty idle list
    // into its connect.
    std::future::poll_fn(|cx| {
        let _ = opening.as_mut().poll(cx);
        Poll::Ready(())
    })
    .await;
    drop(held);
    let results = opening.await;
    let mut opened = 0;
    let mut failed = None;
    let mut timed_out = 0usize;
    let mut objects: Vec<Object<PgManager>> = Vec::with_capacity(results.len());
    for result in results {
        match result {
            Ok(object) => {
                if Object::metrics(&object).recycle_count == 0 {
                    opened += 1;
                }
                objects.push(object);
            }
            // A connect slower than its bound: counted below with the
            // failures, so a warm-up that came up short says so.
            Err(deadpool::managed::PoolError::Timeout(_)) => timed_out += 1,
            Err(e) => failed = Some(e),
        }
    }
    drop(objects);
    if let Some(error) = failed {
        tracing::warn!(target: "dbmanager::postgres", error = %error, opened, timed_out, "could not open every connection for min_idle");
    } else if timed_out > 0 {
        tracing::warn!(target: "dbmanager::postgres", opened, timed_out, "could not open every connection for min_idle: connects timed out (the maintenance task opens the rest)");
    }
    opened
}

/// Samples the pool into the gauges.
pub(crate) fn record_gauges(label: PoolLabel, status: &crate::pool_status::PoolStatus) {
    metrics::pool_gauges(label, status);
}

/// Starts the maintenance task. It holds the pool weakly, so a pool dropped
/// without a shutdown still ends it; shutdown aborts it explicitly.
pub(crate) fn spawn(pool: WeakPool<PgManager>, shared: Arc<Shared>) -> JoinHandle<()> {
    let interval = shared.settings.maintenance_interval;
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            if shared.is_draining() {
                break;
            }
            let Some(pool) = pool.upgrade() else { break };
            reap(&pool, &shared);
            fill(&pool, &shared, shared.settings.min_idle).await;
            record_gauges(shared.label, &super::pool::status_of(&pool, &shared));
        }
    })
}
