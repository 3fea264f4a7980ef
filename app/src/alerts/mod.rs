//! Alerting: threshold and no-data rules evaluated on the ingest path and by a ticker, alerts
//! with a lifecycle (pending → firing → resolved), and notifications through a durable outbox
//! (see docs/alerts.md and ARCHITECTURE.md).

pub mod engine;
pub mod rule;
