//! Test database names, and sweeping the leftovers of runs that were
//! killed before they could clean up.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use crate::admin::{Server, drop_database};
use crate::config::Config;
use crate::error::{Backend, Error, Result};

/// Test databases older than this are swept whatever their process.
const MAX_AGE: Duration = Duration::from_secs(6 * 60 * 60);
/// Automatic sweeps run at most this often per host.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10 * 60);
const TEST_PREFIX: &str = "dbm_test_";

/// What a sweep removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SweepReport {
    /// PostgreSQL test databases dropped.
    pub postgres: Vec<String>,
    /// MongoDB test databases dropped.
    pub mongodb: Vec<String>,
}

/// [`TestDatabase::sweep`] on a configuration already pointed at the
/// test server.
pub(super) async fn sweep_test_server(config: &Config) -> Result<SweepReport> {
    let url = config.postgres.url.clone().ok_or(Error::NotConfigured {
        backend: Backend::Postgres,
        hint: "TEST_DATABASE_URL or DATABASE_URL",
    })?;
    let server = Server::new(&config.postgres, &url)?;
    let admin = server
        .connect(&config.bootstrap.maintenance_database)
        .await?;
    let pattern = format!("{}%", TEST_PREFIX.replace('_', "\\_"));
    let rows = admin
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE $1",
            &[&pattern],
        )
        .await
        .map_err(|e| Error::postgres("listing test databases", e))?;
    let mut report = SweepReport::default();
    for row in rows {
        let name: String = row.get(0);
        if is_leftover(&name) {
            drop_database(&admin, &name, server.secrets()).await?;
            report.postgres.push(name);
        }
    }
    #[cfg(feature = "mongodb")]
    if config.mongodb.is_configured() {
        report.mongodb = sweep_mongo(&config.mongodb).await?;
    }
    if !report.postgres.is_empty() || !report.mongodb.is_empty() {
        tracing::info!(target: "dbmanager::testing", postgres = ?report.postgres, mongodb = ?report.mongodb, "swept leftover test databases");
    }
    Ok(report)
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// `dbm_test_<host>_<pid>_<unix seconds>_<n>`.
pub(super) fn new_database_name() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!(
        "{TEST_PREFIX}{}_{}_{now}_{}",
        host_tag(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Six hex digits naming this host and its process-id space, so a sweep
/// only judges processes it can see. The hostname alone is not enough:
/// containers started with the same `--hostname` (or sandboxes all called
/// `localhost`) each number their processes from 1, so their pids collide
/// and one's sweep would take another's live databases for leftovers.
fn host_tag() -> String {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .or_else(|| std::env::var("COMPUTERNAME").ok())
            .unwrap_or_default();
        // `pid:[4026531836]`: the pid namespace; the boot id tells two
        // machines (or two boots) with the same namespace number apart.
        let pid_namespace = std::fs::read_link("/proc/self/ns/pid")
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let identity = format!("{}\n{pid_namespace}\n{}", host.trim(), boot.trim());
        let digest = Sha256::digest(identity.as_bytes());
        digest[..3].iter().map(|b| format!("{b:02x}")).collect()
    })
    .clone()
}

/// Whether a test database name belongs to a run that is gone.
fn is_leftover(name: &str) -> bool {
    let Some(parts) = name.strip_prefix(TEST_PREFIX) else {
        return false;
    };
    let fields: Vec<&str> = parts.split('_').collect();
    let [host, pid, created, _n] = fields.as_slice() else {
        return false;
    };
    let (Ok(pid), Ok(created)) = (pid.parse::<u32>(), created.parse::<u64>()) else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    if now.saturating_sub(created) > MAX_AGE.as_secs() {
        return true;
    }
    *host == host_tag() && pid != std::process::id() && !process_alive(pid)
}

/// Whether a process runs on this host; `true` when that cannot be told
/// (no `/proc`), leaving the decision to the age limit.
fn process_alive(pid: u32) -> bool {
    if !std::path::Path::new("/proc/self").exists() {
        return true;
    }
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Sweeps at most once per process and per [`SWEEP_INTERVAL`] per host; a
/// failure is logged, never fails the test. `config` is already the test
/// configuration.
pub(super) async fn sweep_once(config: &Config) {
    static SWEPT: OnceCell<()> = OnceCell::const_new();
    SWEPT
        .get_or_init(|| async {
            let stamp: PathBuf =
                std::env::temp_dir().join(format!("dbmanager-test-sweep-{}", host_tag()));
            let recent = std::fs::metadata(&stamp)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age < SWEEP_INTERVAL);
            if recent {
                return;
            }
            let _ = std::fs::write(&stamp, b"");
            if let Err(e) = sweep_test_server(config).await {
                tracing::warn!(target: "dbmanager::testing", error = %e, "sweeping leftover test databases failed");
            }
        })
        .await;
}

#[cfg(feature = "mongodb")]
async fn sweep_mongo(config: &crate::config::MongoConfig) -> Result<Vec<String>> {
    let handle = crate::mongo::MongoHandle::with_parse(config).await?;
    let outcome = async {
        let mut dropped = Vec::new();
        let names = handle
            .client()
            .list_database_names()
            .await
            .map_err(|e| Error::mongo("listing test databases", e))?;
        for name in names.into_iter().filter(|n| is_leftover(n)) {
            handle
                .database_named(&name)
                .drop()
                .await
                .map_err(|e| Error::mongo("dropping a test database", e))?;
            dropped.push(name);
        }
        Ok(dropped)
    }
    .await;
    handle.client().clone().shutdown().immediate(true).await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_host_pid_and_time_and_only_dead_or_old_ones_are_leftovers() {
        let name = new_database_name();
        assert!(name.starts_with(TEST_PREFIX), "{name}");
        assert!(name.len() <= 63, "{name}");
        assert!(!is_leftover(&name), "our own database is not a leftover");
        let host = host_tag();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        // A pid above the kernel's pid_max cannot be running.
        assert!(is_leftover(&format!(
            "{TEST_PREFIX}{host}_99999999_{now}_0"
        )));
        // Another host's young database is kept; an old one is not.
        assert!(!is_leftover(&format!(
            "{TEST_PREFIX}ffffff_99999999_{now}_0"
        )));
        let old = now - MAX_AGE.as_secs() - 60;
        assert!(is_leftover(&format!("{TEST_PREFIX}ffffff_1_{old}_0")));
        assert!(!is_leftover("dbm_test_not_ours"));
        assert!(!is_leftover("app"));
    }
}
