//! [`EventLogStore`](crate::store::EventLogStore) on SQLite: the shared implementation
//! (`common::events`), appending with multi-row inserts. SQLite has one writer at a time, so
//! ids become visible in id order without the lock PostgreSQL needs.

use chrono::Utc;

use super::{keep_prepared, micros, multi_row_insert, SqliteStore, ROWS_PER_STATEMENT};
use crate::store::common::events::event_log_store;
use crate::store::{NewEvent, StoreResult};

event_log_store!(SqliteStore);

impl SqliteStore {
    /// Multi-row statements in one transaction, in order: ids follow the order of `events`.
    async fn insert_events(&self, events: &[NewEvent]) -> StoreResult<()> {
        let now = micros(Utc::now());
        let mut tx = self.writer().begin().await?;
        for chunk in events.chunks(ROWS_PER_STATEMENT) {
            let sql = multi_row_insert(
                "INSERT INTO events (created_at, kind, data) VALUES ",
                "(?, ?, ?)",
                chunk.len(),
            );
            let mut query = sqlx::query(&sql).persistent(keep_prepared(chunk.len()));
            for event in chunk {
                query = query.bind(now).bind(&event.kind).bind(&event.data);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
