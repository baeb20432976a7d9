//! Splitting a migration file into statements, so each can be run (and
//! reported) on its own.
//!
//! A `;` ends a statement except inside:
//!
//! - string constants: `'...'` (with `''`), `E'...'` (with `\'` and `''`),
//!   and the `B'..'`, `X'..'`, `N'..'`, `U&'..'` forms;
//! - quoted identifiers: `"..."` (with `""`);
//! - dollar-quoted strings: `$$...$$`, `$tag$...$tag$` (a `$` inside an
//!   identifier, such as `a$b`, and parameters such as `$1` do not start one);
//! - comments: `-- ...` to the end of the line and `/* ... */`, nested;
//! - parentheses (the actions of `CREATE RULE ... DO (...; ...)`);
//! - SQL-standard routine bodies: `BEGIN ATOMIC ... END` of a
//!   `CREATE [OR REPLACE] FUNCTION|PROCEDURE`, where `CASE ... END` nests.
//!
//! These are the rules `psql` applies when it reads a script.

/// One statement of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Statement {
    /// The text, from its first token to before its `;`, comments inside
    /// it kept.
    pub sql: String,
    /// The line (1-based) of its first token.
    pub line: usize,
    /// Its first words, lower-cased (at most four), for classification.
    pub words: Vec<String>,
}

impl Statement {
    /// Whether it begins, ends or aborts a transaction block (`BEGIN`,
    /// `START TRANSACTION`, `COMMIT`, `END`, `ROLLBACK`, `ABORT`), which would
    /// break the transaction a migration runs in. `ROLLBACK TO SAVEPOINT`
    /// is not: it stays inside the transaction.
    pub fn is_transaction_control(&self) -> bool {
        let first = self.words.first().map(String::as_str);
        let second = self.words.get(1).map(String::as_str);
        match first {
            Some("begin" | "start" | "commit" | "end" | "abort") => true,
            Some("rollback") => second != Some("to"),
            _ => false,
        }
    }

    /// The statement on one line (runs of white space collapsed), cut to
    /// `max` characters, with string constants after `PASSWORD` hidden.
    pub fn excerpt(&self, max: usize) -> String {
        excerpt(&self.sql, max)
    }
}

/// A script that cannot be split: an unterminated string, quoted
/// identifier, dollar quote or comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SplitError {
    /// Where the unterminated construct starts.
    pub line: usize,
    /// What is wrong.
    pub problem: String,
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_char(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

/// Splits a script into statements. Statements holding nothing but
/// comments and white space are left out.
pub(crate) fn split(sql: &str) -> Result<Vec<Statement>, SplitError> {
    Splitter::new(sql).run()
}

struct Splitter<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    line: usize,
    statements: Vec<Statement>,
    /// Byte offset and line of the current statement's first token.
    start: Option<(usize, usize)>,
    words: Vec<String>,
    parens: usize,
    /// Open `BEGIN`/`CASE` of a routine body.
    blocks: usize,
    /// Byte ranges of the string constants seen (`'...'`, `E'...'`,
    /// dollar-quoted), an unterminated one running to the end.
    strings: Vec<std::ops::Range<usize>>,
}

impl<'a> Splitter<'a> {
    fn new(text: &'a str) -> Self {
        Splitter {
            text,
            bytes: text.as_bytes(),
            pos: 0,
            line: 1,
            statements: Vec::new(),
            start: None,
            words: Vec::new(),
            parens: 0,
            blocks: 0,
            strings: Vec::new(),
        }
    }

    fn peek(&self, offset: usize) -> Option<u8> {
        self.bytes.get(self.pos + offset).copied()
    }

    fn mark_start(&mut self) {
        if self.start.is_none() {
            self.start = Some((self.pos, self.line));
        }
    }

    /// Advances over `[from, to)`, counting lines.
    fn advance_to(&mut self, to: usize) {
        let to = to.min(self.bytes.len());
        self.line += self.bytes[self.pos..to]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        self.pos = to;
    }

    fn run(&mut self) -> Result<Vec<Statement>, SplitError> {
        while let Some(b) = self.peek(0) {
            match b {
                b'\n' => {
                    self.line += 1;
                    self.pos += 1;
                }
                b if b.is_ascii_whitespace() => self.pos += 1,
                b'-' if self.peek(1) == Some(b'-') => {
                    let end = self.bytes[self.pos..]
                        .iter()
                        .position(|&c| c == b'\n')
                        .map_or(self.bytes.len(), |i| self.pos + i);
                    self.pos = end;
                }
                b'/' if self.peek(1) == Some(b'*') => self.block_comment()?,
                b'\'' => {
                    self.mark_start();
                    self.quoted(b'\'', false, "string constant")?;
                }
                b'"' => {
                    self.mark_start();
                    self.quoted(b'"', false, "quoted identifier")?;
                }
                b'$' => {
                    self.mark_start();
                    self.dollar()?;
                }
                b';' if self.parens == 0 && self.blocks == 0 => {
                    self.finish_statement(self.pos);
                    self.pos += 1;
                }
                b'(' => {
                    self.mark_start();
                    self.parens += 1;
                    self.pos += 1;
                }
                b')' => {
                    self.mark_start();
                    self.parens = self.parens.saturating_sub(1);
                    self.pos += 1;
                }
                b if is_ident_start(b) => {
                    self.mark_start();
                    self.word()?;
                }
                _ => {
                    self.mark_start();
                    self.pos += 1;
                }
            }
        }
        self.finish_statement(self.bytes.len());
        Ok(std::mem::take(&mut self.statements))
    }

    fn finish_statement(&mut self, end: usize) {
        if let Some((start, line)) = self.start.take() {
            let sql = self.text[start..end].trim_end().to_string();
            self.statements.push(Statement {
                sql,
                line,
                words: std::mem::take(&mut self.words),
            });
        }
        self.words.clear();
        self.parens = 0;
        self.blocks = 0;
    }

    fn block_comment(&mut self) -> Result<(), SplitError> {
        let line = self.line;
        let mut depth = 0usize;
        while self.pos < self.bytes.len() {
            match (self.peek(0), self.peek(1)) {
                (Some(b'/'), Some(b'*')) => {
                    depth += 1;
                    self.pos += 2;
                }
                (Some(b'*'), Some(b'/')) => {
                    depth -= 1;
                    self.pos += 2;
                    if depth == 0 {
                        return Ok(());
                    }
                }
                (Some(b'\n'), _) => {
                    self.line += 1;
                    self.pos += 1;
                }
                _ => self.pos += 1,
            }
        }
        Err(SplitError {
            line,
            problem: "a /* comment is not closed".into(),
        })
    }

    /// A quoted run starting at `self.pos` (on the opening quote); a
    /// doubled quote stands for itself, and with `backslash` a `\` escapes
    /// the next character.
    fn quoted(&mut self, quote: u8, backslash: bool, what: &str) -> Result<(), SplitError> {
        let line = self.line;
        // An `E` prefix belongs to the constant.
        let opened = if backslash { self.pos - 1 } else { self.pos };
        let mut i = self.pos + 1;
        while i < self.bytes.len() {
            let b = self.bytes[i];
            if backslash && b == b'\\' {
                i += 2;
            } else if b == quote {
                if self.bytes.get(i + 1) == Some(&quote) {
                    i += 2;
                } else {
                    if quote == b'\'' {
                        self.strings.push(opened..i + 1);
                    }
                    self.advance_to(i + 1);
                    return Ok(());
                }
            } else {
                i += 1;
            }
        }
        if quote == b'\'' {
            self.strings.push(opened..self.bytes.len());
        }
        Err(SplitError {
            line,
            problem: format!("a {what} is not closed"),
        })
    }

    /// A `$` not inside an identifier: a dollar quote (`$$`, `$tag$`) or a
    /// parameter / operator character.
    fn dollar(&mut self) -> Result<(), SplitError> {
        let rest = &self.bytes[self.pos + 1..];
        let tag_len = if rest.first() == Some(&b'$') {
            Some(0)
        } else if rest.first().is_some_and(|&b| is_ident_start(b)) {
            let len = rest
                .iter()
                .position(|&b| !(is_ident_start(b) || b.is_ascii_digit()))
                .unwrap_or(rest.len());
            (rest.get(len) == Some(&b'$')).then_some(len)
        } else {
            None
        };
        let Some(tag_len) = tag_len else {
            self.pos += 1;
            return Ok(());
        };
        let delimiter = &self.text[self.pos..self.pos + tag_len + 2];
        let body = self.pos + tag_len + 2;
        let line = self.line;
        match self.text[body..].find(delimiter) {
            Some(i) => {
                let end = body + i + delimiter.len();
                self.strings.push(self.pos..end);
                self.advance_to(end);
                Ok(())
            }
            None => {
                self.strings.push(self.pos..self.bytes.len());
                Err(SplitError {
                    line,
                    problem: format!(
                        "a dollar-quoted string opened with {delimiter} is not closed"
                    ),
                })
            }
        }
    }

    /// An identifier or key word; `E'...'` strings start with one.
    fn word(&mut self) -> Result<(), SplitError> {
        let start = self.pos;
        let len = self.bytes[start..]
            .iter()
            .position(|&b| !is_ident_char(b))
            .unwrap_or(self.bytes.len() - start);
        self.pos = start + len;
        let word = &self.text[start..self.pos];
        if word.eq_ignore_ascii_case("e") && self.peek(0) == Some(b'\'') {
            return self.quoted(b'\'', true, "string constant");
        }
        let word = word.to_ascii_lowercase();
        if self.is_routine() {
            match word.as_str() {
                "begin" | "case" => self.blocks += 1,
                "end" => self.blocks = self.blocks.saturating_sub(1),
                _ => {}
            }
        }
        if self.words.len() < 4 {
            self.words.push(word);
        }
        Ok(())
    }

    /// `CREATE [OR REPLACE] FUNCTION|PROCEDURE`: its body may be
    /// `BEGIN ATOMIC ... END` with `;` inside.
    fn is_routine(&self) -> bool {
        let w: Vec<&str> = self.words.iter().map(String::as_str).collect();
        matches!(
            w.as_slice(),
            ["create", "function" | "procedure", ..]
                | ["create", "or", "replace", "function" | "procedure", ..]
        )
    }
}

/// A statement on one line, shortened, with passwords hidden.
pub(crate) fn excerpt(sql: &str, max: usize) -> String {
    // Hidden before the lines are joined: joined, a `--` comment inside the
    // statement would run to its end and hide the strings after it from
    // the lexer.
    let hidden = hide_passwords(sql);
    let redacted = hidden.split_whitespace().collect::<Vec<_>>().join(" ");
    if redacted.chars().count() <= max {
        return redacted;
    }
    let cut: String = redacted.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}

/// Hides every string constant of a statement that mentions a password
/// (`CREATE ROLE ... PASSWORD '...'`, a `dblink_connect('... password=...')`,
/// a dollar-quoted `PASSWORD $p$...$p$`), so a failing statement does not
/// put the password into an error or a log. Other statements are unchanged.
fn hide_passwords(sql: &str) -> String {
    if !sql.to_ascii_lowercase().contains("password") {
        return sql.to_string();
    }
    // The splitter's own lexing finds the constants; an unterminated one
    // is recorded up to the end, so the error it also reports is moot.
    let mut lexer = Splitter::new(sql);
    let _ = lexer.run();
    let mut out = String::with_capacity(sql.len());
    let mut copied = 0;
    for string in &lexer.strings {
        out.push_str(&sql[copied..string.start]);
        out.push_str("'[redacted]'");
        copied = string.end;
    }
    out.push_str(&sql[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(sql: &str) -> Vec<String> {
        split(sql).unwrap().into_iter().map(|s| s.sql).collect()
    }

    #[test]
    fn plain_statements_split_at_semicolons_with_their_first_line() {
        let statements =
            split("CREATE TABLE a (id int);\n\n  INSERT INTO a VALUES (1);\nSELECT 1").unwrap();
        let got: Vec<(&str, usize)> = statements
            .iter()
            .map(|s| (s.sql.as_str(), s.line))
            .collect();
        assert_eq!(
            got,
            [
                ("CREATE TABLE a (id int)", 1),
                ("INSERT INTO a VALUES (1)", 3),
                ("SELECT 1", 4)
            ]
        );
    }

    #[test]
    fn semicolons_inside_strings_and_identifiers_do_not_split() {
        assert_eq!(
            texts("INSERT INTO t VALUES ('a;b', 'it''s; fine'); SELECT \"odd;\"\"name\" FROM t;"),
            [
                "INSERT INTO t VALUES ('a;b', 'it''s; fine')",
                "SELECT \"odd;\"\"name\" FROM t"
            ]
        );
    }

    #[test]
    fn escape_strings_honour_backslash_quotes() {
        assert_eq!(
            texts(r"SELECT E'it\'s; \\'; SELECT e'x\';y'; SELECT 'a\'; SELECT 2"),
            [
                r"SELECT E'it\'s; \\'",
                r"SELECT e'x\';y'",
                r"SELECT 'a\'",
                "SELECT 2"
            ]
        );
    }

    #[test]
    fn an_identifier_ending_in_e_is_not_an_escape_string_prefix() {
        // `type'x\'` is a typed literal: `'x\'` is a standard string.
        assert_eq!(
            texts(r"SELECT type'x\'; SELECT 1"),
            [r"SELECT type'x\'", "SELECT 1"]
        );
    }

    #[test]
    fn dollar_quotes_with_and_without_tags() {
        let sql = "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;\n\
                   DO $body$ BEGIN PERFORM 'x;'; RAISE NOTICE $q$;$q$; END $body$;\n\
                   SELECT 3";
        let got = texts(sql);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[1].starts_with("DO $body$") && got[1].ends_with("END $body$"));
    }

    #[test]
    fn parameters_and_dollars_inside_identifiers_are_not_quotes() {
        assert_eq!(
            texts("PREPARE p AS SELECT $1; SELECT a$b$ FROM t; SELECT 2"),
            ["PREPARE p AS SELECT $1", "SELECT a$b$ FROM t", "SELECT 2"]
        );
    }

    #[test]
    fn comments_hide_semicolons_and_nest() {
        let sql =
            "-- one; two\nSELECT 1 -- trailing; comment\n;\n/* a /* nested; */ still; */ SELECT 2;";
        let statements = split(sql).unwrap();
        assert_eq!(statements.len(), 2);
        assert_eq!(statements[0].line, 2);
        assert_eq!(statements[1].sql, "SELECT 2");
        assert_eq!(statements[1].line, 4);
    }

    #[test]
    fn comment_only_statements_are_dropped() {
        assert!(
            split("-- nothing\n/* at all */\n;\n  ;")
                .unwrap()
                .is_empty()
        );
        assert!(split("").unwrap().is_empty());
    }

    #[test]
    fn atomic_routine_bodies_and_rule_actions_stay_whole() {
        let sql = "CREATE OR REPLACE FUNCTION f(x int) RETURNS int LANGUAGE sql\n\
                   BEGIN ATOMIC\n  SELECT CASE WHEN x > 0 THEN 1 ELSE 0 END;\n  SELECT x;\nEND;\n\
                   CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO l VALUES (1); INSERT INTO l VALUES (2));\n\
                   SELECT 'end'";
        let got = texts(sql);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[0].ends_with("END"), "{}", got[0]);
        assert!(got[1].ends_with("VALUES (2))"), "{}", got[1]);
    }

    #[test]
    fn unterminated_constructs_are_errors_naming_their_line() {
        for (sql, line, what) in [
            ("SELECT 1;\nSELECT 'abc", 2, "string constant"),
            ("SELECT \"abc", 1, "quoted identifier"),
            ("SELECT 1;\n\nSELECT $x$ abc $y$", 3, "$x$"),
            ("SELECT 1; /* /* */", 1, "comment"),
            ("SELECT E'abc\\'", 1, "string constant"),
        ] {
            let err = split(sql).unwrap_err();
            assert_eq!(err.line, line, "{sql}");
            assert!(err.problem.contains(what), "{sql}: {}", err.problem);
        }
    }

    #[test]
    fn line_numbers_count_newlines_inside_strings_and_comments() {
        let sql = "SELECT 'a\nb';\n/* x\ny */\nSELECT $$\n$$;\nSELECT 3;";
        let lines: Vec<usize> = split(sql).unwrap().iter().map(|s| s.line).collect();
        assert_eq!(lines, [1, 5, 7]);
    }

    #[test]
    fn transaction_control_is_recognised() {
        let statements = split(
            "BEGIN; start transaction; COMMIT; END; ROLLBACK; abort; ROLLBACK TO SAVEPOINT s; SELECT 1",
        )
        .unwrap();
        let control: Vec<bool> = statements
            .iter()
            .map(Statement::is_transaction_control)
            .collect();
        assert_eq!(control, [true, true, true, true, true, true, false, false]);
    }

    #[test]
    fn excerpts_are_one_line_short_and_hide_passwords() {
        let statement = &split("CREATE ROLE app\n   LOGIN PASSWORD 'hunter2';").unwrap()[0];
        assert_eq!(
            statement.excerpt(100),
            "CREATE ROLE app LOGIN PASSWORD '[redacted]'"
        );
        let long = excerpt(&"x".repeat(50), 10);
        assert_eq!(long.chars().count(), 10);
        assert!(long.ends_with('…'));
        assert_eq!(
            excerpt(
                "ALTER ROLE a PASSWORD E'it\\'s' VALID UNTIL 'infinity'",
                100
            ),
            "ALTER ROLE a PASSWORD '[redacted]' VALID UNTIL '[redacted]'"
        );
        for (sql, secret) in [
            (
                "SELECT dblink_connect('r', 'host=r1 user=etl password=S3cret')",
                "S3cret",
            ),
            ("ALTER ROLE app PASSWORD $p$S3cret$p$", "S3cret"),
            ("ALTER ROLE app PASSWORD $$S3cret$$", "S3cret"),
            ("ALTER ROLE \"it's\" PASSWORD 'S3cret'", "S3cret"),
            ("ALTER ROLE app PASSWORD 'unterminated S3cret", "S3cret"),
            ("ALTER ROLE app -- rotated\n PASSWORD 'S3cret'", "S3cret"),
        ] {
            let shown = excerpt(sql, 200);
            assert!(!shown.contains(secret), "{sql} -> {shown}");
        }
        assert_eq!(
            excerpt("INSERT INTO t VALUES ('kept', $1)", 100),
            "INSERT INTO t VALUES ('kept', $1)"
        );
        assert_eq!(
            excerpt("ALTER ROLE \"it's\" PASSWORD 'x'", 100),
            "ALTER ROLE \"it's\" PASSWORD '[redacted]'"
        );
    }

    #[test]
    fn non_ascii_text_is_kept_intact() {
        assert_eq!(
            texts("INSERT INTO t VALUES ('héllo; wörld'); SELECT ünïcode FROM t"),
            [
                "INSERT INTO t VALUES ('héllo; wörld')",
                "SELECT ünïcode FROM t"
            ]
        );
    }
}
