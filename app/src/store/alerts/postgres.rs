//! [`AlertStore`] on PostgreSQL: the shared implementation (`shared.rs`), with lists of ids as
//! arrays (`ANY`, UNNEST), and an outbox claim that skips the rows another instance is claiming
//! at the same moment.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::shared::alert_store;
use super::{AlertTransition, EvaluationStamp};
use crate::store::{PostgresStore, StoreResult};

alert_store!(PostgresStore, sqlx::Postgres);

impl PostgresStore {
    /// SKIP LOCKED: instances claiming at the same moment take different rows.
    const CLAIM_LOCK: &'static str = "FOR UPDATE SKIP LOCKED";

    async fn transitions_of(&self, alert_ids: &[Uuid]) -> StoreResult<Vec<AlertTransition>> {
        Ok(sqlx::query_as(
            "SELECT * FROM alert_transitions WHERE alert_id = ANY($1) ORDER BY alert_id, seq",
        )
        .bind(alert_ids)
        .fetch_all(self.pool())
        .await?)
    }

    /// One statement for the batch; the rows it did not update are the alerts that moved on.
    async fn stamp_evaluations(&self, stamps: &[EvaluationStamp]) -> StoreResult<Vec<Uuid>> {
        let ids: Vec<Uuid> = stamps.iter().map(|s| s.alert_id).collect();
        let seqs: Vec<i64> = stamps.iter().map(|s| s.seq).collect();
        let values: Vec<f64> = stamps.iter().map(|s| s.value).collect();
        let times: Vec<DateTime<Utc>> = stamps.iter().map(|s| s.last_eval_ts).collect();
        let updated: std::collections::HashSet<Uuid> = sqlx::query_scalar(
            "UPDATE alerts a SET \
             value = CASE WHEN a.last_eval_ts IS NULL OR a.last_eval_ts < s.ts THEN s.value ELSE a.value END, \
             last_eval_ts = GREATEST(a.last_eval_ts, s.ts) \
             FROM UNNEST($1::uuid[], $2::int8[], $3::float8[], $4::timestamptz[]) AS s(id, seq, value, ts) \
             WHERE a.id = s.id AND a.seq = s.seq RETURNING a.id",
        )
        .bind(&ids)
        .bind(&seqs)
        .bind(&values)
        .bind(&times)
        .fetch_all(self.writer())
        .await?
        .into_iter()
        .collect();
        Ok(ids.into_iter().filter(|id| !updated.contains(id)).collect())
    }

    /// One statement for all the ids.
    async fn deliveries_delivered(&self, ids: &[Uuid], at: DateTime<Utc>) -> StoreResult<()> {
        sqlx::query(
            "UPDATE deliveries SET state = 'delivered', delivered_at = $1, locked_until = NULL, \
             last_error = NULL WHERE id = ANY($2)",
        )
        .bind(at)
        .bind(ids)
        .execute(self.writer())
        .await?;
        Ok(())
    }
}
