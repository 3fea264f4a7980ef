//! [`ReadingStore`] on SQLite: readings (a `WITHOUT ROWID` table clustered on `(series, ts)`),
//! their 1-minute and 1-hour rollups, and retention. The rollups of a batch are aggregated in
//! Rust from the rows the insert reports as new and upserted in the same transaction, so they
//! are exactly as durable as the readings; pruning deletes in small steps so that the ingest
//! writer never waits long for SQLite's one write lock.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{keep_prepared, micros, multi_row_insert, SqliteStore, ROWS_PER_STATEMENT};
use crate::store::common::readings::reading_store;
use crate::store::{PruneCounts, Reading, RollupStep, StoreResult};

/// The tail of the readings insert: a reading already stored for `(series, ts)` is left as it
/// is (the first value wins), and the rows that were new come back for the rollups.
const IGNORE_DUPLICATES: &str =
    " ON CONFLICT (series_id, ts) DO NOTHING RETURNING series_id, ts, value";

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

reading_store!(SqliteStore);

impl SqliteStore {
    /// The newest reading of each series of a device, by a correlated `max(ts)` (SQLite has no
    /// LATERAL, which PostgreSQL uses).
    const LATEST_READINGS: &'static str =
        "SELECT s.id, s.metric, s.unit, r.ts, r.value FROM series s \
         JOIN readings r ON r.series_id = s.id \
          AND r.ts = (SELECT max(ts) FROM readings WHERE series_id = s.id) \
         WHERE s.device_id = $1 ORDER BY s.metric";

    /// SQLite has no partitions.
    async fn create_partitions(&self, _today: DateTime<Utc>, _days_ahead: u32) -> StoreResult<u32> {
        Ok(0)
    }

    /// A batch in key order, with its rollups, in one transaction.
    async fn insert_in_key_order(&self, readings: &[Reading]) -> StoreResult<u64> {
        // One transaction; full chunks share one cached multi-row statement (each statement is
        // a round trip to sqlx's SQLite worker thread, so rows per statement is what counts).
        // RETURNING yields only the rows that were inserted, not the ignored duplicates: those
        // are what the rollups add. Only the duplicate is ignored (`ON CONFLICT … DO NOTHING`,
        // not `INSERT OR IGNORE`, which would also skip a row breaking NOT NULL or a CHECK and
        // report the batch as stored).
        let insert = |rows| {
            multi_row_insert(
                "INSERT INTO readings (series_id, ts, value) VALUES ",
                "(?, ?, ?)",
                rows,
            ) + IGNORE_DUPLICATES
        };
        let full_chunk_sql = insert(ROWS_PER_STATEMENT);
        let mut tx = self.writer().begin().await?;
        let mut new = Vec::with_capacity(readings.len());
        for chunk in readings.chunks(ROWS_PER_STATEMENT) {
            // Only the last chunk can be shorter, and only it needs a statement of its own.
            let sql = if chunk.len() == ROWS_PER_STATEMENT {
                std::borrow::Cow::Borrowed(full_chunk_sql.as_str())
            } else {
                std::borrow::Cow::Owned(insert(chunk.len()))
            };
            let mut query = sqlx::query(&sql).persistent(keep_prepared(chunk.len()));
            for reading in chunk {
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
                let mut query = sqlx::query(&sql).persistent(keep_prepared(chunk.len()));
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

    /// Retention, one series and at most one day per statement.
    async fn prune(&self, before: DateTime<Utc>) -> StoreResult<PruneCounts> {
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
                        .execute(self.writer())
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
                .execute(self.writer())
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
}
