//! PostgreSQL backend: pooled, readings range-partitioned by day.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Days, NaiveTime, Utc};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Row};
use uuid::Uuid;

use super::*;

static MIGRATOR: Migrator = sqlx::migrate!("../migrations/postgres");

/// A newer release may already have migrated further (expand-only): not an error for this one.
fn lenient_migrator() -> Migrator {
    let mut migrator = sqlx::migrate!("../migrations/postgres");
    migrator.set_ignore_missing(true);
    migrator
}

/// Connections of the probe pool (probes are short; more would only hold server slots).
const PROBE_CONNECTIONS: u32 = 2;
/// Serialises partition maintenance across instances (blue and green share the database).
const PARTITION_LOCK_KEY: i64 = 0x6464_6d73_7061_7274; // "ddmspart"
/// Serialises appends to the event log (see `append_events`).
const EVENT_LOG_LOCK_KEY: i64 = 0x6464_6d73_6576_6e74; // "ddmsevnt"

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

/// The CTE that folds the statement's new readings (`new`) into one rollup table.
fn rollup_upsert(table: &str, width: &str) -> String {
    format!(
        "INSERT INTO {table} AS r (series_id, bucket, min, max, sum, count) \
         SELECT series_id, date_bin('{width}', ts, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket, \
                min(value), max(value), sum(value), count(*) \
         FROM new GROUP BY 1, 2 ORDER BY 1, 2 \
         ON CONFLICT (series_id, bucket) DO UPDATE SET \
           min = LEAST(r.min, EXCLUDED.min), max = GREATEST(r.max, EXCLUDED.max), \
           sum = r.sum + EXCLUDED.sum, count = r.count + EXCLUDED.count"
    )
}

fn role(s: String) -> StoreResult<Role> {
    s.parse().map_err(StoreError::Corrupt)
}

fn device_from_row(row: &sqlx::postgres::PgRow) -> StoreResult<Device> {
    let protocol: String = row.try_get("protocol")?;
    Ok(Device {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        protocol: protocol.parse().map_err(StoreError::Corrupt)?,
        group_id: row.try_get("group_id")?,
        config: row.try_get("config")?,
        enabled: row.try_get("enabled")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn notification_from_row(row: &sqlx::postgres::PgRow) -> StoreResult<Notification> {
    Ok(Notification {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        device_id: row.try_get("device_id")?,
        message: row.try_get("message")?,
        created_at: row.try_get("created_at")?,
        cleared_at: row.try_get("cleared_at")?,
        acknowledged_at: row.try_get("acknowledged_at")?,
        acknowledged_by: row.try_get("acknowledged_by")?,
    })
}

fn user_from_row(row: &sqlx::postgres::PgRow) -> StoreResult<User> {
    Ok(User {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        password_hash: row.try_get("password_hash")?,
        role: role(row.try_get("role")?)?,
        created_at: row.try_get("created_at")?,
        disabled_at: row.try_get("disabled_at")?,
    })
}

fn token_from_row(row: &sqlx::postgres::PgRow) -> StoreResult<ApiToken> {
    Ok(ApiToken {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        role: role(row.try_get("role")?)?,
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

    async fn ensure_partitions(&self, today: DateTime<Utc>, days_ahead: u32) -> StoreResult<u32> {
        let first = today.date_naive() - Days::new(1);
        let mut created = 0;
        for offset in 0..=u64::from(days_ahead) + 1 {
            let day = first + Days::new(offset);
            let name = format!("readings_p{}", day.format("%Y%m%d"));
            let from = day.and_time(NaiveTime::MIN).and_utc();
            let to = from + chrono::Duration::days(1);
            let mut tx = self.pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(PARTITION_LOCK_KEY)
                .execute(&mut *tx)
                .await?;
            let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
                .bind(&name)
                .fetch_one(&mut *tx)
                .await?;
            if exists {
                tx.rollback().await?;
                continue;
            }
            // Inserts wait until the partition is attached. ATTACH locks the parent only
            // against other DDL, so an insert already routed to the default partition would
            // write there after the move (ATTACH then fails: "updated partition constraint
            // for default partition would be violated"), or, waiting on the default
            // partition's lock, fail after the commit with "new row … violates partition
            // constraint" (23514). SHARE ROW EXCLUSIVE waits for running inserts and holds new
            // ones (which, once they run, see the new partition), while reads go on.
            sqlx::query("LOCK TABLE readings IN SHARE ROW EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await?;
            // Rows that landed in the default partition for this day move into the new one, so
            // attaching it never fails on a constraint violation. A query planned before the
            // ATTACH would scan the default partition without the new one, and, reading after
            // the commit, miss the moved rows. So while rows move, nothing reads `readings`
            // either (normally partitions exist days ahead and nothing moves).
            let must_move: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM readings_default WHERE ts >= $1 AND ts < $2)",
            )
            .bind(from)
            .bind(to)
            .fetch_one(&mut *tx)
            .await?;
            if must_move {
                sqlx::query("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")
                    .execute(&mut *tx)
                    .await?;
            }
            let create = format!(
                "CREATE TABLE {name} (LIKE readings INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
            );
            sqlx::query(&create).execute(&mut *tx).await?;
            let pk = format!("ALTER TABLE {name} ADD PRIMARY KEY (series_id, ts)");
            sqlx::query(&pk).execute(&mut *tx).await?;
            let moved = format!(
                "WITH moved AS (DELETE FROM readings_default WHERE ts >= $1 AND ts < $2 RETURNING *) \
                 INSERT INTO {name} SELECT * FROM moved"
            );
            sqlx::query(&moved)
                .bind(from)
                .bind(to)
                .execute(&mut *tx)
                .await?;
            let attach = format!(
                "ALTER TABLE readings ATTACH PARTITION {name} FOR VALUES FROM ('{}') TO ('{}')",
                from.to_rfc3339(),
                to.to_rfc3339()
            );
            sqlx::query(&attach).execute(&mut *tx).await?;
            tx.commit().await?;
            created += 1;
        }
        Ok(created)
    }

    async fn create_group(&self, name: &str) -> StoreResult<Group> {
        let row = sqlx::query(
            "INSERT INTO device_groups (id, name) VALUES ($1, $2) RETURNING id, name, created_at",
        )
        .bind(Uuid::now_v7())
        .bind(name)
        .fetch_one(&self.pool)
        .await?;
        Ok(Group {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            created_at: row.try_get("created_at")?,
        })
    }

    async fn list_groups(&self) -> StoreResult<Vec<Group>> {
        let rows = sqlx::query("SELECT id, name, created_at FROM device_groups ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(Group {
                    id: row.try_get("id")?,
                    name: row.try_get("name")?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect()
    }

    async fn delete_group(&self, id: Uuid) -> StoreResult<()> {
        let done = sqlx::query("DELETE FROM device_groups WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn create_device(&self, device: &NewDevice) -> StoreResult<Device> {
        let sql = format!(
            "INSERT INTO devices (id, name, protocol, group_id, config, enabled) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {DEVICE_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(Uuid::now_v7())
            .bind(&device.name)
            .bind(device.protocol.as_str())
            .bind(device.group_id)
            .bind(&device.config)
            .bind(device.enabled)
            .fetch_one(&self.pool)
            .await?;
        device_from_row(&row)
    }

    async fn get_device(&self, id: Uuid) -> StoreResult<Device> {
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1");
        let row = sqlx::query(&sql).bind(id).fetch_one(&self.pool).await?;
        device_from_row(&row)
    }

    async fn list_devices(&self) -> StoreResult<Vec<Device>> {
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices ORDER BY name");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(device_from_row).collect()
    }

    async fn update_device(&self, id: Uuid, device: &NewDevice) -> StoreResult<Device> {
        let sql = format!(
            "UPDATE devices SET name = $2, protocol = $3, group_id = $4, config = $5, enabled = $6, \
             updated_at = now() WHERE id = $1 RETURNING {DEVICE_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .bind(&device.name)
            .bind(device.protocol.as_str())
            .bind(device.group_id)
            .bind(&device.config)
            .bind(device.enabled)
            .fetch_one(&self.pool)
            .await?;
        device_from_row(&row)
    }

    async fn delete_device(&self, id: Uuid) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        // Readings carry no foreign key (partitioned table), so they go explicitly.
        for table in ["readings", "readings_1m", "readings_1h"] {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE series_id IN (SELECT id FROM series WHERE device_id = $1)"
            ))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        let deleted = sqlx::query("DELETE FROM devices WHERE id = $1")
            .bind(id)
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
        // The no-op update makes RETURNING yield the existing row too.
        let id = sqlx::query_scalar(
            "INSERT INTO series (device_id, metric, unit) VALUES ($1, $2, $3) \
             ON CONFLICT (device_id, metric) DO UPDATE SET unit = COALESCE(EXCLUDED.unit, series.unit) \
             RETURNING id",
        )
        .bind(device_id)
        .bind(metric)
        .bind(unit)
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    async fn find_series(&self, device_id: Uuid, metric: &str) -> StoreResult<Option<SeriesId>> {
        Ok(
            sqlx::query_scalar("SELECT id FROM series WHERE device_id = $1 AND metric = $2")
                .bind(device_id)
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
            sqlx::query_as("SELECT metric, id, unit FROM series WHERE device_id = $1")
                .bind(device_id)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn insert_readings(&self, readings: &[Reading]) -> StoreResult<u64> {
        if readings.is_empty() {
            return Ok(0);
        }
        let series: Vec<i64> = readings.iter().map(|r| r.series).collect();
        let ts: Vec<DateTime<Utc>> = readings.iter().map(|r| r.ts).collect();
        let values: Vec<f64> = readings.iter().map(|r| r.value).collect();
        // One statement, three array parameters: far cheaper than a multi-row VALUES list. The
        // rollups add what RETURNING yields — only the rows that were new — in the same
        // statement, so they are exactly as durable as the readings. Buckets are upserted in
        // key order, so two instances writing the same series cannot deadlock.
        let result: i64 = sqlx::query_scalar(&format!(
            "WITH new AS ( \
               INSERT INTO readings (series_id, ts, value) \
               SELECT * FROM UNNEST($1::bigint[], $2::timestamptz[], $3::float8[]) \
               ON CONFLICT DO NOTHING RETURNING series_id, ts, value), \
             m AS ({}), h AS ({}) \
             SELECT count(*) FROM new",
            rollup_upsert("readings_1m", "1 minute"),
            rollup_upsert("readings_1h", "1 hour"),
        ))
        .bind(&series)
        .bind(&ts)
        .bind(&values)
        .fetch_one(&self.pool)
        .await?;
        Ok(result.max(0) as u64)
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
             WHERE series_id = $1 AND bucket >= $2 AND bucket < $3 ORDER BY bucket LIMIT $4"
        );
        let rows = sqlx::query(&sql)
            .bind(series)
            .bind(step.bucket(from))
            .bind(to)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(Bucket::from_sums(
                    row.try_get("bucket")?,
                    row.try_get("min")?,
                    row.try_get("max")?,
                    row.try_get("sum")?,
                    row.try_get("count")?,
                ))
            })
            .collect()
    }

    async fn count_readings_before(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        let count: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(count), 0)::bigint FROM readings_1h \
             WHERE bucket <= $1 - interval '1 hour'",
        )
        .bind(before)
        .fetch_one(&self.pool)
        .await?;
        Ok(count.max(0) as u64)
    }

    async fn prune_readings(&self, before: DateTime<Utc>) -> StoreResult<PruneCounts> {
        let mut counts = PruneCounts::default();
        // Whole days go as partitions: dropping a table costs nothing per row and leaves no
        // dead tuples to vacuum.
        let partitions: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'readings'::regclass AND c.relname ~ '^readings_p[0-9]{8}$' \
             ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await?;
        for name in partitions {
            let Ok(day) = chrono::NaiveDate::parse_from_str(&name["readings_p".len()..], "%Y%m%d")
            else {
                continue;
            };
            let end = (day + Days::new(1)).and_time(NaiveTime::MIN).and_utc();
            if end > before {
                break;
            }
            let mut tx = self.pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(PARTITION_LOCK_KEY)
                .execute(&mut *tx)
                .await?;
            // Dropping a partition locks the parent briefly; rather skip a run than queue
            // every insert behind a long query.
            sqlx::query("SET LOCAL lock_timeout = '2s'")
                .execute(&mut *tx)
                .await?;
            sqlx::query(&format!("DROP TABLE IF EXISTS {name}"))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            counts.partitions += 1;
        }
        // The day the cutoff falls in, and anything in the default partition.
        counts.readings = sqlx::query("DELETE FROM readings WHERE ts < $1")
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected();
        counts.rollups_1m = sqlx::query("DELETE FROM readings_1m WHERE bucket < $1")
            .bind(RollupStep::Minute.bucket(before))
            .execute(&self.pool)
            .await?
            .rows_affected();
        counts.rollups_1h = sqlx::query("DELETE FROM readings_1h WHERE bucket < $1")
            .bind(RollupStep::Hour.bucket(before))
            .execute(&self.pool)
            .await?
            .rows_affected();
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
            "SELECT ts, value FROM readings WHERE series_id = $1 AND ts >= $2 AND ts < $3 \
             ORDER BY ts LIMIT $4",
        )
        .bind(series)
        .bind(from)
        .bind(to)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Point {
                    ts: row.try_get("ts")?,
                    value: row.try_get("value")?,
                })
            })
            .collect()
    }

    async fn latest_readings(&self, device_id: Uuid) -> StoreResult<Vec<LatestReading>> {
        let rows = sqlx::query(
            "SELECT s.id, s.metric, s.unit, r.ts, r.value FROM series s \
             CROSS JOIN LATERAL (SELECT ts, value FROM readings WHERE series_id = s.id \
                                 ORDER BY ts DESC LIMIT 1) r \
             WHERE s.device_id = $1 ORDER BY s.metric",
        )
        .bind(device_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(LatestReading {
                    series: row.try_get("id")?,
                    metric: row.try_get("metric")?,
                    unit: row.try_get("unit")?,
                    ts: row.try_get("ts")?,
                    value: row.try_get("value")?,
                })
            })
            .collect()
    }

    async fn create_user(&self, user: &NewUser) -> StoreResult<User> {
        let row = sqlx::query(&format!(
            "INSERT INTO users (id, username, password_hash, role) VALUES ($1, $2, $3, $4) \
             RETURNING {USER_COLUMNS}"
        ))
        .bind(Uuid::now_v7())
        .bind(&user.username)
        .bind(&user.password_hash)
        .bind(user.role.as_str())
        .fetch_one(&self.pool)
        .await?;
        user_from_row(&row)
    }

    async fn find_user(&self, username: &str) -> StoreResult<User> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE username = $1"
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
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
            .bind(id)
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
        let (mut tx, owners_before) = lock_owners(&self.pool).await?;
        let row = sqlx::query(&format!(
            "UPDATE users SET role = coalesce($1, role), password_hash = coalesce($2, password_hash), \
             disabled_at = CASE WHEN $3 IS NULL THEN disabled_at \
                                WHEN $3 THEN coalesce(disabled_at, now()) ELSE NULL END \
             WHERE id = $4 RETURNING {USER_COLUMNS}"
        ))
        .bind(change.role.map(Role::as_str))
        .bind(change.password_hash.as_deref())
        .bind(change.disabled)
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        let user = user_from_row(&row)?;
        keep_an_owner(tx, owners_before).await?;
        Ok(user)
    }

    async fn delete_user(&self, id: Uuid) -> StoreResult<()> {
        let (mut tx, owners_before) = lock_owners(&self.pool).await?;
        let done = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id)
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
             expires_at, remote_addr) VALUES ($1, $2, $3, $4, $4, $5, $6)",
        )
        .bind(&session.id_hash)
        .bind(session.user_id)
        .bind(&session.csrf_hash)
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
             FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id_hash = $1",
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
        sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE id_hash = $2")
            .bind(at)
            .bind(id_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn delete_session(&self, id_hash: &str) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_user_sessions(&self, user_id: Uuid) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM sessions WHERE user_id = $1")
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn delete_other_sessions(&self, user_id: Uuid, keep: &str) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND id_hash <> $2")
            .bind(user_id)
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
        let done = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1 OR last_seen_at < $2")
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
            "UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL \
             RETURNING {TOKEN_COLUMNS}"
        ))
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        // This instance refuses the token at once; others within the cache's TTL.
        self.tokens.forget(id);
        token_from_row(&row)
    }

    async fn create_api_token(&self, token: &NewApiToken) -> StoreResult<ApiToken> {
        let row = sqlx::query(&format!(
            "INSERT INTO api_tokens (id, name, token_hash, role) VALUES ($1, $2, $3, $4) \
             RETURNING {TOKEN_COLUMNS}"
        ))
        .bind(Uuid::now_v7())
        .bind(&token.name)
        .bind(&token.token_hash)
        .bind(token.role.as_str())
        .fetch_one(&self.pool)
        .await?;
        token_from_row(&row)
    }

    async fn authenticate_api_token(&self, token_hash: &str) -> StoreResult<ApiToken> {
        if let Some(token) = self.tokens.get(token_hash, Instant::now()) {
            return Ok(token);
        }
        let row = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL"
        ))
        .bind(token_hash)
        .fetch_one(&self.pool)
        .await?;
        let mut token = token_from_row(&row)?;
        if token_cache::last_use_is_stale(token.last_used_at, Utc::now()) {
            token.last_used_at = sqlx::query_scalar(
                "UPDATE api_tokens SET last_used_at = now() WHERE id = $1 RETURNING last_used_at",
            )
            .bind(token.id)
            .fetch_optional(&self.pool)
            .await?
            .or(token.last_used_at);
        }
        self.tokens.put(token_hash, token.clone(), Instant::now());
        Ok(token)
    }

    async fn get_setting(&self, key: &str) -> StoreResult<Option<serde_json::Value>> {
        Ok(
            sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn put_setting(&self, key: &str, value: &serde_json::Value) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn append_audit(&self, entry: &NewAuditEntry) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO audit_log (actor, action, target, detail, remote_addr) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&entry.actor)
        .bind(&entry.action)
        .bind(&entry.target)
        .bind(&entry.detail)
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
             WHERE id < $1 ORDER BY id DESC LIMIT $2",
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
                    detail: row.try_get("detail")?,
                    remote_addr: row.try_get("remote_addr")?,
                })
            })
            .collect()
    }

    async fn open_notification(&self, n: &NewNotification) -> StoreResult<Notification> {
        let insert = format!(
            "INSERT INTO notifications (id, kind, device_id, message) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (kind, device_id) WHERE cleared_at IS NULL AND acknowledged_at IS NULL \
             DO NOTHING RETURNING {NOTIFICATION_COLUMNS}"
        );
        if let Some(row) = sqlx::query(&insert)
            .bind(Uuid::now_v7())
            .bind(&n.kind)
            .bind(n.device_id)
            .bind(&n.message)
            .fetch_optional(&self.pool)
            .await?
        {
            return notification_from_row(&row);
        }
        let existing = format!(
            "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE kind = $1 AND device_id = $2 \
             AND cleared_at IS NULL AND acknowledged_at IS NULL"
        );
        let row = sqlx::query(&existing)
            .bind(&n.kind)
            .bind(n.device_id)
            .fetch_one(&self.pool)
            .await?;
        notification_from_row(&row)
    }

    async fn list_open_notifications(&self, kind: &str) -> StoreResult<Vec<Notification>> {
        let sql = format!(
            "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE kind = $1 \
             AND cleared_at IS NULL AND acknowledged_at IS NULL ORDER BY created_at, id"
        );
        let rows = sqlx::query(&sql).bind(kind).fetch_all(&self.pool).await?;
        rows.iter().map(notification_from_row).collect()
    }

    async fn acknowledge_notification(&self, id: Uuid, by: &str) -> StoreResult<Notification> {
        let sql = format!(
            "UPDATE notifications SET acknowledged_at = COALESCE(acknowledged_at, now()), \
             acknowledged_by = COALESCE(acknowledged_by, $2) WHERE id = $1 \
             RETURNING {NOTIFICATION_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .bind(by)
            .fetch_one(&self.pool)
            .await?;
        notification_from_row(&row)
    }

    async fn clear_notification(&self, kind: &str, device_id: Uuid) -> StoreResult<bool> {
        let result = sqlx::query(
            "UPDATE notifications SET cleared_at = now() WHERE kind = $1 AND device_id = $2 \
             AND cleared_at IS NULL AND acknowledged_at IS NULL",
        )
        .bind(kind)
        .bind(device_id)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn put_device_status(&self, status: &DeviceStatus) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO device_status \
             (device_id, status, last_error, last_seen_at, consecutive_failures, changed_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (device_id) DO UPDATE SET \
             status = EXCLUDED.status, last_error = EXCLUDED.last_error, \
             last_seen_at = EXCLUDED.last_seen_at, \
             consecutive_failures = EXCLUDED.consecutive_failures, changed_at = EXCLUDED.changed_at",
        )
        .bind(status.device_id)
        .bind(status.status.as_str())
        .bind(&status.last_error)
        .bind(status.last_seen_at)
        .bind(status.consecutive_failures as i32)
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
                let failures: i32 = row.try_get("consecutive_failures")?;
                Ok(DeviceStatus {
                    device_id: row.try_get("device_id")?,
                    status: status.parse().map_err(StoreError::Corrupt)?,
                    last_error: row.try_get("last_error")?,
                    last_seen_at: row.try_get("last_seen_at")?,
                    consecutive_failures: failures.max(0) as u32,
                    changed_at: row.try_get("changed_at")?,
                })
            })
            .collect()
    }

    async fn put_mqtt_credentials(&self, credentials: &MqttCredentials) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO mqtt_credentials (device_id, username, secret_hash) VALUES ($1, $2, $3) \
             ON CONFLICT (device_id) DO UPDATE SET username = EXCLUDED.username, \
             secret_hash = EXCLUDED.secret_hash, created_at = now()",
        )
        .bind(credentials.device_id)
        .bind(&credentials.username)
        .bind(&credentials.secret_hash)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn find_mqtt_credentials(&self, username: &str) -> StoreResult<MqttCredentials> {
        let row = sqlx::query(
            "SELECT device_id, username, secret_hash FROM mqtt_credentials WHERE username = $1",
        )
        .bind(username)
        .fetch_one(&self.pool)
        .await?;
        Ok(MqttCredentials {
            device_id: row.try_get("device_id")?,
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
        if names.is_empty() {
            return Ok(Vec::new());
        }
        // The database clock decides expiry, so instances with skewed clocks still agree.
        let held = sqlx::query_scalar(
            "INSERT INTO leases (name, holder, expires_at) \
             SELECT n, $2, now() + make_interval(secs => $3) FROM unnest($1::text[]) AS n \
             ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at \
             WHERE leases.holder = EXCLUDED.holder OR leases.expires_at < now() \
             RETURNING name",
        )
        .bind(names)
        .bind(holder)
        .bind(ttl.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        Ok(held)
    }

    async fn release_leases(&self, names: &[String], holder: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM leases WHERE holder = $2 AND name = ANY($1)")
            .bind(names)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn export_snapshot(&self, dir: &std::path::Path) -> StoreResult<Snapshot> {
        snapshot::postgres_export(&self.pool, dir).await
    }

    async fn import_snapshot(
        &self,
        dir: &std::path::Path,
        snapshot: &Snapshot,
        replace: bool,
    ) -> StoreResult<()> {
        if let Some((oldest, newest)) = snapshot.readings_span {
            // Daily partitions for the loaded readings (at most the newest year's; older
            // ones land in the default partition), as ingest would have created them.
            let year_before = newest.checked_sub_signed(chrono::Duration::days(366));
            let start = year_before.map_or(oldest, |year_before| oldest.max(year_before));
            let days = (newest - start).num_days().max(0) as u32;
            // `ensure_partitions` starts the day before the one it is given.
            self.ensure_partitions(start + chrono::Duration::days(1), days)
                .await?;
        }
        snapshot::postgres_import(&self.pool, dir, snapshot, replace).await
    }

    async fn tables_outside_snapshots(&self) -> StoreResult<Vec<String>> {
        snapshot::postgres_unlisted_tables(&self.pool).await
    }

    async fn append_events(&self, events: &[NewEvent]) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        let data: Vec<&serde_json::Value> = events.iter().map(|e| &e.data).collect();
        let mut tx = self.pool.begin().await?;
        // Appenders take turns until commit: ids are drawn and made visible in the same order,
        // so a tailer that has read up to id n will never later find a smaller id.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(EVENT_LOG_LOCK_KEY)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO events (kind, data) \
             SELECT k.kind, d.data \
             FROM UNNEST($1::text[]) WITH ORDINALITY AS k(kind, n) \
             JOIN jsonb_array_elements($2::jsonb) WITH ORDINALITY AS d(data, n) USING (n) \
             ORDER BY n",
        )
        .bind(&kinds)
        .bind(sqlx::types::Json(&data))
        .execute(&mut *tx)
        .await?;
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
            "SELECT id, kind, data FROM events WHERE id > $1 AND ($2::bigint IS NULL OR id <= $2) \
             ORDER BY id LIMIT $3",
        )
        .bind(after)
        .bind(upto)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(StoredEvent {
                    id: row.try_get("id")?,
                    kind: row.try_get("kind")?,
                    data: row.try_get("data")?,
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
            "DELETE FROM events WHERE created_at < $1 \
             AND id < (SELECT max(id) FROM events)",
        )
        .bind(before)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }
}

/// A transaction holding row locks on every enabled owner, and how many there are: two
/// changes to owners run one after the other, and the second sees the first's outcome (READ
/// COMMITTED re-reads the rows a lock waited for), so both cannot take away "the other" last
/// owner.
async fn lock_owners(
    pool: &PgPool,
) -> StoreResult<(sqlx::Transaction<'static, sqlx::Postgres>, i64)> {
    let mut tx = pool.begin().await?;
    let owners =
        sqlx::query("SELECT id FROM users WHERE role = 'owner' AND disabled_at IS NULL FOR UPDATE")
            .fetch_all(&mut *tx)
            .await?
            .len() as i64;
    Ok((tx, owners))
}

/// Commits a user change unless it took away the last enabled owner (then rolls it back). A
/// database that had no owner to begin with is left to its operator.
async fn keep_an_owner(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
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
