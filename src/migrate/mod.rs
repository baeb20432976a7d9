//! Reversible SQL migrations with a lock, database bootstrap, and the
//! adoption of golang-migrate, sqlx and refinery histories.
//!
//! A migration is a pair of files in one folder:
//!
//! ```text
//! migrations/
//!   1_create_users.up.sql
//!   1_create_users.down.sql
//!   20240131093000_add_sessions_index.up.sql     -- versions may be timestamps
//!   20240131093000_add_sessions_index.down.sql
//! ```
//!
//! - The version is an integer (timestamps work), unique, and orders the
//!   migrations; the down file is optional but needed to revert.
//! - Each up (or down) file runs in a transaction of its own, statement by
//!   statement, together with its history record: a failure rolls back
//!   everything it did and names the file, the statement and its line.
//! - A first line `-- dbmanager:no-transaction` runs the file outside a
//!   transaction, for `CREATE INDEX CONCURRENTLY` and the like.
//! - The history table (`migrations.table`, default
//!   `dbmanager_schema_history`) records version, name, SHA-256 checksum
//!   (line endings normalised), when and how long. Applied files that
//!   change stop [`Migrator::up`] until restored or [`Migrator::repair`]ed.
//! - Concurrent migrators are serialised by a PostgreSQL advisory lock held
//!   on a dedicated connection, closed on any failure so the lock cannot
//!   leak.
//!
//! ```no_run
//! # async fn demo() -> dbmanager::Result<()> {
//! use dbmanager::{Config, DatabaseManager};
//! use dbmanager::migrate::{Bootstrap, Migrations};
//!
//! let config = Config::load()?;
//! let migrations = dbmanager::embed_migrations!("$CARGO_MANIFEST_DIR/migrations")?;
//! // Wait for the server, create the database and extensions, migrate.
//! Bootstrap::new(&config).migrations(&migrations).run().await?;
//! let db = DatabaseManager::builder().config(config).build().await?;
//!
//! // Later, or from an admin task:
//! let status = db.migrator(&migrations)?.status().await?;
//! println!("current: {:?}, pending: {:?}", status.current(), status.pending());
//! # Ok(()) }
//! ```
//!
//! See `docs/migrations.md` for the file format, the lock, checksums and a
//! table of Alembic commands and their equivalents.

mod adopt;
mod apply;
mod bootstrap;
mod error;
mod history;
mod lock;
mod migration;
mod migrator;
mod repair;
mod report;
mod source;
mod spans;
mod split;
mod status;

pub use adopt::{AdoptFrom, AdoptReport};
pub use bootstrap::{Bootstrap, BootstrapReport, DatabaseBootstrap};
pub use error::MigrateError;
pub use migration::{Migration, NO_TRANSACTION_DIRECTIVE};
pub use migrator::Migrator;
pub use report::{Direction, MigrateReport, MigrationRun, RepairReport};
pub use source::Migrations;
pub use status::{MigrationState, MigrationStatus, StatusReport};

#[cfg(feature = "testing")]
pub(crate) use bootstrap::migrate_with_temporary_pool;
#[cfg(feature = "testing")]
pub(crate) use lock::{lock_key, wait_for_lock};

/// Embeds a migrations folder in the binary at compile time and parses it
/// at run time, returning `Result<Migrations, MigrateError>`.
///
/// The path is relative to the crate being compiled when it starts with
/// `$CARGO_MANIFEST_DIR` (environment variables are expanded).
///
/// ```no_run
/// # async fn demo(db: dbmanager::DatabaseManager) -> dbmanager::Result<()> {
/// let migrations = dbmanager::embed_migrations!("$CARGO_MANIFEST_DIR/migrations")?;
/// db.migrate(&migrations).await?;
/// # Ok(()) }
/// ```
///
/// Cargo does not know that the binary depends on the folder: to rebuild
/// when a migration changes, add a `build.rs` with
/// `println!("cargo:rerun-if-changed=migrations");`.
#[macro_export]
macro_rules! embed_migrations {
    ($path:tt) => {{
        use $crate::__private::include_dir;
        static MIGRATIONS_DIR: include_dir::Dir<'static> = include_dir::include_dir!($path);
        $crate::migrate::Migrations::from_embedded(&MIGRATIONS_DIR)
    }};
}
