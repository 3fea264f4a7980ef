//! [`ReadingStore`](crate::store::ReadingStore) for both backends: the query paths and the
//! guards of the ingest write path. What differs is the backend's own (see `reading_store!`):
//! how a batch and its rollups are written (UNNEST in concurrent statements vs multi-row
//! inserts in one transaction), partitions, retention (dropping partitions vs deleting in small
//! steps), and how the newest reading of a series is found.

use super::Micros;
use crate::store::Bucket;

/// Not the record itself: a bucket's average is computed from the stored sum and count.
#[derive(sqlx::FromRow)]
pub(in crate::store) struct BucketRow {
    bucket: Micros,
    min: f64,
    max: f64,
    sum: f64,
    count: i64,
}

impl From<BucketRow> for Bucket {
    fn from(row: BucketRow) -> Bucket {
        Bucket::from_sums(row.bucket.0, row.min, row.max, row.sum, row.count)
    }
}

/// Implements `ReadingStore` for `$store`. The backend provides:
/// - `async fn create_partitions(&self, today, days_ahead) -> StoreResult<u32>`;
/// - `async fn insert_in_key_order(&self, readings: &[Reading]) -> StoreResult<u64>`, for a
///   non-empty batch of finite values in (series, ts) order;
/// - `async fn prune(&self, before) -> StoreResult<PruneCounts>`;
/// - `const LATEST_READINGS: &str`, the query of the newest reading of each series of device
///   `$1` (columns `id, metric, unit, ts, value`, by metric).
macro_rules! reading_store {
    ($store:ty) => {
        const _: () = {
            use async_trait::async_trait;
            use chrono::{DateTime, TimeDelta, Utc};
            use uuid::Uuid;

            use $crate::store::common::readings::BucketRow;
            use $crate::store::common::{Id, Micros};
            use $crate::store::{
                in_key_order, refuse_non_finite, Bucket, LatestReading, Point, PruneCounts,
                Reading, ReadingStore, RollupStep, SeriesId, StoreResult,
            };

            #[async_trait]
            impl ReadingStore for $store {
                async fn ensure_partitions(
                    &self,
                    today: DateTime<Utc>,
                    days_ahead: u32,
                ) -> StoreResult<u32> {
                    self.create_partitions(today, days_ahead).await
                }

                async fn insert_readings(&self, readings: &[Reading]) -> StoreResult<u64> {
                    if readings.is_empty() {
                        return Ok(0);
                    }
                    refuse_non_finite(readings)?;
                    self.insert_in_key_order(&in_key_order(readings)).await
                }

                async fn query_readings(
                    &self,
                    series: SeriesId,
                    from: DateTime<Utc>,
                    to: DateTime<Utc>,
                    limit: u32,
                ) -> StoreResult<Vec<Point>> {
                    Ok(sqlx::query_as(
                        "SELECT ts, value FROM readings \
                         WHERE series_id = $1 AND ts >= $2 AND ts < $3 ORDER BY ts LIMIT $4",
                    )
                    .bind(series)
                    .bind(Micros(from))
                    .bind(Micros(to))
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?)
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
                    let rows: Vec<BucketRow> = sqlx::query_as(&format!(
                        "SELECT bucket, min, max, sum, count FROM {table} \
                         WHERE series_id = $1 AND bucket >= $2 AND bucket < $3 \
                         ORDER BY bucket LIMIT $4"
                    ))
                    .bind(series)
                    .bind(Micros(step.bucket(from)))
                    .bind(Micros(to))
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                    Ok(rows.into_iter().map(Bucket::from).collect())
                }

                async fn latest_readings(&self, device_id: Uuid) -> StoreResult<Vec<LatestReading>> {
                    Ok(sqlx::query_as(Self::LATEST_READINGS)
                        .bind(Id(device_id))
                        .fetch_all(&self.pool)
                        .await?)
                }

                async fn prune_readings(&self, before: DateTime<Utc>) -> StoreResult<PruneCounts> {
                    self.prune(before).await
                }

                async fn count_readings_before(&self, before: DateTime<Utc>) -> StoreResult<u64> {
                    // The hourly buckets that end by `before`.
                    let last_start = before
                        .checked_sub_signed(TimeDelta::hours(1))
                        .unwrap_or(DateTime::<Utc>::MIN_UTC);
                    let count: i64 = sqlx::query_scalar(
                        "SELECT CAST(coalesce(sum(count), 0) AS BIGINT) FROM readings_1h \
                         WHERE bucket <= $1",
                    )
                    .bind(Micros(last_start))
                    .fetch_one(&self.pool)
                    .await?;
                    Ok(count.max(0) as u64)
                }
            }
        };
    };
}
pub(in crate::store) use reading_store;
