//! Alerting: threshold and no-data rules evaluated on the ingest path and by a ticker, alerts
//! with a lifecycle (pending → firing → resolved), and notifications through a durable outbox
//! (see docs/alerts.md and ARCHITECTURE.md).

pub mod channels;
pub mod engine;
pub mod evaluator;
pub mod metrics;
pub mod outbox;
pub mod rule;
pub mod system;
pub mod watch;

pub use evaluator::Alerting;
pub use outbox::OutboxWorker;
