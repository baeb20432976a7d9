//! Classifying driver errors: what kind of failure a PostgreSQL, MongoDB or
//! I/O error is, and a complete, readable description of a PostgreSQL one.
//! The retry loop, health and the crate's own errors all ask here.

use super::kind::FailureKind;

pub(crate) fn classify_io(error: &std::io::Error) -> FailureKind {
    use std::io::ErrorKind as K;
    match error.kind() {
        K::ConnectionRefused => FailureKind::Refused,
        K::ConnectionReset
        | K::ConnectionAborted
        | K::BrokenPipe
        | K::UnexpectedEof
        | K::NotConnected => FailureKind::Reset,
        K::TimedOut | K::WouldBlock => FailureKind::Timeout,
        _ => FailureKind::Io,
    }
}

/// Finds an I/O error anywhere in an error's chain.
#[cfg(feature = "postgres")]
fn io_in_chain<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        current = e.source();
    }
    None
}

/// The `routine` field of the error the pool hands the requests owed on a
/// connection it closed for silence (`postgres.silence_timeout`): it
/// carries SQLSTATE 08006 like a server's error, but the server never
/// answered.
#[cfg(feature = "postgres")]
pub(crate) const SILENCE_ROUTINE: &str = "dbmanager_silence_timeout";

/// Whether `error` is the pool's own error for a connection closed for
/// silence, not an answer from the server: the request's outcome on the
/// server is unknown, as for a connection lost.
#[cfg(feature = "postgres")]
pub(crate) fn is_silence(error: &tokio_postgres::Error) -> bool {
    error
        .as_db_error()
        .is_some_and(|db| db.routine() == Some(SILENCE_ROUTINE))
}

/// Classifies a PostgreSQL error by SQLSTATE, then by I/O cause.
#[cfg(feature = "postgres")]
pub(crate) fn classify_postgres(error: &tokio_postgres::Error) -> FailureKind {
    if let Some(code) = error.code() {
        let code = code.code();
        return match code {
            "28P01" | "28000" => FailureKind::Authentication,
            "3D000" => FailureKind::UnknownDatabase,
            "53300" => FailureKind::TooManyConnections,
            "57P01" | "57P02" | "57P03" => FailureKind::Unavailable,
            "40001" | "40P01" => FailureKind::Conflict,
            _ if code.starts_with("08") => FailureKind::Unavailable,
            // Insufficient resources (disk full, out of memory) may clear.
            _ if code.starts_with("53") => FailureKind::Unavailable,
            _ => FailureKind::Other,
        };
    }
    // tokio-postgres exposes no accessor for its TLS error kind; its
    // message is the only way to tell a TLS failure apart. It comes before
    // the I/O check: a failed handshake (untrusted certificate) arrives as
    // an I/O error inside the TLS one, and must not be retried.
    if error.to_string().contains("TLS") {
        // A connection cut during the handshake (a restarting server, a
        // proxy) is transient like any other; a refused certificate or a
        // server without TLS is not.
        return match io_in_chain(error).map(classify_io) {
            Some(
                kind @ (FailureKind::Reset
                | FailureKind::Refused
                | FailureKind::Timeout
                | FailureKind::Unavailable),
            ) => kind,
            _ => FailureKind::Tls,
        };
    }
    if let Some(io) = io_in_chain(error) {
        return classify_io(io);
    }
    // The driver's own authentication failures (no SQLSTATE): above all
    // `channel_binding=require` against a server that did not use channel
    // binding (no TLS, or SCRAM without -PLUS). As permanent as a wrong
    // password. Its message is the only way to tell, as for TLS above.
    if error.to_string().starts_with("authentication error") {
        return FailureKind::Authentication;
    }
    if error.is_closed() {
        return FailureKind::Reset;
    }
    FailureKind::Other
}

/// Classifies a MongoDB driver error.
#[cfg(feature = "mongodb")]
pub(crate) fn classify_mongo(error: &mongodb::error::Error) -> FailureKind {
    use mongodb::error::ErrorKind as K;
    match error.kind.as_ref() {
        K::Authentication { .. } => FailureKind::Authentication,
        // The selection error carries the monitor's last error in its
        // message: a certificate the driver refused will not fix itself.
        K::ServerSelection { message, .. } if message.to_lowercase().contains("certificate") => {
            FailureKind::Tls
        }
        K::ServerSelection { .. } => FailureKind::Timeout,
        K::Io(io) => classify_io(io),
        K::DnsResolve { .. } => FailureKind::Io,
        K::ConnectionPoolCleared { .. } => FailureKind::Reset,
        K::InvalidTlsConfig { .. } => FailureKind::Tls,
        K::Command(command) => match command.code {
            18 => FailureKind::Authentication,
            112 => FailureKind::Conflict,
            // HostUnreachable, HostNotFound, NetworkTimeout, ShutdownInProgress,
            // PrimarySteppedDown, InterruptedAtShutdown, InterruptedDueToReplStateChange,
            // NotWritablePrimary, NotPrimaryNoSecondaryOk, NotPrimaryOrSecondary,
            // SocketException, ExceededTimeLimit.
            6 | 7 | 89 | 91 | 189 | 11600 | 11602 | 10107 | 13435 | 13436 | 9001 | 262 => {
                FailureKind::Unavailable
            }
            _ if error.contains_label("TransientTransactionError") => FailureKind::Conflict,
            _ => FailureKind::Other,
        },
        _ if error.contains_label("RetryableWriteError")
            || error.contains_label("TransientTransactionError") =>
        {
            FailureKind::Unavailable
        }
        _ => FailureKind::Other,
    }
}

/// A readable, complete description of a tokio-postgres error: the
/// server's message and SQLSTATE for database errors, the whole cause chain
/// otherwise (tokio-postgres' own `Display` shows only "db error").
#[cfg(feature = "postgres")]
pub fn describe_postgres(error: &tokio_postgres::Error) -> String {
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
