//! [`EventLogStore`] on SQLite: the live event log. SQLite has one writer at a time, so ids
//! become visible in id order without the lock PostgreSQL needs.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{json, micros, multi_row_insert, SqliteStore, ROWS_PER_STATEMENT};
use crate::store::{EventLogStore, NewEvent, StoreResult, StoredEvent};

#[async_trait]
impl EventLogStore for SqliteStore {
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
