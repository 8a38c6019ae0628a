//! Deadlines that cannot overflow. `Instant + Duration` panics when the
//! sum does not fit the clock, and the agent's durations come from
//! manifests: validation bounds them (10 years), but an assignment that
//! never went through it (an `assignments.json` written before the bound
//! existed, a server that does not validate) must not abort the agent.
//! A deadline past the end of the clock is the latest instant the clock can
//! hold: "never", in every comparison the agent makes.

use std::time::{Duration, Instant};

/// `now + d`, or the latest representable instant when that overflows.
pub fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).unwrap_or_else(|| latest_from(now))
}

/// The latest instant at or after `t`: add the largest steps that still
/// fit, halving the step on each overflow (at most ~2×94 tries: only ever
/// on the way to a deadline that would not fit anyway).
pub fn latest_from(mut t: Instant) -> Instant {
    let mut step = Duration::MAX;
    while !step.is_zero() {
        match t.checked_add(step) {
            Some(later) => t = later,
            None => step /= 2,
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_exactly_when_it_fits_and_saturates_when_not() {
        let now = Instant::now();
        assert_eq!(after(now, Duration::from_secs(5)), now + Duration::from_secs(5));
        let end = after(now, Duration::MAX);
        assert!(end > now + Duration::from_secs(100 * 365 * 24 * 3600));
        assert_eq!(end.checked_add(Duration::from_nanos(1)), None, "nothing fits after it");
        assert_eq!(after(end, Duration::from_secs(1)), end);
        assert_eq!(after(end, Duration::ZERO), end);
        // From just below the end: the rest of the way, not past it.
        let near = end.checked_sub(Duration::from_secs(3)).unwrap();
        assert_eq!(after(near, Duration::from_secs(2)), near + Duration::from_secs(2));
        assert_eq!(after(near, Duration::from_secs(4)), end);
        assert_eq!(latest_from(near), end);
    }
}
