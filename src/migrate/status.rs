//! Comparing the migration source with the history: what is applied,
//! pending, changed or missing.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Serialize, Serializer};

use super::history::AppliedRow;
use super::source::Migrations;

/// Where one migration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum MigrationState {
    /// Applied, and the file is unchanged.
    Applied,
    /// Not applied yet.
    Pending,
    /// Applied, but the file changed since (checksum differs).
    Changed,
    /// Recorded as applied, but not in the migration source.
    Missing,
}

impl MigrationState {
    /// Whether the history records it as applied.
    pub fn is_recorded(self) -> bool {
        !matches!(self, MigrationState::Pending)
    }
}

/// One line of [`StatusReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MigrationStatus {
    /// The version.
    pub version: i64,
    /// The name (from the file, or from the history when missing).
    pub name: String,
    /// Where it stands.
    pub state: MigrationState,
    /// When it was applied (RFC 3339 in JSON).
    #[serde(serialize_with = "rfc3339")]
    pub applied_at: Option<SystemTime>,
    /// How long it took to apply.
    #[serde(with = "humantime_serde")]
    pub execution: Option<Duration>,
    /// Whether it has a down migration.
    pub reversible: bool,
}

/// Every migration known to the source or the history, by version: what
/// `dbmanager migrate status` shows (Alembic's `current` and `history`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct StatusReport {
    /// One entry per version, ascending.
    pub migrations: Vec<MigrationStatus>,
}

fn rfc3339<S: Serializer>(at: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(t) => s.serialize_str(&humantime::format_rfc3339_millis(*t).to_string()),
        None => s.serialize_none(),
    }
}

impl StatusReport {
    pub(crate) fn new(source: &Migrations, applied: &[AppliedRow]) -> StatusReport {
        let mut entries: BTreeMap<i64, MigrationStatus> = BTreeMap::new();
        for m in source {
            entries.insert(
                m.version(),
                MigrationStatus {
                    version: m.version(),
                    name: m.name().to_string(),
                    state: MigrationState::Pending,
                    applied_at: None,
                    execution: None,
                    reversible: m.is_reversible(),
                },
            );
        }
        for row in applied {
            let source = source.get(row.version);
            let state = match source {
                None => MigrationState::Missing,
                Some(m) if m.checksum() != row.checksum => MigrationState::Changed,
                Some(_) => MigrationState::Applied,
            };
            entries.insert(
                row.version,
                MigrationStatus {
                    version: row.version,
                    name: source.map_or_else(|| row.name.clone(), |m| m.name().to_string()),
                    state,
                    applied_at: Some(row.applied_at),
                    execution: Some(row.execution),
                    reversible: source.is_some_and(|m| m.is_reversible()),
                },
            );
        }
        StatusReport {
            migrations: entries.into_values().collect(),
        }
    }

    fn versions_in(&self, state: MigrationState) -> Vec<i64> {
        self.migrations
            .iter()
            .filter(|m| m.state == state)
            .map(|m| m.version)
            .collect()
    }

    /// The newest applied version (Alembic's `current`); `None` when
    /// nothing is applied.
    pub fn current(&self) -> Option<i64> {
        self.migrations
            .iter()
            .filter(|m| m.state.is_recorded())
            .map(|m| m.version)
            .max()
    }

    /// Versions recorded as applied (unchanged, changed or missing).
    pub fn applied(&self) -> Vec<i64> {
        self.migrations
            .iter()
            .filter(|m| m.state.is_recorded())
            .map(|m| m.version)
            .collect()
    }

    /// Versions not applied yet.
    pub fn pending(&self) -> Vec<i64> {
        self.versions_in(MigrationState::Pending)
    }

    /// Applied versions whose file changed since.
    pub fn changed(&self) -> Vec<i64> {
        self.versions_in(MigrationState::Changed)
    }

    /// Applied versions the source does not have.
    pub fn missing(&self) -> Vec<i64> {
        self.versions_in(MigrationState::Missing)
    }

    /// Whether every migration is applied and none changed or went
    /// missing.
    pub fn is_up_to_date(&self) -> bool {
        self.migrations
            .iter()
            .all(|m| m.state == MigrationState::Applied)
    }

    /// The status of one version.
    pub fn get(&self, version: i64) -> Option<&MigrationStatus> {
        self.migrations.iter().find(|m| m.version == version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_and_history_combine_into_four_states() {
        let source = Migrations::from_files(vec![
            ("1_a.up.sql".into(), b"SELECT 1".to_vec()),
            ("2_b.up.sql".into(), b"SELECT 2".to_vec()),
            ("3_c.up.sql".into(), b"SELECT 3".to_vec()),
        ])
        .unwrap();
        let row = |version: i64, checksum: &str| AppliedRow {
            version,
            name: format!("v{version}"),
            checksum: checksum.to_string(),
            applied_at: SystemTime::UNIX_EPOCH,
            execution: Duration::from_millis(3),
        };
        let applied = [
            row(1, source.get(1).unwrap().checksum()),
            row(2, "edited"),
            row(9, "gone"),
        ];
        let status = StatusReport::new(&source, &applied);
        assert_eq!(status.applied(), [1, 2, 9]);
        assert_eq!(status.pending(), [3]);
        assert_eq!(status.changed(), [2]);
        assert_eq!(status.missing(), [9]);
        assert_eq!(status.current(), Some(9));
        assert_eq!(status.get(9).unwrap().name, "v9");
        assert!(!status.is_up_to_date());
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["migrations"][0]["state"], "applied");
        assert_eq!(
            json["migrations"][0]["applied_at"],
            "1970-01-01T00:00:00.000Z"
        );
    }
}
