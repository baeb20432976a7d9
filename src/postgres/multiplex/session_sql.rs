//! Recognising, from the SQL text, statements that need a session of their
//! own: the multiplexed handle refuses them, since its connections are
//! shared by every caller and a `BEGIN` or `SET` from one would change what
//! all the others run in.
//!
//! The check is lexical (keywords outside literals, quoted identifiers and
//! comments), so it runs once per statement text and connection, when the
//! text is first prepared, never per call. What it cannot see (a function
//! that sets a setting, `set_config(..., false)`) is documented instead:
//! anything that needs a session belongs on `db.postgres()?.get()`.

/// Leading keywords of statements that open, end or depend on a session
/// state, and the name they are reported by.
const SESSION_KEYWORDS: &[(&str, &str)] = &[
    ("BEGIN", "BEGIN"),
    ("START", "START TRANSACTION"),
    ("COMMIT", "COMMIT"),
    ("END", "END"),
    ("ROLLBACK", "ROLLBACK"),
    ("ABORT", "ABORT"),
    ("SAVEPOINT", "SAVEPOINT"),
    ("RELEASE", "RELEASE SAVEPOINT"),
    ("PREPARE", "PREPARE"),
    ("EXECUTE", "EXECUTE"),
    ("DEALLOCATE", "DEALLOCATE"),
    ("SET", "SET"),
    ("RESET", "RESET"),
    ("LISTEN", "LISTEN"),
    ("UNLISTEN", "UNLISTEN"),
    ("DECLARE", "DECLARE (a cursor)"),
    ("FETCH", "FETCH"),
    ("MOVE", "MOVE"),
    ("CLOSE", "CLOSE"),
    ("DISCARD", "DISCARD"),
    ("LOCK", "LOCK"),
    ("LOAD", "LOAD"),
];

/// Functions that take session-level advisory locks: held by whichever
/// connection ran them, for as long as it lives.
const SESSION_FUNCTIONS: &[&str] = &[
    "PG_ADVISORY_LOCK",
    "PG_ADVISORY_LOCK_SHARED",
    "PG_TRY_ADVISORY_LOCK",
    "PG_TRY_ADVISORY_LOCK_SHARED",
    "PG_ADVISORY_UNLOCK",
    "PG_ADVISORY_UNLOCK_SHARED",
    "PG_ADVISORY_UNLOCK_ALL",
];

/// What in `sql` needs a session, if anything recognisable does.
pub(crate) fn session_statement(sql: &str) -> Option<&'static str> {
    let words = Words::new(sql);
    let mut previous: Option<String> = None;
    let mut first = true;
    let mut creating = false;
    let mut selecting = false;
    for word in words {
        let upper = word.to_ascii_uppercase();
        if first {
            if let Some((_, name)) = SESSION_KEYWORDS.iter().find(|(k, _)| *k == upper) {
                return Some(name);
            }
            creating = upper == "CREATE";
            selecting = upper == "SELECT" || upper == "WITH";
            first = false;
        } else if creating && matches!(upper.as_str(), "TEMP" | "TEMPORARY") {
            return Some("CREATE TEMP TABLE");
        } else if creating && !matches!(upper.as_str(), "GLOBAL" | "LOCAL" | "OR" | "REPLACE") {
            creating = false;
        }
        if selecting
            && previous.as_deref() == Some("INTO")
            && matches!(upper.as_str(), "TEMP" | "TEMPORARY")
        {
            return Some("SELECT INTO TEMP");
        }
        if SESSION_FUNCTIONS.contains(&upper.as_str()) {
            return Some("a session advisory lock");
        }
        previous = Some(upper);
    }
    None
}

/// The bare words of a SQL text, skipping string literals (also `E''` and
/// dollar-quoted), quoted identifiers, comments and punctuation.
struct Words<'a> {
    sql: &'a str,
    at: usize,
}

impl<'a> Words<'a> {
    fn new(sql: &'a str) -> Self {
        Words { sql, at: 0 }
    }

    /// Skips from `self.at` (just past an opening `quote`) to past the
    /// closing one; a doubled quote is part of the text.
    fn skip_quoted(&mut self, quote: u8) {
        let bytes = self.sql.as_bytes();
        while self.at < bytes.len() {
            if bytes[self.at] == quote {
                if bytes.get(self.at + 1) == Some(&quote) {
                    self.at += 2;
                    continue;
                }
                self.at += 1;
                return;
            }
            self.at += 1;
        }
    }

    /// At a `$`: skips a dollar-quoted string (`$$...$$`, `$tag$...$tag$`)
    /// and returns true, or returns false for a parameter (`$1`).
    fn skip_dollar_quoted(&mut self) -> bool {
        let rest = &self.sql[self.at..];
        let Some(end) = rest[1..].find('$') else {
            return false;
        };
        let tag = &rest[..end + 2];
        if !tag[1..tag.len() - 1]
            .bytes()
            .all(|b| b.is_ascii_alphabetic() || b == b'_')
        {
            return false;
        }
        match rest[tag.len()..].find(tag) {
            Some(close) => self.at += tag.len() + close + tag.len(),
            None => self.at = self.sql.len(),
        }
        true
    }
}

impl<'a> Iterator for Words<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let bytes = self.sql.as_bytes();
        while self.at < bytes.len() {
            let b = bytes[self.at];
            match b {
                b'\'' | b'"' => {
                    self.at += 1;
                    self.skip_quoted(b);
                }
                b'-' if bytes.get(self.at + 1) == Some(&b'-') => {
                    match self.sql[self.at..].find('\n') {
                        Some(end) => self.at += end + 1,
                        None => self.at = bytes.len(),
                    }
                }
                b'/' if bytes.get(self.at + 1) == Some(&b'*') => {
                    // Comments nest in PostgreSQL.
                    let mut depth = 0usize;
                    while self.at < bytes.len() {
                        if self.sql[self.at..].starts_with("/*") {
                            depth += 1;
                            self.at += 2;
                        } else if self.sql[self.at..].starts_with("*/") {
                            depth -= 1;
                            self.at += 2;
                            if depth == 0 {
                                break;
                            }
                        } else {
                            self.at += 1;
                        }
                    }
                }
                b'$' if self.skip_dollar_quoted() => {}
                _ if b.is_ascii_alphabetic() || b == b'_' => {
                    let start = self.at;
                    while self.at < bytes.len()
                        && (bytes[self.at].is_ascii_alphanumeric()
                            || bytes[self.at] == b'_'
                            || bytes[self.at] == b'$')
                    {
                        self.at += 1;
                    }
                    // `E'...'`, `U&'...'` and `B'...'`: the prefix is no word.
                    if bytes.get(self.at) == Some(&b'\'') && self.at - start == 1 {
                        continue;
                    }
                    return Some(&self.sql[start..self.at]);
                }
                _ => self.at += 1,
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::session_statement;

    #[test]
    fn transactions_settings_listen_cursors_and_temp_tables_are_recognised() {
        for (sql, name) in [
            ("BEGIN", "BEGIN"),
            ("  begin isolation level serializable", "BEGIN"),
            ("START TRANSACTION", "START TRANSACTION"),
            ("commit", "COMMIT"),
            ("-- a comment\nROLLBACK", "ROLLBACK"),
            ("/* a /* nested */ comment */ SET search_path = x", "SET"),
            ("set local statement_timeout = 0", "SET"),
            ("RESET ALL", "RESET"),
            ("LISTEN jobs", "LISTEN"),
            ("DECLARE c CURSOR FOR SELECT 1", "DECLARE (a cursor)"),
            ("CREATE TEMP TABLE t (id int)", "CREATE TEMP TABLE"),
            (
                "create global temporary table t (id int)",
                "CREATE TEMP TABLE",
            ),
            ("SELECT * INTO TEMP t FROM x", "SELECT INTO TEMP"),
            ("SELECT pg_advisory_lock($1)", "a session advisory lock"),
            ("LOCK TABLE t", "LOCK"),
        ] {
            assert_eq!(session_statement(sql), Some(name), "{sql}");
        }
    }

    #[test]
    fn plain_statements_and_keywords_inside_literals_pass() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "SELECT 'BEGIN', \"set\" FROM t",
            "SELECT $$ SET x $$, $tag$ LISTEN $tag$",
            "INSERT INTO t (v) VALUES (E'it''s BEGIN')",
            "UPDATE t SET v = $1 WHERE id = $2",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "CREATE TABLE temp_things (id int)",
            "SELECT pg_advisory_xact_lock(1)",
            "NOTIFY jobs",
            "INSERT INTO temp (id) VALUES (1)",
            "",
        ] {
            assert_eq!(session_statement(sql), None, "{sql}");
        }
    }
}
