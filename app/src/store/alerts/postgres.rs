//! [`AlertStore`] on PostgreSQL.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use super::*;
use crate::store::PostgresStore;

mod rows;
use rows::*;

const CHANNEL_COLUMNS: &str = "id, name, kind, settings, secret IS NOT NULL AS has_secret, \
     allow_private, created_at, updated_at";

const ALERT_COLUMNS: &str = "id, rule_id, device_id, metric, state, value, pending_since, \
     started_at, resolved_at, last_notified_at, last_eval_ts, acknowledged_by, acknowledged_at, \
     ack_comment, seq, created_at";

async fn rule_channels(
    executor: impl sqlx::PgExecutor<'_>,
    rule_id: Option<Uuid>,
) -> StoreResult<Vec<(Uuid, Uuid)>> {
    let rows = sqlx::query(
        "SELECT rule_id, channel_id FROM alert_rule_channels \
         WHERE $1::uuid IS NULL OR rule_id = $1 ORDER BY rule_id, position",
    )
    .bind(rule_id)
    .fetch_all(executor)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("rule_id")?, r.try_get("channel_id")?)))
        .collect()
}

/// A foreign key naming something that does not exist is the caller's mistake, not a fault.
fn dangling(what: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |err| match &err {
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
            StoreError::Conflict(format!("{what} does not exist"))
        }
        _ => err.into(),
    }
}

async fn write_rule(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
    rule: &NewAlertRule,
    insert: bool,
) -> StoreResult<bool> {
    let sql = if insert {
        "INSERT INTO alert_rules (name, kind, device_id, group_id, metric, condition, threshold, \
         threshold_high, clear_threshold, clear_threshold_high, for_s, repeat_interval_s, \
         no_data_s, severity, enabled, id, created_at, updated_at, system_check) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, now(), now(), $17)"
    } else {
        "UPDATE alert_rules SET name = $1, kind = $2, device_id = $3, group_id = $4, metric = $5, \
         condition = $6, threshold = $7, threshold_high = $8, clear_threshold = $9, \
         clear_threshold_high = $10, for_s = $11, repeat_interval_s = $12, no_data_s = $13, \
         severity = $14, enabled = $15, updated_at = now(), system_check = $17 WHERE id = $16"
    };
    let done = sqlx::query(sql)
        .bind(&rule.name)
        .bind(&rule.kind)
        .bind(rule.device_id)
        .bind(rule.group_id)
        .bind(&rule.metric)
        .bind(&rule.condition)
        .bind(rule.threshold)
        .bind(rule.threshold_high)
        .bind(rule.clear_threshold)
        .bind(rule.clear_threshold_high)
        .bind(rule.for_s)
        .bind(rule.repeat_interval_s)
        .bind(rule.no_data_s)
        .bind(&rule.severity)
        .bind(rule.enabled)
        .bind(id)
        .bind(&rule.system_check)
        .execute(&mut **tx)
        .await
        .map_err(dangling("the rule's device or group"))?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    sqlx::query("DELETE FROM alert_rule_channels WHERE rule_id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    for (position, channel) in rule.channels.iter().enumerate() {
        sqlx::query(
            "INSERT INTO alert_rule_channels (rule_id, channel_id, position) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(channel)
        .bind(position as i32)
        .execute(&mut **tx)
        .await
        .map_err(dangling("a channel of the rule"))?;
    }
    Ok(true)
}

#[async_trait]
impl AlertStore for PostgresStore {
    async fn create_alert_rule(&self, rule: &NewAlertRule) -> StoreResult<AlertRule> {
        let id = Uuid::now_v7();
        let mut tx = self.pool().begin().await?;
        write_rule(&mut tx, id, rule, true).await?;
        tx.commit().await?;
        self.get_alert_rule(id).await
    }

    async fn get_alert_rule(&self, id: Uuid) -> StoreResult<AlertRule> {
        let row = sqlx::query("SELECT * FROM alert_rules WHERE id = $1")
            .bind(id)
            .fetch_one(self.pool())
            .await?;
        let channels = rule_channels(self.pool(), Some(id)).await?;
        rule_from_row(&row, channels.into_iter().map(|(_, c)| c).collect())
    }

    async fn list_alert_rules(&self) -> StoreResult<Vec<AlertRule>> {
        let rows = sqlx::query("SELECT * FROM alert_rules ORDER BY name, id")
            .fetch_all(self.pool())
            .await?;
        let channels = rule_channels(self.pool(), None).await?;
        rows.iter()
            .map(|row| {
                let id: Uuid = row.try_get("id")?;
                let mine = channels
                    .iter()
                    .filter(|(rule, _)| *rule == id)
                    .map(|(_, c)| *c)
                    .collect();
                rule_from_row(row, mine)
            })
            .collect()
    }

    async fn update_alert_rule(&self, id: Uuid, rule: &NewAlertRule) -> StoreResult<AlertRule> {
        let mut tx = self.pool().begin().await?;
        if !write_rule(&mut tx, id, rule, false).await? {
            return Err(StoreError::NotFound);
        }
        tx.commit().await?;
        self.get_alert_rule(id).await
    }

    async fn delete_alert_rule(&self, id: Uuid) -> StoreResult<()> {
        let done = sqlx::query("DELETE FROM alert_rules WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn create_channel(&self, channel: &NewChannel) -> StoreResult<ChannelInfo> {
        let row = sqlx::query(&format!(
            "INSERT INTO channels (id, name, kind, settings, secret, allow_private) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {CHANNEL_COLUMNS}"
        ))
        .bind(Uuid::now_v7())
        .bind(&channel.name)
        .bind(&channel.kind)
        .bind(&channel.settings)
        .bind(
            channel
                .secret
                .as_ref()
                .map(|s| s.expose_secret().to_string()),
        )
        .bind(channel.allow_private)
        .fetch_one(self.pool())
        .await?;
        channel_from_row(&row)
    }

    async fn get_channel(&self, id: Uuid) -> StoreResult<ChannelInfo> {
        let row = sqlx::query(&format!(
            "SELECT {CHANNEL_COLUMNS} FROM channels WHERE id = $1"
        ))
        .bind(id)
        .fetch_one(self.pool())
        .await?;
        channel_from_row(&row)
    }

    async fn channel_secret(&self, id: Uuid) -> StoreResult<Option<SecretString>> {
        let secret: Option<String> =
            sqlx::query_scalar("SELECT secret FROM channels WHERE id = $1")
                .bind(id)
                .fetch_one(self.pool())
                .await?;
        Ok(secret.map(SecretString::from))
    }

    async fn list_channels(&self) -> StoreResult<Vec<ChannelInfo>> {
        let rows = sqlx::query(&format!(
            "SELECT {CHANNEL_COLUMNS} FROM channels ORDER BY name"
        ))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(channel_from_row).collect()
    }

    async fn update_channel(&self, id: Uuid, channel: &NewChannel) -> StoreResult<ChannelInfo> {
        let row = sqlx::query(&format!(
            "UPDATE channels SET name = $1, kind = $2, settings = $3, \
             secret = COALESCE($4, secret), allow_private = $5, updated_at = now() \
             WHERE id = $6 RETURNING {CHANNEL_COLUMNS}"
        ))
        .bind(&channel.name)
        .bind(&channel.kind)
        .bind(&channel.settings)
        .bind(
            channel
                .secret
                .as_ref()
                .map(|s| s.expose_secret().to_string()),
        )
        .bind(channel.allow_private)
        .bind(id)
        .fetch_one(self.pool())
        .await?;
        channel_from_row(&row)
    }

    async fn delete_channel(&self, id: Uuid) -> StoreResult<()> {
        let done = sqlx::query("DELETE FROM channels WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn get_alert(&self, id: Uuid) -> StoreResult<Alert> {
        let row = sqlx::query(&format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = $1"))
            .bind(id)
            .fetch_one(self.pool())
            .await?;
        alert_from_row(&row)
    }

    async fn find_open_alert(
        &self,
        rule_id: Uuid,
        device_id: Option<Uuid>,
        metric: Option<&str>,
    ) -> StoreResult<Option<Alert>> {
        let row = sqlx::query(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE rule_id = $1 \
             AND device_id IS NOT DISTINCT FROM $2 AND metric IS NOT DISTINCT FROM $3 \
             AND state <> 'resolved'"
        ))
        .bind(rule_id)
        .bind(device_id)
        .bind(metric)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(alert_from_row).transpose()
    }

    async fn latest_alert(
        &self,
        rule_id: Uuid,
        device_id: Option<Uuid>,
        metric: Option<&str>,
    ) -> StoreResult<Option<Alert>> {
        let row = sqlx::query(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE rule_id = $1 \
             AND device_id IS NOT DISTINCT FROM $2 AND metric IS NOT DISTINCT FROM $3 \
             ORDER BY state <> 'resolved' DESC, created_at DESC, id DESC LIMIT 1"
        ))
        .bind(rule_id)
        .bind(device_id)
        .bind(metric)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(alert_from_row).transpose()
    }

    async fn list_open_alerts(&self) -> StoreResult<Vec<Alert>> {
        let rows = sqlx::query(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE state <> 'resolved' ORDER BY created_at"
        ))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(alert_from_row).collect()
    }

    async fn list_alerts(&self, filter: &AlertFilter) -> StoreResult<Vec<Alert>> {
        let rows = sqlx::query(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE ($1::text IS NULL OR state = $1) \
             AND ($2::uuid IS NULL OR device_id = $2) \
             AND ($3::timestamptz IS NULL OR created_at >= $3) \
             ORDER BY state = 'resolved', created_at DESC, id DESC LIMIT $4"
        ))
        .bind(filter.state.map(AlertState::as_str))
        .bind(filter.device_id)
        .bind(filter.since)
        .bind(i64::from(filter.limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(alert_from_row).collect()
    }

    async fn list_transitions(&self, alert_ids: &[Uuid]) -> StoreResult<Vec<AlertTransition>> {
        if alert_ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT * FROM alert_transitions WHERE alert_id = ANY($1) ORDER BY alert_id, seq",
        )
        .bind(alert_ids)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let from: Option<String> = row.try_get("from_state")?;
                let to: String = row.try_get("to_state")?;
                Ok(AlertTransition {
                    alert_id: row.try_get("alert_id")?,
                    seq: row.try_get("seq")?,
                    event: row.try_get("event")?,
                    from_state: from.as_deref().map(AlertState::parse).transpose()?,
                    to_state: AlertState::parse(&to)?,
                    at: row.try_get("at")?,
                    value: row.try_get("value")?,
                    muted: row.try_get("muted")?,
                    actor: row.try_get("actor")?,
                })
            })
            .collect()
    }

    async fn apply_alert_change(&self, change: &AlertChange) -> StoreResult<bool> {
        let a = &change.alert;
        let mut tx = self.pool().begin().await?;
        // Under READ COMMITTED a racing writer waits for ours, then re-checks `seq` (or the
        // open-alert index) against the committed row: it matches nothing and writes nothing.
        let written = match change.expected_seq {
            None => sqlx::query(&format!(
                "INSERT INTO alerts ({ALERT_COLUMNS}) VALUES \
                 ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
                 ON CONFLICT DO NOTHING"
            ))
            .bind(a.id)
            .bind(a.rule_id)
            .bind(a.device_id)
            .bind(&a.metric)
            .bind(a.state.as_str())
            .bind(a.value)
            .bind(a.pending_since)
            .bind(a.started_at)
            .bind(a.resolved_at)
            .bind(a.last_notified_at)
            .bind(a.last_eval_ts)
            .bind(&a.acknowledged_by)
            .bind(a.acknowledged_at)
            .bind(&a.ack_comment)
            .bind(a.seq)
            .bind(a.created_at)
            .execute(&mut *tx)
            .await
            .map_err(dangling("the alert's rule or device"))?,
            Some(expected) => sqlx::query(
                "UPDATE alerts SET state = $1, value = $2, pending_since = $3, started_at = $4, \
                 resolved_at = $5, last_notified_at = $6, last_eval_ts = $7, \
                 acknowledged_by = $8, acknowledged_at = $9, ack_comment = $10, seq = $11 \
                 WHERE id = $12 AND seq = $13",
            )
            .bind(a.state.as_str())
            .bind(a.value)
            .bind(a.pending_since)
            .bind(a.started_at)
            .bind(a.resolved_at)
            .bind(a.last_notified_at)
            .bind(a.last_eval_ts)
            .bind(&a.acknowledged_by)
            .bind(a.acknowledged_at)
            .bind(&a.ack_comment)
            .bind(a.seq)
            .bind(a.id)
            .bind(expected)
            .execute(&mut *tx)
            .await?,
        };
        if written.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO alert_transitions (alert_id, seq, event, from_state, to_state, at, \
             value, muted, actor) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(a.id)
        .bind(a.seq)
        .bind(&change.event)
        .bind(change.from_state.map(AlertState::as_str))
        .bind(a.state.as_str())
        .bind(change.at)
        .bind(a.value)
        .bind(change.muted)
        .bind(&change.actor)
        .execute(&mut *tx)
        .await?;
        for delivery in &change.deliveries {
            sqlx::query(
                "INSERT INTO deliveries (id, idempotency_key, channel_id, alert_id, rule_id, \
                 event, message, state, attempts, next_attempt_at, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, $8, $8, $9)",
            )
            .bind(Uuid::now_v7())
            .bind(change.idempotency_key(delivery.channel_id))
            .bind(delivery.channel_id)
            .bind(a.id)
            .bind(a.rule_id)
            .bind(&change.event)
            .bind(&delivery.message)
            .bind(change.at)
            .bind(delivery.expires_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn record_evaluations(&self, stamps: &[EvaluationStamp]) -> StoreResult<Vec<Uuid>> {
        if stamps.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = stamps.iter().map(|s| s.alert_id).collect();
        let seqs: Vec<i64> = stamps.iter().map(|s| s.seq).collect();
        let values: Vec<f64> = stamps.iter().map(|s| s.value).collect();
        let times: Vec<DateTime<Utc>> = stamps.iter().map(|s| s.last_eval_ts).collect();
        // One statement for the batch; the rows it did not update are the alerts that moved on.
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
        .fetch_all(self.pool())
        .await?
        .into_iter()
        .collect();
        Ok(ids.into_iter().filter(|id| !updated.contains(id)).collect())
    }

    async fn claim_deliveries(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> StoreResult<Vec<Delivery>> {
        let until = now
            + chrono::Duration::from_std(lease)
                .map_err(|e| StoreError::Corrupt(format!("lease: {e}")))?;
        // SKIP LOCKED: instances claiming at the same moment take different rows; the lease
        // (`locked_until`) keeps a claimed row from being claimed again while it is sent. A
        // notification waits for the earlier ones of its alert to the same channel (order).
        let rows = sqlx::query(
            "UPDATE deliveries SET locked_until = $1, attempts = attempts + 1 \
             WHERE id IN (SELECT id FROM deliveries d WHERE state = 'pending' \
                          AND next_attempt_at <= $2 \
                          AND (locked_until IS NULL OR locked_until <= $2) \
                          AND NOT EXISTS (SELECT 1 FROM deliveries e \
                              WHERE e.alert_id = d.alert_id AND e.channel_id = d.channel_id \
                              AND e.state = 'pending' AND (e.created_at < d.created_at \
                                  OR (e.created_at = d.created_at AND e.id < d.id))) \
                          ORDER BY next_attempt_at, created_at LIMIT $3 \
                          FOR UPDATE SKIP LOCKED) \
             RETURNING *",
        )
        .bind(until)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        let mut claimed: Vec<Delivery> = rows
            .iter()
            .map(delivery_from_row)
            .collect::<StoreResult<_>>()?;
        claimed.sort_by_key(|d| (d.next_attempt_at, d.created_at));
        Ok(claimed)
    }

    async fn mark_delivered(&self, ids: &[Uuid], at: DateTime<Utc>) -> StoreResult<()> {
        sqlx::query(
            "UPDATE deliveries SET state = 'delivered', delivered_at = $1, locked_until = NULL, \
             last_error = NULL WHERE id = ANY($2)",
        )
        .bind(at)
        .bind(ids)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn reschedule_delivery(
        &self,
        id: Uuid,
        next_attempt_at: DateTime<Utc>,
        error: &str,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE deliveries SET next_attempt_at = $1, last_error = $2, locked_until = NULL \
             WHERE id = $3 AND state = 'pending'",
        )
        .bind(next_attempt_at)
        .bind(error)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn mark_dead(&self, id: Uuid, error: &str) -> StoreResult<()> {
        sqlx::query(
            "UPDATE deliveries SET state = 'dead', last_error = $1, locked_until = NULL \
             WHERE id = $2 AND state = 'pending'",
        )
        .bind(error)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn list_deliveries(
        &self,
        state: Option<DeliveryState>,
        limit: u32,
    ) -> StoreResult<Vec<Delivery>> {
        let rows = sqlx::query(
            "SELECT * FROM deliveries WHERE $1::text IS NULL OR state = $1 \
             ORDER BY created_at DESC, id DESC LIMIT $2",
        )
        .bind(state.map(DeliveryState::as_str))
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(delivery_from_row).collect()
    }

    async fn outbox_stats(&self) -> StoreResult<OutboxStats> {
        let row = sqlx::query(
            "SELECT count(*) AS pending, min(created_at) AS oldest FROM deliveries \
             WHERE state = 'pending'",
        )
        .fetch_one(self.pool())
        .await?;
        let pending: i64 = row.try_get("pending")?;
        Ok(OutboxStats {
            pending: pending as u64,
            oldest_pending: row.try_get("oldest")?,
        })
    }

    async fn create_silence(&self, s: &NewSilence) -> StoreResult<Silence> {
        let row = sqlx::query(
            "INSERT INTO silences (id, rule_id, device_id, group_id, starts_at, until, comment, \
             created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *",
        )
        .bind(Uuid::now_v7())
        .bind(s.rule_id)
        .bind(s.device_id)
        .bind(s.group_id)
        .bind(s.starts_at)
        .bind(s.until)
        .bind(&s.comment)
        .bind(&s.created_by)
        .fetch_one(self.pool())
        .await
        .map_err(dangling("the silenced rule, device or group"))?;
        silence_from_row(&row)
    }

    async fn list_silences(&self, active_at: Option<DateTime<Utc>>) -> StoreResult<Vec<Silence>> {
        let rows = sqlx::query(
            "SELECT * FROM silences WHERE $1::timestamptz IS NULL OR until > $1 \
             ORDER BY until DESC, id",
        )
        .bind(active_at)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(silence_from_row).collect()
    }

    async fn delete_silence(&self, id: Uuid) -> StoreResult<()> {
        let done = sqlx::query("DELETE FROM silences WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn prune_alert_history(&self, before: DateTime<Utc>) -> StoreResult<AlertPruneCounts> {
        let mut tx = self.pool().begin().await?;
        let alerts =
            sqlx::query("DELETE FROM alerts WHERE state = 'resolved' AND resolved_at < $1")
                .bind(before)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        let deliveries = sqlx::query(
            "DELETE FROM deliveries WHERE state IN ('delivered', 'dead') AND created_at < $1",
        )
        .bind(before)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM silences WHERE until < $1")
            .bind(before)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(AlertPruneCounts { alerts, deliveries })
    }
}
