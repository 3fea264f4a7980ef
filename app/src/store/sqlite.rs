//! SQLite backend: the embedded default, one file in `data_dir`, WAL mode.

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::Row;
use uuid::Uuid;

use super::*;

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

#[derive(Debug, Clone, Copy)]
struct Agg {
    min: f64,
    max: f64,
    sum: f64,
    count: i64,
}

/// New readings `(series, ts µs, value)` folded into buckets of `width` µs, sorted by key.
fn aggregate(readings: &[(i64, i64, f64)], width: i64) -> Vec<((i64, i64), Agg)> {
    let mut buckets: std::collections::BTreeMap<(i64, i64), Agg> = Default::default();
    for &(series, ts, value) in readings {
        let key = (series, ts - ts.rem_euclid(width));
        let agg = buckets.entry(key).or_insert(Agg {
            min: value,
            max: value,
            sum: 0.0,
            count: 0,
        });
        agg.min = agg.min.min(value);
        agg.max = agg.max.max(value);
        agg.sum += value;
        agg.count += 1;
    }
    buckets.into_iter().collect()
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

fn role(row: &SqliteRow) -> StoreResult<Role> {
    let text: String = row.try_get("role")?;
    text.parse().map_err(StoreError::Corrupt)
}

fn device_from_row(row: &SqliteRow) -> StoreResult<Device> {
    let protocol: String = row.try_get("protocol")?;
    Ok(Device {
        id: uuid(row, "id")?,
        name: row.try_get("name")?,
        protocol: protocol.parse().map_err(StoreError::Corrupt)?,
        group_id: opt_uuid(row, "group_id")?,
        config: json(row, "config")?,
        enabled: row.try_get("enabled")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn notification_from_row(row: &SqliteRow) -> StoreResult<Notification> {
    Ok(Notification {
        id: uuid(row, "id")?,
        kind: row.try_get("kind")?,
        device_id: opt_uuid(row, "device_id")?,
        message: row.try_get("message")?,
        created_at: row.try_get("created_at")?,
        cleared_at: row.try_get("cleared_at")?,
        acknowledged_at: row.try_get("acknowledged_at")?,
        acknowledged_by: row.try_get("acknowledged_by")?,
    })
}

fn user_from_row(row: &SqliteRow) -> StoreResult<User> {
    Ok(User {
        id: uuid(row, "id")?,
        username: row.try_get("username")?,
        password_hash: row.try_get("password_hash")?,
        role: role(row)?,
        created_at: row.try_get("created_at")?,
        disabled_at: row.try_get("disabled_at")?,
    })
}

fn token_from_row(row: &SqliteRow) -> StoreResult<ApiToken> {
    Ok(ApiToken {
        id: uuid(row, "id")?,
        name: row.try_get("name")?,
        role: role(row)?,
        created_at: row.try_get("created_at")?,
        last_used_at: row.try_get("last_used_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

const USER_COLUMNS: &str = "id, username, password_hash, role, created_at, disabled_at";
const TOKEN_COLUMNS: &str = "id, name, role, created_at, last_used_at, revoked_at";
const DEVICE_COLUMNS: &str =
    "id, name, protocol, group_id, config, enabled, created_at, updated_at";
const NOTIFICATION_COLUMNS: &str =
    "id, kind, device_id, message, created_at, cleared_at, acknowledged_at, acknowledged_by";

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

    async fn ensure_partitions(&self, _today: DateTime<Utc>, _days_ahead: u32) -> StoreResult<u32> {
        Ok(0)
    }

    async fn create_group(&self, name: &str) -> StoreResult<Group> {
        let group = Group {
            id: Uuid::now_v7(),
            name: name.to_string(),
            created_at: Utc::now(),
        };
        sqlx::query("INSERT INTO device_groups (id, name, created_at) VALUES (?, ?, ?)")
            .bind(group.id.to_string())
            .bind(&group.name)
            .bind(group.created_at)
            .execute(&self.pool)
            .await?;
        Ok(group)
    }

    async fn list_groups(&self) -> StoreResult<Vec<Group>> {
        let rows = sqlx::query("SELECT id, name, created_at FROM device_groups ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(Group {
                    id: uuid(row, "id")?,
                    name: row.try_get("name")?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect()
    }

    async fn delete_group(&self, id: Uuid) -> StoreResult<()> {
        let done = sqlx::query("DELETE FROM device_groups WHERE id = ?")
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn create_device(&self, device: &NewDevice) -> StoreResult<Device> {
        let now = Utc::now();
        let sql = format!(
            "INSERT INTO devices (id, name, protocol, group_id, config, enabled, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING {DEVICE_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(Uuid::now_v7().to_string())
            .bind(&device.name)
            .bind(device.protocol.as_str())
            .bind(device.group_id.map(|g| g.to_string()))
            .bind(device.config.to_string())
            .bind(device.enabled)
            .bind(now)
            .bind(now)
            .fetch_one(&self.pool)
            .await?;
        device_from_row(&row)
    }

    async fn get_device(&self, id: Uuid) -> StoreResult<Device> {
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = ?");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_one(&self.pool)
            .await?;
        device_from_row(&row)
    }

    async fn list_devices(&self) -> StoreResult<Vec<Device>> {
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices ORDER BY name");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(device_from_row).collect()
    }

    async fn update_device(&self, id: Uuid, device: &NewDevice) -> StoreResult<Device> {
        let sql = format!(
            "UPDATE devices SET name = ?, protocol = ?, group_id = ?, config = ?, enabled = ?, \
             updated_at = ? WHERE id = ? RETURNING {DEVICE_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(&device.name)
            .bind(device.protocol.as_str())
            .bind(device.group_id.map(|g| g.to_string()))
            .bind(device.config.to_string())
            .bind(device.enabled)
            .bind(Utc::now())
            .bind(id.to_string())
            .fetch_one(&self.pool)
            .await?;
        device_from_row(&row)
    }

    async fn delete_device(&self, id: Uuid) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        for table in ["readings", "readings_1m", "readings_1h"] {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE series_id IN (SELECT id FROM series WHERE device_id = ?)"
            ))
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        }
        let deleted = sqlx::query("DELETE FROM devices WHERE id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        tx.commit().await?;
        Ok(())
    }

    async fn ensure_series(
        &self,
        device_id: Uuid,
        metric: &str,
        unit: Option<&str>,
    ) -> StoreResult<SeriesId> {
        let id = sqlx::query_scalar(
            "INSERT INTO series (device_id, metric, unit) VALUES (?, ?, ?) \
             ON CONFLICT (device_id, metric) DO UPDATE SET unit = COALESCE(excluded.unit, series.unit) \
             RETURNING id",
        )
        .bind(device_id.to_string())
        .bind(metric)
        .bind(unit)
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    async fn find_series(&self, device_id: Uuid, metric: &str) -> StoreResult<Option<SeriesId>> {
        Ok(
            sqlx::query_scalar("SELECT id FROM series WHERE device_id = ? AND metric = ?")
                .bind(device_id.to_string())
                .bind(metric)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn device_series(
        &self,
        device_id: Uuid,
    ) -> StoreResult<Vec<(String, SeriesId, Option<String>)>> {
        Ok(
            sqlx::query_as("SELECT metric, id, unit FROM series WHERE device_id = ?")
                .bind(device_id.to_string())
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn insert_readings(&self, readings: &[Reading]) -> StoreResult<u64> {
        if readings.is_empty() {
            return Ok(0);
        }
        // One transaction; full chunks share one cached multi-row statement (each statement is
        // a round trip to sqlx's SQLite worker thread, so rows per statement is what counts).
        // RETURNING yields only the rows that were inserted, not the ignored duplicates: those
        // are what the rollups add.
        let mut tx = self.pool.begin().await?;
        let mut new = Vec::with_capacity(readings.len());
        let full_chunk_sql = multi_row_insert(
            "INSERT OR IGNORE INTO readings (series_id, ts, value) VALUES ",
            "(?, ?, ?)",
            ROWS_PER_STATEMENT,
        ) + " RETURNING series_id, ts, value";
        let mut chunks = readings.chunks_exact(ROWS_PER_STATEMENT);
        for chunk in chunks.by_ref() {
            let mut query = sqlx::query(&full_chunk_sql);
            for reading in chunk {
                query = query
                    .bind(reading.series)
                    .bind(micros(reading.ts))
                    .bind(reading.value);
            }
            new.extend(query.fetch_all(&mut *tx).await?);
        }
        let remainder = chunks.remainder();
        if !remainder.is_empty() {
            let sql = multi_row_insert(
                "INSERT OR IGNORE INTO readings (series_id, ts, value) VALUES ",
                "(?, ?, ?)",
                remainder.len(),
            ) + " RETURNING series_id, ts, value";
            let mut query = sqlx::query(&sql);
            for reading in remainder {
                query = query
                    .bind(reading.series)
                    .bind(micros(reading.ts))
                    .bind(reading.value);
            }
            new.extend(query.fetch_all(&mut *tx).await?);
        }
        let mut inserted = Vec::with_capacity(new.len());
        for row in &new {
            let ts: i64 = row.try_get("ts")?;
            inserted.push((
                row.try_get::<i64, _>("series_id")?,
                ts,
                row.try_get("value")?,
            ));
        }
        for (table, step) in [
            ("readings_1m", RollupStep::Minute),
            ("readings_1h", RollupStep::Hour),
        ] {
            let buckets = aggregate(&inserted, step.micros());
            for chunk in buckets.chunks(ROWS_PER_STATEMENT) {
                let sql = multi_row_insert(
                    &format!(
                        "INSERT INTO {table} (series_id, bucket, min, max, sum, count) VALUES "
                    ),
                    "(?, ?, ?, ?, ?, ?)",
                    chunk.len(),
                ) + &format!(
                    " ON CONFLICT (series_id, bucket) DO UPDATE SET \
                     min = min({table}.min, excluded.min), max = max({table}.max, excluded.max), \
                     sum = {table}.sum + excluded.sum, count = {table}.count + excluded.count"
                );
                let mut query = sqlx::query(&sql);
                for ((series, bucket), agg) in chunk {
                    query = query
                        .bind(series)
                        .bind(bucket)
                        .bind(agg.min)
                        .bind(agg.max)
                        .bind(agg.sum)
                        .bind(agg.count);
                }
                query.execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(inserted.len() as u64)
    }

    async fn query_rollups(
        &self,
        series: SeriesId,
        step: RollupStep,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<Bucket>> {
        let table = match step {
            RollupStep::Minute => "readings_1m",
            RollupStep::Hour => "readings_1h",
        };
        let sql = format!(
            "SELECT bucket, min, max, sum, count FROM {table} \
             WHERE series_id = ? AND bucket >= ? AND bucket < ? ORDER BY bucket LIMIT ?"
        );
        let rows = sqlx::query(&sql)
            .bind(series)
            .bind(micros(step.bucket(from)))
            .bind(micros(to))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(Bucket::from_sums(
                    from_micros(row.try_get("bucket")?)?,
                    row.try_get("min")?,
                    row.try_get("max")?,
                    row.try_get("sum")?,
                    row.try_get("count")?,
                ))
            })
            .collect()
    }

    async fn count_readings_before(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        const HOUR_US: i64 = 3_600_000_000;
        let count: i64 =
            sqlx::query_scalar("SELECT coalesce(sum(count), 0) FROM readings_1h WHERE bucket <= ?")
                .bind(micros(before).saturating_sub(HOUR_US))
                .fetch_one(&self.pool)
                .await?;
        Ok(count.max(0) as u64)
    }

    async fn prune_readings(&self, before: DateTime<Utc>) -> StoreResult<PruneCounts> {
        // One series and at most one day per statement: each DELETE is a short write
        // transaction on the primary key, so the ingest writer waits milliseconds, not the
        // length of the whole purge.
        const STEP_US: i64 = 86_400_000_000;
        let cutoff = micros(before);
        let mut counts = PruneCounts::default();
        let series: Vec<i64> = sqlx::query_scalar("SELECT id FROM series ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        for id in series {
            let oldest: Option<i64> =
                sqlx::query_scalar("SELECT min(ts) FROM readings WHERE series_id = ?")
                    .bind(id)
                    .fetch_one(&self.pool)
                    .await?;
            let Some(mut from) = oldest else { continue };
            while from < cutoff {
                let to = from.saturating_add(STEP_US).min(cutoff);
                counts.readings +=
                    sqlx::query("DELETE FROM readings WHERE series_id = ? AND ts >= ? AND ts < ?")
                        .bind(id)
                        .bind(from)
                        .bind(to)
                        .execute(&self.pool)
                        .await?
                        .rows_affected();
                from = to;
            }
            for (step, table) in [
                (RollupStep::Minute, "readings_1m"),
                (RollupStep::Hour, "readings_1h"),
            ] {
                let deleted = sqlx::query(&format!(
                    "DELETE FROM {table} WHERE series_id = ? AND bucket < ?"
                ))
                .bind(id)
                .bind(micros(step.bucket(before)))
                .execute(&self.pool)
                .await?
                .rows_affected();
                match step {
                    RollupStep::Minute => counts.rollups_1m += deleted,
                    RollupStep::Hour => counts.rollups_1h += deleted,
                }
            }
        }
        Ok(counts)
    }

    async fn query_readings(
        &self,
        series: SeriesId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<Point>> {
        let rows = sqlx::query(
            "SELECT ts, value FROM readings WHERE series_id = ? AND ts >= ? AND ts < ? \
             ORDER BY ts LIMIT ?",
        )
        .bind(series)
        .bind(micros(from))
        .bind(micros(to))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Point {
                    ts: from_micros(row.try_get("ts")?)?,
                    value: row.try_get("value")?,
                })
            })
            .collect()
    }

    async fn latest_readings(&self, device_id: Uuid) -> StoreResult<Vec<LatestReading>> {
        let rows = sqlx::query(
            "SELECT s.id, s.metric, s.unit, r.ts, r.value FROM series s \
             JOIN readings r ON r.series_id = s.id \
              AND r.ts = (SELECT max(ts) FROM readings WHERE series_id = s.id) \
             WHERE s.device_id = ? ORDER BY s.metric",
        )
        .bind(device_id.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(LatestReading {
                    series: row.try_get("id")?,
                    metric: row.try_get("metric")?,
                    unit: row.try_get("unit")?,
                    ts: from_micros(row.try_get("ts")?)?,
                    value: row.try_get("value")?,
                })
            })
            .collect()
    }

    async fn create_user(&self, user: &NewUser) -> StoreResult<User> {
        let row = sqlx::query(&format!(
            "INSERT INTO users (id, username, password_hash, role, created_at) \
             VALUES (?, ?, ?, ?, ?) RETURNING {USER_COLUMNS}"
        ))
        .bind(Uuid::now_v7().to_string())
        .bind(&user.username)
        .bind(&user.password_hash)
        .bind(user.role.as_str())
        .bind(Utc::now())
        .fetch_one(&self.pool)
        .await?;
        user_from_row(&row)
    }

    async fn find_user(&self, username: &str) -> StoreResult<User> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE username = ?"
        ))
        .bind(username)
        .fetch_one(&self.pool)
        .await?;
        user_from_row(&row)
    }

    async fn count_users(&self) -> StoreResult<u64> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }

    async fn get_user(&self, id: Uuid) -> StoreResult<User> {
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?"))
            .bind(id.to_string())
            .fetch_one(&self.pool)
            .await?;
        user_from_row(&row)
    }

    async fn list_users(&self) -> StoreResult<Vec<User>> {
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users ORDER BY username"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(user_from_row).collect()
    }

    async fn update_user(&self, id: Uuid, change: &UserChange) -> StoreResult<User> {
        let disabled_at: Option<Option<DateTime<Utc>>> = change.disabled.map(|d| d.then(Utc::now));
        let (mut tx, owners_before) = lock_owners(&self.pool).await?;
        let row = sqlx::query(&format!(
            "UPDATE users SET role = coalesce(?, role), password_hash = coalesce(?, password_hash), \
             disabled_at = CASE WHEN ? THEN ? ELSE disabled_at END \
             WHERE id = ? RETURNING {USER_COLUMNS}"
        ))
        .bind(change.role.map(Role::as_str))
        .bind(change.password_hash.as_deref())
        .bind(disabled_at.is_some())
        .bind(disabled_at.flatten())
        .bind(id.to_string())
        .fetch_one(&mut *tx)
        .await?;
        let user = user_from_row(&row)?;
        keep_an_owner(tx, owners_before).await?;
        Ok(user)
    }

    async fn delete_user(&self, id: Uuid) -> StoreResult<()> {
        let (mut tx, owners_before) = lock_owners(&self.pool).await?;
        let done = sqlx::query("DELETE FROM users WHERE id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        keep_an_owner(tx, owners_before).await
    }

    async fn create_session(&self, session: &NewSession) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO sessions (id_hash, user_id, csrf_token, created_at, last_seen_at, \
             expires_at, remote_addr) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&session.id_hash)
        .bind(session.user_id.to_string())
        .bind(&session.csrf_hash)
        .bind(session.created_at)
        .bind(session.created_at)
        .bind(session.expires_at)
        .bind(&session.remote_addr)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn find_session(&self, id_hash: &str) -> StoreResult<SessionRecord> {
        let row = sqlx::query(
            "SELECT s.id_hash, s.csrf_token, s.created_at AS s_created_at, s.last_seen_at, \
             s.expires_at, u.id, u.username, u.password_hash, u.role, u.created_at, u.disabled_at \
             FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id_hash = ?",
        )
        .bind(id_hash)
        .fetch_one(&self.pool)
        .await?;
        Ok(SessionRecord {
            id_hash: row.try_get("id_hash")?,
            user: user_from_row(&row)?,
            csrf_hash: row.try_get("csrf_token")?,
            created_at: row.try_get("s_created_at")?,
            last_seen_at: row.try_get("last_seen_at")?,
            expires_at: row.try_get("expires_at")?,
        })
    }

    async fn touch_session(&self, id_hash: &str, at: DateTime<Utc>) -> StoreResult<()> {
        sqlx::query("UPDATE sessions SET last_seen_at = ? WHERE id_hash = ?")
            .bind(at)
            .bind(id_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn delete_session(&self, id_hash: &str) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM sessions WHERE id_hash = ?")
            .bind(id_hash)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_user_sessions(&self, user_id: Uuid) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM sessions WHERE user_id = ?")
            .bind(user_id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn delete_other_sessions(&self, user_id: Uuid, keep: &str) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM sessions WHERE user_id = ? AND id_hash <> ?")
            .bind(user_id.to_string())
            .bind(keep)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn prune_sessions(
        &self,
        now: DateTime<Utc>,
        idle_before: DateTime<Utc>,
    ) -> StoreResult<u64> {
        // Timestamps are RFC 3339 text written by one encoder: they compare as text.
        let done = sqlx::query("DELETE FROM sessions WHERE expires_at <= ? OR last_seen_at < ?")
            .bind(now)
            .bind(idle_before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn list_api_tokens(&self) -> StoreResult<Vec<ApiToken>> {
        let rows = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at DESC"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    async fn revoke_api_token(&self, id: Uuid) -> StoreResult<ApiToken> {
        let row = sqlx::query(&format!(
            "UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL \
             RETURNING {TOKEN_COLUMNS}"
        ))
        .bind(Utc::now())
        .bind(id.to_string())
        .fetch_one(&self.pool)
        .await?;
        // This instance refuses the token at once; others within the cache's TTL.
        self.tokens.forget(id);
        token_from_row(&row)
    }

    async fn create_api_token(&self, token: &NewApiToken) -> StoreResult<ApiToken> {
        let row = sqlx::query(&format!(
            "INSERT INTO api_tokens (id, name, token_hash, role, created_at) VALUES (?, ?, ?, ?, ?) \
             RETURNING {TOKEN_COLUMNS}"
        ))
        .bind(Uuid::now_v7().to_string())
        .bind(&token.name)
        .bind(&token.token_hash)
        .bind(token.role.as_str())
        .bind(Utc::now())
        .fetch_one(&self.pool)
        .await?;
        token_from_row(&row)
    }

    async fn authenticate_api_token(&self, token_hash: &str) -> StoreResult<ApiToken> {
        if let Some(token) = self.tokens.get(token_hash, Instant::now()) {
            return Ok(token);
        }
        let row = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = ? AND revoked_at IS NULL"
        ))
        .bind(token_hash)
        .fetch_one(&self.pool)
        .await?;
        let mut token = token_from_row(&row)?;
        let now = Utc::now();
        if token_cache::last_use_is_stale(token.last_used_at, now) {
            token.last_used_at = sqlx::query_scalar(
                "UPDATE api_tokens SET last_used_at = ? WHERE id = ? RETURNING last_used_at",
            )
            .bind(now)
            .bind(token.id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .or(token.last_used_at);
        }
        self.tokens.put(token_hash, token.clone(), Instant::now());
        Ok(token)
    }

    async fn get_setting(&self, key: &str) -> StoreResult<Option<serde_json::Value>> {
        let text: Option<String> = sqlx::query_scalar("SELECT value FROM settings WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        text.map(|t| {
            serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("setting {key}: {e}")))
        })
        .transpose()
    }

    async fn put_setting(&self, key: &str, value: &serde_json::Value) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO settings (key, value, updated_at) VALUES (?, ?, ?) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        )
        .bind(key)
        .bind(value.to_string())
        .bind(Utc::now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn append_audit(&self, entry: &NewAuditEntry) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, action, target, detail, remote_addr) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(Utc::now())
        .bind(&entry.actor)
        .bind(&entry.action)
        .bind(&entry.target)
        .bind(entry.detail.to_string())
        .bind(&entry.remote_addr)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_audit_before(
        &self,
        before: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, target, detail, remote_addr FROM audit_log \
             WHERE id < ? ORDER BY id DESC LIMIT ?",
        )
        .bind(before.unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditEntry {
                    id: row.try_get("id")?,
                    at: row.try_get("at")?,
                    actor: row.try_get("actor")?,
                    action: row.try_get("action")?,
                    target: row.try_get("target")?,
                    detail: json(row, "detail")?,
                    remote_addr: row.try_get("remote_addr")?,
                })
            })
            .collect()
    }

    async fn open_notification(&self, n: &NewNotification) -> StoreResult<Notification> {
        let insert = format!(
            "INSERT INTO notifications (id, kind, device_id, message, created_at) \
             VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (kind, device_id) WHERE cleared_at IS NULL AND acknowledged_at IS NULL \
             DO NOTHING RETURNING {NOTIFICATION_COLUMNS}"
        );
        let device = n.device_id.map(|d| d.to_string());
        if let Some(row) = sqlx::query(&insert)
            .bind(Uuid::now_v7().to_string())
            .bind(&n.kind)
            .bind(&device)
            .bind(&n.message)
            .bind(Utc::now())
            .fetch_optional(&self.pool)
            .await?
        {
            return notification_from_row(&row);
        }
        let existing = format!(
            "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE kind = ? AND device_id = ? \
             AND cleared_at IS NULL AND acknowledged_at IS NULL"
        );
        let row = sqlx::query(&existing)
            .bind(&n.kind)
            .bind(&device)
            .fetch_one(&self.pool)
            .await?;
        notification_from_row(&row)
    }

    async fn list_open_notifications(&self, kind: &str) -> StoreResult<Vec<Notification>> {
        let sql = format!(
            "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE kind = ? \
             AND cleared_at IS NULL AND acknowledged_at IS NULL ORDER BY created_at, id"
        );
        let rows = sqlx::query(&sql).bind(kind).fetch_all(&self.pool).await?;
        rows.iter().map(notification_from_row).collect()
    }

    async fn acknowledge_notification(&self, id: Uuid, by: &str) -> StoreResult<Notification> {
        let sql = format!(
            "UPDATE notifications SET acknowledged_at = COALESCE(acknowledged_at, ?), \
             acknowledged_by = COALESCE(acknowledged_by, ?) WHERE id = ? \
             RETURNING {NOTIFICATION_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(Utc::now())
            .bind(by)
            .bind(id.to_string())
            .fetch_one(&self.pool)
            .await?;
        notification_from_row(&row)
    }

    async fn clear_notification(&self, kind: &str, device_id: Uuid) -> StoreResult<bool> {
        let result = sqlx::query(
            "UPDATE notifications SET cleared_at = ? WHERE kind = ? AND device_id = ? \
             AND cleared_at IS NULL AND acknowledged_at IS NULL",
        )
        .bind(Utc::now())
        .bind(kind)
        .bind(device_id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn put_device_status(&self, status: &DeviceStatus) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO device_status \
             (device_id, status, last_error, last_seen_at, consecutive_failures, changed_at) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET \
             status = excluded.status, last_error = excluded.last_error, \
             last_seen_at = excluded.last_seen_at, \
             consecutive_failures = excluded.consecutive_failures, changed_at = excluded.changed_at",
        )
        .bind(status.device_id.to_string())
        .bind(status.status.as_str())
        .bind(&status.last_error)
        .bind(status.last_seen_at)
        .bind(status.consecutive_failures as i64)
        .bind(status.changed_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_device_status(&self) -> StoreResult<Vec<DeviceStatus>> {
        let rows = sqlx::query(
            "SELECT device_id, status, last_error, last_seen_at, consecutive_failures, changed_at \
             FROM device_status",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let status: String = row.try_get("status")?;
                let failures: i64 = row.try_get("consecutive_failures")?;
                Ok(DeviceStatus {
                    device_id: uuid(row, "device_id")?,
                    status: status.parse().map_err(StoreError::Corrupt)?,
                    last_error: row.try_get("last_error")?,
                    last_seen_at: row.try_get("last_seen_at")?,
                    consecutive_failures: failures.clamp(0, i64::from(u32::MAX)) as u32,
                    changed_at: row.try_get("changed_at")?,
                })
            })
            .collect()
    }

    async fn put_mqtt_credentials(&self, credentials: &MqttCredentials) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO mqtt_credentials (device_id, username, secret_hash, created_at) \
             VALUES (?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET \
             username = excluded.username, secret_hash = excluded.secret_hash, \
             created_at = excluded.created_at",
        )
        .bind(credentials.device_id.to_string())
        .bind(&credentials.username)
        .bind(&credentials.secret_hash)
        .bind(Utc::now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn find_mqtt_credentials(&self, username: &str) -> StoreResult<MqttCredentials> {
        let row = sqlx::query(
            "SELECT device_id, username, secret_hash FROM mqtt_credentials WHERE username = ?",
        )
        .bind(username)
        .fetch_one(&self.pool)
        .await?;
        Ok(MqttCredentials {
            device_id: uuid(&row, "device_id")?,
            username: row.try_get("username")?,
            secret_hash: row.try_get("secret_hash")?,
        })
    }

    async fn acquire_leases(
        &self,
        names: &[String],
        holder: &str,
        ttl: Duration,
    ) -> StoreResult<Vec<String>> {
        let now = micros(Utc::now());
        let expires = now + ttl.as_micros() as i64;
        let mut tx = self.pool.begin().await?;
        let mut held = Vec::with_capacity(names.len());
        for name in names {
            let row: Option<String> = sqlx::query_scalar(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?) \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                 expires_at = excluded.expires_at \
                 WHERE leases.holder = excluded.holder OR leases.expires_at < ? \
                 RETURNING name",
            )
            .bind(name)
            .bind(holder)
            .bind(expires)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            held.extend(row);
        }
        tx.commit().await?;
        Ok(held)
    }

    async fn release_leases(&self, names: &[String], holder: &str) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        for name in names {
            sqlx::query("DELETE FROM leases WHERE holder = ? AND name = ?")
                .bind(holder)
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn export_snapshot(&self, dir: &std::path::Path) -> StoreResult<Snapshot> {
        snapshot::sqlite_export(&self.pool, dir).await
    }

    async fn import_snapshot(
        &self,
        dir: &std::path::Path,
        snapshot: &Snapshot,
        replace: bool,
    ) -> StoreResult<()> {
        snapshot::sqlite_import(&self.pool, dir, snapshot, replace).await
    }

    async fn tables_outside_snapshots(&self) -> StoreResult<Vec<String>> {
        snapshot::sqlite_unlisted_tables(&self.pool).await
    }

    async fn append_events(&self, events: &[NewEvent]) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        // SQLite has one writer at a time: ids are visible in id order without more locking.
        let now = micros(Utc::now());
        let mut tx = self.pool.begin().await?;
        // Multi-row statements, in order: ids follow the order of `events`.
        for chunk in events.chunks(ROWS_PER_STATEMENT) {
            let sql = multi_row_insert(
                "INSERT INTO events (created_at, kind, data) VALUES ",
                "(?, ?, ?)",
                chunk.len(),
            );
            let mut query = sqlx::query(&sql);
            for event in chunk {
                query = query
                    .bind(now)
                    .bind(&event.kind)
                    .bind(event.data.to_string());
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn events_after(
        &self,
        after: i64,
        upto: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<StoredEvent>> {
        let rows = sqlx::query(
            "SELECT id, kind, data FROM events WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
        )
        .bind(after)
        .bind(upto.unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(StoredEvent {
                    id: row.try_get("id")?,
                    kind: row.try_get("kind")?,
                    data: json(row, "data")?,
                })
            })
            .collect()
    }

    async fn event_bounds(&self) -> StoreResult<Option<(i64, i64)>> {
        let row = sqlx::query("SELECT min(id) AS oldest, max(id) AS newest FROM events")
            .fetch_one(&self.pool)
            .await?;
        let oldest: Option<i64> = row.try_get("oldest")?;
        let newest: Option<i64> = row.try_get("newest")?;
        Ok(oldest.zip(newest))
    }

    async fn prune_events(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        let result = sqlx::query(
            "DELETE FROM events WHERE created_at < ? AND id < (SELECT max(id) FROM events)",
        )
        .bind(micros(before))
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }
}

/// A transaction that holds SQLite's write lock from its start (`BEGIN IMMEDIATE`), so no
/// other change to users can come between its owner counts; and the owners before it.
async fn lock_owners(
    pool: &SqlitePool,
) -> StoreResult<(sqlx::Transaction<'static, sqlx::Sqlite>, i64)> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let owners: i64 = sqlx::query_scalar(ENABLED_OWNERS)
        .fetch_one(&mut *tx)
        .await?;
    Ok((tx, owners))
}

/// Commits a user change unless it took away the last enabled owner (then rolls it back). A
/// database that had no owner to begin with (users made by `ddms user add` as admins only)
/// is left to its operator.
async fn keep_an_owner(
    mut tx: sqlx::Transaction<'_, sqlx::Sqlite>,
    owners_before: i64,
) -> StoreResult<()> {
    let owners: i64 = sqlx::query_scalar(ENABLED_OWNERS)
        .fetch_one(&mut *tx)
        .await?;
    if owners_before > 0 && owners == 0 {
        tx.rollback().await?;
        return Err(StoreError::Conflict(LAST_OWNER.into()));
    }
    tx.commit().await?;
    Ok(())
}
