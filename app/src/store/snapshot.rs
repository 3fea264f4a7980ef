//! Consistent copies of the database for backups (`crate::backup`), in each backend's own
//! format: SQLite's `VACUUM INTO` file, PostgreSQL's `COPY` text per table. A snapshot loads
//! back into a database of the same backend whose schema is the same or newer (migrations are
//! expand-only, so the snapshot's columns are a subset of the target's).

use std::path::Path;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sqlx::{Connection, PgPool, SqlitePool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Backend, StoreError, StoreResult};

/// Every table a snapshot holds, parents before children (the order rows are loaded in).
pub const SNAPSHOT_TABLES: &[&str] = &[
    "device_groups",
    "devices",
    "series",
    "readings",
    "readings_1m",
    "readings_1h",
    "users",
    "api_tokens",
    "sessions",
    "settings",
    "audit_log",
    "notifications",
    "device_status",
    "mqtt_credentials",
    "events",
    "channels",
    "alert_rules",
    "alert_rule_channels",
    "alerts",
    "alert_transitions",
    "deliveries",
    "silences",
];

/// Tables deliberately left out: who holds which lease says nothing after a restore (and is
/// emptied by one), and the migration history is the target binary's own.
pub const NOT_IN_SNAPSHOTS: &[&str] = &["leases", "_sqlx_migrations"];

/// The SQLite snapshot's one file.
pub const SQLITE_FILE: &str = "ddms.sqlite";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotTable {
    pub name: String,
    pub rows: u64,
    pub columns: Vec<String>,
}

/// What a snapshot holds, as its backup's manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub backend: String,
    /// Migration versions applied to the database the snapshot was taken from.
    pub migrations: Vec<i64>,
    pub tables: Vec<SnapshotTable>,
    /// The files written, relative to the snapshot directory.
    pub files: Vec<String>,
    /// Oldest and newest reading: PostgreSQL creates their daily partitions before a load.
    pub readings_span: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

impl Snapshot {
    pub fn backend(&self) -> Option<Backend> {
        match self.backend.as_str() {
            "sqlite" => Some(Backend::Sqlite),
            "postgres" => Some(Backend::Postgres),
            _ => None,
        }
    }

    /// The tables, checked against the known list and in load order.
    fn tables_in_load_order(&self) -> StoreResult<Vec<&SnapshotTable>> {
        if let Some(unknown) = self
            .tables
            .iter()
            .find(|t| !SNAPSHOT_TABLES.contains(&t.name.as_str()))
        {
            return Err(StoreError::Corrupt(format!(
                "the snapshot has a table `{}` this version does not know",
                unknown.name
            )));
        }
        Ok(SNAPSHOT_TABLES
            .iter()
            .filter_map(|name| self.tables.iter().find(|t| t.name == *name))
            .collect())
    }
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|c| format!("\"{}\"", c.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Columns of the snapshot table that the target lacks: a snapshot from a newer schema.
fn missing_columns(table: &SnapshotTable, target: &[String]) -> StoreResult<()> {
    match table.columns.iter().find(|c| !target.contains(c)) {
        Some(column) => Err(StoreError::Corrupt(format!(
            "column `{}.{column}` of the backup does not exist in this database; restore it with the ddms version that made it",
            table.name
        ))),
        None => Ok(()),
    }
}

/// The query of the first snapshot table, in load order, that has rows (none: no row); each
/// table is named with `prefix` (SQLite's schema `main.`). One statement for every table.
fn first_table_with_rows(prefix: &str) -> String {
    let probes: Vec<String> = SNAPSHOT_TABLES
        .iter()
        .enumerate()
        .map(|(position, name)| {
            format!(
                "SELECT {position} AS position, '{name}' AS name \
                 WHERE EXISTS (SELECT 1 FROM {prefix}\"{name}\")"
            )
        })
        .collect();
    format!(
        "SELECT name FROM ({}) AS probes ORDER BY position LIMIT 1",
        probes.join(" UNION ALL ")
    )
}

/// A load that does not replace the database's contents refuses a database with rows (`table`
/// names the first table that has some).
fn refuse_rows(table: Option<String>) -> StoreResult<()> {
    match table {
        Some(table) => Err(StoreError::Conflict(format!(
            "the database is not empty (table `{table}` has rows); restore into an empty database, or replace its contents with --force"
        ))),
        None => Ok(()),
    }
}

fn count_mismatch(table: &str, expected: u64, loaded: u64) -> StoreError {
    StoreError::Corrupt(format!(
        "table `{table}`: the backup lists {expected} rows but {loaded} were loaded; nothing was restored"
    ))
}

// ------------------------------------------------------------------------------------ SQLite

fn path_str(path: &Path) -> StoreResult<&str> {
    path.to_str()
        .ok_or_else(|| StoreError::Unavailable(format!("{} is not a UTF-8 path", path.display())))
}

async fn sqlite_columns(
    conn: &mut sqlx::SqliteConnection,
    schema: &str,
    table: &str,
) -> StoreResult<Vec<String>> {
    Ok(sqlx::query_scalar(&format!(
        "SELECT name FROM pragma_table_info(?, '{schema}') ORDER BY cid"
    ))
    .bind(table)
    .fetch_all(&mut *conn)
    .await?)
}

/// Describes a SQLite snapshot file: its tables' columns and row counts, its migrations.
pub async fn sqlite_describe(file: &Path) -> StoreResult<Snapshot> {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(file)
        .read_only(true);
    let mut conn = sqlx::SqliteConnection::connect_with(&options).await?;
    let migrations: Vec<i64> = sqlx::query_scalar(
        "SELECT version FROM _sqlx_migrations WHERE success = 1 ORDER BY version",
    )
    .fetch_all(&mut conn)
    .await?;
    let mut tables = Vec::new();
    for name in SNAPSHOT_TABLES {
        let columns = sqlite_columns(&mut conn, "main", name).await?;
        if columns.is_empty() {
            continue; // a table newer than the database the snapshot came from
        }
        let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM \"{name}\""))
            .fetch_one(&mut conn)
            .await?;
        tables.push(SnapshotTable {
            name: name.to_string(),
            rows: rows as u64,
            columns,
        });
    }
    let span: (Option<i64>, Option<i64>) = sqlx::query_as("SELECT min(ts), max(ts) FROM readings")
        .fetch_one(&mut conn)
        .await?;
    conn.close().await?;
    let at = |us: i64| DateTime::from_timestamp_micros(us).unwrap_or_default();
    Ok(Snapshot {
        backend: Backend::Sqlite.name().into(),
        migrations,
        tables,
        files: vec![SQLITE_FILE.into()],
        readings_span: span.0.zip(span.1).map(|(a, b)| (at(a), at(b))),
    })
}

/// Checks a SQLite snapshot file's integrity (`PRAGMA integrity_check`).
pub async fn sqlite_check(file: &Path) -> StoreResult<()> {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(file)
        .read_only(true);
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .map_err(|e| StoreError::Corrupt(format!("not a SQLite database: {e}")))?;
    let report: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_all(&mut conn)
        .await
        .map_err(|e| StoreError::Corrupt(format!("not a SQLite database: {e}")))?;
    conn.close().await?;
    if report != ["ok"] {
        return Err(StoreError::Corrupt(format!(
            "the SQLite file fails its integrity check: {}",
            report.join("; ")
        )));
    }
    Ok(())
}

pub(super) async fn sqlite_export(pool: &SqlitePool, dir: &Path) -> StoreResult<Snapshot> {
    let file = dir.join(SQLITE_FILE);
    // One read transaction: the copy is the database as of its start, writers carry on.
    sqlx::query("VACUUM INTO ?")
        .bind(path_str(&file)?)
        .execute(pool)
        .await?;
    sqlite_describe(&file).await
}

pub(super) async fn sqlite_import(
    pool: &SqlitePool,
    dir: &Path,
    snapshot: &Snapshot,
    replace: bool,
) -> StoreResult<()> {
    let file = dir.join(SQLITE_FILE);
    let tables = snapshot.tables_in_load_order()?;
    let mut conn = pool.acquire().await?;
    // This connection's schema changes (ATTACH) must not outlive it in the pool.
    conn.close_on_drop();
    sqlx::query("ATTACH DATABASE ? AS snapshot")
        .bind(path_str(&file)?)
        .execute(&mut *conn)
        .await?;
    let loaded = sqlite_load(&mut conn, &tables, replace).await;
    let detached = sqlx::query("DETACH DATABASE snapshot")
        .execute(&mut *conn)
        .await;
    loaded?;
    detached?;
    Ok(())
}

async fn sqlite_load(
    conn: &mut sqlx::SqliteConnection,
    tables: &[&SnapshotTable],
    replace: bool,
) -> StoreResult<()> {
    let mut tx = conn.begin().await?;
    if replace {
        for name in SNAPSHOT_TABLES.iter().rev().chain(&["leases"]) {
            sqlx::query(&format!("DELETE FROM main.\"{name}\""))
                .execute(&mut *tx)
                .await?;
        }
    } else {
        let first = first_table_with_rows("main.");
        refuse_rows(sqlx::query_scalar(&first).fetch_optional(&mut *tx).await?)?;
    }
    for table in tables {
        missing_columns(table, &sqlite_columns(&mut tx, "main", &table.name).await?)?;
        let columns = quoted(&table.columns);
        let loaded = sqlx::query(&format!(
            "INSERT INTO main.\"{name}\" ({columns}) SELECT {columns} FROM snapshot.\"{name}\"",
            name = table.name
        ))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if loaded != table.rows {
            return Err(count_mismatch(&table.name, table.rows, loaded));
        }
    }
    tx.commit().await?;
    Ok(())
}

// -------------------------------------------------------------------------------- PostgreSQL

fn copy_file(table: &str) -> String {
    format!("{table}.copy")
}

async fn postgres_columns(conn: &mut sqlx::PgConnection, table: &str) -> StoreResult<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await?)
}

pub(super) async fn postgres_export(pool: &PgPool, dir: &Path) -> StoreResult<Snapshot> {
    let mut tx = pool.begin().await?;
    // Every table as of one moment, however long the copy takes.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let migrations: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(&mut *tx)
            .await?;
    let mut tables = Vec::new();
    let mut files = Vec::new();
    for name in SNAPSHOT_TABLES {
        let columns = postgres_columns(&mut tx, name).await?;
        if columns.is_empty() {
            continue;
        }
        let file_name = copy_file(name);
        let mut out = tokio::fs::File::create(dir.join(&file_name))
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot write {file_name}: {e}")))?;
        let mut rows = 0u64;
        {
            let mut stream = tx
                .copy_out_raw(&format!(
                    "COPY (SELECT {} FROM \"{name}\") TO STDOUT",
                    quoted(&columns)
                ))
                .await?;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                // COPY's text format escapes newlines inside values: one per row.
                rows += chunk.iter().filter(|b| **b == b'\n').count() as u64;
                out.write_all(&chunk).await.map_err(|e| {
                    StoreError::Unavailable(format!("cannot write {file_name}: {e}"))
                })?;
            }
        }
        out.sync_all()
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot write {file_name}: {e}")))?;
        tables.push(SnapshotTable {
            name: name.to_string(),
            rows,
            columns,
        });
        files.push(file_name);
    }
    let span: (Option<DateTime<Utc>>, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT min(ts), max(ts) FROM readings")
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(Snapshot {
        backend: Backend::Postgres.name().into(),
        migrations,
        tables,
        files,
        readings_span: span.0.zip(span.1),
    })
}

/// Counts the rows of a PostgreSQL snapshot's table file.
pub async fn postgres_count_rows(dir: &Path, table: &str) -> StoreResult<u64> {
    let path = dir.join(copy_file(table));
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| StoreError::Corrupt(format!("{}: {e}", copy_file(table))))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut rows = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| StoreError::Corrupt(format!("{}: {e}", copy_file(table))))?;
        if n == 0 {
            return Ok(rows);
        }
        rows += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
    }
}

pub(super) async fn postgres_import(
    pool: &PgPool,
    dir: &Path,
    snapshot: &Snapshot,
    replace: bool,
) -> StoreResult<()> {
    let tables = snapshot.tables_in_load_order()?;
    let mut tx = pool.begin().await?;
    if replace {
        let all: Vec<String> = SNAPSHOT_TABLES
            .iter()
            .chain(&["leases"])
            .map(|t| format!("\"{t}\""))
            .collect();
        sqlx::query(&format!("TRUNCATE {} CASCADE", all.join(", ")))
            .execute(&mut *tx)
            .await?;
    } else {
        let first = first_table_with_rows("");
        refuse_rows(sqlx::query_scalar(&first).fetch_optional(&mut *tx).await?)?;
    }
    let mut buf = vec![0u8; 1 << 20];
    for table in &tables {
        let target = postgres_columns(&mut tx, &table.name).await?;
        missing_columns(table, &target)?;
        let file_name = copy_file(&table.name);
        let mut file = tokio::fs::File::open(dir.join(&file_name))
            .await
            .map_err(|e| StoreError::Corrupt(format!("{file_name}: {e}")))?;
        let mut copy = tx
            .copy_in_raw(&format!(
                "COPY \"{}\" ({}) FROM STDIN",
                table.name,
                quoted(&table.columns)
            ))
            .await?;
        loop {
            let n = match file.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = copy.abort(e.to_string()).await;
                    return Err(StoreError::Corrupt(format!("{file_name}: {e}")));
                }
            };
            if n == 0 {
                break;
            }
            copy.send(&buf[..n]).await?;
        }
        let loaded = copy.finish().await?;
        if loaded != table.rows {
            return Err(count_mismatch(&table.name, table.rows, loaded));
        }
        // Loaded ids must not be handed out again.
        for column in &target {
            let sequence: Option<String> =
                sqlx::query_scalar("SELECT pg_get_serial_sequence($1, $2)")
                    .bind(format!("\"{}\"", table.name))
                    .bind(column)
                    .fetch_one(&mut *tx)
                    .await?;
            if let Some(sequence) = sequence {
                sqlx::query(&format!(
                    "SELECT setval($1::regclass, COALESCE((SELECT max(\"{column}\") FROM \"{name}\"), 0) + 1, false)",
                    name = table.name
                ))
                .bind(sequence)
                .execute(&mut *tx)
                .await?;
            }
        }
    }
    tx.commit().await?;
    Ok(())
}

fn unlisted(names: Vec<String>) -> Vec<String> {
    names
        .into_iter()
        .filter(|n| {
            !SNAPSHOT_TABLES.contains(&n.as_str()) && !NOT_IN_SNAPSHOTS.contains(&n.as_str())
        })
        .collect()
}

/// Tables of the live schema that are neither in [`SNAPSHOT_TABLES`] nor deliberately left
/// out: a new migration's table that backups would silently miss.
pub(super) async fn sqlite_unlisted_tables(pool: &SqlitePool) -> StoreResult<Vec<String>> {
    Ok(unlisted(
        sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        )
        .fetch_all(pool)
        .await?,
    ))
}

pub(super) async fn postgres_unlisted_tables(pool: &PgPool) -> StoreResult<Vec<String>> {
    // Partitions are part of their parent (`readings`).
    Ok(unlisted(
        sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relispartition",
        )
        .fetch_all(pool)
        .await?,
    ))
}
