//! [`EventLogStore`](crate::store::EventLogStore) for both backends: the live event log, whose
//! ids must become visible in id order. How appends keep that order differs (the backend's
//! `insert_events`, see `event_log_store!`).

/// Implements `EventLogStore` for `$store`. The backend provides
/// `async fn insert_events(&self, events: &[NewEvent]) -> StoreResult<()>`, which appends a
/// non-empty batch in order, in one transaction.
macro_rules! event_log_store {
    ($store:ty) => {
        const _: () = {
            use async_trait::async_trait;
            use chrono::{DateTime, Utc};
            use sqlx::Row;

            use $crate::store::common::{unless_empty, Micros};
            use $crate::store::{EventLogStore, NewEvent, StoreResult, StoredEvent};

            #[async_trait]
            impl EventLogStore for $store {
                async fn append_events(&self, events: &[NewEvent]) -> StoreResult<()> {
                    unless_empty(events, self.insert_events(events)).await
                }

                async fn events_after(
                    &self,
                    after: i64,
                    upto: Option<i64>,
                    limit: u32,
                ) -> StoreResult<Vec<StoredEvent>> {
                    Ok(sqlx::query_as(
                        "SELECT id, kind, data FROM events WHERE id > $1 AND id <= $2 \
                         ORDER BY id LIMIT $3",
                    )
                    .bind(after)
                    .bind(upto.unwrap_or(i64::MAX))
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?)
                }

                async fn event_bounds(&self) -> StoreResult<Option<(i64, i64)>> {
                    let row =
                        sqlx::query("SELECT min(id) AS oldest, max(id) AS newest FROM events")
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
                    .bind(Micros(before))
                    .execute(self.writer())
                    .await?;
                    Ok(result.rows_affected())
                }
            }
        };
    };
}
pub(in crate::store) use event_log_store;
