//! PostgreSQL backend: pooled, lazily connected, readings range-partitioned by day.
//!
//! This file connects (a main pool and a small one of its own for readiness probes) and
//! implements [`Store`] itself (health and migrations); each domain's sub-trait is implemented
//! in a file of its own, beside this one, mostly by the implementation both backends share
//! (`store::common`).

mod accounts;
mod batch_rollups;
mod devices;
mod events;
mod leases;
mod reading_insert;
mod readings;
mod settings;
mod snapshots;
mod status;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::ConnectOptions;

use super::common::health::sql_store;
use super::{token_cache, CurrentMigrations, StoreError, StoreResult};

/// Connections of the probe pool (probes are short; more would only hold server slots).
const PROBE_CONNECTIONS: u32 = 2;

pub struct PostgresStore {
    pool: PgPool,
    /// Readiness probes' own connections: a busy main pool must not make `/ready` time out
    /// (the blue-green watch would roll back a healthy, merely loaded release).
    probe: PgPool,
    migrations: CurrentMigrations,
    tokens: token_cache::TokenCache,
    /// Whether readings go in expecting duplicates (see `reading_insert.rs`).
    duplicates: reading_insert::DuplicateGuard,
}

impl PostgresStore {
    pub async fn connect(
        url: &str,
        max_connections: u32,
        connect_timeout: Duration,
    ) -> StoreResult<Self> {
        let options: PgConnectOptions = url
            .parse::<PgConnectOptions>()
            .map_err(|e| StoreError::Unavailable(format!("invalid PostgreSQL URL: {e}")))?
            .application_name("ddms")
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
        // Lazy: the service must start (and report not-ready) while the database is down.
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(connect_timeout)
            .connect_lazy_with(options.clone());
        let probe = PgPoolOptions::new()
            .max_connections(PROBE_CONNECTIONS)
            .acquire_timeout(connect_timeout)
            .connect_lazy_with(options.application_name("ddms-probe"));
        Ok(PostgresStore {
            pool,
            probe,
            migrations: CurrentMigrations::default(),
            tokens: Default::default(),
            duplicates: Default::default(),
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// PostgreSQL lets many connections write at once: the writer is the main pool.
    pub fn writer(&self) -> &PgPool {
        &self.pool
    }
}

sql_store!(PostgresStore, Postgres, "../migrations/postgres");

impl PostgresStore {
    /// PostgreSQL's own checkpointer moves its log into the tables: nothing to do.
    async fn checkpoint_wal(&self) -> StoreResult<()> {
        Ok(())
    }

    /// Readiness probes have a pool of their own (`probe`), which a busy main pool cannot hold up.
    fn health_pool(&self) -> &PgPool {
        &self.probe
    }

    const MIGRATIONS_TABLE_EXISTS: &'static str =
        "SELECT to_regclass('public._sqlx_migrations') IS NOT NULL";
}
