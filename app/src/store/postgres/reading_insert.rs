//! How a batch of readings reaches PostgreSQL: in key order, split by series into up to four
//! statements that run side by side, each holding the insert and the rollups of exactly its
//! new rows, so the rollups are as durable as the readings.
//!
//! Readings are idempotent on `(series, ts)`, yet nearly every batch is all new: a duplicate
//! only comes with a redelivery (a restart, a reconnect), a device repeating a timestamp, or two
//! instances storing the same message. `ON CONFLICT DO NOTHING` makes PostgreSQL insert every row
//! speculatively (a uniqueness probe, a speculative lock, then a confirmation record), which
//! measured as a third of the statement's cost. So a chunk is first inserted plainly; if the
//! primary key refuses a row, that statement rolled back as a whole and the chunk is inserted
//! again with `ON CONFLICT DO NOTHING`, which then stays in use for [`GUARDED_FOR`] — duplicates
//! come in runs (a redelivered session), and each refused statement costs its work twice.
//!
//! The plain insert is given its rollup rows, computed in Rust ([`batch_rollups`]): all its
//! rows are new when it succeeds. The `ON CONFLICT DO NOTHING` insert cannot know beforehand
//! which rows it will store, so PostgreSQL aggregates what it returns.

use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::batch_rollups::{batch_rollups, RollupRows};
use super::PostgresStore;
use crate::store::{Reading, StoreError, StoreResult};

/// How long chunks go straight to `ON CONFLICT DO NOTHING` after a duplicate was refused.
const GUARDED_FOR: Duration = Duration::from_secs(30);

/// Readings below which a batch is not split: a statement's fixed cost (a round trip, planning)
/// would outweigh what a second connection adds.
const MIN_CHUNK: usize = 2_500;
/// Connections one batch uses at most (and at most half the pool, so a batch leaves the API and
/// the pollers' lookups connections to run on).
const MAX_CONCURRENT_CHUNKS: usize = 4;

/// Whether readings are inserted expecting duplicates, and until when.
#[derive(Debug, Default)]
pub(super) struct DuplicateGuard {
    until: Mutex<Option<Instant>>,
}

impl DuplicateGuard {
    fn active(&self) -> bool {
        let until = self.until.lock().unwrap_or_else(|e| e.into_inner());
        until.is_some_and(|until| Instant::now() < until)
    }

    fn arm(&self) {
        *self.until.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + GUARDED_FOR);
    }
}

/// Whether a statement may meet rows that are already stored.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Duplicates {
    /// A plain insert: the primary key refuses the statement if a row exists.
    Refused,
    /// `ON CONFLICT DO NOTHING`: existing rows are skipped (the first value wins).
    Skipped,
}

/// How a rollup row folds into the stored bucket (`r`) of the same series and start.
const MERGE_BUCKET: &str = "ON CONFLICT (series_id, bucket) DO UPDATE SET \
    min = LEAST(r.min, EXCLUDED.min), max = GREATEST(r.max, EXCLUDED.max), \
    sum = r.sum + EXCLUDED.sum, count = r.count + EXCLUDED.count";

/// The statement for `duplicates`, formatted once.
fn insert_statement(duplicates: Duplicates) -> &'static str {
    static REFUSED: LazyLock<String> = LazyLock::new(|| statement_text(Duplicates::Refused));
    static SKIPPED: LazyLock<String> = LazyLock::new(|| statement_text(Duplicates::Skipped));
    match duplicates {
        Duplicates::Refused => &REFUSED,
        Duplicates::Skipped => &SKIPPED,
    }
}

/// The statement that inserts a chunk (`$1` series ids, `$2` timestamps, `$3` values) and folds
/// the rows it inserted — what `RETURNING` yields, never a duplicate — into both rollups. The
/// new rows are aggregated once per minute; the hour rollup adds up those minutes. Buckets are
/// upserted in key order, so two instances writing the same series cannot deadlock.
fn statement_text(duplicates: Duplicates) -> String {
    const ORIGIN: &str = "TIMESTAMPTZ '2000-01-01 00:00:00+00'";
    let on_conflict = match duplicates {
        Duplicates::Refused => "",
        Duplicates::Skipped => "ON CONFLICT DO NOTHING",
    };
    format!(
        "WITH new AS ( \
           INSERT INTO readings (series_id, ts, value) \
           SELECT * FROM UNNEST($1::bigint[], $2::timestamptz[], $3::float8[]) \
           {on_conflict} RETURNING series_id, ts, value), \
         minutes AS ( \
           SELECT series_id, date_bin('1 minute', ts, {ORIGIN}) AS bucket, \
                  min(value) AS min, max(value) AS max, sum(value) AS sum, count(*) AS count \
           FROM new GROUP BY 1, 2), \
         m AS ( \
           INSERT INTO readings_1m AS r (series_id, bucket, min, max, sum, count) \
           SELECT * FROM minutes ORDER BY 1, 2 {MERGE_BUCKET}), \
         h AS ( \
           INSERT INTO readings_1h AS r (series_id, bucket, min, max, sum, count) \
           SELECT series_id, date_bin('1 hour', bucket, {ORIGIN}), \
                  min(min), max(max), sum(sum), sum(count)::bigint \
           FROM minutes GROUP BY 1, 2 ORDER BY 1, 2 {MERGE_BUCKET}) \
         SELECT count(*) FROM new"
    )
}

/// The plain insert with rollups computed beforehand ([`batch_rollups`]): `$1`–`$3` the
/// readings, `$4`–`$9` the minute rows, `$10`–`$15` the hour rows, each in key order. The
/// rollup inserts run after the readings' (PostgreSQL finishes unreferenced `WITH` statements
/// last), and a refused reading rolls back all three.
static PLAIN_WITH_ROLLUPS: LazyLock<String> = LazyLock::new(|| {
    let rows = |first: usize| {
        format!(
            "SELECT * FROM UNNEST(${}::bigint[], ${}::timestamptz[], ${}::float8[], \
             ${}::float8[], ${}::float8[], ${}::bigint[])",
            first,
            first + 1,
            first + 2,
            first + 3,
            first + 4,
            first + 5
        )
    };
    format!(
        "WITH m AS ( \
           INSERT INTO readings_1m AS r (series_id, bucket, min, max, sum, count) {} {MERGE_BUCKET}), \
         h AS ( \
           INSERT INTO readings_1h AS r (series_id, bucket, min, max, sum, count) {} {MERGE_BUCKET}) \
         INSERT INTO readings (series_id, ts, value) \
         SELECT * FROM UNNEST($1::bigint[], $2::timestamptz[], $3::float8[])",
        rows(4),
        rows(10)
    )
});

fn bind_rollups<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    rows: &'q RollupRows,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(&rows.series)
        .bind(&rows.bucket)
        .bind(&rows.min)
        .bind(&rows.max)
        .bind(&rows.sum)
        .bind(&rows.count)
}

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

/// The batch without its repeated keys, the first of each kept (as `ON CONFLICT DO NOTHING`
/// would keep it): a key twice in one plain insert would refuse the whole statement.
fn first_of_each_key(readings: &[Reading]) -> std::borrow::Cow<'_, [Reading]> {
    let repeated = |pair: &[Reading]| pair[0].series == pair[1].series && pair[0].ts == pair[1].ts;
    if !readings.windows(2).any(repeated) {
        return std::borrow::Cow::Borrowed(readings);
    }
    let mut unique = readings.to_vec();
    unique.dedup_by(|later, first| later.series == first.series && later.ts == first.ts);
    std::borrow::Cow::Owned(unique)
}

impl PostgresStore {
    /// A batch in key order, in up to [`MAX_CONCURRENT_CHUNKS`] statements side by side.
    pub(super) async fn insert_in_key_order(&self, readings: &[Reading]) -> StoreResult<u64> {
        let readings = first_of_each_key(readings);
        let most = (self.pool.options().get_max_connections() / 2).max(1) as usize;
        let chunks = series_chunks(&readings, most.min(MAX_CONCURRENT_CHUNKS));
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

    /// One chunk: plainly, unless duplicates were met lately; on a duplicate, again skipping
    /// the rows that exist.
    async fn insert_chunk(&self, readings: &[Reading]) -> StoreResult<u64> {
        if !self.duplicates.active() {
            match self.insert_chunk_as(readings, Duplicates::Refused).await {
                Err(StoreError::Conflict(reason)) => {
                    tracing::debug!(%reason, guarded_for = ?GUARDED_FOR, "readings already stored; skipping duplicates for a while");
                    self.duplicates.arm();
                }
                done => return done,
            }
        }
        self.insert_chunk_as(readings, Duplicates::Skipped).await
    }

    /// One statement, array parameters: far cheaper than a multi-row VALUES list.
    async fn insert_chunk_as(
        &self,
        readings: &[Reading],
        duplicates: Duplicates,
    ) -> StoreResult<u64> {
        let series: Vec<i64> = readings.iter().map(|r| r.series).collect();
        let ts: Vec<DateTime<Utc>> = readings.iter().map(|r| r.ts).collect();
        let values: Vec<f64> = readings.iter().map(|r| r.value).collect();
        let rollups = match duplicates {
            Duplicates::Refused => batch_rollups(readings),
            Duplicates::Skipped => None,
        };
        if let Some((minutes, hours)) = rollups {
            let done = sqlx::query(&PLAIN_WITH_ROLLUPS)
                .bind(&series)
                .bind(&ts)
                .bind(&values);
            let done = bind_rollups(bind_rollups(done, &minutes), &hours)
                .execute(&self.pool)
                .await?;
            return Ok(done.rows_affected());
        }
        let inserted: i64 = sqlx::query_scalar(insert_statement(duplicates))
            .bind(&series)
            .bind(&ts)
            .bind(&values)
            .fetch_one(&self.pool)
            .await?;
        Ok(inserted.max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::{first_of_each_key, series_chunks, MIN_CHUNK};
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

    #[test]
    fn a_repeated_key_keeps_its_first_value_and_a_batch_without_one_is_not_copied() {
        let unique = batch(3, 4);
        assert!(matches!(
            first_of_each_key(&unique),
            std::borrow::Cow::Borrowed(_)
        ));
        let mut repeated = batch(2, 3);
        let mut again = repeated[1];
        again.value = 7.0;
        repeated.insert(2, again);
        repeated.push(*repeated.last().unwrap());
        let kept = first_of_each_key(&repeated);
        assert_eq!(kept.as_ref(), batch(2, 3).as_slice());
    }
}
