//! From [`PostgresConfig`] to a `tokio_postgres::Config`, and from a failed
//! connect to a typed, redacted [`Error::Connect`].

use std::str::FromStr;
use std::time::Duration;

use crate::config::{DatabaseUrl, PostgresConfig, scrub};
use crate::error::{Backend, Error, FailureKind};
use crate::retry::classify_postgres;

/// Parses a URL or key/value string with tokio-postgres, describing a
/// failure without the secret.
pub(crate) fn parse_config(url: &DatabaseUrl) -> Result<tokio_postgres::Config, String> {
    tokio_postgres::Config::from_str(url.expose()).map_err(|e| {
        let secrets: Vec<String> = url.password().into_iter().collect();
        format!(
            "is not accepted by the PostgreSQL driver: {}",
            scrub(&describe_error(&e), &secrets)
        )
    })
}

/// The driver configuration for a pool: the URL plus the session settings,
/// keepalives and timeouts of `[postgres]`. Session settings travel in the
/// startup packet (`options=-c ...`), so they cost no round trip.
pub(crate) fn driver_config(
    config: &PostgresConfig,
    url: &DatabaseUrl,
) -> Result<tokio_postgres::Config, Error> {
    let mut pg = parse_config(url).map_err(|problem| Error::config("postgres.url", problem))?;
    if pg.get_application_name().is_none() {
        pg.application_name(&config.application_name);
    }
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(config.pool.connect_timeout);
    }
    pg.keepalives(config.keepalives);
    pg.keepalives_idle(config.keepalives_idle);
    let mut options = pg.get_options().unwrap_or_default().to_string();
    let mut set = |name: &str, value: Option<Duration>| {
        if let Some(value) = value {
            if !options.is_empty() {
                options.push(' ');
            }
            options.push_str(&format!("-c {name}={}", value.as_millis().max(1)));
        }
    };
    set("statement_timeout", config.statement_timeout);
    set(
        "idle_in_transaction_session_timeout",
        config.idle_in_transaction_session_timeout,
    );
    if !options.is_empty() {
        pg.options(&options);
    }
    Ok(pg)
}

/// A readable, complete description of a tokio-postgres error: the
/// server's message and SQLSTATE for database errors, the whole cause chain
/// otherwise (tokio-postgres' own `Display` shows only "db error").
pub fn describe_error(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        let mut out = format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
        if let Some(detail) = db.detail() {
            out.push_str(&format!("; detail: {detail}"));
        }
        if let Some(hint) = db.hint() {
            out.push_str(&format!("; hint: {hint}"));
        }
        return out;
    }
    let mut out = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// A failed connection attempt as [`Error::Connect`] (one attempt; the
/// retry loop fills in the totals).
pub(crate) fn connect_error(
    error: &tokio_postgres::Error,
    target: &str,
    secrets: &[String],
) -> Error {
    let kind = classify_postgres(error);
    crate::metrics::connect_error(Backend::Postgres, kind);
    Error::Connect {
        backend: Backend::Postgres,
        target: target.to_string(),
        kind,
        reason: scrub(&describe_error(error), secrets),
        code: error.code().map(|c| c.code().to_string()),
        attempts: 1,
        elapsed: Duration::ZERO,
    }
}

/// A connect that did not finish within the pool's create timeout.
pub(crate) fn create_timeout(target: &str, after: Duration) -> Error {
    crate::metrics::connect_error(Backend::Postgres, FailureKind::Timeout);
    Error::Connect {
        backend: Backend::Postgres,
        target: target.to_string(),
        kind: FailureKind::Timeout,
        reason: format!("opening a connection took longer than {after:?}"),
        code: None,
        attempts: 1,
        elapsed: after,
    }
}
