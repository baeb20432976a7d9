//! What one benchmark operation does.

use std::fmt;
use std::str::FromStr;

use dbmanager::Backend;

/// A benchmark workload: what each operation of each task does.
///
/// Parsed from, and displayed as, the names the command line uses:
///
/// | name | database | one operation |
/// | --- | --- | --- |
/// | `select1` | PostgreSQL | check out, `SELECT 1` (prepared, cached), return |
/// | `pgbench-S` | PostgreSQL | check out, pgbench's select-only statement on a random account (prepared, cached), return |
/// | `insert` | PostgreSQL | check out, insert one row into the bench table, return |
/// | `ping` | MongoDB | `{ping: 1}` on `admin` |
/// | `find-by-id` | MongoDB | `find_one` by a random `_id` among seeded documents |
///
/// ```
/// use dbmanager_bench::Workload;
///
/// let workload: Workload = "pgbench-S".parse().unwrap();
/// assert_eq!(workload, Workload::PgbenchS);
/// assert_eq!(workload.to_string(), "pgbench-S");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Workload {
    /// `SELECT 1` through the pool: the pool's and the driver's overhead on
    /// the shortest possible round trip.
    Select1,
    /// pgbench's built-in select-only script (`pgbench -S`): `SELECT abalance
    /// FROM pgbench_accounts WHERE aid = $1` with a uniformly random `aid`
    /// over the scale's rows, as a prepared statement (`-M prepared`). Needs
    /// a dataset made by `pgbench -i`.
    PgbenchS,
    /// One single-row `INSERT` per operation into a table the harness
    /// creates ([`super::BenchOptions::insert_table`]).
    Insert,
    /// MongoDB `{ping: 1}`: the client's and the pool's overhead on the
    /// shortest round trip.
    MongoPing,
    /// MongoDB `find_one({_id})` on a random one of the documents the
    /// harness seeds ([`super::BenchOptions::mongo_documents`]).
    MongoFindById,
}

impl Workload {
    /// Every workload, in the order the command line lists them.
    pub const ALL: [Workload; 5] = [
        Workload::Select1,
        Workload::PgbenchS,
        Workload::Insert,
        Workload::MongoPing,
        Workload::MongoFindById,
    ];

    /// The name the command line and the reports use.
    pub fn as_str(self) -> &'static str {
        match self {
            Workload::Select1 => "select1",
            Workload::PgbenchS => "pgbench-S",
            Workload::Insert => "insert",
            Workload::MongoPing => "ping",
            Workload::MongoFindById => "find-by-id",
        }
    }

    /// The database the workload runs against.
    pub fn backend(self) -> Backend {
        match self {
            Workload::Select1 | Workload::PgbenchS | Workload::Insert => Backend::Postgres,
            Workload::MongoPing | Workload::MongoFindById => Backend::Mongodb,
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Workload {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A workload name that is not one of [`Workload::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown workload `{name}`: expected one of select1, pgbench-S, insert, ping, find-by-id")]
pub struct ParseWorkloadError {
    /// The name that was given.
    pub name: String,
}

impl FromStr for Workload {
    type Err = ParseWorkloadError;

    /// Parses a workload name. `pgbench-S` is matched exactly (pgbench's own
    /// flag), the others ignoring ASCII case; `mongo-ping` and
    /// `mongo-find-by-id` are accepted as aliases.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim();
        if name == "pgbench-S" {
            return Ok(Workload::PgbenchS);
        }
        match name.to_ascii_lowercase().as_str() {
            "select1" | "select-1" => Ok(Workload::Select1),
            "insert" => Ok(Workload::Insert),
            "ping" | "mongo-ping" => Ok(Workload::MongoPing),
            "find-by-id" | "mongo-find-by-id" => Ok(Workload::MongoFindById),
            _ => Err(ParseWorkloadError {
                name: name.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_workload_parses_back_from_its_name() {
        for workload in Workload::ALL {
            assert_eq!(workload.to_string().parse::<Workload>(), Ok(workload));
        }
    }

    #[test]
    fn pgbench_s_is_case_sensitive_and_unknown_names_are_refused() {
        assert_eq!(
            "pgbench-s".parse::<Workload>().unwrap_err().name,
            "pgbench-s"
        );
        let error = "selects".parse::<Workload>().unwrap_err();
        assert!(error.to_string().contains("select1, pgbench-S"), "{error}");
    }

    #[test]
    fn workloads_serialize_as_their_names() {
        let json = serde_json::to_string(&Workload::MongoFindById).unwrap();
        assert_eq!(json, "\"find-by-id\"");
    }
}
