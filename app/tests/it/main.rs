//! All integration tests, in one binary (one link, shared services).

#[path = "../support/mod.rs"]
mod support;

mod api;
mod brokers;
mod cli;
mod devices;
mod readiness;
mod release;
mod storage;
