//! The migration lock: a PostgreSQL session-level advisory lock held on one
//! dedicated connection, which is closed on every path but success so the
//! server releases the lock (and rolls back whatever was open) even after
//! an error, a panic or a cancelled future.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use super::error::MigrateError;
use crate::error::{Error, Result};
use crate::postgres::{Canceller, PooledConnection};

/// The advisory lock key of a scope: the first 8 bytes of its SHA-256.
/// Advisory locks are per database, so the same key in two databases
/// does not collide.
pub(crate) fn lock_key(scope: &str) -> i64 {
    let digest = Sha256::digest(format!("dbmanager:{scope}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// How the server notices that the lock holder's client vanished without
/// closing its connection (a killed pod, a dead host): TCP keepalives and a
/// user timeout on the server's side of the lock session, and a check of
/// the client's socket every `interval` while a migration statement runs
/// (`client_connection_check_interval`, PostgreSQL 14 and later). The
/// server then ends the session, which releases the lock, within about
/// `idle + interval × retries` (60 s with the default `[postgres]`
/// keepalive settings), so waiting replicas are not held for the
/// operating system's two hours.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HolderCheck {
    idle: Duration,
    interval: Duration,
    retries: u32,
    user_timeout: Option<Duration>,
}

impl HolderCheck {
    /// The server-side twin of `[postgres]`'s client keepalive settings.
    pub fn from_config(config: &crate::config::PostgresConfig) -> Self {
        HolderCheck {
            idle: config.keepalives_idle,
            interval: config.keepalives_interval,
            retries: config.keepalives_retries,
            user_timeout: config.tcp_user_timeout,
        }
    }

    /// Sets it on the lock session. A server that lacks a setting (before
    /// PostgreSQL 14, or over a Unix socket where TCP settings mean
    /// nothing) keeps its default for that one.
    async fn apply(&self, client: &Client) {
        let seconds = |d: Duration| d.as_secs().max(1);
        let mut settings = vec![
            ("tcp_keepalives_idle", seconds(self.idle).to_string()),
            (
                "tcp_keepalives_interval",
                seconds(self.interval).to_string(),
            ),
            ("tcp_keepalives_count", self.retries.to_string()),
            (
                "client_connection_check_interval",
                self.interval.as_millis().max(1).to_string(),
            ),
        ];
        if let Some(timeout) = self.user_timeout {
            settings.push(("tcp_user_timeout", timeout.as_millis().max(1).to_string()));
        }
        for (name, value) in settings {
            if let Err(e) = client
                .query("SELECT set_config($1, $2, false)", &[&name, &value])
                .await
            {
                tracing::debug!(target: "dbmanager::migrate", setting = name, error = %e, "lock session setting not applied");
            }
        }
    }
}

/// The longest pause between two attempts to take the lock.
const MAX_POLL: Duration = Duration::from_millis(500);

/// Takes the advisory lock `key` on this session, waiting as long as
/// `timeout` allows (forever without one).
///
/// It polls `pg_try_advisory_lock` instead of blocking in
/// `pg_advisory_lock`: a session blocked in a statement holds a snapshot,
/// and `CREATE INDEX CONCURRENTLY` in the lock holder's migration would
/// wait for that snapshot while the waiter waits for the lock, a deadlock.
/// Between polls the waiting session is idle and holds nothing.
pub(crate) async fn wait_for_lock(
    client: &Client,
    key: i64,
    timeout: Option<Duration>,
    what: &'static str,
) -> Result<()> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(20);
    let mut holder = None;
    let mut announced = false;
    loop {
        let taken: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await
            .map_err(|e| Error::postgres("taking the migration lock", e))?
            .get(0);
        if taken {
            if announced {
                tracing::info!(
                    target: "dbmanager::migrate",
                    lock = what,
                    waited_ms = started.elapsed().as_millis() as u64,
                    "lock acquired"
                );
            }
            return Ok(());
        }
        if !announced {
            holder = lock_holder(client, key).await;
            tracing::info!(
                target: "dbmanager::migrate",
                lock = what,
                holder_pid = holder,
                "waiting for the lock, held by another session"
            );
            announced = true;
        }
        if let Some(limit) = timeout {
            let waited = started.elapsed();
            if waited >= limit {
                return Err(MigrateError::LockTimeout { waited, holder }.into());
            }
            pause = pause.min(limit - waited);
        }
        tokio::time::sleep(pause.mul_f64(0.75 + fastrand::f64() / 2.0)).await;
        pause = (pause * 2).min(MAX_POLL);
    }
}

/// The server process holding the advisory lock `key` in this database.
async fn lock_holder(client: &Client, key: i64) -> Option<i32> {
    // A bigint key is stored as classid (high half), objid (low half),
    // objsubid 1.
    let sql = "SELECT pid FROM pg_locks
               WHERE locktype = 'advisory' AND granted AND objsubid = 1
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                 AND classid = (($1::bigint >> 32) & 4294967295)::oid
                 AND objid = ($1::bigint & 4294967295)::oid
               LIMIT 1";
    client
        .query_opt(sql, &[&key])
        .await
        .ok()
        .flatten()
        .map(|row| row.get(0))
}

/// The held migration lock and the connection holding it.
///
/// - [`MigrationLock::release`] unlocks explicitly, then closes the
///   connection: migrations may change session state (`SET`, temporary
///   tables) that must not reach the pool's other users.
/// - [`MigrationLock::abandon`] (error paths) tries to unlock, then closes
///   the connection.
/// - Dropping it without either (a panic, a cancelled future) cancels the
///   statement in flight and closes the connection; the server then rolls
///   back the open transaction and releases the lock with the session.
pub(crate) struct MigrationLock {
    connection: Option<PooledConnection>,
    cancel: Option<Canceller>,
    key: i64,
}

impl MigrationLock {
    /// Takes the lock on `connection`. The guard exists before the first
    /// attempt, so a future dropped mid-wait cannot leave a lock behind.
    pub async fn acquire(
        connection: PooledConnection,
        key: i64,
        timeout: Option<Duration>,
        holder_check: HolderCheck,
    ) -> Result<MigrationLock> {
        let cancel = connection.canceller();
        let lock = MigrationLock {
            connection: Some(connection),
            cancel: Some(cancel),
            key,
        };
        // Before the lock is held: if this process vanishes while holding
        // it, the server notices and lets the next replica in.
        holder_check.apply(lock.client()).await;
        match wait_for_lock(lock.client(), key, timeout, "migration").await {
            Ok(()) => Ok(lock),
            Err(e) => {
                // Not taken (a timeout, a broken connection): nothing to
                // roll back or cancel, and nothing was interrupted.
                lock.abandon().await;
                Err(e)
            }
        }
    }

    /// The connection holding the lock.
    pub fn client(&self) -> &Client {
        self.connection
            .as_ref()
            .expect("the connection is present until the lock is released")
    }

    /// Unlocks, then closes the connection.
    pub async fn release(mut self) -> Result<()> {
        let Some(connection) = self.connection.take() else {
            return Ok(());
        };
        let unlocked = connection
            .query_one("SELECT pg_advisory_unlock($1)", &[&self.key])
            .await;
        connection.discard();
        match unlocked {
            Ok(_) => Ok(()),
            Err(e) => Err(Error::postgres("releasing the migration lock", e)),
        }
    }

    /// After an error: rolls back anything left open and unlocks, as far as
    /// the connection still allows within a few seconds, then closes it.
    pub async fn abandon(mut self) {
        let Some(connection) = self.connection.take() else {
            return;
        };
        let key = self.key;
        let cleanup = async {
            connection.batch_execute("ROLLBACK").await?;
            connection
                .query_one("SELECT pg_advisory_unlock($1)", &[&key])
                .await
        };
        if tokio::time::timeout(Duration::from_secs(2), cleanup)
            .await
            .map_or(true, |r| r.is_err())
        {
            tracing::debug!(target: "dbmanager::migrate", "could not unlock explicitly; closing the connection releases the lock");
        }
        connection.discard();
    }
}

impl Drop for MigrationLock {
    fn drop(&mut self) {
        let Some(connection) = self.connection.take() else {
            return;
        };
        tracing::warn!(
            target: "dbmanager::migrate",
            "migration interrupted (panic or cancellation): closing its connection so the server rolls back and releases the lock"
        );
        // A statement may be running: without a cancel request the server
        // would finish it before noticing the closed connection.
        if let (Some(cancel), Ok(runtime)) =
            (self.cancel.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(async move {
                let _ = cancel.cancel().await;
            });
        }
        connection.discard();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_stable_and_differ_by_scope() {
        assert_eq!(lock_key("a"), lock_key("a"));
        assert_ne!(lock_key("a"), lock_key("b"));
    }
}
