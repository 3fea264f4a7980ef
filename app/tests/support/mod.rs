//! Shared by every integration test: throwaway services and the ddms under test.

pub mod alerting;
pub mod app;
pub mod ports;
pub mod release;
pub mod services;
pub mod webhook;
