//! What a migration run did.

use std::time::Duration;

use serde::Serialize;

/// Which way a run went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Direction {
    /// Applying up migrations.
    Up,
    /// Reverting with down migrations.
    Down,
}

impl Direction {
    /// `up` or `down`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One migration applied or reverted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MigrationRun {
    /// Its version.
    pub version: i64,
    /// Its name.
    pub name: String,
    /// How long its statements took.
    #[serde(with = "humantime_serde")]
    pub took: Duration,
}

/// What [`super::Migrator::up`], [`super::Migrator::down`] and their
/// variants did, in the order they did it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MigrateReport {
    /// Applying or reverting.
    pub direction: Direction,
    /// The migrations run, in order.
    pub migrations: Vec<MigrationRun>,
    /// The whole run, waiting for the lock included.
    #[serde(with = "humantime_serde")]
    pub took: Duration,
}

impl MigrateReport {
    pub(crate) fn new(direction: Direction) -> Self {
        MigrateReport {
            direction,
            migrations: Vec::new(),
            took: Duration::ZERO,
        }
    }

    /// The versions run, in order.
    pub fn versions(&self) -> Vec<i64> {
        self.migrations.iter().map(|m| m.version).collect()
    }

    /// Whether nothing was run (the schema was already where it was asked
    /// to be).
    pub fn is_empty(&self) -> bool {
        self.migrations.is_empty()
    }
}

/// What [`super::Migrator::repair`] or [`super::Migrator::stamp`] changed
/// in the history. No migration SQL is run by either.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RepairReport {
    /// Versions recorded as applied without running them (`stamp`).
    pub recorded: Vec<i64>,
    /// Versions whose checksum (and name) were re-recorded.
    pub updated: Vec<i64>,
    /// Versions removed from the history.
    pub removed: Vec<i64>,
}

impl RepairReport {
    /// Whether the history was left as it was.
    pub fn is_empty(&self) -> bool {
        self.recorded.is_empty() && self.updated.is_empty() && self.removed.is_empty()
    }
}
