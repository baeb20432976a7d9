//! How long, how wide and on what a benchmark runs.

use std::time::Duration;

use super::{Mode, Workload};

/// Settings of one benchmark run.
///
/// ```
/// use std::time::Duration;
/// use dbmanager_bench::{BenchOptions, Workload};
///
/// let options = BenchOptions {
///     workload: Workload::PgbenchS,
///     tasks: 16,
///     duration: Duration::from_secs(10),
///     ..BenchOptions::default()
/// };
/// assert_eq!(options.warmup, Duration::from_secs(2));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchOptions {
    /// What each operation does. Default: `select1`.
    pub workload: Workload,
    /// How PostgreSQL operations reach the server: a pooled connection or
    /// the multiplexed handle. Default: `pooled`.
    pub mode: Mode,
    /// Concurrent tasks, each running operations back to back (pgbench's
    /// `-c`). More tasks than pool connections measures queueing for a
    /// connection. Default: 8.
    pub tasks: usize,
    /// How long operations are measured, after the warm-up. Default: 10 s.
    pub duration: Duration,
    /// How long the tasks run before measuring starts, so caches,
    /// statement caches and the scheduler settle. Connections are opened
    /// before the warm-up and never counted. Default: 2 s.
    pub warmup: Duration,
    /// The table the `insert` workload creates (if missing) and inserts
    /// into. Default: `dbmanager_bench_insert`.
    pub insert_table: String,
    /// The collection, in the manager's default MongoDB database, that
    /// `find-by-id` seeds and reads. Default: `dbmanager_bench`.
    pub mongo_collection: String,
    /// How many documents `find-by-id` seeds (`_id` 0 to n-1) and picks
    /// from. Default: 1000.
    pub mongo_documents: u32,
    /// With a duration, one more task runs `SELECT pg_sleep(<duration>)`
    /// back to back beside the measured ones, through the same mode, and
    /// is not measured: the head-of-line case, what a slow statement among
    /// the load costs the other callers. PostgreSQL only. Default: none.
    pub slow_statement: Option<Duration>,
    /// Seed of the tasks' random number generators (`aid` and `_id`
    /// choices), so two runs make the same choices. Default: 42.
    pub seed: u64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            workload: Workload::Select1,
            mode: Mode::Pooled,
            tasks: 8,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            insert_table: "dbmanager_bench_insert".into(),
            mongo_collection: "dbmanager_bench".into(),
            mongo_documents: 1000,
            slow_statement: None,
            seed: 42,
        }
    }
}

impl BenchOptions {
    /// Options for `workload` with every other setting at its default.
    pub fn new(workload: Workload) -> Self {
        BenchOptions {
            workload,
            ..BenchOptions::default()
        }
    }

    /// Checks the settings together.
    pub(crate) fn check(&self) -> crate::Result<()> {
        if self.tasks == 0 {
            return Err(crate::BenchError::option(
                "bench.tasks",
                "must be at least 1",
            ));
        }
        if self.duration.is_zero() {
            return Err(crate::BenchError::option(
                "bench.duration",
                "must be positive",
            ));
        }
        if self.mode == Mode::Multiplexed && self.workload.backend() != dbmanager::Backend::Postgres
        {
            return Err(crate::BenchError::option(
                "bench.mode",
                format!(
                    "`{}` is a MongoDB workload; only PostgreSQL workloads run multiplexed",
                    self.workload
                ),
            ));
        }
        if self.workload == Workload::MongoFindById && self.mongo_documents == 0 {
            return Err(crate::BenchError::option(
                "bench.mongo_documents",
                "must be at least 1 for find-by-id",
            ));
        }
        if self.workload == Workload::Insert && self.insert_table.trim().is_empty() {
            return Err(crate::BenchError::option("bench.insert_table", "is empty"));
        }
        if self.workload == Workload::MongoFindById && self.mongo_collection.trim().is_empty() {
            return Err(crate::BenchError::option(
                "bench.mongo_collection",
                "is empty",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_tasks_or_duration_are_refused_naming_the_setting() {
        let tasks = BenchOptions {
            tasks: 0,
            ..BenchOptions::default()
        };
        assert!(
            tasks
                .check()
                .unwrap_err()
                .to_string()
                .contains("bench.tasks")
        );
        let duration = BenchOptions {
            duration: Duration::ZERO,
            ..BenchOptions::default()
        };
        assert!(
            duration
                .check()
                .unwrap_err()
                .to_string()
                .contains("bench.duration")
        );
        assert!(BenchOptions::default().check().is_ok());
    }
}
