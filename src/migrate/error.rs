//! What can go wrong with migrations, as data.

use std::path::PathBuf;
use std::time::Duration;

/// A migration problem: a bad migration source, a history that does not
/// match the files, or a migration that failed.
///
/// Reached as [`crate::Error::Migrate`] from the runner; returned directly
/// by [`super::Migrations::from_dir`] and `embed_migrations!`. Messages
/// never contain connection strings, and statement excerpts hide the string
/// after a `PASSWORD` key word.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// The migrations folder or one of its files could not be read.
    #[error("could not read migrations from {}", path.display())]
    Read {
        /// The folder or file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A `.sql` file whose name is not `<version>_<name>.up.sql` or
    /// `<version>_<name>.down.sql`.
    #[error("migration file name `{file}` {problem}")]
    InvalidName {
        /// The file name.
        file: String,
        /// What is wrong with it.
        problem: String,
    },

    /// A migration file whose content cannot be run: not UTF-8, an
    /// unterminated string or comment, an unknown `-- dbmanager:` directive,
    /// or a `BEGIN`/`COMMIT` inside a migration that runs in a transaction.
    #[error("migration {file}: {problem}")]
    InvalidContent {
        /// The file name.
        file: String,
        /// What is wrong, with its line.
        problem: String,
    },

    /// Two up (or two down) migrations share a version.
    #[error("migration version {version} is used twice: {first} and {second}")]
    DuplicateVersion {
        /// The version.
        version: i64,
        /// The first file with it.
        first: String,
        /// The second file with it.
        second: String,
    },

    /// A down migration without an up migration of the same version and
    /// name.
    #[error("down migration {file} has no up migration `{expected}`")]
    DownWithoutUp {
        /// Its version.
        version: i64,
        /// The down file.
        file: String,
        /// The up file that would match it.
        expected: String,
    },

    /// Applied migrations whose file changed since they were applied
    /// (their checksum differs from the recorded one).
    #[error(
        "applied migration{} {} changed since {} applied ({}): restore the file{}, or call repair() to accept a deliberate edit",
        plural(versions.len()), list(versions), if versions.len() == 1 { "it was" } else { "they were" },
        files.join(", "), plural(versions.len())
    )]
    Changed {
        /// The versions, ascending.
        versions: Vec<i64>,
        /// Their up files.
        files: Vec<String>,
    },

    /// Migrations recorded as applied that the migration source does not
    /// have.
    #[error(
        "migration{} {} {} recorded as applied but missing from the migrations: restore the file{}, or call repair() to forget {}",
        plural(versions.len()), list(versions), if versions.len() == 1 { "is" } else { "are" },
        plural(versions.len()), if versions.len() == 1 { "it" } else { "them" }
    )]
    Missing {
        /// The versions, ascending.
        versions: Vec<i64>,
    },

    /// Pending migrations older than the newest applied one, refused
    /// unless `migrations.allow_out_of_order` is set.
    #[error(
        "pending migration{} {} {} older than the newest applied migration {newest_applied}: renumber {} or set migrations.allow_out_of_order",
        plural(versions.len()), list(versions), if versions.len() == 1 { "is" } else { "are" },
        if versions.len() == 1 { "it" } else { "them" }
    )]
    OutOfOrder {
        /// The pending versions, ascending.
        versions: Vec<i64>,
        /// The newest applied version.
        newest_applied: i64,
    },

    /// A revert was refused because migrations it would revert have no
    /// down file. Nothing was changed.
    #[error(
        "cannot revert migration{} {}: no down migration file; nothing was changed",
        plural(versions.len()), list(versions)
    )]
    MissingDown {
        /// The versions without a down file, descending (revert order).
        versions: Vec<i64>,
    },

    /// A target version that is neither in the migrations nor in the
    /// history.
    #[error("migration version {version} is unknown{}", if *version == 0 { "" } else { " (use 0 to mean before the first migration)" })]
    UnknownVersion {
        /// The version asked for.
        version: i64,
    },

    /// A statement of a migration failed on the server.
    ///
    /// For a migration run in a transaction (`rolled_back`), schema and
    /// history are as they were before it. For a `no-transaction` one, the
    /// statements before the failing one stay applied and the migration is
    /// not recorded.
    #[error(
        "migration {file} failed at statement {statement} (line {line}{}): {reason}; statement: {sql}; {}",
        error_line.filter(|l| l != line).map(|l| format!(", error at line {l}")).unwrap_or_default(),
        if *rolled_back {
            "the migration was rolled back".to_string()
        } else if *statement > 1 {
            format!("statements 1 to {} were committed already (no-transaction migration); the migration is not recorded", statement - 1)
        } else {
            "nothing was committed; the migration is not recorded".to_string()
        }
    )]
    Statement {
        /// The file.
        file: String,
        /// The failing statement's number in the file (1-based).
        statement: u32,
        /// The line of its first token.
        line: u32,
        /// The line the server pointed at, when it gave a position.
        error_line: Option<u32>,
        /// The statement, on one line and shortened.
        sql: String,
        /// The server's message with its SQLSTATE, detail and hint.
        reason: String,
        /// The SQLSTATE, when the server sent one.
        code: Option<String>,
        /// Whether everything the migration did was rolled back.
        rolled_back: bool,
    },

    /// [`super::Migrator::adopt`] found no history table of that tool on
    /// the session's `search_path` (or in the schema given to
    /// [`super::Migrator::adopt_table`]).
    #[error(
        "no {tool} history to adopt: table `{table}` not found{searched}; if the tool keeps it under another name, give it (`--table`, `--schema`; `adopt_table`)"
    )]
    AdoptNoHistory {
        /// The tool (`golang-migrate`, `sqlx`, `refinery`).
        tool: &'static str,
        /// The table looked for, `schema.table` when a schema was given.
        table: String,
        /// ` on the search_path` when no schema was given, else empty.
        searched: &'static str,
    },

    /// The other tool's history says a migration failed partway (a dirty
    /// golang-migrate state, a sqlx row with `success = false`): the schema
    /// is in an unknown state, so nothing is adopted.
    #[error("{tool} history {table} {problem}; nothing was adopted")]
    AdoptDirty {
        /// The tool.
        tool: &'static str,
        /// Its table, `schema.table`.
        table: String,
        /// The versions concerned.
        versions: Vec<i64>,
        /// What is wrong and what to do.
        problem: String,
    },

    /// Versions the other tool applied that have no migration file here.
    #[error(
        "{tool} applied migration{} {} but {} no file among the migrations; add the file{} (same version) and adopt again; nothing was adopted",
        plural(versions.len()), list(versions), if versions.len() == 1 { "it has" } else { "they have" },
        plural(versions.len())
    )]
    AdoptMissing {
        /// The tool.
        tool: &'static str,
        /// The versions, ascending.
        versions: Vec<i64>,
    },

    /// The migration lock was not acquired within the lock timeout.
    #[error("timed out after {waited:?} waiting for the migration lock{}", holder.map(|p| format!(" (held by server process {p})")).unwrap_or_default())]
    LockTimeout {
        /// How long it waited.
        waited: Duration,
        /// The server process id holding it, when known.
        holder: Option<i32>,
    },
}

impl MigrateError {
    /// The SQLSTATE of a failed statement.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            MigrateError::Statement { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// The versions an error is about (changed, missing, out of order,
    /// without down file, or the one asked for).
    pub fn versions(&self) -> Vec<i64> {
        match self {
            MigrateError::Changed { versions, .. }
            | MigrateError::Missing { versions }
            | MigrateError::OutOfOrder { versions, .. }
            | MigrateError::MissingDown { versions }
            | MigrateError::AdoptDirty { versions, .. }
            | MigrateError::AdoptMissing { versions, .. } => versions.clone(),
            MigrateError::DuplicateVersion { version, .. }
            | MigrateError::DownWithoutUp { version, .. }
            | MigrateError::UnknownVersion { version } => vec![*version],
            _ => Vec::new(),
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Versions for a message: `1, 2, 3`.
pub(super) fn list(versions: &[i64]) -> String {
    versions
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_versions_and_what_to_do() {
        let changed = MigrateError::Changed {
            versions: vec![3],
            files: vec!["3_add_index.up.sql".into()],
        };
        assert_eq!(
            changed.to_string(),
            "applied migration 3 changed since it was applied (3_add_index.up.sql): restore the file, or call repair() to accept a deliberate edit"
        );
        let statement = MigrateError::Statement {
            file: "2_b.up.sql".into(),
            statement: 3,
            line: 7,
            error_line: Some(8),
            sql: "INSERT INTO nope VALUES (1)".into(),
            reason: "ERROR: relation \"nope\" does not exist (SQLSTATE 42P01)".into(),
            code: Some("42P01".into()),
            rolled_back: true,
        };
        let text = statement.to_string();
        assert!(
            text.contains("2_b.up.sql failed at statement 3 (line 7, error at line 8)"),
            "{text}"
        );
        assert!(text.ends_with("the migration was rolled back"), "{text}");
        assert_eq!(statement.sqlstate(), Some("42P01"));
    }
}
