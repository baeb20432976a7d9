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
