//! Per-task measurements: HDR histograms and counters owned by one task, so
//! the hot path touches no shared state; merged once the run is over.

use std::time::Duration;

use hdrhistogram::Histogram;

use crate::error::BenchError;

/// Significant digits kept by the histograms: values are exact to 0.1 %.
const SIGNIFICANT_DIGITS: u8 = 3;

/// The highest value a histogram tracks before it first grows: 1 ms in
/// nanoseconds. Histograms grow on demand, so a task allocates only for the
/// range its latencies actually span.
const INITIAL_HIGHEST_NS: u64 = 1_000_000;

/// A histogram of durations, in nanoseconds.
#[derive(Debug, Clone)]
pub(crate) struct DurationHistogram(Histogram<u64>);

impl DurationHistogram {
    pub fn new() -> Self {
        let mut histogram = Histogram::new_with_bounds(1, INITIAL_HIGHEST_NS, SIGNIFICANT_DIGITS)
            .expect("valid histogram bounds");
        histogram.auto(true);
        DurationHistogram(histogram)
    }

    #[inline]
    pub fn record(&mut self, value: Duration) {
        let nanos = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        if self.0.record(nanos).is_err() {
            self.0.saturating_record(nanos);
        }
    }

    pub fn merge(&mut self, other: &DurationHistogram) {
        if self.0.add(&other.0).is_err() {
            // Only possible when growing failed; keep what fits.
            for value in other.0.iter_recorded() {
                for _ in 0..value.count_at_value() {
                    self.0.saturating_record(value.value_iterated_to());
                }
            }
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// The value at `quantile` (0 to 1), in microseconds.
    pub fn quantile_us(&self, quantile: f64) -> f64 {
        self.0.value_at_quantile(quantile) as f64 / 1000.0
    }

    pub fn max_us(&self) -> f64 {
        self.0.max() as f64 / 1000.0
    }

    pub fn mean_us(&self) -> f64 {
        self.0.mean() / 1000.0
    }
}

/// Samples a task keeps before adding them to its histograms.
///
/// Recording straight into the histograms touches one counter per sample,
/// scattered over tens of kilobytes of counters per histogram; with
/// hundreds of tasks those counters do not stay in the CPU caches and
/// every sample costs a cache miss. Appending to a short buffer and adding
/// a batch at a time keeps each histogram hot while it is updated.
const BATCH: usize = 512;

/// What one task measured.
#[derive(Debug, Clone)]
pub(crate) struct TaskRecord {
    /// Whole operations: acquire, work, release.
    pub latency: DurationHistogram,
    /// The acquire part, for workloads that check out a connection.
    pub acquire_wait: DurationHistogram,
    pub operations: u64,
    pub errors: u64,
    pub acquire_timeouts: u64,
    pub first_error: Option<String>,
    /// Latencies not yet in `latency`.
    pending_latency: Vec<Duration>,
    /// Acquire waits not yet in `acquire_wait`.
    pending_wait: Vec<Duration>,
}

impl TaskRecord {
    pub fn new() -> Self {
        TaskRecord {
            latency: DurationHistogram::new(),
            acquire_wait: DurationHistogram::new(),
            operations: 0,
            errors: 0,
            acquire_timeouts: 0,
            first_error: None,
            pending_latency: Vec::with_capacity(BATCH),
            pending_wait: Vec::with_capacity(BATCH),
        }
    }

    /// One successful operation: its whole latency and, when it checked a
    /// connection out of the pool, how long that took.
    #[inline]
    pub fn success(&mut self, latency: Duration, acquire: Option<Duration>) {
        self.operations += 1;
        self.pending_latency.push(latency);
        if let Some(acquire) = acquire {
            self.pending_wait.push(acquire);
        }
        if self.pending_latency.len() >= BATCH || self.pending_wait.len() >= BATCH {
            self.flush();
        }
    }

    /// Adds the buffered samples to the histograms.
    pub fn flush(&mut self) {
        for latency in self.pending_latency.drain(..) {
            self.latency.record(latency);
        }
        for wait in self.pending_wait.drain(..) {
            self.acquire_wait.record(wait);
        }
    }

    /// One failed operation.
    pub fn failure(&mut self, error: &BenchError) {
        self.errors += 1;
        if matches!(
            error.database_error(),
            Some(dbmanager::Error::PoolTimeout { .. })
        ) {
            self.acquire_timeouts += 1;
        }
        if self.first_error.is_none() {
            self.first_error = Some(error.to_string());
        }
    }

    /// Adds another task's measurements to this one; both end up flushed.
    pub fn merge(&mut self, mut other: TaskRecord) {
        self.flush();
        other.flush();
        self.latency.merge(&other.latency);
        self.acquire_wait.merge(&other.acquire_wait);
        self.operations += other.operations;
        self.errors += other.errors;
        self.acquire_timeouts += other.acquire_timeouts;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_reach_the_histograms_in_batches_and_on_flush() {
        let mut record = TaskRecord::new();
        for _ in 0..BATCH - 1 {
            record.success(Duration::from_micros(5), None);
        }
        assert_eq!(record.latency.len(), 0);
        record.success(Duration::from_micros(5), None);
        assert_eq!(record.latency.len(), BATCH as u64);
        record.success(Duration::from_micros(7), Some(Duration::from_micros(1)));
        record.flush();
        assert_eq!(record.latency.len(), BATCH as u64 + 1);
        assert_eq!(record.acquire_wait.len(), 1);
        assert_eq!(record.operations, BATCH as u64 + 1);
    }

    #[test]
    fn merged_records_hold_both_tasks_values_and_grow_past_the_initial_range() {
        let mut a = TaskRecord::new();
        let mut b = TaskRecord::new();
        for micros in 1..=100 {
            a.success(
                Duration::from_micros(micros),
                Some(Duration::from_nanos(micros)),
            );
        }
        // Far above the initial 1 ms range: the histogram grows.
        b.success(Duration::from_secs(3), Some(Duration::from_millis(2)));
        b.failure(
            &dbmanager::Error::Timeout {
                what: "test",
                after: Duration::from_secs(1),
            }
            .into(),
        );
        a.merge(b);
        assert_eq!(a.operations, 101);
        assert_eq!(a.errors, 1);
        assert_eq!(a.acquire_timeouts, 0);
        assert_eq!(a.latency.len(), 101);
        assert!((a.latency.quantile_us(0.5) - 51.0).abs() < 0.1);
        assert!((a.latency.max_us() - 3_000_000.0).abs() / 3_000_000.0 < 0.001);
        assert!((a.acquire_wait.max_us() - 2000.0).abs() < 2.0);
        assert!(a.first_error.unwrap().contains("timed out"));
    }
}
