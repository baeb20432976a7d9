//! One migration and its parsed files: the up script, the optional down
//! script, their checksums and statements.

use std::fmt;

use sha2::{Digest, Sha256};

use super::error::MigrateError;
use super::split::{Statement, split};

/// The first-line directive that runs a migration outside a transaction.
pub const NO_TRANSACTION_DIRECTIVE: &str = "-- dbmanager:no-transaction";

/// One migration: an up script and, when reversible, a down script.
#[derive(Clone)]
pub struct Migration {
    pub(super) version: i64,
    pub(super) name: String,
    pub(crate) up: Script,
    pub(crate) down: Option<Script>,
}

/// One file, parsed.
#[derive(Clone)]
pub(crate) struct Script {
    pub file: String,
    /// SHA-256 of the content with line endings normalised, lower-case hex.
    pub checksum: String,
    /// False with the `-- dbmanager:no-transaction` directive.
    pub transactional: bool,
    /// Whether the file wrapped its body in `BEGIN` ... `COMMIT`, which
    /// were dropped from `statements`: the migration's own transaction
    /// takes their place.
    pub unwrapped: bool,
    pub statements: Vec<Statement>,
}

/// The text a checksum is taken over: without a byte-order mark, with
/// CRLF line endings turned into LF, so a checkout on another platform
/// does not look like an edit.
pub(crate) fn normalise(content: &str) -> String {
    content
        .strip_prefix('\u{feff}')
        .unwrap_or(content)
        .replace("\r\n", "\n")
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of the normalised content, lower-case hex.
#[cfg(test)]
pub(crate) fn checksum(content: &str) -> String {
    hex(&Sha256::digest(normalise(content).as_bytes()))
}

impl Script {
    pub(crate) fn parse(file: &str, bytes: &[u8]) -> Result<Script, MigrateError> {
        let invalid = |problem: String| MigrateError::InvalidContent {
            file: file.to_string(),
            problem,
        };
        let content =
            std::str::from_utf8(bytes).map_err(|e| invalid(format!("is not UTF-8 ({e})")))?;
        let text = normalise(content);
        let transactional = match directive(&text) {
            None => true,
            Some("no-transaction") => false,
            Some(other) => {
                return Err(invalid(format!(
                    "line 1: unknown directive `dbmanager:{other}` (the only one is `{NO_TRANSACTION_DIRECTIVE}`)"
                )));
            }
        };
        let mut statements =
            split(&text).map_err(|e| invalid(format!("line {}: {}", e.line, e.problem)))?;
        let unwrapped = transactional && unwrap_transaction(&mut statements);
        if transactional
            && let Some(control) = statements.iter().find(|s| s.is_transaction_control())
        {
            return Err(invalid(format!(
                "line {}: `{}` controls the transaction the migration runs in; remove it (each migration runs in a transaction of its own; only a `BEGIN` first and `COMMIT` last wrapping the whole file are taken as that transaction) or put `{NO_TRANSACTION_DIRECTIVE}` on the first line",
                control.line,
                control.excerpt(40)
            )));
        }
        Ok(Script {
            file: file.to_string(),
            checksum: hex(&Sha256::digest(text.as_bytes())),
            transactional,
            unwrapped,
            statements,
        })
    }
}

/// Drops a `BEGIN` / `START TRANSACTION` first statement and a `COMMIT` /
/// `END` last one (golang-migrate histories wrap files so, that tool adding
/// no transaction of its own); returns whether it did. A `BEGIN` with
/// options (isolation, read only) or `COMMIT AND CHAIN` is kept, and then
/// refused like any other transaction control.
fn unwrap_transaction(statements: &mut Vec<Statement>) -> bool {
    fn words(s: &Statement) -> Vec<&str> {
        s.words.iter().map(String::as_str).collect()
    }
    let opens = |s: &Statement| {
        matches!(
            words(s).as_slice(),
            ["begin"] | ["begin", "work" | "transaction"] | ["start", "transaction"]
        )
    };
    let closes = |s: &Statement| {
        matches!(
            words(s).as_slice(),
            ["commit" | "end"] | ["commit" | "end", "work" | "transaction"]
        )
    };
    let wrapped = statements.len() >= 2
        && statements.first().is_some_and(opens)
        && statements.last().is_some_and(closes);
    if wrapped {
        statements.pop();
        statements.remove(0);
    }
    wrapped
}

/// The `dbmanager:` directive of the first line, if any.
fn directive(text: &str) -> Option<&str> {
    let first = text.lines().next()?.trim();
    let comment = first.strip_prefix("--")?.trim_start();
    let rest = comment.strip_prefix("dbmanager:")?;
    Some(rest.trim())
}

impl Migration {
    /// The version, from the file name.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// The name, from the file name (`add_users` in `2_add_users.up.sql`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The up file's name.
    pub fn up_file(&self) -> &str {
        &self.up.file
    }

    /// The down file's name, when there is one.
    pub fn down_file(&self) -> Option<&str> {
        self.down.as_ref().map(|d| d.file.as_str())
    }

    /// Whether it has a down migration.
    pub fn is_reversible(&self) -> bool {
        self.down.is_some()
    }

    /// SHA-256 of the up file, lower-case hex, over the content with CRLF
    /// turned into LF and any byte-order mark removed. This is what the
    /// history records.
    pub fn checksum(&self) -> &str {
        &self.up.checksum
    }

    /// Whether the up migration runs in a transaction (it does unless its
    /// first line is `-- dbmanager:no-transaction`).
    pub fn is_transactional(&self) -> bool {
        self.up.transactional
    }

    /// How many statements the up file holds.
    pub fn statement_count(&self) -> usize {
        self.up.statements.len()
    }
}

impl fmt::Debug for Migration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migration")
            .field("version", &self.version)
            .field("name", &self.name)
            .field("up_file", &self.up.file)
            .field("down_file", &self.down_file())
            .field("checksum", &self.up.checksum)
            .field("transactional", &self.up.transactional)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_ignore_line_endings_and_byte_order_marks() {
        let lf = "CREATE TABLE t (id int);\nINSERT INTO t VALUES (1);\n";
        let crlf = lf.replace('\n', "\r\n");
        assert_eq!(checksum(lf), checksum(&crlf));
        assert_eq!(checksum(lf), checksum(&format!("\u{feff}{lf}")));
        assert_ne!(checksum(lf), checksum("CREATE TABLE t (id bigint);\n"));
        assert_eq!(checksum(lf).len(), 64);
        let script = Script::parse("1_a.up.sql", crlf.as_bytes()).unwrap();
        assert_eq!(script.checksum, checksum(lf));
    }

    #[test]
    fn the_no_transaction_directive_is_read_from_the_first_line_only() {
        let script = Script::parse(
            "1_a.up.sql",
            b"-- dbmanager:no-transaction\nCREATE INDEX CONCURRENTLY i ON t (x);",
        )
        .unwrap();
        assert!(!script.transactional);
        let script = Script::parse(
            "1_a.up.sql",
            b"SELECT 1;\n-- dbmanager:no-transaction\nSELECT 2;",
        )
        .unwrap();
        assert!(script.transactional);
        let err = Script::parse("1_a.up.sql", b"-- dbmanager:no-transactions\nSELECT 1")
            .err()
            .unwrap();
        assert!(err.to_string().contains("unknown directive"), "{err}");
    }

    #[test]
    fn transaction_control_in_a_transactional_migration_is_refused() {
        let err = Script::parse("1_a.up.sql", b"CREATE TABLE t (id int);\nCOMMIT;")
            .err()
            .unwrap();
        assert!(err.to_string().contains("line 2: `COMMIT`"), "{err}");
        let err = Script::parse(
            "1_a.up.sql",
            b"BEGIN;\nCREATE TABLE t (id int);\nCOMMIT;\nBEGIN;\nSELECT 1;\nCOMMIT;",
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("line 3: `COMMIT`"), "{err}");
        let err = Script::parse(
            "1_a.up.sql",
            b"BEGIN ISOLATION LEVEL SERIALIZABLE;\nSELECT 1;\nCOMMIT;",
        )
        .err()
        .unwrap();
        assert!(
            err.to_string().contains("line 1: `BEGIN ISOLATION"),
            "{err}"
        );
        let ok = Script::parse(
            "1_a.up.sql",
            b"-- dbmanager:no-transaction\nBEGIN;\nSELECT 1;\nCOMMIT;",
        )
        .unwrap();
        assert!(!ok.unwrapped);
        assert_eq!(ok.statements.len(), 3);
    }

    #[test]
    fn a_body_wrapped_in_begin_and_commit_runs_in_the_migration_transaction() {
        for (open, close) in [
            ("BEGIN", "COMMIT"),
            ("begin transaction", "end"),
            ("START TRANSACTION", "COMMIT WORK"),
            ("BEGIN WORK", "END TRANSACTION"),
        ] {
            let content = format!(
                "-- wrapped\n{open};\nCREATE TABLE t (id int);\nINSERT INTO t VALUES (1);\n{close};\n"
            );
            let script = Script::parse("1_a.up.sql", content.as_bytes()).unwrap();
            assert!(script.unwrapped, "{open} / {close}");
            assert!(script.transactional);
            let sql: Vec<&str> = script.statements.iter().map(|s| s.sql.as_str()).collect();
            assert_eq!(sql, ["CREATE TABLE t (id int)", "INSERT INTO t VALUES (1)"]);
            assert_eq!(
                script.checksum,
                checksum(&content),
                "over the file as written"
            );
        }
        let plain = Script::parse("1_a.up.sql", b"CREATE TABLE t (id int);").unwrap();
        assert!(!plain.unwrapped);
    }

    #[test]
    fn unterminated_strings_and_invalid_utf8_are_content_errors() {
        let err = Script::parse("1_a.up.sql", b"SELECT 1;\nSELECT 'oops")
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "migration 1_a.up.sql: line 2: a string constant is not closed"
        );
        let err = Script::parse("1_a.up.sql", &[0xff, 0xfe]).err().unwrap();
        assert!(matches!(err, MigrateError::InvalidContent { .. }));
    }
}
