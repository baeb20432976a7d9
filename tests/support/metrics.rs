//! Reading what a test's metrics recorder (metrics-util's debugging
//! recorder) holds.

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// Installs a debugging recorder as the test binary's recorder, with the
/// crate's descriptions, and returns what reads it. Once per test binary:
/// a test that measures metrics is alone in its file.
pub fn install_recorder() -> Snapshotter {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");
    dbmanager::metrics::describe();
    snapshotter
}

/// A metric's name, its labels, and its value.
pub type Entry = (String, Vec<(String, String)>, DebugValue);

/// Deltas since the previous snapshot (the recorder resets on read).
pub struct Reading(Vec<Entry>);

impl Reading {
    pub fn take(snapshotter: &Snapshotter) -> Reading {
        Reading(
            snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .map(|(key, _, _, value)| {
                    let labels = key
                        .key()
                        .labels()
                        .map(|l| (l.key().to_string(), l.value().to_string()))
                        .collect();
                    (key.key().name().to_string(), labels, value)
                })
                .collect(),
        )
    }

    /// Every entry read.
    pub fn entries(&self) -> &[Entry] {
        &self.0
    }

    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<&DebugValue> {
        self.0
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, v)| v)
    }

    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.find(name, labels) {
            Some(DebugValue::Counter(n)) => *n,
            _ => 0,
        }
    }

    pub fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> usize {
        match self.find(name, labels) {
            Some(DebugValue::Histogram(values)) => values.len(),
            _ => 0,
        }
    }

    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        match self.find(name, labels) {
            Some(DebugValue::Gauge(v)) => Some(v.into_inner()),
            _ => None,
        }
    }
}
