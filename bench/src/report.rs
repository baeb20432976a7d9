//! The result of a benchmark run, as JSON (serde) and as text (`Display`).

use std::fmt;
use std::time::Duration;

use serde::{Serialize, Serializer};

use super::recorder::DurationHistogram;
use super::{Mode, Workload};
use dbmanager::Backend;

/// Percentiles of a duration distribution, in microseconds.
///
/// From an HDR histogram recorded in nanoseconds with three significant
/// digits: every figure is within 0.1 % of the true value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Percentiles {
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// The largest value recorded.
    pub max_us: f64,
    /// The arithmetic mean.
    pub mean_us: f64,
}

impl Percentiles {
    pub(crate) fn of(histogram: &DurationHistogram) -> Self {
        Percentiles {
            p50_us: histogram.quantile_us(0.50),
            p90_us: histogram.quantile_us(0.90),
            p99_us: histogram.quantile_us(0.99),
            p999_us: histogram.quantile_us(0.999),
            max_us: histogram.max_us(),
            mean_us: histogram.mean_us(),
        }
    }
}

impl fmt::Display for Percentiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            Micros(self.p50_us),
            Micros(self.p90_us),
            Micros(self.p99_us),
            Micros(self.p999_us),
            Micros(self.max_us)
        )
    }
}

/// A duration in microseconds, printed with a unit that keeps it readable.
struct Micros(f64);

impl fmt::Display for Micros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.0;
        if us >= 1_000_000.0 {
            write!(f, "{:.2} s", us / 1_000_000.0)
        } else if us >= 10_000.0 {
            write!(f, "{:.1} ms", us / 1000.0)
        } else if us >= 1000.0 {
            write!(f, "{:.2} ms", us / 1000.0)
        } else if us >= 10.0 {
            write!(f, "{us:.0} µs")
        } else {
            write!(f, "{us:.1} µs")
        }
    }
}

/// What a benchmark run measured.
///
/// `Serialize` gives the JSON the command line prints with `--json`
/// (durations in seconds, latencies in microseconds); `Display` gives the
/// human summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct BenchReport {
    /// The workload.
    pub workload: Workload,
    /// The database it ran against.
    pub backend: Backend,
    /// Concurrent tasks.
    pub tasks: usize,
    /// How PostgreSQL operations ran (`pooled` for MongoDB).
    pub mode: Mode,
    /// The `pg_sleep` one unmeasured task ran back to back beside the
    /// others ([`crate::BenchOptions::slow_statement`]), in seconds.
    #[serde(rename = "slow_statement_secs", serialize_with = "optional_seconds")]
    pub slow_statement: Option<Duration>,
    /// The pool's maximum size (the multiplexed handle's connections in
    /// `multiplexed` mode) (PostgreSQL `max_size`, MongoDB
    /// `max_pool_size`).
    pub pool_size: usize,
    /// The measured window, after the warm-up.
    #[serde(rename = "duration_secs", serialize_with = "seconds")]
    pub duration: Duration,
    /// The warm-up before it.
    #[serde(rename = "warmup_secs", serialize_with = "seconds")]
    pub warmup: Duration,
    /// Operations that completed successfully within the window.
    pub operations: u64,
    /// Operations that failed within the window (acquire timeouts
    /// included).
    pub errors: u64,
    /// Failed operations whose failure was a pool wait timeout.
    pub acquire_timeouts: u64,
    /// Successful operations per second.
    pub throughput: f64,
    /// Latency of whole operations (check-out, statement, return).
    pub latency: Percentiles,
    /// Time spent checking a connection out of the pool. `None` for the
    /// MongoDB workloads: the driver checks connections out inside each
    /// operation, out of reach of the caller's clock.
    pub acquire_wait: Option<Percentiles>,
    /// The data the workload ran on (`pgbench scale 10: 1000000 accounts`).
    pub dataset: Option<String>,
    /// The first error seen, to tell what went wrong when `errors > 0`.
    pub first_error: Option<String>,
}

fn seconds<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(value.as_secs_f64())
}

fn optional_seconds<S: Serializer>(
    value: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => serializer.serialize_f64(value.as_secs_f64()),
        None => serializer.serialize_none(),
    }
}

impl BenchReport {
    /// The report as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serializes to JSON")
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "workload      {} ({})", self.workload, self.backend)?;
        if let Some(dataset) = &self.dataset {
            write!(f, ", {dataset}")?;
        }
        writeln!(f)?;
        let on = match self.mode {
            Mode::Pooled => "a pool of",
            Mode::Multiplexed => "multiplexed",
        };
        writeln!(
            f,
            "tasks         {} on {on} {} connection{}",
            self.tasks,
            self.pool_size,
            if self.pool_size == 1 { "" } else { "s" }
        )?;
        writeln!(
            f,
            "duration      {:.1} s after a {:.1} s warm-up",
            self.duration.as_secs_f64(),
            self.warmup.as_secs_f64()
        )?;
        writeln!(
            f,
            "operations    {} ({} errors, {} acquire timeouts)",
            self.operations, self.errors, self.acquire_timeouts
        )?;
        if let Some(sleep) = self.slow_statement {
            writeln!(
                f,
                "slow          one more task runs pg_sleep({:.3}) back to back, unmeasured",
                sleep.as_secs_f64()
            )?;
        }
        writeln!(f, "throughput    {:.1} ops/s", self.throughput)?;
        writeln!(f, "latency       {}", self.latency)?;
        match &self.acquire_wait {
            Some(wait) => writeln!(f, "acquire wait  {wait}")?,
            None if self.mode == Mode::Multiplexed => writeln!(
                f,
                "acquire wait  n/a (no checkout: statements are pipelined)"
            )?,
            None => writeln!(f, "acquire wait  n/a (the driver checks connections out)")?,
        }
        if let Some(error) = &self.first_error {
            writeln!(f, "first error   {error}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::TaskRecord;

    fn report() -> BenchReport {
        let mut record = TaskRecord::new();
        for micros in [100, 200, 300, 5000] {
            record.success(
                Duration::from_micros(micros),
                Some(Duration::from_nanos(800)),
            );
        }
        record.flush();
        BenchReport {
            workload: Workload::PgbenchS,
            backend: Backend::Postgres,
            tasks: 8,
            mode: Mode::Pooled,
            slow_statement: None,
            pool_size: 8,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            operations: 4,
            errors: 0,
            acquire_timeouts: 0,
            throughput: 0.4,
            latency: Percentiles::of(&record.latency),
            acquire_wait: Some(Percentiles::of(&record.acquire_wait)),
            dataset: Some("pgbench scale 1: 100000 accounts".into()),
            first_error: None,
        }
    }

    #[test]
    fn json_names_every_figure_with_its_unit() {
        let json: serde_json::Value = serde_json::from_str(&report().to_json()).unwrap();
        assert_eq!(json["workload"], "pgbench-S");
        assert_eq!(json["backend"], "postgres");
        assert_eq!(json["duration_secs"], 10.0);
        assert_eq!(json["pool_size"], 8);
        let p50 = json["latency"]["p50_us"].as_f64().unwrap();
        assert!((p50 - 200.0).abs() < 0.5, "{p50}");
        let max = json["latency"]["max_us"].as_f64().unwrap();
        assert!((max - 5000.0).abs() < 5.0, "{max}");
        assert!(json["acquire_wait"]["p999_us"].as_f64().unwrap() < 1.0);
    }

    #[test]
    fn text_shows_throughput_and_readable_latencies() {
        let text = report().to_string();
        assert!(
            text.contains("pgbench-S (PostgreSQL), pgbench scale 1"),
            "{text}"
        );
        assert!(text.contains("8 on a pool of 8 connections"), "{text}");
        assert!(text.contains("p50 200 µs"), "{text}");
        assert!(text.contains("max 5.00 ms"), "{text}");
        assert!(text.contains("acquire wait  p50 0.8 µs"), "{text}");
    }
}
