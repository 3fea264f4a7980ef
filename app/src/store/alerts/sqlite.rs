//! [`AlertStore`] on SQLite: the shared implementation (`shared.rs`), with timestamps as
//! microseconds since the epoch (see the migration). SQLite has no arrays: a list of ids goes
//! as JSON text or one statement a row; and it has one writer at a time, so the outbox claim
//! needs no row locks.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::shared::alert_store;
use super::{AlertTransition, EvaluationStamp};
use crate::store::common::{Id, Micros};
use crate::store::{SqliteStore, StoreError, StoreResult};

alert_store!(SqliteStore, sqlx::Sqlite);

impl SqliteStore {
    /// One writer at a time: the claim's UPDATE … RETURNING is atomic without row locks.
    const CLAIM_LOCK: &'static str = "";

    async fn transitions_of(&self, alert_ids: &[Uuid]) -> StoreResult<Vec<AlertTransition>> {
        let ids: Vec<String> = alert_ids.iter().map(Uuid::to_string).collect();
        Ok(sqlx::query_as(
            "SELECT * FROM alert_transitions WHERE alert_id IN (SELECT value FROM json_each($1)) \
             ORDER BY alert_id, seq",
        )
        .bind(serde_json::to_string(&ids).map_err(|e| StoreError::Corrupt(e.to_string()))?)
        .fetch_all(self.pool())
        .await?)
    }

    /// One UPDATE a stamp, in one transaction.
    async fn stamp_evaluations(&self, stamps: &[EvaluationStamp]) -> StoreResult<Vec<Uuid>> {
        let mut moved = Vec::new();
        let mut tx = self.writer().begin().await?;
        for stamp in stamps {
            let done = sqlx::query(
                "UPDATE alerts SET \
                 value = CASE WHEN last_eval_ts IS NULL OR last_eval_ts < $2 THEN $1 ELSE value END, \
                 last_eval_ts = CASE WHEN last_eval_ts IS NULL OR last_eval_ts < $2 THEN $2 ELSE last_eval_ts END \
                 WHERE id = $3 AND seq = $4",
            )
            .bind(stamp.value)
            .bind(Micros(stamp.last_eval_ts))
            .bind(Id(stamp.alert_id))
            .bind(stamp.seq)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() != 1 {
                moved.push(stamp.alert_id);
            }
        }
        tx.commit().await?;
        Ok(moved)
    }

    /// One UPDATE a delivery, in one transaction.
    async fn deliveries_delivered(&self, ids: &[Uuid], at: DateTime<Utc>) -> StoreResult<()> {
        let mut tx = self.writer().begin().await?;
        for id in ids {
            sqlx::query(
                "UPDATE deliveries SET state = 'delivered', delivered_at = $1, \
                 locked_until = NULL, last_error = NULL WHERE id = $2",
            )
            .bind(Micros(at))
            .bind(Id(*id))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
