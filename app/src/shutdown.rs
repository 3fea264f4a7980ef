//! One deadline for the whole stop. Each phase of a shutdown (lame duck, HTTP drain, producers,
//! background tasks, the backup in progress, the ingest flush, the event log) has its own bound,
//! but their sum used to exceed the service manager's stop timeout (systemd's `TimeoutStopSec=40`
//! in `ops/systemd/ddms@.service`), which then SIGKILLed ddms mid-flush. Now every phase takes at
//! most what is left of `http.shutdown_timeout` (default 25 s), counted from the stop signal, and
//! the phases before the ingest flush leave it a reserve.

use std::time::Duration;

use tokio::time::Instant;

/// What the ingest flush and the event log keep for themselves (at most a third of the budget):
/// a hanging HTTP request must not take the time of the readings whose MQTT messages wait for
/// their commit to be acknowledged.
const FLUSH_RESERVE: Duration = Duration::from_secs(5);
/// The event log's share at the very end (its last events), at most.
const EVENT_LOG_RESERVE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
pub struct ShutdownBudget {
    deadline: Instant,
    reserve: Duration,
}

impl ShutdownBudget {
    /// Starts the clock: the stop signal arrived now.
    pub fn start(total: Duration) -> ShutdownBudget {
        ShutdownBudget {
            deadline: Instant::now() + total,
            reserve: FLUSH_RESERVE.min(total / 3),
        }
    }

    /// What is left of the whole budget.
    pub fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// The most a phase before the ingest flush may take (`own`: its own bound).
    pub fn before_flush(&self, own: Duration) -> Duration {
        own.min(self.left().saturating_sub(self.reserve))
    }

    /// The most the ingest flush may take: all that is left but the event log's share.
    pub fn for_flush(&self, own: Duration) -> Duration {
        own.min(
            self.left()
                .saturating_sub(EVENT_LOG_RESERVE.min(self.reserve)),
        )
    }

    /// The most the last phase may take.
    pub fn last(&self, own: Duration) -> Duration {
        own.min(self.left())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget_ending_in(left: Duration, total: Duration) -> ShutdownBudget {
        ShutdownBudget {
            deadline: Instant::now() + left,
            reserve: FLUSH_RESERVE.min(total / 3),
        }
    }

    #[test]
    fn phases_before_the_flush_leave_it_its_reserve() {
        let budget = ShutdownBudget::start(Duration::from_secs(25));
        let http = budget.before_flush(Duration::from_secs(60));
        assert!(http <= Duration::from_secs(20) && http > Duration::from_secs(19));
        assert_eq!(
            budget.before_flush(Duration::from_secs(3)),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn late_phases_get_only_what_is_left() {
        let budget = budget_ending_in(Duration::from_secs(3), Duration::from_secs(25));
        assert_eq!(budget.before_flush(Duration::from_secs(25)), Duration::ZERO);
        let flush = budget.for_flush(Duration::from_secs(25));
        assert!(flush <= Duration::from_secs(2) && flush > Duration::from_secs(1));
        assert!(budget.last(Duration::from_secs(5)) <= Duration::from_secs(3));
        let spent = budget_ending_in(Duration::ZERO, Duration::from_secs(25));
        assert_eq!(spent.for_flush(Duration::from_secs(25)), Duration::ZERO);
        assert_eq!(spent.last(Duration::from_secs(5)), Duration::ZERO);
    }

    #[test]
    fn a_small_budget_reserves_a_third() {
        let budget = ShutdownBudget::start(Duration::from_secs(3));
        assert!(budget.before_flush(Duration::from_secs(60)) <= Duration::from_secs(2));
    }
}
