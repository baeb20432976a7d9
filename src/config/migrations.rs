//! Settings for SQL migrations and database bootstrap.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Problems, positive};

/// SQL migration settings (`[migrations]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MigrationsConfig {
    /// Folder of `<version>_<name>.up.sql` / `.down.sql` files read at run
    /// time (the command line, `Migrations::from_dir`). Default: `migrations`.
    pub directory: PathBuf,
    /// Table recording applied migrations. Default: `dbmanager_schema_history`.
    pub table: String,
    /// Apply a pending migration whose version is lower than the newest
    /// applied one instead of refusing. Default: `false`.
    pub allow_out_of_order: bool,
    /// How often a migration still running is reported at INFO with its
    /// elapsed time (`migration 3/50 add_index still running`). Default:
    /// 10 s: an operator watching a deploy sees a long index build is
    /// alive, and a log keeps a handful of lines per minute of it.
    #[serde(with = "humantime_serde")]
    pub progress_interval: Duration,
}

impl Default for MigrationsConfig {
    fn default() -> Self {
        MigrationsConfig {
            directory: PathBuf::from("migrations"),
            table: "dbmanager_schema_history".into(),
            allow_out_of_order: false,
            progress_interval: Duration::from_secs(10),
        }
    }
}

impl MigrationsConfig {
    pub(super) fn check(&self, p: &mut Problems) {
        if let Err(problem) = check_identifier(&self.table) {
            p.push("migrations.table", problem);
        }
        positive("migrations.progress_interval", self.progress_interval, p);
    }
}

/// Database bootstrap settings (`[bootstrap]`): what `bootstrap()` and
/// `dbmanager db create` prepare before migrating.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BootstrapConfig {
    /// Create the configured database when it does not exist. Default: `true`.
    pub create_database: bool,
    /// Also create the test database ([`super::Config::for_tests`]).
    /// Default: `false`.
    pub create_test_database: bool,
    /// Extensions to create in each database (`uuid-ossp`, `pgcrypto`, ...).
    /// Default: none.
    pub extensions: Vec<String>,
    /// Database to connect to for `CREATE DATABASE`. Default: `postgres`.
    pub maintenance_database: String,
    /// How long to wait for the server to accept connections. Default: 60 s.
    #[serde(with = "humantime_serde")]
    pub wait_timeout: Duration,
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        BootstrapConfig {
            create_database: true,
            create_test_database: false,
            extensions: Vec::new(),
            maintenance_database: "postgres".into(),
            wait_timeout: Duration::from_secs(60),
        }
    }
}

impl BootstrapConfig {
    pub(super) fn check(&self, p: &mut Problems) {
        for ext in &self.extensions {
            if ext.is_empty() || ext.len() > 63 || ext.contains('"') || ext.contains('\0') {
                p.push(
                    "bootstrap.extensions",
                    format!("has an invalid extension name `{ext}`"),
                );
            }
        }
        if self.maintenance_database.is_empty() {
            p.push("bootstrap.maintenance_database", "is empty");
        }
        positive("bootstrap.wait_timeout", self.wait_timeout, p);
    }
}

/// A table name, optionally schema-qualified, made of plain identifiers.
pub(crate) fn check_identifier(name: &str) -> Result<(), String> {
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() > 2 {
        return Err("must be `table` or `schema.table`".into());
    }
    for part in parts {
        let valid = !part.is_empty()
            && part.len() <= 63
            && part
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "`{name}` is not a plain identifier (letters, digits, `_`, at most 63 bytes)"
            ));
        }
    }
    Ok(())
}
