//! [`ReadingStore`] on PostgreSQL: readings range-partitioned by day (with a default
//! partition), their 1-minute and 1-hour rollups, partition maintenance and retention. How a
//! batch and its rollups are written is in `reading_insert.rs`. Retention drops whole days as
//! partitions, which costs nothing per row and leaves nothing to vacuum.

use chrono::{DateTime, Days, NaiveTime, Utc};

use super::PostgresStore;
use crate::store::common::readings::reading_store;
use crate::store::{PruneCounts, RollupStep, StoreResult};

/// Serialises partition maintenance across instances (blue and green share the database).
const PARTITION_LOCK_KEY: i64 = 0x6464_6d73_7061_7274; // "ddmspart"

reading_store!(PostgresStore);

impl PostgresStore {
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
