//! Trace spans under OpenTelemetry's database semantic conventions.
//!
//! Spans go through `tracing` only: an application that wants them in an
//! OpenTelemetry backend adds `tracing-opentelemetry` to its own subscriber
//! (docs/operations.md, "Traces"), which reads the attribute names below,
//! `otel.name` (the exported span name), `otel.kind` and
//! `otel.status_code`. The crate itself depends on no OpenTelemetry SDK.
//!
//! Every field a span may get is declared when it is made (`tracing` cannot
//! add fields later) and recorded when known. A span nobody listens to is
//! `Span::none()`: creating and recording it costs an interest check.

use tracing::Span;

use crate::error::Error;

/// Whether any subscriber may record an INFO span at all: the static and
/// current maximum levels, which are plain loads. The per-call spans (a
/// checkout, a multiplexed statement) are skipped without being built when
/// this is false, the usual case without tracing; otherwise the span is
/// built and its own interest decides (a subscriber may select spans by
/// name, target or field, which only the span's own callsite answers).
#[cfg(feature = "postgres")]
pub(crate) fn info_spans_possible() -> bool {
    use tracing::level_filters::{LevelFilter, STATIC_MAX_LEVEL};
    tracing::Level::INFO <= STATIC_MAX_LEVEL && tracing::Level::INFO <= LevelFilter::current()
}

/// `db.system.name` of PostgreSQL.
#[cfg(feature = "postgres")]
pub(crate) const POSTGRESQL: &str = "postgresql";
/// `db.system.name` of MongoDB.
#[cfg(feature = "mongodb")]
pub(crate) const MONGODB: &str = "mongodb";

/// What every span about one server carries: `db.namespace`,
/// `server.address`, `server.port`. Never credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Peer {
    /// The database name.
    pub namespace: String,
    /// The (first) host name, or the socket folder of a Unix socket.
    pub address: String,
    /// Its port.
    pub port: u16,
}

/// Records a failure on `span`: `error.type` (the SQLSTATE when the server
/// answered with one, as the conventions ask, else how a connect failed or
/// the error's kind),
/// `db.response.status_code` and `otel.status_code = "ERROR"`.
pub(crate) fn record_error(span: &Span, error: &Error) {
    if span.is_disabled() {
        return;
    }
    let sqlstate = error.sqlstate();
    if let Some(code) = sqlstate {
        span.record("db.response.status_code", code);
    }
    // A failed connect says how it failed (`refused`, `timeout`, ...).
    let kind = match error {
        Error::Connect { kind, .. } => kind.as_str(),
        other => other.kind(),
    };
    span.record("error.type", sqlstate.unwrap_or(kind));
    span.record("otel.status_code", "ERROR");
}

/// `db.operation.name` of a SQL statement: its first keyword when it is one
/// of the common ones, upper-case (`SELECT`, `INSERT`, ...). Low
/// cardinality by construction, and nothing of the statement's values.
#[cfg(feature = "postgres")]
pub(crate) fn sql_operation(sql: &str) -> Option<&'static str> {
    const KEYWORDS: &[&str] = &[
        "SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "WITH", "VALUES", "CALL", "DO", "COPY",
        "CREATE", "ALTER", "DROP", "TRUNCATE", "GRANT", "REVOKE", "COMMENT", "ANALYZE", "VACUUM",
        "REFRESH", "EXPLAIN", "SHOW", "TABLE", "NOTIFY", "BEGIN", "COMMIT", "ROLLBACK",
    ];
    let rest = sql.trim_start_matches(|c: char| c.is_whitespace() || c == '(');
    let end = rest
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(rest.len());
    let word = &rest[..end];
    KEYWORDS
        .iter()
        .find(|k| k.eq_ignore_ascii_case(word))
        .copied()
}

#[cfg(all(test, feature = "postgres"))]
mod tests {
    use super::sql_operation;

    #[test]
    fn the_operation_is_the_first_keyword_and_nothing_else() {
        assert_eq!(sql_operation("  select $1::int"), Some("SELECT"));
        assert_eq!(sql_operation("(SELECT 1) UNION (SELECT 2)"), Some("SELECT"));
        assert_eq!(sql_operation("insert into t values (1)"), Some("INSERT"));
        assert_eq!(sql_operation("selectx 1"), None);
        assert_eq!(sql_operation("secret_function('pw')"), None);
        assert_eq!(sql_operation(""), None);
    }
}
