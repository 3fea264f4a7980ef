//! [`EventLogStore`](crate::store::EventLogStore) on PostgreSQL: the shared implementation
//! (`common::events`), appending with UNNEST under an advisory lock: ids drawn from a sequence by
//! concurrent transactions would otherwise become visible out of order and a tailer could skip
//! one.

use super::PostgresStore;
use crate::store::common::events::event_log_store;
use crate::store::{NewEvent, StoreResult};

/// Serialises appends to the event log (see `insert_events`).
const EVENT_LOG_LOCK_KEY: i64 = 0x6464_6d73_6576_6e74; // "ddmsevnt"

event_log_store!(PostgresStore);

impl PostgresStore {
    /// One statement of two arrays, under the advisory lock until commit.
    async fn insert_events(&self, events: &[NewEvent]) -> StoreResult<()> {
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
}
