//! What an error is about (which database) and what kind of failure it is,
//! as far as retrying is concerned.

use std::fmt;

/// Which database an error, a health component or a metric is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Backend {
    /// PostgreSQL.
    Postgres,
    /// MongoDB.
    Mongodb,
}

impl Backend {
    /// The short lowercase name used in health JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Mongodb => "mongodb",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Postgres => "PostgreSQL",
            Backend::Mongodb => "MongoDB",
        })
    }
}

/// Why an attempt failed, as far as retrying is concerned.
///
/// [`FailureKind::is_transient`] is the classification the start-up
/// connect retry and [`crate::retry::retry`] use: transient kinds are
/// retried, the others fail at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// The server refused the TCP connection (nothing listens yet).
    Refused,
    /// The connection was reset or closed while being set up.
    Reset,
    /// Connecting, or selecting a server, took longer than its timeout.
    Timeout,
    /// Another I/O error, including host name resolution.
    Io,
    /// The server is starting up, recovering or shutting down
    /// (SQLSTATE 57P03, 57P01, 57P02, class 08).
    Unavailable,
    /// The server has no connection slot left (SQLSTATE 53300).
    TooManyConnections,
    /// A transaction lost a serialization conflict or a deadlock (SQLSTATE
    /// 40001, 40P01; MongoDB WriteConflict): running it again can succeed.
    Conflict,
    /// The credentials were refused (SQLSTATE 28P01, 28000; MongoDB
    /// authentication failure).
    Authentication,
    /// The database does not exist (SQLSTATE 3D000).
    UnknownDatabase,
    /// The TLS handshake failed or TLS was required but is not available.
    Tls,
    /// Anything else the server or the driver reported; not retried.
    Other,
}

impl FailureKind {
    /// Whether a later attempt may succeed without changing anything.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Self::Refused
                | Self::Reset
                | Self::Timeout
                | Self::Io
                | Self::Unavailable
                | Self::TooManyConnections
                | Self::Conflict
        )
    }

    /// A short snake_case name, used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Reset => "reset",
            Self::Timeout => "timeout",
            Self::Io => "io",
            Self::Unavailable => "unavailable",
            Self::TooManyConnections => "too_many_connections",
            Self::Conflict => "conflict",
            Self::Authentication => "authentication",
            Self::UnknownDatabase => "unknown_database",
            Self::Tls => "tls",
            Self::Other => "other",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
