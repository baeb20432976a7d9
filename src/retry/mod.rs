//! Exponential backoff with jitter, and retrying what is worth retrying.
//!
//! [`RetryPolicy`] describes the waits; [`retry`] runs an operation under it,
//! retrying only errors that [`Transient`] says may go away by themselves.
//! The same policy and classification drive the start-up connect of
//! [`crate::DatabaseManager`].

mod classify;

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

use backon::Retryable;
use serde::{Deserialize, Serialize};

use crate::error::{Problems, positive, positive_opt};

pub use classify::Transient;

/// How much randomness is mixed into each wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Jitter {
    /// Wait exactly the computed delay.
    None,
    /// Wait a random time between zero and the computed delay ("full
    /// jitter"): replicas restarted together do not retry in lockstep.
    #[default]
    Full,
    /// Wait half the computed delay plus a random time up to the other half.
    Equal,
}

/// When and how often to try again.
///
/// The wait before retry `n` (counting from 0) is
/// `min(max_delay, initial_delay * multiplier^n)`, then jittered. Retrying
/// stops after `max_attempts` attempts or once `max_elapsed` has passed,
/// whichever comes first; at least one of them must be set.
///
/// Defaults (`RetryPolicy::exponential()`, `[retry]`): 250 ms initial delay,
/// multiplier 2, at most 10 s between attempts, at most 10 attempts and 60 s
/// in all, full jitter — enough to ride out a database container that
/// starts a little after the service.
///
/// ```
/// use std::time::Duration;
/// use dbmanager::retry::{Jitter, RetryPolicy};
///
/// // tenacity's stop_after_attempt(5) + wait_exponential(min=4, max=10):
/// let policy = RetryPolicy::exponential()
///     .initial_delay(Duration::from_secs(4))
///     .max_delay(Duration::from_secs(10))
///     .max_attempts(5)
///     .jitter(Jitter::None);
/// let waits: Vec<_> = (0..4).map(|n| policy.delay_for(n)).collect();
/// assert_eq!(waits, [4, 8, 10, 10].map(Duration::from_secs));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// The wait before the first retry. Default: 250 ms.
    #[serde(with = "humantime_serde")]
    pub initial_delay: Duration,
    /// How much each wait grows. Default: 2.0.
    pub multiplier: f64,
    /// The longest single wait. Default: 10 s.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// The most attempts, the first included. Default: 10.
    pub max_attempts: Option<u32>,
    /// The longest time from the first attempt to the start of the last.
    /// Default: 60 s.
    #[serde(with = "humantime_serde")]
    pub max_elapsed: Option<Duration>,
    /// Randomness in each wait. Default: `full`.
    pub jitter: Jitter,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::exponential()
    }
}

impl RetryPolicy {
    /// The default exponential policy (see the type's documentation).
    pub fn exponential() -> Self {
        RetryPolicy {
            initial_delay: Duration::from_millis(250),
            multiplier: 2.0,
            max_delay: Duration::from_secs(10),
            max_attempts: Some(10),
            max_elapsed: Some(Duration::from_secs(60)),
            jitter: Jitter::Full,
        }
    }

    /// One attempt, no retry.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: Some(1),
            max_elapsed: None,
            ..RetryPolicy::exponential()
        }
    }

    /// Sets the wait before the first retry.
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// Sets how much each wait grows (at least 1.0).
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// Sets the longest single wait.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Sets the most attempts, the first included.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// Sets the longest time over all attempts.
    pub fn max_elapsed(mut self, elapsed: Duration) -> Self {
        self.max_elapsed = Some(elapsed);
        self
    }

    /// Removes the attempt limit (`max_elapsed` must then be set).
    pub fn unlimited_attempts(mut self) -> Self {
        self.max_attempts = None;
        self
    }

    /// Sets the jitter.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Checks the policy: positive delays, `max_delay >= initial_delay`, a
    /// finite multiplier of at least 1, and some limit.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Config`] naming the `retry.*` key at fault.
    pub fn validate(&self) -> crate::error::Result<()> {
        let mut problems = Problems::default();
        self.check(&mut problems);
        problems.into_result()
    }

    pub(crate) fn check(&self, p: &mut Problems) {
        positive("retry.initial_delay", self.initial_delay, p);
        positive("retry.max_delay", self.max_delay, p);
        if self.max_delay < self.initial_delay {
            p.push(
                "retry.max_delay",
                format!(
                    "is {:?}, shorter than initial_delay {:?}",
                    self.max_delay, self.initial_delay
                ),
            );
        }
        if !self.multiplier.is_finite() || self.multiplier < 1.0 {
            p.push(
                "retry.multiplier",
                "must be a finite number of at least 1.0",
            );
        }
        if self.max_attempts == Some(0) {
            p.push(
                "retry.max_attempts",
                "must be at least 1 (1 means no retry)",
            );
        }
        positive_opt("retry.max_elapsed", self.max_elapsed, p);
        if self.max_attempts.is_none() && self.max_elapsed.is_none() {
            p.push(
                "retry.max_attempts",
                "and retry.max_elapsed are both unset: the retry would never give up",
            );
        }
    }

    /// The wait before retry `retry` (0 for the first retry), before jitter.
    ///
    /// Never panics and never overflows: the growth is computed in floating
    /// point and clamped to `max_delay`, whatever the inputs.
    pub fn delay_for(&self, retry: u32) -> Duration {
        let max = self.max_delay;
        let multiplier = if self.multiplier.is_finite() && self.multiplier >= 1.0 {
            self.multiplier
        } else {
            1.0
        };
        // Beyond 2^64 growth every delay is clamped anyway; capping the
        // exponent keeps powi well away from i32 overflow.
        let exponent = retry.min(1024) as i32;
        let secs = self.initial_delay.as_secs_f64() * multiplier.powi(exponent);
        if !secs.is_finite() || secs >= max.as_secs_f64() {
            return max;
        }
        Duration::try_from_secs_f64(secs).unwrap_or(max).min(max)
    }

    /// The jittered wait before retry `retry`.
    pub fn jittered_delay_for(&self, retry: u32) -> Duration {
        let delay = self.delay_for(retry);
        match self.jitter {
            Jitter::None => delay,
            Jitter::Full => delay.mul_f64(fastrand::f64()),
            Jitter::Equal => {
                let half = delay / 2;
                half + half.mul_f64(fastrand::f64())
            }
        }
    }

    /// The waits this policy makes, starting now: each call of `next` is a
    /// failed attempt, and `None` means give up.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            policy: self.clone(),
            retries: 0,
            started: Instant::now(),
        }
    }
}

/// The waits of one run of a [`RetryPolicy`]; an iterator that ends when
/// the policy gives up.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: RetryPolicy,
    retries: u32,
    started: Instant,
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let attempts_made = self.retries.saturating_add(1);
        if self
            .policy
            .max_attempts
            .is_some_and(|max| attempts_made >= max)
        {
            return None;
        }
        let mut delay = self.policy.jittered_delay_for(self.retries);
        if let Some(max_elapsed) = self.policy.max_elapsed {
            let elapsed = self.started.elapsed();
            if elapsed >= max_elapsed {
                return None;
            }
            // The last attempt starts at the deadline rather than not at all.
            delay = delay.min(max_elapsed - elapsed);
        }
        self.retries = attempts_made;
        Some(delay)
    }
}

impl backon::BackoffBuilder for RetryPolicy {
    type Backoff = Backoff;

    fn build(self) -> Backoff {
        self.backoff()
    }
}

/// Runs `operation` until it succeeds, fails with an error that is not
/// [`Transient`], or the policy gives up; returns the last result.
///
/// Use it for idempotent operations only: a retried insert may insert twice.
/// Each retry is logged (`tracing`, level `WARN`) with the attempt number,
/// the next wait and the error.
///
/// ```no_run
/// # async fn demo(db: dbmanager::DatabaseManager) -> dbmanager::Result<()> {
/// use dbmanager::retry::{retry, RetryPolicy};
///
/// let policy = RetryPolicy::exponential().max_attempts(3);
/// let count: i64 = retry(&policy, || async {
///     let client = db.postgres()?.get().await?;
///     let row = client.query_one("SELECT count(*) FROM users", &[]).await?;
///     Ok::<_, dbmanager::Error>(row.get(0))
/// })
/// .await?;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// The operation's last error.
pub async fn retry<T, E, F, Fut>(policy: &RetryPolicy, operation: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Transient + fmt::Display,
{
    retry_notify(policy, "operation", operation, |_, _, _| {}).await
}

/// [`retry`] with a label for logs and a callback on each retry (attempt
/// number, the error, the next wait).
pub(crate) async fn retry_notify<T, E, F, Fut>(
    policy: &RetryPolicy,
    what: &'static str,
    operation: F,
    mut on_retry: impl FnMut(u32, &E, Duration),
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Transient + fmt::Display,
{
    let mut attempt = 0u32;
    operation
        .retry(policy.clone())
        .sleep(tokio::time::sleep)
        .when(|e: &E| e.is_transient())
        .notify(|e: &E, next: Duration| {
            attempt += 1;
            tracing::warn!(
                target: "dbmanager::retry",
                what,
                attempt,
                next_delay_ms = next.as_millis() as u64,
                error = %e,
                "attempt failed with a transient error; retrying"
            );
            on_retry(attempt, e, next);
        })
        .await
}
