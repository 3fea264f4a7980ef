//! All integration tests, in one binary (one link, shared services).

#[path = "../support/mod.rs"]
mod support;

mod api;
mod cli;
mod readiness;
mod storage;
