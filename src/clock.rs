//! Deadlines that cannot overflow.

use std::time::Duration;

use tokio::time::Instant;

/// The latest deadline any wait gets: a year from now. Settings are bounded
/// by the same year, but durations passed in code are not.
const FARTHEST: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// `now + wait`, saturating at a year from now instead of panicking on an
/// overflow (`Duration::MAX`).
pub(crate) fn deadline_after(wait: Duration) -> Instant {
    // A year past now always fits in an `Instant`.
    Instant::now() + wait.min(FARTHEST)
}

/// Waits until `done()` holds, re-checking each time `changed` is
/// notified, or until `deadline`; returns whether it holds. The
/// notification is registered before each check, so a change between the
/// check and the wait is not missed.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) async fn wait_until(
    changed: &tokio::sync::Notify,
    deadline: Instant,
    mut done: impl FnMut() -> bool,
) -> bool {
    loop {
        let notified = changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if done() {
            return true;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return done();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_wait_saturates_instead_of_panicking() {
        let deadline = deadline_after(Duration::MAX);
        assert!(deadline > Instant::now() + Duration::from_secs(364 * 24 * 60 * 60));
        assert!(deadline_after(Duration::ZERO) <= Instant::now());
    }
}
