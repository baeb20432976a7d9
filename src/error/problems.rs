//! Collecting configuration problems, so validation lives in one place and
//! reports every bad value, not just the first.

use std::time::Duration;

use super::Error;

/// Problems found while validating, in the order they were found.
#[derive(Debug, Default)]
pub(crate) struct Problems(Vec<(String, String)>);

impl Problems {
    pub fn push(&mut self, key: &str, problem: impl Into<String>) {
        self.0.push((key.to_string(), problem.into()));
    }

    /// The first problem as an error; the rest are appended to its message so
    /// one run shows everything that needs fixing.
    pub fn into_result(self) -> Result<(), Error> {
        let mut problems = self.0.into_iter();
        let Some((key, mut problem)) = problems.next() else {
            return Ok(());
        };
        let rest: Vec<String> = problems.map(|(k, p)| format!("`{k}` {p}")).collect();
        if !rest.is_empty() {
            problem = format!("{problem}; also: {}", rest.join("; "));
        }
        Err(Error::Config { key, problem })
    }
}

/// The longest duration any setting takes. A longer wait is "never" to a
/// service, and `Instant::now() + Duration::MAX` overflows: bounding every
/// duration here keeps all the clock arithmetic downstream in range.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The most connections a pool setting takes: far above what one server
/// accepts from one client, low enough that sizing structures by it cannot
/// exhaust memory.
pub(crate) const MAX_POOL_SIZE: usize = 10_000;

/// A duration setting that must be above zero and at most [`MAX_DURATION`].
pub(crate) fn positive(key: &str, value: Duration, p: &mut Problems) {
    if value.is_zero() {
        p.push(
            key,
            "must be longer than zero (write e.g. \"500ms\" or \"30s\")",
        );
    }
    at_most_a_year(key, value, p);
}

/// A duration setting that may be zero but not above [`MAX_DURATION`].
pub(crate) fn at_most_a_year(key: &str, value: Duration, p: &mut Problems) {
    if value > MAX_DURATION {
        p.push(
            key,
            "must be at most 365 days (leave an optional setting unset for no limit)",
        );
    }
}

/// A pool size setting that must be at most [`MAX_POOL_SIZE`].
pub(crate) fn pool_size(key: &str, value: usize, p: &mut Problems) {
    if value > MAX_POOL_SIZE {
        p.push(key, format!("must be at most {MAX_POOL_SIZE} connections"));
    }
}

pub(crate) fn positive_opt(key: &str, value: Option<Duration>, p: &mut Problems) {
    if let Some(value) = value {
        positive(key, value, p);
    }
}
