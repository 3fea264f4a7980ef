//! [`ReadingStore`] on PostgreSQL: readings range-partitioned by day (with a default
//! partition), their 1-minute and 1-hour rollups, partition maintenance and retention. A batch
//! is inserted in key order, split by series into up to four statements that run side by side;
//! each statement holds the insert and the rollups of exactly its new rows, so the rollups are as
//! durable as the readings. Retention drops whole days as partitions, which costs nothing per
//! row and leaves nothing to vacuum.

use chrono::{DateTime, Days, NaiveTime, Utc};

use super::PostgresStore;
use crate::store::common::readings::reading_store;
use crate::store::{PruneCounts, Reading, RollupStep, StoreResult};

/// Serialises partition maintenance across instances (blue and green share the database).
const PARTITION_LOCK_KEY: i64 = 0x6464_6d73_7061_7274; // "ddmspart"

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

/// Readings below which a batch is not split: a statement's fixed cost (a round trip, planning)
/// would outweigh what a second connection adds.
const MIN_CHUNK: usize = 2_500;
/// Connections one batch uses at most (and at most half the pool, so a batch leaves the API and
/// the pollers' lookups connections to run on).
const MAX_CONCURRENT_CHUNKS: usize = 4;

/// Splits a batch in key order into at most `most` chunks of at least [`MIN_CHUNK`] readings,
/// cut where the series changes: no two chunks touch the same series, hence the same rollup
/// rows, so they commit side by side without waiting on each other's row locks. Measured on a
/// loaded 2-core machine, four concurrent statements of a 10,000-reading batch took half the
/// time of one.
fn series_chunks(readings: &[Reading], most: usize) -> Vec<&[Reading]> {
    let count = (readings.len() / MIN_CHUNK).clamp(1, most.max(1));
    let target = readings.len().div_ceil(count);
    let mut chunks = Vec::with_capacity(count);
    let mut rest = readings;
    while rest.len() > target && chunks.len() + 1 < count {
        // The first series change at or after the target size.
        let cut = (target..rest.len())
            .find(|&i| rest[i].series != rest[i - 1].series)
            .unwrap_or(rest.len());
        let (chunk, tail) = rest.split_at(cut);
        chunks.push(chunk);
        rest = tail;
    }
    if !rest.is_empty() {
        chunks.push(rest);
    }
    chunks
}

reading_store!(PostgresStore);

impl PostgresStore {
    /// One statement, three array parameters: far cheaper than a multi-row VALUES list. The
    /// rollups add what RETURNING yields — only the rows that were new — in the same statement,
    /// so they are exactly as durable as the readings. Buckets are upserted in key order, so two
    /// instances writing the same series cannot deadlock.
    async fn insert_chunk(&self, readings: &[Reading]) -> StoreResult<u64> {
        let series: Vec<i64> = readings.iter().map(|r| r.series).collect();
        let ts: Vec<DateTime<Utc>> = readings.iter().map(|r| r.ts).collect();
        let values: Vec<f64> = readings.iter().map(|r| r.value).collect();
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

    /// The newest reading of each series of a device, by a LATERAL subquery (which SQLite
    /// lacks: it uses a correlated `max(ts)`).
    const LATEST_READINGS: &'static str =
        "SELECT s.id, s.metric, s.unit, r.ts, r.value FROM series s \
         CROSS JOIN LATERAL (SELECT ts, value FROM readings WHERE series_id = s.id \
                             ORDER BY ts DESC LIMIT 1) r \
         WHERE s.device_id = $1 ORDER BY s.metric";

    /// Creates the daily partitions from yesterday to `days_ahead` days ahead.
    async fn create_partitions(&self, today: DateTime<Utc>, days_ahead: u32) -> StoreResult<u32> {
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

    /// A batch in key order, in up to [`MAX_CONCURRENT_CHUNKS`] statements side by side.
    async fn insert_in_key_order(&self, readings: &[Reading]) -> StoreResult<u64> {
        let most = (self.pool.options().get_max_connections() / 2).max(1) as usize;
        let chunks = series_chunks(readings, most.min(MAX_CONCURRENT_CHUNKS));
        // Each chunk commits on its own connection. A chunk that fails leaves the others
        // committed; that is safe because a retry of the batch stores nothing twice and the
        // rollups count only what each statement newly inserted.
        let results = futures::future::join_all(chunks.iter().map(|c| self.insert_chunk(c))).await;
        let mut inserted = 0;
        for result in results {
            inserted += result?;
        }
        Ok(inserted)
    }

    /// Retention: whole days go as partitions, the rest row by row.
    async fn prune(&self, before: DateTime<Utc>) -> StoreResult<PruneCounts> {
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
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::{series_chunks, MIN_CHUNK};
    use crate::store::Reading;

    /// `series` series of `per_series` readings each, in key order.
    fn batch(series: i64, per_series: i64) -> Vec<Reading> {
        (0..series)
            .flat_map(|s| {
                (0..per_series).map(move |t| Reading {
                    series: s,
                    ts: Utc.timestamp_opt(t, 0).unwrap(),
                    value: 0.0,
                })
            })
            .collect()
    }

    #[test]
    fn chunks_are_cut_where_the_series_changes_and_cover_the_batch_in_order() {
        let readings = batch(1000, 10);
        let chunks = series_chunks(&readings, 4);
        assert_eq!(chunks.len(), 4);
        assert_eq!(chunks.concat(), readings);
        for pair in chunks.windows(2) {
            let (before, after) = (pair[0].last().unwrap(), pair[1].first().unwrap());
            assert_ne!(before.series, after.series, "a series spans two chunks");
        }
        assert!(chunks.iter().all(|c| c.len() >= MIN_CHUNK / 2));
    }

    #[test]
    fn small_batches_and_single_series_stay_whole() {
        let small = batch(100, 10);
        assert_eq!(series_chunks(&small, 4).len(), 1);
        let one_series = batch(1, 20_000);
        assert_eq!(series_chunks(&one_series, 4), vec![&one_series[..]]);
        assert_eq!(series_chunks(&batch(1000, 10), 1).len(), 1);
        let big = batch(3, 5_000);
        let chunks = series_chunks(&big, 4);
        assert_eq!(
            chunks.len(),
            3,
            "one chunk a series: {:?}",
            chunks.iter().map(|c| c.len()).collect::<Vec<_>>()
        );
        assert_eq!(chunks.concat(), big);
    }
}
