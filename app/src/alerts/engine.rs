//! The alert lifecycle as a pure state machine: no I/O, no clock. Given a rule's check, the
//! alert's phase and readings in time order, it says which transitions happen; the evaluator
//! stores them.
//!
//! - idle → pending when a reading meets the fire condition (`for_s > 0`), or straight to
//!   firing (`for_s == 0`);
//! - pending → firing once the condition has held for `for_s`: a reading at or after
//!   `since + for_s` that still meets it, or the ticker ([`on_tick`]) when time passes without
//!   readings;
//! - pending → resolved (dropped, never notified) on a reading that does not meet the fire
//!   condition: it must hold continuously;
//! - firing → resolved on a reading that meets the clear condition. Between the fire and clear
//!   thresholds the state stays as it is (hysteresis).

use chrono::{DateTime, Duration, Utc};

use super::rule::Check;

/// One reading of a series: (time, value).
pub type TimedValue = (DateTime<Utc>, f64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Idle,
    /// The fire condition has held since this reading's time.
    Pending {
        since: DateTime<Utc>,
    },
    Firing,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// idle → pending (recorded, not notified).
    Pending { at: DateTime<Utc>, value: f64 },
    /// idle or pending → firing (notified).
    Fire { at: DateTime<Utc>, value: f64 },
    /// pending → resolved (`was_firing == false`: recorded, not notified) or
    /// firing → resolved (notified).
    Resolve {
        at: DateTime<Utc>,
        value: Option<f64>,
        was_firing: bool,
    },
}

impl Step {
    /// Whether this transition is announced to the rule's channels.
    pub fn notifies(&self) -> bool {
        match self {
            Step::Pending { .. } => false,
            Step::Fire { .. } => true,
            Step::Resolve { was_firing, .. } => *was_firing,
        }
    }
}

/// Runs `readings` (oldest first) through the machine from `phase`; returns the new phase and
/// the transitions in order.
pub fn on_readings(
    check: &Check,
    for_s: i64,
    mut phase: Phase,
    readings: &[TimedValue],
) -> (Phase, Vec<Step>) {
    let hold = Duration::seconds(for_s.max(0));
    let mut steps = Vec::new();
    for &(at, value) in readings {
        match phase {
            Phase::Idle if check.fires(value) => {
                if hold.is_zero() {
                    steps.push(Step::Fire { at, value });
                    phase = Phase::Firing;
                } else {
                    steps.push(Step::Pending { at, value });
                    phase = Phase::Pending { since: at };
                }
            }
            Phase::Idle => {}
            Phase::Pending { .. } if !check.fires(value) => {
                steps.push(Step::Resolve {
                    at,
                    value: Some(value),
                    was_firing: false,
                });
                phase = Phase::Idle;
            }
            Phase::Pending { since } => {
                if at - since >= hold {
                    steps.push(Step::Fire { at, value });
                    phase = Phase::Firing;
                }
            }
            Phase::Firing if check.clears(value) => {
                steps.push(Step::Resolve {
                    at,
                    value: Some(value),
                    was_firing: true,
                });
                phase = Phase::Idle;
            }
            Phase::Firing => {}
        }
    }
    (phase, steps)
}

/// Time passing without readings: a pending alert whose condition has held for `for_s` fires
/// (with the last value seen, `value`).
pub fn on_tick(for_s: i64, phase: Phase, now: DateTime<Utc>, value: f64) -> Option<Step> {
    match phase {
        Phase::Pending { since } if now - since >= Duration::seconds(for_s.max(0)) => {
            Some(Step::Fire { at: now, value })
        }
        _ => None,
    }
}

/// No-data rules: `last_seen` is the series' newest reading (or when watching began).
/// Silence for `no_data_s` fires; a reading after that resolves (see the evaluator).
pub fn no_data_due(last_seen: DateTime<Utc>, no_data_s: i64, now: DateTime<Utc>) -> bool {
    now - last_seen >= Duration::seconds(no_data_s)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::alerts::rule::Condition;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_790_000_000 + secs, 0).unwrap()
    }

    fn above(threshold: f64, clear: f64) -> Check {
        Check {
            condition: Condition::Above,
            low: threshold,
            high: threshold,
            clear_low: clear,
            clear_high: clear,
        }
    }

    /// Feeds readings one at a time (as separate batches would) and collects the steps.
    fn run(check: &Check, for_s: i64, readings: &[(i64, f64)]) -> (Phase, Vec<Step>) {
        let mut phase = Phase::Idle;
        let mut all = Vec::new();
        for &(secs, value) in readings {
            let (next, steps) = on_readings(check, for_s, phase, &[(t(secs), value)]);
            phase = next;
            all.extend(steps);
        }
        (phase, all)
    }

    fn notified(steps: &[Step]) -> Vec<&'static str> {
        steps
            .iter()
            .filter(|s| s.notifies())
            .map(|s| match s {
                Step::Fire { .. } => "firing",
                Step::Resolve { .. } => "resolved",
                Step::Pending { .. } => "pending",
            })
            .collect()
    }

    #[test]
    fn hysteresis_and_for_sequence() {
        // Rule: above 50, clear 45, for 60 s.
        let check = above(50.0, 45.0);
        // Readings (seconds from t0, value); each case below feeds one more of them.
        const SEQUENCE: [(i64, f64); 6] = [
            (-10, 40.0),
            (0, 55.0),
            (30, 55.0),
            (61, 55.0),
            (70, 48.0),
            (80, 44.0),
        ];
        type Case<'a> = (&'a str, usize, Phase, &'a [&'a str]);
        let cases: &[Case] = &[
            ("40 does nothing", 1, Phase::Idle, &[]),
            (
                "55 twice within 60 s is pending, not notified",
                3,
                Phase::Pending { since: t(0) },
                &[],
            ),
            ("55 at t0+61 fires once", 4, Phase::Firing, &["firing"]),
            ("48 keeps it firing", 5, Phase::Firing, &["firing"]),
            ("44 resolves once", 6, Phase::Idle, &["firing", "resolved"]),
        ];
        for (name, fed, phase, expected) in cases {
            let (got_phase, steps) = run(&check, 60, &SEQUENCE[..*fed]);
            assert_eq!(got_phase, *phase, "{name}");
            assert_eq!(notified(&steps), *expected, "{name}");
        }
        // The same sequence as one batch gives the same transitions.
        let batch: Vec<_> = SEQUENCE.iter().map(|&(s, v)| (t(s), v)).collect();
        let (_, steps) = on_readings(&check, 60, Phase::Idle, &batch);
        assert_eq!(
            steps,
            vec![
                Step::Pending {
                    at: t(0),
                    value: 55.0
                },
                Step::Fire {
                    at: t(61),
                    value: 55.0
                },
                Step::Resolve {
                    at: t(80),
                    value: Some(44.0),
                    was_firing: true
                },
            ]
        );
    }

    #[test]
    fn flapping_within_for_never_notifies() {
        let check = above(50.0, 45.0);
        let readings: Vec<(i64, f64)> = (0..30)
            .map(|i| (i * 10, if i % 2 == 0 { 55.0 } else { 40.0 }))
            .collect();
        let (phase, steps) = run(&check, 60, &readings);
        assert!(notified(&steps).is_empty(), "{steps:?}");
        assert_eq!(phase, Phase::Idle);
        // Every drop is recorded, silently.
        assert!(steps.iter().any(|s| matches!(
            s,
            Step::Resolve {
                was_firing: false,
                ..
            }
        )));
    }

    #[test]
    fn pending_breaks_on_a_value_between_the_thresholds() {
        // The fire condition must hold continuously; hysteresis is for resolving only.
        let (phase, steps) = run(&above(50.0, 45.0), 60, &[(0, 55.0), (30, 48.0), (61, 55.0)]);
        assert_eq!(phase, Phase::Pending { since: t(61) });
        assert!(notified(&steps).is_empty());
    }

    #[test]
    fn without_for_it_fires_at_once() {
        let (phase, steps) = run(&above(50.0, 50.0), 0, &[(0, 51.0), (1, 50.0)]);
        assert_eq!(phase, Phase::Idle);
        assert_eq!(notified(&steps), ["firing", "resolved"]);
    }

    #[test]
    fn the_ticker_fires_a_pending_alert_on_time() {
        let pending = Phase::Pending { since: t(0) };
        assert_eq!(on_tick(60, pending, t(59), 55.0), None);
        assert_eq!(
            on_tick(60, pending, t(60), 55.0),
            Some(Step::Fire {
                at: t(60),
                value: 55.0
            })
        );
        assert_eq!(on_tick(60, Phase::Firing, t(600), 55.0), None);
        assert_eq!(on_tick(60, Phase::Idle, t(600), 55.0), None);
    }

    #[test]
    fn bands() {
        let outside = Check {
            condition: Condition::Outside,
            low: 10.0,
            high: 20.0,
            clear_low: 11.0,
            clear_high: 19.0,
        };
        let (phase, steps) = run(&outside, 0, &[(0, 15.0), (1, 21.0), (2, 19.5), (3, 18.0)]);
        assert_eq!(phase, Phase::Idle);
        assert_eq!(notified(&steps), ["firing", "resolved"]);
        let inside = Check {
            condition: Condition::Inside,
            low: 10.0,
            high: 20.0,
            clear_low: 9.0,
            clear_high: 21.0,
        };
        let (_, steps) = run(&inside, 0, &[(0, 5.0), (1, 10.0), (2, 9.5), (3, 8.0)]);
        assert_eq!(notified(&steps), ["firing", "resolved"]);
    }

    #[test]
    fn no_data_is_due_after_the_silence() {
        assert!(!no_data_due(t(0), 300, t(299)));
        assert!(no_data_due(t(0), 300, t(300)));
    }
}
