//! SQLite backend: the embedded default, one file in `data_dir`, WAL mode. Readings, rollups,
//! events and leases keep their timestamps as integer microseconds since the epoch (compact,
//! compared as numbers); other timestamps are RFC 3339 text, ids UUID text.
//!
//! This file opens the database, implements [`Store`] itself (health and migrations) and holds
//! what several domains share (multi-row inserts); each domain's sub-trait is implemented in a
//! file of its own, beside this one, mostly by the implementation both backends share
//! (`store::common`).

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

use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::common::health::sql_store;
#[cfg(doc)]
use super::Store;
use super::{token_cache, CurrentMigrations, StoreError, StoreResult};

/// Two pools on one file. SQLite lets one connection write at a time; a writer that finds the
/// lock taken sleeps in SQLite's busy handler (1, 2, 5 … up to 100 ms a retry) *holding a pooled
/// connection*. With one shared pool, a burst of writes (thousands of devices' status changes,
/// the batch writer, the event log) took every connection, reads queued behind them for seconds,
/// and the sleeping writers left the lock idle between retries. So every write goes through
/// `writer`, one connection, where writes wait their turn in the pool's fair queue without
/// holding anything; reads go through `pool`, read-only connections (a write sent there by
/// mistake fails loudly), which WAL mode never blocks on the writer.
pub struct SqliteStore {
    /// Read-only connections for every read.
    pool: SqlitePool,
    /// The one connection that writes (statements and transactions).
    writer: SqlitePool,
    /// A connection that only checkpoints the WAL, beside the writer ([`Store::checkpoint`]).
    checkpointer: SqlitePool,
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
            // FULL: a commit is on disk before it returns, so an MQTT message acknowledged after
            // its batch committed survives a power cut, not only a crash (NORMAL syncs the WAL
            // at checkpoints only). One fsync per commit; the writer batches (docs/durability.md).
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            // Only another process (a `ddms` command beside the service) can hold the write
            // lock against `writer`; inside this one, writes queue for the writer connection.
            .busy_timeout(busy_timeout.max(Duration::from_secs(5)))
            // ~64 MiB of page cache: inserts slow down sharply once the index outgrows it.
            .pragma("cache_size", "-65536")
            .pragma("temp_store", "memory");
        let unavailable =
            |e: sqlx::Error| StoreError::Unavailable(format!("cannot open {path}: {e}"));
        // First the writer: it creates the file and puts it in WAL mode (which the file keeps).
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            // How long a write waits for its turn, as long as SQLite would have waited for the
            // lock (`database.busy_timeout`).
            .acquire_timeout(busy_timeout.max(Duration::from_secs(5)))
            .connect_with(
                options
                    .clone()
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    // SQLite checkpoints on the committing connection once the log holds 1,000
                    // pages: with a batch dirtying a page per series, nearly every commit then
                    // also copied its pages into the database file and synced it, on the
                    // write path. The checkpointer does that beside the writer; this is the
                    // backstop should it fall behind.
                    .pragma("wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES)
                    // A statement's rows (RETURNING) come back through a channel from sqlx's
                    // worker thread, which stops whenever the channel is full (default 50
                    // rows) until the writer task has taken them: room for a whole statement
                    // saves a thread switch per 50 rows.
                    .row_buffer_size(ROWS_PER_STATEMENT),
            )
            .await
            .map_err(unavailable)?;
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(2) - 1)
            // Each connection keeps its own page cache (up to cache_size): connections opened
            // for a burst of requests would keep tens of MiB after it. Opening one again costs
            // about a millisecond.
            .idle_timeout(SQLITE_IDLE_TIMEOUT)
            // The pool hands out its idle connections first-in first-out, so steady light
            // traffic keeps every connection a burst opened younger than `idle_timeout`: the
            // pool never shrinks back. A bounded lifetime retires them; the pool reopens only as
            // many as the traffic needs.
            .max_lifetime(SQLITE_MAX_LIFETIME)
            .connect_with(options.clone().read_only(true))
            .await
            .map_err(unavailable)?;
        let checkpointer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .idle_timeout(SQLITE_IDLE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(unavailable)?;
        Ok(SqliteStore {
            pool,
            writer,
            checkpointer,
            migrations: CurrentMigrations::default(),
            tokens: Default::default(),
        })
    }

    /// The read-only connections.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The one connection that writes.
    pub fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    /// Copies the log's committed pages into the database file without waiting for readers or
    /// the writer (`PASSIVE`), so commits only append to the log. Frames a reader still needs
    /// stay for the next call.
    async fn checkpoint_wal(&self) -> StoreResult<()> {
        sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&self.checkpointer)
            .await?;
        Ok(())
    }
}

/// The writer's own checkpoint threshold (SQLite's default is 1,000): at 4 KiB a page, the
/// log reaches ~40 MiB before a commit checkpoints itself, when the checkpointer is behind.
const WRITER_AUTOCHECKPOINT_PAGES: &str = "10000";

/// A pooled connection idle this long is closed (with its page cache).
const SQLITE_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A pooled connection is closed when it is released this long after it was opened. Reopening
/// one costs about a millisecond and its page cache refills from the operating system's.
const SQLITE_MAX_LIFETIME: Duration = Duration::from_secs(60);

/// Rows per multi-row INSERT: up to 6,000 bound values (a rollup row has six), below SQLite's
/// limit of 32,766. Each statement is a round trip to sqlx's worker thread, in which the writer
/// task and the worker wait for each other: a typical batch of a few hundred readings is one
/// statement per table, not one per hundred rows (+13 % readings/s in `bench ingest` with the
/// embedded broker against 100 rows a statement; docs/benchmarks.md).
const ROWS_PER_STATEMENT: usize = 1000;

/// Whether sqlx keeps a multi-row statement prepared: only a full chunk's, which every batch
/// reuses. The shorter last chunk has a length of its own nearly every time; caching each
/// would evict the statements that are reused.
fn keep_prepared(rows: usize) -> bool {
    rows == ROWS_PER_STATEMENT
}

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

sql_store!(SqliteStore, Sqlite, "../migrations/sqlite");

impl SqliteStore {
    /// Pings and migration checks only read: the read-only pool, which writes never hold up.
    fn health_pool(&self) -> &SqlitePool {
        &self.pool
    }

    const MIGRATIONS_TABLE_EXISTS: &'static str = "SELECT count(*) > 0 FROM sqlite_master \
         WHERE type = 'table' AND name = '_sqlx_migrations'";
}
