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

pub(crate) fn positive(key: &str, value: Duration, p: &mut Problems) {
    if value.is_zero() {
        p.push(
            key,
            "must be longer than zero (write e.g. \"500ms\" or \"30s\")",
        );
    }
}

pub(crate) fn positive_opt(key: &str, value: Option<Duration>, p: &mut Problems) {
    if let Some(value) = value {
        positive(key, value, p);
    }
}
