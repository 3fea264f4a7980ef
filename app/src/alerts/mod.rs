//! Alerting.

pub mod channels;
pub mod config;
