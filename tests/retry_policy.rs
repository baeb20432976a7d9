//! The backoff arithmetic, property-tested: bounded, growing, never
//! panicking, whatever the inputs.

use std::time::Duration;

use dbmanager::retry::{Jitter, RetryPolicy, Transient, retry};
use proptest::prelude::*;

fn any_policy() -> impl Strategy<Value = RetryPolicy> {
    (
        0u64..=u64::MAX / 2,
        prop_oneof![
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(0.0),
            Just(1.0),
            0.0f64..1e6
        ],
        0u64..=u64::MAX / 2,
        prop_oneof![Just(Jitter::None), Just(Jitter::Full), Just(Jitter::Equal)],
    )
        .prop_map(|(initial_ns, multiplier, max_ns, jitter)| {
            RetryPolicy::exponential()
                .initial_delay(Duration::from_nanos(initial_ns))
                .multiplier(multiplier)
                .max_delay(Duration::from_nanos(max_ns))
                .jitter(jitter)
        })
}

fn without_jitter(initial_ms: u64, multiplier: f64, max_ms: u64) -> RetryPolicy {
    RetryPolicy::exponential()
        .initial_delay(Duration::from_millis(initial_ms))
        .multiplier(multiplier)
        .max_delay(Duration::from_millis(max_ms))
        .jitter(Jitter::None)
}

/// Policies without jitter: a first delay of 1 ms to 10 s, a multiplier
/// from `multipliers`, a cap of 1 ms to 1000 s.
fn any_policy_without_jitter(
    multipliers: std::ops::Range<f64>,
) -> impl Strategy<Value = RetryPolicy> {
    (1u64..10_000, multipliers, 1u64..1_000_000)
        .prop_map(|(initial_ms, multiplier, max_ms)| without_jitter(initial_ms, multiplier, max_ms))
}

proptest! {
    #[test]
    fn delays_never_exceed_max_delay_and_never_panic(policy in any_policy(), retry_index in any::<u32>()) {
        let delay = policy.delay_for(retry_index);
        prop_assert!(delay <= policy.max_delay);
        let jittered = policy.jittered_delay_for(retry_index);
        prop_assert!(jittered <= policy.max_delay);
    }

    #[test]
    fn without_jitter_delays_grow_monotonically(policy in any_policy_without_jitter(1.0..10.0)) {
        let mut previous = Duration::ZERO;
        for n in 0..200 {
            let delay = policy.delay_for(n);
            prop_assert!(delay >= previous, "retry {} shrank: {:?} < {:?}", n, delay, previous);
            previous = delay;
        }
        // Growth stops at the exponent cap: later retries wait no longer.
        prop_assert_eq!(policy.delay_for(u32::MAX), policy.delay_for(1024));
        prop_assert!(policy.delay_for(u32::MAX) <= policy.max_delay);
    }

    #[test]
    fn growing_delays_reach_max_delay(policy in any_policy_without_jitter(1.5..10.0)) {
        prop_assert_eq!(policy.delay_for(u32::MAX), policy.max_delay);
    }

    #[test]
    fn a_multiplier_of_one_keeps_every_delay_equal(
        initial_ms in 1u64..10_000,
        max_ms in 1u64..1_000_000,
        retry_index in any::<u32>(),
    ) {
        let policy = without_jitter(initial_ms, 1.0, max_ms);
        let constant = Duration::from_millis(initial_ms.min(max_ms));
        prop_assert_eq!(policy.delay_for(retry_index), constant);
    }

    #[test]
    fn attempts_are_bounded_by_max_attempts(max_attempts in 1u32..50) {
        let policy = RetryPolicy::exponential()
            .initial_delay(Duration::from_millis(1))
            .max_attempts(max_attempts)
            .max_elapsed(Duration::from_secs(3600));
        // Each item is a wait between attempts: one fewer than the attempts.
        prop_assert_eq!(policy.backoff().count() as u32, max_attempts - 1);
    }

    #[test]
    fn full_jitter_stays_within_zero_and_the_delay(retry_index in 0u32..64) {
        let policy = RetryPolicy::exponential().jitter(Jitter::Full);
        let bound = policy.delay_for(retry_index);
        for _ in 0..20 {
            prop_assert!(policy.jittered_delay_for(retry_index) <= bound);
        }
        let equal = policy.clone().jitter(Jitter::Equal);
        for _ in 0..20 {
            let d = equal.jittered_delay_for(retry_index);
            prop_assert!(d >= bound / 2 && d <= bound);
        }
    }
}

#[test]
fn the_tenacity_profile_five_attempts_waiting_four_to_ten_seconds_is_expressible() {
    let config = dbmanager::Config::loader()
        .no_dotenv()
        .env_vars([
            ("DBMANAGER_RETRY__INITIAL_DELAY", "4s"),
            ("DBMANAGER_RETRY__MAX_DELAY", "10s"),
            ("DBMANAGER_RETRY__MAX_ATTEMPTS", "5"),
            ("DBMANAGER_RETRY__JITTER", "none"),
        ])
        .file(tempfile::NamedTempFile::new().unwrap().path())
        .load()
        .unwrap();
    let waits: Vec<Duration> = config.retry.backoff().collect();
    assert_eq!(waits, [4, 8, 10, 10].map(Duration::from_secs));
}

#[test]
fn max_elapsed_stops_the_backoff() {
    let policy = RetryPolicy::exponential()
        .initial_delay(Duration::from_millis(1))
        .unlimited_attempts()
        .max_elapsed(Duration::ZERO + Duration::from_nanos(1));
    std::thread::sleep(Duration::from_millis(2));
    assert_eq!(policy.backoff().next(), None);
    assert!(
        RetryPolicy::exponential()
            .unlimited_attempts()
            .max_elapsed(Duration::from_secs(1))
            .validate()
            .is_ok()
    );
}

#[derive(Debug)]
struct Flaky {
    transient: bool,
}

impl std::fmt::Display for Flaky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "flaky (transient: {})", self.transient)
    }
}

impl Transient for Flaky {
    fn is_transient(&self) -> bool {
        self.transient
    }
}

/// Retries an operation that always fails with `Flaky { transient }`: the
/// result, and how many times the operation was called.
async fn retry_always_failing(policy: &RetryPolicy, transient: bool) -> (Result<(), Flaky>, u32) {
    let mut calls = 0;
    let result = retry(policy, || {
        calls += 1;
        async move { Err(Flaky { transient }) }
    })
    .await;
    (result, calls)
}

#[tokio::test]
async fn retry_retries_transient_errors_and_stops_at_permanent_ones() {
    let policy = RetryPolicy::exponential()
        .initial_delay(Duration::from_millis(1))
        .max_delay(Duration::from_millis(2))
        .max_attempts(5);
    let mut calls = 0;
    let result: Result<u32, Flaky> = retry(&policy, || {
        calls += 1;
        let n = calls;
        async move {
            if n < 3 {
                Err(Flaky { transient: true })
            } else {
                Ok(n)
            }
        }
    })
    .await;
    assert_eq!(result.unwrap(), 3);

    let (result, calls) = retry_always_failing(&policy, false).await;
    assert!(result.is_err());
    assert_eq!(calls, 1, "a permanent error is not retried");

    let (result, calls) = retry_always_failing(&policy, true).await;
    assert!(result.is_err());
    assert_eq!(calls, 5, "gives up after max_attempts");
}
