//! SQLite backend: the embedded default, one file in `data_dir`, WAL mode. Readings, rollups,
//! events and leases keep their timestamps as integer microseconds since the epoch (compact,
//! compared as numbers); other timestamps are RFC 3339 text, ids UUID text.
//!
//! This file opens the database, implements [`Store`] itself (health and migrations) and holds
//! what several domains share (timestamp and row decoding, multi-row inserts); each domain's
//! sub-trait is implemented in a file of its own, beside this one.

mod accounts;
mod devices;
mod events;
mod leases;
mod readings;
mod settings;
mod snapshots;
mod status;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::Row;
use uuid::Uuid;

use super::{
    bounded, token_cache, Backend, CurrentMigrations, MigrationStatus, Store, StoreError,
    StoreResult,
};

static MIGRATOR: Migrator = sqlx::migrate!("../migrations/sqlite");

/// A newer release may already have migrated further (expand-only): not an error for this one.
fn lenient_migrator() -> Migrator {
    let mut migrator = sqlx::migrate!("../migrations/sqlite");
    migrator.set_ignore_missing(true);
    migrator
}

pub struct SqliteStore {
    pool: SqlitePool,
    migrations: CurrentMigrations,
    tokens: token_cache::TokenCache,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`; `:memory:` is refused because each
    /// pooled connection would see its own database.
    pub async fn open(
        path: &str,
        max_connections: u32,
        busy_timeout: Duration,
    ) -> StoreResult<Self> {
        if path.is_empty() || path.contains(":memory:") {
            return Err(StoreError::Unavailable(
                "SQLite needs a file path (sqlite://path/to/ddms.db)".into(),
            ));
        }
        let file = Path::new(path);
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))
            .map_err(|e| StoreError::Unavailable(format!("invalid SQLite path: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before it returns, so an MQTT message acknowledged after
            // its batch committed survives a power cut, not only a crash (NORMAL syncs the WAL
            // at checkpoints only). One fsync per commit; the writer batches (docs/durability.md).
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(busy_timeout.max(Duration::from_secs(5)))
            // ~64 MiB of page cache: inserts slow down sharply once the index outgrows it.
            .pragma("cache_size", "-65536")
            .pragma("temp_store", "memory");
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(2))
            // Each connection keeps its own page cache (up to cache_size): connections opened
            // for a burst of requests would keep tens of MiB after it. Opening one again costs
            // about a millisecond.
            .idle_timeout(SQLITE_IDLE_TIMEOUT)
            // The pool hands out its idle connections first-in first-out, so steady light
            // traffic keeps every connection a burst opened younger than `idle_timeout`: the
            // pool never shrinks back. A bounded lifetime retires them; the pool reopens only as
            // many as the traffic needs.
            .max_lifetime(SQLITE_MAX_LIFETIME)
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot open {path}: {e}")))?;
        Ok(SqliteStore {
            pool,
            migrations: CurrentMigrations::default(),
            tokens: Default::default(),
        })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// A pooled connection idle this long is closed (with its page cache).
const SQLITE_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A pooled connection is closed when it is released this long after it was opened. Reopening
/// one costs about a millisecond and its page cache refills from the operating system's.
const SQLITE_MAX_LIFETIME: Duration = Duration::from_secs(60);

/// Rows per multi-row INSERT: 300 bound values, far below SQLite's limit of 32766.
const ROWS_PER_STATEMENT: usize = 100;

/// `head` followed by `rows` copies of `row`, comma-separated.
fn multi_row_insert(head: &str, row: &str, rows: usize) -> String {
    let mut sql = String::with_capacity(head.len() + rows * (row.len() + 2));
    sql.push_str(head);
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(row);
    }
    sql
}

fn micros(ts: DateTime<Utc>) -> i64 {
    ts.timestamp_micros()
}

fn from_micros(us: i64) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_micros(us)
        .ok_or_else(|| StoreError::Corrupt(format!("timestamp {us} out of range")))
}

fn uuid(row: &SqliteRow, column: &str) -> StoreResult<Uuid> {
    let text: String = row.try_get(column)?;
    Uuid::parse_str(&text).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

fn opt_uuid(row: &SqliteRow, column: &str) -> StoreResult<Option<Uuid>> {
    let text: Option<String> = row.try_get(column)?;
    text.map(|t| Uuid::parse_str(&t).map_err(|e| StoreError::Corrupt(format!("{column}: {e}"))))
        .transpose()
}

fn json(row: &SqliteRow, column: &str) -> StoreResult<serde_json::Value> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn ping(&self, timeout: Duration) -> StoreResult<()> {
        bounded(timeout, sqlx::query("SELECT 1").execute(&self.pool)).await
    }

    async fn probe_migrations(&self) -> StoreResult<MigrationStatus> {
        self.migrations.get_or_check(self.migration_status()).await
    }

    async fn migrate(&self) -> StoreResult<MigrationStatus> {
        lenient_migrator().run(&self.pool).await?;
        self.migration_status().await
    }

    async fn migration_status(&self) -> StoreResult<MigrationStatus> {
        let exists: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_one(&self.pool)
        .await?;
        let applied: Vec<i64> = if exists > 0 {
            sqlx::query_scalar(
                "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
            )
            .fetch_all(&self.pool)
            .await?
        } else {
            Vec::new()
        };
        Ok(MigrationStatus::compare(&MIGRATOR, applied))
    }
}
