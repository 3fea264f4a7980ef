//! PostgreSQL backend: pooled, lazily connected, readings range-partitioned by day.
//!
//! This file connects (a main pool and a small one of its own for readiness probes) and
//! implements [`Store`] itself (health and migrations); each domain's sub-trait is implemented
//! in a file of its own, beside this one.

mod accounts;
mod devices;
mod events;
mod leases;
mod readings;
mod settings;
mod snapshots;
mod status;

use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::ConnectOptions;

use super::{
    bounded, token_cache, Backend, CurrentMigrations, MigrationStatus, Store, StoreError,
    StoreResult,
};

static MIGRATOR: Migrator = sqlx::migrate!("../migrations/postgres");

/// A newer release may already have migrated further (expand-only): not an error for this one.
fn lenient_migrator() -> Migrator {
    let mut migrator = sqlx::migrate!("../migrations/postgres");
    migrator.set_ignore_missing(true);
    migrator
}

/// Connections of the probe pool (probes are short; more would only hold server slots).
const PROBE_CONNECTIONS: u32 = 2;

pub struct PostgresStore {
    pool: PgPool,
    /// Readiness probes' own connections: a busy main pool must not make `/ready` time out
    /// (the blue-green watch would roll back a healthy, merely loaded release).
    probe: PgPool,
    migrations: CurrentMigrations,
    tokens: token_cache::TokenCache,
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
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn ping(&self, timeout: Duration) -> StoreResult<()> {
        bounded(timeout, sqlx::query("SELECT 1").execute(&self.probe)).await
    }

    async fn probe_migrations(&self) -> StoreResult<MigrationStatus> {
        self.migrations.get_or_check(self.migration_status()).await
    }

    async fn migrate(&self) -> StoreResult<MigrationStatus> {
        lenient_migrator().run(&self.pool).await?;
        self.migration_status().await
    }

    async fn migration_status(&self) -> StoreResult<MigrationStatus> {
        let exists: bool =
            sqlx::query_scalar("SELECT to_regclass('public._sqlx_migrations') IS NOT NULL")
                .fetch_one(&self.probe)
                .await?;
        let applied = if exists {
            sqlx::query_scalar(
                "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
            )
            .fetch_all(&self.probe)
            .await?
        } else {
            Vec::new()
        };
        Ok(MigrationStatus::compare(&MIGRATOR, applied))
    }
}
