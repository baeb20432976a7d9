//! Isolated databases for tests: each [`TestDatabase`] is a fresh
//! PostgreSQL database with the migrations applied, plus a fresh MongoDB
//! database when MongoDB is configured, both dropped at the end.
//!
//! ```no_run
//! # async fn demo() -> dbmanager::Result<()> {
//! use dbmanager::testing::TestDatabase;
//!
//! let migrations = dbmanager::embed_migrations!("$CARGO_MANIFEST_DIR/migrations")?;
//! let test_db = TestDatabase::new(&migrations).await?;   // TEST_DATABASE_URL / DATABASE_URL
//! let client = test_db.manager().postgres()?.get().await?;
//! client.execute("INSERT INTO users (email, name) VALUES ('a@b.c', 'A')", &[]).await?;
//! // Dropped (with the MongoDB database) when `test_db` goes out of scope,
//! // also if the test panics.
//! # Ok(()) }
//! ```
//!
//! # How
//!
//! - The migrations are applied once per server to a **template database**
//!   (`dbm_tpl_<hash>`), whose name carries a hash of the migrations,
//!   extensions and history table: a changed migration makes a new
//!   template. Several test processes starting at once (nextest runs each
//!   test in a process of its own) build it once: the builder holds an
//!   advisory lock on the maintenance database, and a template only counts
//!   once it is marked `IS_TEMPLATE`, so a half-built one left by a crash is
//!   rebuilt.
//! - Each test database is `CREATE DATABASE … TEMPLATE dbm_tpl_<hash>`,
//!   named `dbm_test_<host>_<pid>_<unix time>_<n>`.
//! - Dropping a `TestDatabase` runs `DROP DATABASE … WITH (FORCE)` (and drops
//!   the MongoDB database) on a thread with its own runtime, so it works in
//!   any test runtime and during a panic; [`TestDatabase::close`] does the
//!   same asynchronously.
//! - Leftovers of killed runs are swept: a database whose process is gone
//!   (same host) or that is older than six hours is dropped, at most every
//!   ten minutes per host, on the first `TestDatabase` of a process, or on
//!   demand with [`TestDatabase::sweep`].
//!
//! # Cost
//!
//! Measured with `cargo test --all-features --test testing create_and_drop
//! -- --nocapture` (20 rounds, medians) on a 2-core machine with a local
//! PostgreSQL 15 (`fsync=off`) and the three-table example schema: creating
//! a test database takes 21–56 ms (mostly the server copying the template)
//! and dropping it 10–19 ms, so 31–69 ms per test; with MongoDB (mongoeco)
//! 38–99 ms. The first test on a server also builds the template (95–185
//! ms). See `docs/migrations.md`.
//!
//! Old templates are not removed automatically (another crate sharing the
//! server may still use them); list them with
//! `SELECT datname FROM pg_database WHERE datname LIKE 'dbm\_tpl\_%'` and
//! drop them with `ALTER DATABASE … IS_TEMPLATE false; DROP DATABASE …`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use crate::config::Config;
use crate::error::{Backend, Error, Result};
use crate::manager::DatabaseManager;
use crate::migrate::Migrations;
use crate::migrate::admin::{
    DirectConnection, Server, admin_error, create_database, database_exists, drop_database,
    ensure_extension, quote_ident,
};
use crate::migrate::{lock_key, wait_for_lock};

/// Test databases older than this are swept whatever their process.
const MAX_AGE: Duration = Duration::from_secs(6 * 60 * 60);
/// Automatic sweeps run at most this often per host.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10 * 60);
const TEST_PREFIX: &str = "dbm_test_";
const TEMPLATE_PREFIX: &str = "dbm_tpl_";

/// A fresh PostgreSQL database (and MongoDB database, when configured)
/// with the migrations applied, for one test; dropped when this value is
/// dropped.
pub struct TestDatabase {
    manager: DatabaseManager,
    database: String,
    template: String,
    mongo_database: Option<String>,
    cleanup: Option<Cleanup>,
}

/// What a sweep removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SweepReport {
    /// PostgreSQL test databases dropped.
    pub postgres: Vec<String>,
    /// MongoDB test databases dropped.
    pub mongodb: Vec<String>,
}

/// Everything needed to drop the databases, without the test's runtime.
struct Cleanup {
    server: Server,
    maintenance: String,
    database: String,
    #[cfg(feature = "mongodb")]
    mongo: Option<crate::config::MongoConfig>,
}

impl TestDatabase {
    /// A test database on the test server of the loaded configuration
    /// ([`Config::load`], then [`Config::for_tests`]: `TEST_DATABASE_URL`,
    /// else `DATABASE_URL`).
    ///
    /// # Errors
    ///
    /// As [`TestDatabase::with_config`], and configuration errors.
    pub async fn new(migrations: &Migrations) -> Result<TestDatabase> {
        TestDatabase::with_config(&Config::load()?, migrations).await
    }

    /// A test database on the test server of `config` (its
    /// [`Config::for_tests`]). The role needs the `CREATEDB` privilege.
    ///
    /// # Errors
    ///
    /// [`Error::NotConfigured`] without PostgreSQL; [`Error::Connect`];
    /// [`Error::Privilege`] when the role may not create databases;
    /// migration errors while building the template.
    pub async fn with_config(config: &Config, migrations: &Migrations) -> Result<TestDatabase> {
        let config = config.for_tests()?;
        let url = config.postgres.url.clone().ok_or(Error::NotConfigured {
            backend: Backend::Postgres,
            hint: "TEST_DATABASE_URL or DATABASE_URL",
        })?;
        let server = Server::new(&config.postgres, &url)?;
        let maintenance = config.bootstrap.maintenance_database.clone();
        sweep_once(&config).await;
        let admin = server.connect(&maintenance).await?;
        let template = template_name(&config, migrations);
        let database = new_database_name();
        let mut attempts = 0;
        loop {
            attempts += 1;
            ensure_template(&config, &server, &admin, &template, migrations).await?;
            let sql = format!(
                "CREATE DATABASE {} TEMPLATE {}",
                quote_ident(&database),
                quote_ident(&template)
            );
            match admin.batch_execute(&sql).await {
                Ok(()) => break,
                // The template was dropped in between (a manual clean-up):
                // build it again.
                Err(e) if e.code().map(|c| c.code()) == Some("3D000") && attempts < 3 => continue,
                Err(e) => {
                    return Err(admin_error(
                        format!("create database {}", quote_ident(&database)),
                        "creating a test database",
                        e,
                        server.secrets(),
                    ));
                }
            }
        }
        drop(admin);
        #[cfg(feature = "mongodb")]
        let mongo_database = config.mongodb.is_configured().then(|| database.clone());
        #[cfg(not(feature = "mongodb"))]
        let mongo_database: Option<String> = None;
        let cleanup = Cleanup {
            server: server.clone(),
            maintenance,
            database: database.clone(),
            #[cfg(feature = "mongodb")]
            mongo: mongo_database.as_ref().map(|_| config.mongodb.clone()),
        };
        let mut clone_config = config.clone();
        clone_config.postgres.url = Some(server.url_for(&database));
        clone_config.postgres.test_url = None;
        // Nothing to keep warm: the database lives for one test.
        clone_config.postgres.pool.min_idle = 0;
        if let Some(name) = &mongo_database {
            clone_config.mongodb.database = Some(name.clone());
            clone_config.mongodb.pool.min_size = 0;
        }
        let manager = match DatabaseManager::builder().config(clone_config).build_lazy() {
            Ok(manager) => manager,
            Err(e) => {
                let _ = cleanup.run().await;
                return Err(e);
            }
        };
        tracing::debug!(target: "dbmanager::testing", database = %database, template = %template, "test database created");
        Ok(TestDatabase {
            manager,
            database,
            template,
            mongo_database,
            cleanup: Some(cleanup),
        })
    }

    /// A manager connected to the test database(s).
    pub fn manager(&self) -> &DatabaseManager {
        &self.manager
    }

    /// Its configuration: the test configuration pointed at these
    /// databases.
    pub fn config(&self) -> &Config {
        self.manager.config()
    }

    /// The PostgreSQL database's name.
    pub fn database_name(&self) -> &str {
        &self.database
    }

    /// The template database it was cloned from (`dbm_tpl_<hash>`).
    pub fn template_name(&self) -> &str {
        &self.template
    }

    /// The MongoDB database's name, when MongoDB is configured.
    pub fn mongo_database_name(&self) -> Option<&str> {
        self.mongo_database.as_deref()
    }

    /// Shuts the manager down and drops the databases now, reporting
    /// errors (dropping the value does the same, logging them).
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] or [`Error::Privilege`] when a database could not
    /// be dropped.
    pub async fn close(mut self) -> Result<()> {
        let _ = self.manager.shutdown().await;
        match self.cleanup.take() {
            Some(cleanup) => cleanup.run().await,
            None => Ok(()),
        }
    }

    /// Drops test databases left by runs that were killed before they could
    /// clean up: those whose process no longer runs on this host, and any
    /// older than six hours. Templates are kept.
    ///
    /// # Errors
    ///
    /// Configuration and connection errors; [`Error::Privilege`].
    pub async fn sweep(config: &Config) -> Result<SweepReport> {
        sweep_test_server(&config.for_tests()?).await
    }
}

/// [`TestDatabase::sweep`] on a configuration already pointed at the
/// test server.
async fn sweep_test_server(config: &Config) -> Result<SweepReport> {
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

impl std::fmt::Debug for TestDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDatabase")
            .field("database", &self.database)
            .field("template", &self.template)
            .field("mongo_database", &self.mongo_database)
            .finish_non_exhaustive()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some(cleanup) = self.cleanup.take() else {
            return;
        };
        let database = cleanup.database.clone();
        // The test's runtime may be single-threaded and blocked right here
        // (or unwinding from a panic): clean up on a thread of our own.
        let outcome = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(cleanup.run()).map_err(|e| e.to_string())
        })
        .join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(target: "dbmanager::testing", database = %database, error = %e, "could not drop the test database; a later sweep will")
            }
            Err(_) => {
                tracing::warn!(target: "dbmanager::testing", database = %database, "dropping the test database panicked; a later sweep will")
            }
        }
    }
}

impl Cleanup {
    async fn run(self) -> Result<()> {
        let admin = self.server.connect(&self.maintenance).await?;
        drop_database(&admin, &self.database, self.server.secrets()).await?;
        drop(admin);
        #[cfg(feature = "mongodb")]
        if let Some(mongo) = &self.mongo {
            let handle = crate::mongo::MongoHandle::with_parse(mongo).await?;
            let dropped = handle.database_named(&self.database).drop().await;
            handle.client().clone().shutdown().immediate(true).await;
            dropped.map_err(|e| Error::mongo("dropping a test database", e))?;
        }
        tracing::debug!(target: "dbmanager::testing", database = %self.database, "test database dropped");
        Ok(())
    }
}

/// `dbm_tpl_` and 16 hex digits of a hash of everything that shapes the
/// template's schema.
fn template_name(config: &Config, migrations: &Migrations) -> String {
    let mut hasher = Sha256::new();
    hasher.update(migrations.fingerprint().as_bytes());
    hasher.update(format!("\ntable={}\n", config.migrations.table).as_bytes());
    for extension in &config.bootstrap.extensions {
        hasher.update(format!("extension={extension}\n").as_bytes());
    }
    let digest = hasher.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{TEMPLATE_PREFIX}{hex}")
}

/// Makes sure the template exists and is complete; builds it under an
/// advisory lock on the maintenance database when not.
async fn ensure_template(
    config: &Config,
    server: &Server,
    admin: &DirectConnection,
    template: &str,
    migrations: &Migrations,
) -> Result<()> {
    if template_ready(admin, template).await? {
        return Ok(());
    }
    let key = lock_key("testing:template");
    wait_for_lock(admin, key, None, "test template").await?;
    let built = build_template(config, server, admin, template, migrations).await;
    let unlocked = admin
        .query_one("SELECT pg_advisory_unlock($1)", &[&key])
        .await;
    built?;
    unlocked.map_err(|e| Error::postgres("releasing the test template lock", e))?;
    Ok(())
}

async fn template_ready(admin: &DirectConnection, template: &str) -> Result<bool> {
    let row = admin
        .query_opt(
            "SELECT datistemplate FROM pg_database WHERE datname = $1",
            &[&template],
        )
        .await
        .map_err(|e| Error::postgres("looking up the test template", e))?;
    Ok(row.is_some_and(|r| r.get(0)))
}

async fn build_template(
    config: &Config,
    server: &Server,
    admin: &DirectConnection,
    template: &str,
    migrations: &Migrations,
) -> Result<()> {
    if template_ready(admin, template).await? {
        return Ok(()); // another process built it while we waited
    }
    let secrets = server.secrets();
    if database_exists(admin, template).await? {
        // Half-built by a process that died: start over.
        drop_database(admin, template, secrets).await?;
    }
    let started = std::time::Instant::now();
    create_database(admin, template, None, secrets).await?;
    let outcome = async {
        let connection = server.connect(template).await?;
        for extension in &config.bootstrap.extensions {
            ensure_extension(&connection, extension, template, secrets).await?;
        }
        drop(connection);
        crate::migrate::migrate_with_temporary_pool(config, server, template, migrations).await?;
        let sql = format!(
            "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false; ALTER DATABASE {name} WITH IS_TEMPLATE true",
            name = quote_ident(template)
        );
        admin
            .batch_execute(&sql)
            .await
            .map_err(|e| Error::postgres("marking the test template", e))
    }
    .await;
    if let Err(e) = outcome {
        let _ = drop_database(admin, template, secrets).await;
        return Err(e);
    }
    tracing::info!(
        target: "dbmanager::testing",
        template,
        migrations = migrations.len(),
        took_ms = started.elapsed().as_millis() as u64,
        "built the test template database"
    );
    Ok(())
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// `dbm_test_<host>_<pid>_<unix seconds>_<n>`.
fn new_database_name() -> String {
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
async fn sweep_once(config: &Config) {
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
