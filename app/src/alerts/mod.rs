//! Alerting: threshold and no-data rules evaluated on the ingest path and by a ticker, alerts
//! with a lifecycle (pending → firing → resolved), and notifications through a durable outbox
//! (see docs/alerts.md and ARCHITECTURE.md).

pub mod channels;
pub mod config;
pub mod engine;
pub mod evaluator;
pub mod metrics;
pub mod rule;

use std::time::Duration;

pub use evaluator::Alerting;

/// The timing knobs of alerting (`[alerts]` in the configuration).
#[derive(Debug, Clone)]
pub struct Timing {
    /// How often the ticker runs: `for` timers, repeats, no-data rules, gauges.
    pub evaluation_interval: Duration,
    /// Undelivered notifications are dead-lettered after this.
    pub delivery_expiry: Duration,
    /// More than this many firing notifications of one rule for one channel within
    /// `group_window` go out as one grouped message.
    pub group_threshold: u32,
    pub group_window: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            evaluation_interval: Duration::from_secs(5),
            delivery_expiry: Duration::from_secs(24 * 3600),
            group_threshold: 5,
            group_window: Duration::from_secs(60),
        }
    }
}
