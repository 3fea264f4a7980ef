//! [`EventLogStore`] on PostgreSQL: the live event log. Appenders take an advisory lock in
//! turn, because ids drawn from a sequence by concurrent transactions would otherwise become
//! visible out of order and a tailer could skip one.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;

use super::PostgresStore;
use crate::store::{EventLogStore, NewEvent, StoreResult, StoredEvent};

/// Serialises appends to the event log (see `append_events`).
const EVENT_LOG_LOCK_KEY: i64 = 0x6464_6d73_6576_6e74; // "ddmsevnt"

#[async_trait]
impl EventLogStore for PostgresStore {
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
