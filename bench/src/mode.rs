//! How PostgreSQL operations reach the server: a pooled connection checked
//! out per operation, or the multiplexed handle.

use std::fmt;
use std::str::FromStr;

/// How each PostgreSQL operation runs.
///
/// ```
/// use dbmanager_bench::Mode;
///
/// let mode: Mode = "multiplexed".parse().unwrap();
/// assert_eq!(mode, Mode::Multiplexed);
/// assert_eq!(mode.to_string(), "multiplexed");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// Check a connection out of the pool, run the statement, return it.
    #[default]
    Pooled,
    /// `db.postgres()?.multiplexed()`: the statement is pipelined on the
    /// shared connection with the fewest statements in flight.
    Multiplexed,
}

impl Mode {
    /// The name the command line and the reports use.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Pooled => "pooled",
            Mode::Multiplexed => "multiplexed",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Mode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A mode name that is neither `pooled` nor `multiplexed`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown mode `{name}`: expected pooled or multiplexed")]
pub struct ParseModeError {
    /// The name that was given.
    pub name: String,
}

impl FromStr for Mode {
    type Err = ParseModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "pooled" | "pool" => Ok(Mode::Pooled),
            "multiplexed" | "multiplex" => Ok(Mode::Multiplexed),
            other => Err(ParseModeError {
                name: other.to_string(),
            }),
        }
    }
}
