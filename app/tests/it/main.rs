//! All integration tests, in one binary (one link, shared services).

#[path = "../support/mod.rs"]
mod support;

mod alerts;
mod alerts_delivery;
mod alerts_store;
mod alerts_system;
mod api;
mod backup;
mod broker;
mod brokers;
mod browser;
mod browser_alerts;
mod channels;
mod cli;
mod demo;
mod device_endpoint;
mod devices;
mod durability;
mod hardening;
mod ingest;
mod json_bodies;
mod modbus;
mod mqtt;
mod openapi;
mod readiness;
mod release;
mod release_broker;
mod release_restart;
mod release_signing;
mod security;
mod settings;
mod shutdown;
mod sqlite_pool;
mod storage;
