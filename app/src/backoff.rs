//! Exponential back-off, the one kind ddms retries with: a broker that is down, a device that
//! does not answer, a database that is unavailable, a receiver that refuses a notification.
//! Each caller names its schedule (first delay, cap) as a constant of type [`Backoff`]; the
//! failures in a row are counted by [`Retries`], or, where they are stored (an outbox row's
//! attempts), passed to [`Backoff::nominal`].

use std::time::Duration;

/// A retry schedule: `first`, doubling after each failure, never more than `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
}

impl Backoff {
    pub const fn new(first: Duration, cap: Duration) -> Self {
        Self { first, cap }
    }

    pub const fn first(&self) -> Duration {
        self.first
    }

    pub const fn cap(&self) -> Duration {
        self.cap
    }

    /// The delay after `failures` failed attempts in a row beyond the first: `first × 2^failures`,
    /// at most `cap`.
    pub fn nominal(&self, failures: u32) -> Duration {
        self.first
            .saturating_mul(1u32 << failures.min(20))
            .min(self.cap)
    }

    /// A count of failures in a row against this schedule, starting at none.
    pub fn retries(self) -> Retries {
        Retries {
            schedule: self,
            failures: 0,
        }
    }
}

/// Failures in a row against a [`Backoff`]: each asks for the next, longer delay; a success
/// resets.
#[derive(Debug, Clone)]
pub struct Retries {
    schedule: Backoff,
    failures: u32,
}

impl Retries {
    /// The delay before the next attempt, after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.schedule.nominal(self.failures);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// [`Retries::next_delay`] spread by ±25 % (`unit` uniform in `[0, 1)`), never past the
    /// cap: many clients that failed together (devices behind one gateway) do not retry in step.
    pub fn next_delay_spread(&mut self, unit: f64) -> Duration {
        spread(self.next_delay(), unit).min(self.schedule.cap)
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// `delay` scaled into `[0.75, 1.25) × delay` by `unit` in `[0, 1)`.
pub fn spread(delay: Duration, unit: f64) -> Duration {
    delay.mul_f64(0.75 + 0.5 * unit.clamp(0.0, 1.0))
}

/// "Equal jitter": between half and all of `delay`, by `unit` in `[0, 1]`.
pub fn equal_jitter(delay: Duration, unit: f64) -> Duration {
    let half = delay / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEDULE: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));

    #[test]
    fn delays_double_from_the_first_up_to_the_cap_and_reset_after_a_success() {
        let mut retries = SCHEDULE.retries();
        let delays: Vec<u64> = (0..9).map(|_| retries.next_delay().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(retries.failures(), 9);
        retries.reset();
        assert_eq!(retries.next_delay(), SCHEDULE.first());
        // Stored attempt counts far past the cap neither overflow nor exceed it.
        assert_eq!(SCHEDULE.nominal(u32::MAX), SCHEDULE.cap());
        let fast = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        assert_eq!(fast.nominal(3), Duration::from_millis(400));
    }

    #[test]
    fn spread_is_a_quarter_either_way_and_never_past_the_cap() {
        let mut low = SCHEDULE.retries();
        let mut high = SCHEDULE.retries();
        for _ in 0..12 {
            let (l, h) = (
                low.next_delay_spread(0.0),
                high.next_delay_spread(0.999_999),
            );
            assert!(l < h, "{l:?} {h:?}");
            assert!(h <= SCHEDULE.cap());
        }
        assert_eq!(low.next_delay_spread(0.0), SCHEDULE.cap().mul_f64(0.75));
        assert_eq!(
            spread(Duration::from_secs(4), 0.5),
            Duration::from_secs(4),
            "the middle of the spread is the nominal delay"
        );
    }

    #[test]
    fn equal_jitter_lies_between_half_and_all() {
        let d = Duration::from_secs(10);
        assert_eq!(equal_jitter(d, 0.0), Duration::from_secs(5));
        assert_eq!(equal_jitter(d, 1.0), d);
        assert_eq!(equal_jitter(d, 7.0), d, "out-of-range units are clamped");
    }
}
