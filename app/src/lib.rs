//! ddms — device data monitoring system. The library holds everything; `main.rs` only parses the
//! command line and calls [`cli::run`].

pub mod alerts;
pub mod allocator;
pub mod auth;
pub mod backoff;
pub mod backup;
pub mod cli;
pub mod config;
pub mod demo;
pub mod events;
pub mod healthcheck;
pub mod http;
pub mod ingest;
pub mod locks;
pub mod metrics;
pub mod modbus;
pub mod mqtt;
pub mod redact;
pub mod release;
pub mod retention;
pub mod server;
pub mod settings;
pub mod shutdown;
pub mod signals;
pub mod status;
pub mod store;
pub mod telemetry;

#[cfg(test)]
mod properties;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Commit the binary was built from (`unknown` outside a git checkout).
pub const GIT_SHA: &str = env!("BUILD_GIT_SHA");
