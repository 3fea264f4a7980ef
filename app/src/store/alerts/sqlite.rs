//! [`AlertStore`] on SQLite. Timestamps are microseconds since the epoch (see the migration).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use sqlx::{Row, Sqlite, Transaction};
use uuid::Uuid;

use super::*;
use crate::store::SqliteStore;

mod rows;
use rows::*;

const CHANNEL_COLUMNS: &str = "id, name, kind, settings, secret IS NOT NULL AS has_secret, \
     allow_private, created_at, updated_at";

async fn rule_channels(
    executor: impl sqlx::SqliteExecutor<'_>,
    rule_id: Option<Uuid>,
) -> StoreResult<Vec<(Uuid, Uuid)>> {
    let rows = sqlx::query(
        "SELECT rule_id, channel_id FROM alert_rule_channels \
         WHERE ?1 IS NULL OR rule_id = ?1 ORDER BY rule_id, position",
    )
    .bind(rule_id.map(|id| id.to_string()))
    .fetch_all(executor)
    .await?;
    rows.iter()
        .map(|r| Ok((uuid(r, "rule_id")?, uuid(r, "channel_id")?)))
        .collect()
}

async fn put_rule_channels(
    tx: &mut Transaction<'_, Sqlite>,
    rule_id: Uuid,
    channels: &[Uuid],
) -> StoreResult<()> {
    sqlx::query("DELETE FROM alert_rule_channels WHERE rule_id = ?")
        .bind(rule_id.to_string())
        .execute(&mut **tx)
        .await?;
    for (position, channel) in channels.iter().enumerate() {
        sqlx::query(
            "INSERT INTO alert_rule_channels (rule_id, channel_id, position) VALUES (?, ?, ?) \
             ON CONFLICT DO NOTHING",
        )
        .bind(rule_id.to_string())
        .bind(channel.to_string())
        .bind(position as i64)
        .execute(&mut **tx)
        .await
        .map_err(missing_channel)?;
    }
    Ok(())
}

/// A foreign key naming a channel that does not exist is the caller's mistake, not a fault.
fn missing_channel(err: sqlx::Error) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
            StoreError::Conflict("a channel of the rule does not exist".into())
        }
        _ => err.into(),
    }
}

async fn write_rule(
    tx: &mut Transaction<'_, Sqlite>,
    id: Uuid,
    rule: &NewAlertRule,
    now: DateTime<Utc>,
    insert: bool,
) -> StoreResult<bool> {
    let sql = if insert {
        "INSERT INTO alert_rules (name, kind, device_id, group_id, metric, condition, threshold, \
         threshold_high, clear_threshold, clear_threshold_high, for_s, repeat_interval_s, \
         no_data_s, system_check, severity, enabled, updated_at, id, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    } else {
        "UPDATE alert_rules SET name = ?, kind = ?, device_id = ?, group_id = ?, metric = ?, \
         condition = ?, threshold = ?, threshold_high = ?, clear_threshold = ?, \
         clear_threshold_high = ?, for_s = ?, repeat_interval_s = ?, no_data_s = ?, \
         system_check = ?, severity = ?, enabled = ?, updated_at = ? WHERE id = ?"
    };
    let mut query = sqlx::query(sql)
        .bind(&rule.name)
        .bind(&rule.kind)
        .bind(rule.device_id.map(|id| id.to_string()))
        .bind(rule.group_id.map(|id| id.to_string()))
        .bind(&rule.metric)
        .bind(&rule.condition)
        .bind(rule.threshold)
        .bind(rule.threshold_high)
        .bind(rule.clear_threshold)
        .bind(rule.clear_threshold_high)
        .bind(rule.for_s)
        .bind(rule.repeat_interval_s)
        .bind(rule.no_data_s)
        .bind(&rule.system_check)
        .bind(&rule.severity)
        .bind(rule.enabled)
        .bind(micros(now))
        .bind(id.to_string());
    if insert {
        query = query.bind(micros(now));
    }
    let done = query.execute(&mut **tx).await.map_err(|e| match &e {
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
            StoreError::Conflict("the rule's device or group does not exist".into())
        }
        _ => e.into(),
    })?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    put_rule_channels(tx, id, &rule.channels).await?;
    Ok(true)
}

async fn insert_deliveries(
    tx: &mut Transaction<'_, Sqlite>,
    change: &AlertChange,
) -> StoreResult<()> {
    for delivery in &change.deliveries {
        sqlx::query(
            "INSERT INTO deliveries (id, idempotency_key, channel_id, alert_id, rule_id, event, \
             message, state, attempts, next_attempt_at, created_at, expires_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?)",
        )
        .bind(Uuid::now_v7().to_string())
        .bind(change.idempotency_key(delivery.channel_id))
        .bind(delivery.channel_id.to_string())
        .bind(change.alert.id.to_string())
        .bind(change.alert.rule_id.to_string())
        .bind(&change.event)
        .bind(delivery.message.to_string())
        .bind(micros(change.at))
        .bind(micros(change.at))
        .bind(micros(delivery.expires_at))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

const ALERT_COLUMNS: &str = "id, rule_id, device_id, metric, state, value, pending_since, \
     started_at, resolved_at, last_notified_at, last_eval_ts, acknowledged_by, acknowledged_at, \
     ack_comment, seq, created_at";

#[async_trait]
impl AlertStore for SqliteStore {
    async fn create_alert_rule(&self, rule: &NewAlertRule) -> StoreResult<AlertRule> {
        let id = Uuid::now_v7();
        let mut tx = self.pool().begin().await?;
        write_rule(&mut tx, id, rule, Utc::now(), true).await?;
        tx.commit().await?;
        self.get_alert_rule(id).await
    }

    async fn get_alert_rule(&self, id: Uuid) -> StoreResult<AlertRule> {
        let row = sqlx::query("SELECT * FROM alert_rules WHERE id = ?")
            .bind(id.to_string())
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
                let id = uuid(row, "id")?;
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
        if !write_rule(&mut tx, id, rule, Utc::now(), false).await? {
            return Err(StoreError::NotFound);
        }
        tx.commit().await?;
        self.get_alert_rule(id).await
    }

    async fn delete_alert_rule(&self, id: Uuid) -> StoreResult<()> {
        let done = sqlx::query("DELETE FROM alert_rules WHERE id = ?")
            .bind(id.to_string())
            .execute(self.pool())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn create_channel(&self, channel: &NewChannel) -> StoreResult<ChannelInfo> {
        let id = Uuid::now_v7();
        let now = micros(Utc::now());
        sqlx::query(
            "INSERT INTO channels (id, name, kind, settings, secret, allow_private, created_at, \
             updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id.to_string())
        .bind(&channel.name)
        .bind(&channel.kind)
        .bind(channel.settings.to_string())
        .bind(
            channel
                .secret
                .as_ref()
                .map(|s| s.expose_secret().to_string()),
        )
        .bind(channel.allow_private)
        .bind(now)
        .bind(now)
        .execute(self.pool())
        .await?;
        self.get_channel(id).await
    }

    async fn get_channel(&self, id: Uuid) -> StoreResult<ChannelInfo> {
        let row = sqlx::query(&format!(
            "SELECT {CHANNEL_COLUMNS} FROM channels WHERE id = ?"
        ))
        .bind(id.to_string())
        .fetch_one(self.pool())
        .await?;
        channel_from_row(&row)
    }

    async fn channel_secret(&self, id: Uuid) -> StoreResult<Option<SecretString>> {
        let secret: Option<String> = sqlx::query_scalar("SELECT secret FROM channels WHERE id = ?")
            .bind(id.to_string())
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
        let done = sqlx::query(
            "UPDATE channels SET name = ?, kind = ?, settings = ?, \
             secret = COALESCE(?, secret), allow_private = ?, updated_at = ? WHERE id = ?",
        )
        .bind(&channel.name)
        .bind(&channel.kind)
        .bind(channel.settings.to_string())
        .bind(
            channel
                .secret
                .as_ref()
                .map(|s| s.expose_secret().to_string()),
        )
        .bind(channel.allow_private)
        .bind(micros(Utc::now()))
        .bind(id.to_string())
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        self.get_channel(id).await
    }

    async fn delete_channel(&self, id: Uuid) -> StoreResult<()> {
        let done = sqlx::query("DELETE FROM channels WHERE id = ?")
            .bind(id.to_string())
            .execute(self.pool())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn get_alert(&self, id: Uuid) -> StoreResult<Alert> {
        let row = sqlx::query(&format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = ?"))
            .bind(id.to_string())
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
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE rule_id = ? \
             AND COALESCE(device_id, '') = COALESCE(?, '') AND COALESCE(metric, '') = COALESCE(?, '') \
             AND state <> 'resolved'"
        ))
        .bind(rule_id.to_string())
        .bind(device_id.map(|id| id.to_string()))
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
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE rule_id = ? \
             AND COALESCE(device_id, '') = COALESCE(?, '') AND COALESCE(metric, '') = COALESCE(?, '') \
             ORDER BY state <> 'resolved' DESC, created_at DESC, id DESC LIMIT 1"
        ))
        .bind(rule_id.to_string())
        .bind(device_id.map(|id| id.to_string()))
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
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE (?1 IS NULL OR state = ?1) \
             AND (?2 IS NULL OR device_id = ?2) AND (?3 IS NULL OR created_at >= ?3) \
             ORDER BY state = 'resolved', created_at DESC, id DESC LIMIT ?4"
        ))
        .bind(filter.state.map(AlertState::as_str))
        .bind(filter.device_id.map(|id| id.to_string()))
        .bind(filter.since.map(micros))
        .bind(i64::from(filter.limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(alert_from_row).collect()
    }

    async fn list_transitions(&self, alert_ids: &[Uuid]) -> StoreResult<Vec<AlertTransition>> {
        if alert_ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = alert_ids.iter().map(Uuid::to_string).collect();
        let rows = sqlx::query(
            "SELECT * FROM alert_transitions WHERE alert_id IN (SELECT value FROM json_each(?)) \
             ORDER BY alert_id, seq",
        )
        .bind(serde_json::to_string(&ids).map_err(|e| StoreError::Corrupt(e.to_string()))?)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let from: Option<String> = row.try_get("from_state")?;
                let to: String = row.try_get("to_state")?;
                Ok(AlertTransition {
                    alert_id: uuid(row, "alert_id")?,
                    seq: row.try_get("seq")?,
                    event: row.try_get("event")?,
                    from_state: from.as_deref().map(AlertState::parse).transpose()?,
                    to_state: AlertState::parse(&to)?,
                    at: ts(row, "at")?,
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
        let written = match change.expected_seq {
            None => {
                let inserted = sqlx::query(&format!(
                    "INSERT INTO alerts ({ALERT_COLUMNS}) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
                ))
                .bind(a.id.to_string())
                .bind(a.rule_id.to_string())
                .bind(a.device_id.map(|id| id.to_string()))
                .bind(&a.metric)
                .bind(a.state.as_str())
                .bind(a.value)
                .bind(a.pending_since.map(micros))
                .bind(a.started_at.map(micros))
                .bind(a.resolved_at.map(micros))
                .bind(a.last_notified_at.map(micros))
                .bind(a.last_eval_ts.map(micros))
                .bind(&a.acknowledged_by)
                .bind(a.acknowledged_at.map(micros))
                .bind(&a.ack_comment)
                .bind(a.seq)
                .bind(micros(a.created_at))
                .execute(&mut *tx)
                .await?;
                inserted.rows_affected() == 1
            }
            Some(expected) => {
                let updated = sqlx::query(
                    "UPDATE alerts SET state = ?, value = ?, pending_since = ?, started_at = ?, \
                     resolved_at = ?, last_notified_at = ?, last_eval_ts = ?, \
                     acknowledged_by = ?, acknowledged_at = ?, ack_comment = ?, seq = ? \
                     WHERE id = ? AND seq = ?",
                )
                .bind(a.state.as_str())
                .bind(a.value)
                .bind(a.pending_since.map(micros))
                .bind(a.started_at.map(micros))
                .bind(a.resolved_at.map(micros))
                .bind(a.last_notified_at.map(micros))
                .bind(a.last_eval_ts.map(micros))
                .bind(&a.acknowledged_by)
                .bind(a.acknowledged_at.map(micros))
                .bind(&a.ack_comment)
                .bind(a.seq)
                .bind(a.id.to_string())
                .bind(expected)
                .execute(&mut *tx)
                .await?;
                updated.rows_affected() == 1
            }
        };
        if !written {
            // Another writer made this transition (or a different one) first.
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO alert_transitions (alert_id, seq, event, from_state, to_state, at, \
             value, muted, actor) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(a.id.to_string())
        .bind(a.seq)
        .bind(&change.event)
        .bind(change.from_state.map(AlertState::as_str))
        .bind(a.state.as_str())
        .bind(micros(change.at))
        .bind(a.value)
        .bind(change.muted)
        .bind(&change.actor)
        .execute(&mut *tx)
        .await?;
        insert_deliveries(&mut tx, change).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn record_evaluations(&self, stamps: &[EvaluationStamp]) -> StoreResult<Vec<Uuid>> {
        if stamps.is_empty() {
            return Ok(Vec::new());
        }
        let mut moved = Vec::new();
        let mut tx = self.pool().begin().await?;
        for stamp in stamps {
            let done = sqlx::query(
                "UPDATE alerts SET \
                 value = CASE WHEN last_eval_ts IS NULL OR last_eval_ts < ?2 THEN ?1 ELSE value END, \
                 last_eval_ts = CASE WHEN last_eval_ts IS NULL OR last_eval_ts < ?2 THEN ?2 ELSE last_eval_ts END \
                 WHERE id = ?3 AND seq = ?4",
            )
            .bind(stamp.value)
            .bind(micros(stamp.last_eval_ts))
            .bind(stamp.alert_id.to_string())
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

    async fn claim_deliveries(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> StoreResult<Vec<Delivery>> {
        let until = micros(now) + lease.as_micros() as i64;
        // SQLite has one writer at a time: the UPDATE ... RETURNING claims atomically. A
        // notification waits for the earlier ones of its alert to the same channel (order).
        let rows = sqlx::query(
            "UPDATE deliveries SET locked_until = ?1, attempts = attempts + 1 \
             WHERE id IN (SELECT id FROM deliveries d WHERE state = 'pending' \
                          AND next_attempt_at <= ?2 \
                          AND (locked_until IS NULL OR locked_until <= ?2) \
                          AND NOT EXISTS (SELECT 1 FROM deliveries e \
                              WHERE e.alert_id = d.alert_id AND e.channel_id = d.channel_id \
                              AND e.state = 'pending' AND (e.created_at < d.created_at \
                                  OR (e.created_at = d.created_at AND e.id < d.id))) \
                          ORDER BY next_attempt_at, created_at LIMIT ?3) \
             RETURNING *",
        )
        .bind(until)
        .bind(micros(now))
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
        let mut tx = self.pool().begin().await?;
        for id in ids {
            sqlx::query(
                "UPDATE deliveries SET state = 'delivered', delivered_at = ?, locked_until = NULL, \
                 last_error = NULL WHERE id = ?",
            )
            .bind(micros(at))
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn reschedule_delivery(
        &self,
        id: Uuid,
        next_attempt_at: DateTime<Utc>,
        error: &str,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE deliveries SET next_attempt_at = ?, last_error = ?, locked_until = NULL \
             WHERE id = ? AND state = 'pending'",
        )
        .bind(micros(next_attempt_at))
        .bind(error)
        .bind(id.to_string())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn mark_dead(&self, id: Uuid, error: &str) -> StoreResult<()> {
        sqlx::query(
            "UPDATE deliveries SET state = 'dead', last_error = ?, locked_until = NULL \
             WHERE id = ? AND state = 'pending'",
        )
        .bind(error)
        .bind(id.to_string())
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
            "SELECT * FROM deliveries WHERE ?1 IS NULL OR state = ?1 \
             ORDER BY created_at DESC, id DESC LIMIT ?2",
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
            oldest_pending: opt_ts(&row, "oldest")?,
        })
    }

    async fn create_silence(&self, s: &NewSilence) -> StoreResult<Silence> {
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO silences (id, rule_id, device_id, group_id, starts_at, until, comment, \
             created_by, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id.to_string())
        .bind(s.rule_id.map(|id| id.to_string()))
        .bind(s.device_id.map(|id| id.to_string()))
        .bind(s.group_id.map(|id| id.to_string()))
        .bind(micros(s.starts_at))
        .bind(micros(s.until))
        .bind(&s.comment)
        .bind(&s.created_by)
        .bind(micros(Utc::now()))
        .execute(self.pool())
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                StoreError::Conflict("the silenced rule, device or group does not exist".into())
            }
            _ => e.into(),
        })?;
        let row = sqlx::query("SELECT * FROM silences WHERE id = ?")
            .bind(id.to_string())
            .fetch_one(self.pool())
            .await?;
        silence_from_row(&row)
    }

    async fn list_silences(&self, active_at: Option<DateTime<Utc>>) -> StoreResult<Vec<Silence>> {
        let rows = sqlx::query(
            "SELECT * FROM silences WHERE ?1 IS NULL OR until > ?1 ORDER BY until DESC, id",
        )
        .bind(active_at.map(micros))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(silence_from_row).collect()
    }

    async fn delete_silence(&self, id: Uuid) -> StoreResult<()> {
        let done = sqlx::query("DELETE FROM silences WHERE id = ?")
            .bind(id.to_string())
            .execute(self.pool())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn prune_alert_history(&self, before: DateTime<Utc>) -> StoreResult<AlertPruneCounts> {
        let before = micros(before);
        let mut tx = self.pool().begin().await?;
        let alerts = sqlx::query("DELETE FROM alerts WHERE state = 'resolved' AND resolved_at < ?")
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let deliveries = sqlx::query(
            "DELETE FROM deliveries WHERE state IN ('delivered', 'dead') AND created_at < ?",
        )
        .bind(before)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM silences WHERE until < ?")
            .bind(before)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(AlertPruneCounts { alerts, deliveries })
    }
}
