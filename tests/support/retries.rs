//! Retry policies for tests, and builds meant to fail: the error, how long
//! it took, and the bound that a permanent failure ends `build()` before
//! the first retry delay.

use std::time::{Duration, Instant};

use dbmanager::retry::Jitter;
use dbmanager::{Config, DatabaseManager, Error, FailureKind, RetryPolicy};

/// A policy whose first wait is long and exact (no jitter): a failure that
/// comes sooner was not retried.
pub fn slow_retry(first_delay: Duration) -> RetryPolicy {
    RetryPolicy::exponential()
        .initial_delay(first_delay)
        .max_delay(first_delay * 4)
        .max_attempts(5)
        .jitter(Jitter::None)
}

/// A policy that keeps trying for a minute, a few times a second: for a
/// server the test starts only after `build()` has begun.
pub fn retry_for_a_minute() -> RetryPolicy {
    RetryPolicy::exponential()
        .initial_delay(Duration::from_millis(100))
        .max_delay(Duration::from_millis(500))
        .max_attempts(200)
        .max_elapsed(Duration::from_secs(60))
}

/// Builds a manager from `config` that must fail; panics if it connects.
pub async fn build_error(config: Config) -> Error {
    match DatabaseManager::builder().config(config).build().await {
        Ok(manager) => panic!("building the manager succeeded, a failure was expected: {manager}"),
        Err(error) => error,
    }
}

/// [`build_error`], and how long `build()` took to fail.
pub async fn timed_build_error(config: Config) -> (Error, Duration) {
    let started = Instant::now();
    let error = build_error(config).await;
    (error, started.elapsed())
}

/// The error of a build from `config` that must fail for good: with a
/// [`slow_retry`] of two seconds in place, asserts that the failure came
/// before the first retry delay, so without a retry, and prints how long
/// it took (seen with `--nocapture`).
pub async fn permanent_build_error(what: &str, mut config: Config) -> Error {
    let first_delay = Duration::from_secs(2);
    config.retry = slow_retry(first_delay);
    let (error, took) = timed_build_error(config).await;
    assert!(
        took < first_delay,
        "{what}: fail-fast took {took:?}, the first retry delay is {first_delay:?}"
    );
    println!("{what} failed in {took:?} (first retry delay {first_delay:?})");
    error
}

/// The kind and the attempt count of a connect error; panics on any other
/// error.
pub fn connect_failure(error: &Error) -> (FailureKind, u32) {
    match error {
        Error::Connect { kind, attempts, .. } => (*kind, *attempts),
        other => panic!("expected a connect error, got {other:?}"),
    }
}
