//! [`AlertStore`](super::AlertStore) for both backends, as one `macro_rules!` that
//! `sqlite.rs` and `postgres.rs` expand. What they keep is what differs between the databases:
//! statements over a list of ids (arrays on PostgreSQL, JSON or one statement a row on SQLite)
//! and how concurrent claimers of the outbox keep out of each other's way.

/// Implements `AlertStore` for `$store` (whose pool is of `$db`). The backend provides:
/// - `async fn transitions_of(&self, alert_ids: &[Uuid]) -> StoreResult<Vec<AlertTransition>>`,
///   the history rows of the given alerts (a non-empty list) by alert and seq;
/// - `async fn stamp_evaluations(&self, stamps: &[EvaluationStamp]) -> StoreResult<Vec<Uuid>>`,
///   [`AlertStore::record_evaluations`](super::AlertStore::record_evaluations) for a non-empty
///   batch;
/// - `async fn deliveries_delivered(&self, ids: &[Uuid], at: DateTime<Utc>) -> StoreResult<()>`;
/// - `const CLAIM_LOCK: &str`, the locking clause of the outbox claim's row selection.
macro_rules! alert_store {
    ($store:ty, $db:ty) => {
        const _: () = {
            use std::time::Duration;

            use async_trait::async_trait;
            use chrono::{DateTime, TimeDelta, Utc};
            use secrecy::{ExposeSecret, SecretString};
            use uuid::Uuid;

            use $crate::store::alerts::rows::{dangling, ALERT_COLUMNS, CHANNEL_COLUMNS};
            use $crate::store::alerts::{
                Alert, AlertChange, AlertFilter, AlertPruneCounts, AlertRule, AlertState,
                AlertStore, AlertTransition, ChannelInfo, Delivery, DeliveryState,
                EvaluationStamp, NewAlertRule, NewChannel, NewSilence, OutboxStats, Silence,
            };
            use $crate::store::common::{opt_id, opt_micros, unless_empty, Id, Micros};
            use $crate::store::{StoreError, StoreResult};

            /// The (rule, channel) pairs of one rule or of all, in each rule's order.
            async fn rule_channels(
                store: &$store,
                rule_id: Option<Uuid>,
            ) -> StoreResult<Vec<(Uuid, Uuid)>> {
                let rows: Vec<(Id, Id)> = sqlx::query_as(
                    "SELECT rule_id, channel_id FROM alert_rule_channels \
                     WHERE $1 IS NULL OR rule_id = $1 ORDER BY rule_id, position",
                )
                .bind(opt_id(rule_id))
                .fetch_all(store.pool())
                .await?;
                Ok(rows.into_iter().map(|(rule, channel)| (rule.0, channel.0)).collect())
            }

            /// Inserts (`insert`) or updates the rule `id` and replaces its channels; `false`
            /// when there was no rule to update.
            async fn write_rule(
                tx: &mut sqlx::Transaction<'_, $db>,
                id: Uuid,
                rule: &NewAlertRule,
                insert: bool,
            ) -> StoreResult<bool> {
                let sql = if insert {
                    "INSERT INTO alert_rules (name, kind, device_id, group_id, metric, condition, \
                     threshold, threshold_high, clear_threshold, clear_threshold_high, for_s, \
                     repeat_interval_s, no_data_s, severity, enabled, id, created_at, updated_at, \
                     system_check) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
                     $13, $14, $15, $16, $18, $18, $17)"
                } else {
                    "UPDATE alert_rules SET name = $1, kind = $2, device_id = $3, group_id = $4, \
                     metric = $5, condition = $6, threshold = $7, threshold_high = $8, \
                     clear_threshold = $9, clear_threshold_high = $10, for_s = $11, \
                     repeat_interval_s = $12, no_data_s = $13, severity = $14, enabled = $15, \
                     updated_at = $18, system_check = $17 WHERE id = $16"
                };
                let done = sqlx::query(sql)
                    .bind(&rule.name)
                    .bind(&rule.kind)
                    .bind(opt_id(rule.device_id))
                    .bind(opt_id(rule.group_id))
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
                    .bind(Id(id))
                    .bind(&rule.system_check)
                    .bind(Micros(Utc::now()))
                    .execute(&mut **tx)
                    .await
                    .map_err(dangling("the rule's device or group"))?;
                if done.rows_affected() == 0 {
                    return Ok(false);
                }
                sqlx::query("DELETE FROM alert_rule_channels WHERE rule_id = $1")
                    .bind(Id(id))
                    .execute(&mut **tx)
                    .await?;
                for (position, channel) in rule.channels.iter().enumerate() {
                    sqlx::query(
                        "INSERT INTO alert_rule_channels (rule_id, channel_id, position) \
                         VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    )
                    .bind(Id(id))
                    .bind(Id(*channel))
                    .bind(position as i32)
                    .execute(&mut **tx)
                    .await
                    .map_err(dangling("a channel of the rule"))?;
                }
                Ok(true)
            }

            /// The record of the row of `table` with this id, from its `columns`.
            async fn get_by_id<R>(
                store: &$store,
                columns: &str,
                table: &str,
                id: Uuid,
            ) -> StoreResult<R>
            where
                R: for<'r> sqlx::FromRow<'r, <$db as sqlx::Database>::Row> + Send + Unpin,
            {
                Ok(
                    sqlx::query_as(&format!("SELECT {columns} FROM {table} WHERE id = $1"))
                        .bind(Id(id))
                        .fetch_one(store.pool())
                        .await?,
                )
            }

            /// Deletes the row of `table` with this id; `NotFound` when there is none.
            async fn delete_by_id(store: &$store, table: &str, id: Uuid) -> StoreResult<()> {
                let done = sqlx::query(&format!("DELETE FROM {table} WHERE id = $1"))
                    .bind(Id(id))
                    .execute(store.writer())
                    .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound);
                }
                Ok(())
            }

            /// Inserts (`insert`) or updates the channel `id`; an update without a secret keeps
            /// the stored one.
            async fn write_channel(
                store: &$store,
                id: Uuid,
                channel: &NewChannel,
                insert: bool,
            ) -> StoreResult<ChannelInfo> {
                let sql = if insert {
                    format!(
                        "INSERT INTO channels (name, kind, settings, secret, allow_private, \
                         created_at, updated_at, id) VALUES ($1, $2, $3, $4, $5, $6, $6, $7) \
                         RETURNING {CHANNEL_COLUMNS}"
                    )
                } else {
                    format!(
                        "UPDATE channels SET name = $1, kind = $2, settings = $3, \
                         secret = COALESCE($4, secret), allow_private = $5, updated_at = $6 \
                         WHERE id = $7 RETURNING {CHANNEL_COLUMNS}"
                    )
                };
                let secret = channel
                    .secret
                    .as_ref()
                    .map(|s| s.expose_secret().to_string());
                Ok(sqlx::query_as(&sql)
                    .bind(&channel.name)
                    .bind(&channel.kind)
                    .bind(&channel.settings)
                    .bind(secret)
                    .bind(channel.allow_private)
                    .bind(Micros(Utc::now()))
                    .bind(Id(id))
                    .fetch_one(store.writer())
                    .await?)
            }

            /// The alert of a rule for a device and metric that `tail` (more of the WHERE
            /// clause, or an ordering) picks.
            async fn alert_by_key(
                store: &$store,
                rule_id: Uuid,
                device_id: Option<Uuid>,
                metric: Option<&str>,
                tail: &str,
            ) -> StoreResult<Option<Alert>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {ALERT_COLUMNS} FROM alerts WHERE rule_id = $1 \
                     AND device_id IS NOT DISTINCT FROM $2 \
                     AND metric IS NOT DISTINCT FROM $3 {tail}"
                ))
                .bind(Id(rule_id))
                .bind(opt_id(device_id))
                .bind(metric)
                .fetch_optional(store.pool())
                .await?)
            }

            #[async_trait]
            impl AlertStore for $store {
                async fn create_alert_rule(&self, rule: &NewAlertRule) -> StoreResult<AlertRule> {
                    let id = Uuid::now_v7();
                    let mut tx = self.writer().begin().await?;
                    write_rule(&mut tx, id, rule, true).await?;
                    tx.commit().await?;
                    self.get_alert_rule(id).await
                }

                async fn get_alert_rule(&self, id: Uuid) -> StoreResult<AlertRule> {
                    let mut rule: AlertRule = get_by_id(self, "*", "alert_rules", id).await?;
                    let channels = rule_channels(self, Some(id)).await?;
                    rule.rule.channels = channels.into_iter().map(|(_, c)| c).collect();
                    Ok(rule)
                }

                async fn list_alert_rules(&self) -> StoreResult<Vec<AlertRule>> {
                    let mut rules: Vec<AlertRule> =
                        sqlx::query_as("SELECT * FROM alert_rules ORDER BY name, id")
                            .fetch_all(self.pool())
                            .await?;
                    let channels = rule_channels(self, None).await?;
                    for rule in &mut rules {
                        rule.rule.channels = channels
                            .iter()
                            .filter(|(of, _)| *of == rule.id)
                            .map(|(_, c)| *c)
                            .collect();
                    }
                    Ok(rules)
                }

                async fn update_alert_rule(
                    &self,
                    id: Uuid,
                    rule: &NewAlertRule,
                ) -> StoreResult<AlertRule> {
                    let mut tx = self.writer().begin().await?;
                    if !write_rule(&mut tx, id, rule, false).await? {
                        return Err(StoreError::NotFound);
                    }
                    tx.commit().await?;
                    self.get_alert_rule(id).await
                }

                async fn delete_alert_rule(&self, id: Uuid) -> StoreResult<()> {
                    delete_by_id(self, "alert_rules", id).await
                }

                async fn create_channel(&self, channel: &NewChannel) -> StoreResult<ChannelInfo> {
                    write_channel(self, Uuid::now_v7(), channel, true).await
                }

                async fn get_channel(&self, id: Uuid) -> StoreResult<ChannelInfo> {
                    get_by_id(self, CHANNEL_COLUMNS, "channels", id).await
                }

                async fn channel_secret(&self, id: Uuid) -> StoreResult<Option<SecretString>> {
                    let secret: Option<String> =
                        sqlx::query_scalar("SELECT secret FROM channels WHERE id = $1")
                            .bind(Id(id))
                            .fetch_one(self.pool())
                            .await?;
                    Ok(secret.map(SecretString::from))
                }

                async fn list_channels(&self) -> StoreResult<Vec<ChannelInfo>> {
                    Ok(sqlx::query_as(&format!(
                        "SELECT {CHANNEL_COLUMNS} FROM channels ORDER BY name"
                    ))
                    .fetch_all(self.pool())
                    .await?)
                }

                async fn update_channel(
                    &self,
                    id: Uuid,
                    channel: &NewChannel,
                ) -> StoreResult<ChannelInfo> {
                    write_channel(self, id, channel, false).await
                }

                async fn delete_channel(&self, id: Uuid) -> StoreResult<()> {
                    delete_by_id(self, "channels", id).await
                }

                async fn get_alert(&self, id: Uuid) -> StoreResult<Alert> {
                    get_by_id(self, ALERT_COLUMNS, "alerts", id).await
                }

                async fn find_open_alert(
                    &self,
                    rule_id: Uuid,
                    device_id: Option<Uuid>,
                    metric: Option<&str>,
                ) -> StoreResult<Option<Alert>> {
                    alert_by_key(self, rule_id, device_id, metric, "AND state <> 'resolved'").await
                }

                async fn latest_alert(
                    &self,
                    rule_id: Uuid,
                    device_id: Option<Uuid>,
                    metric: Option<&str>,
                ) -> StoreResult<Option<Alert>> {
                    // Open first, then the newest.
                    let newest =
                        "ORDER BY state <> 'resolved' DESC, created_at DESC, id DESC LIMIT 1";
                    alert_by_key(self, rule_id, device_id, metric, newest).await
                }

                async fn list_open_alerts(&self) -> StoreResult<Vec<Alert>> {
                    Ok(sqlx::query_as(&format!(
                        "SELECT {ALERT_COLUMNS} FROM alerts WHERE state <> 'resolved' \
                         ORDER BY created_at"
                    ))
                    .fetch_all(self.pool())
                    .await?)
                }

                async fn list_alerts(&self, filter: &AlertFilter) -> StoreResult<Vec<Alert>> {
                    Ok(sqlx::query_as(&format!(
                        "SELECT {ALERT_COLUMNS} FROM alerts WHERE ($1 IS NULL OR state = $1) \
                         AND ($2 IS NULL OR device_id = $2) \
                         AND ($3 IS NULL OR created_at >= $3) \
                         ORDER BY state = 'resolved', created_at DESC, id DESC LIMIT $4"
                    ))
                    .bind(filter.state.map(AlertState::as_str))
                    .bind(opt_id(filter.device_id))
                    .bind(opt_micros(filter.since))
                    .bind(i64::from(filter.limit))
                    .fetch_all(self.pool())
                    .await?)
                }

                async fn list_transitions(
                    &self,
                    alert_ids: &[Uuid],
                ) -> StoreResult<Vec<AlertTransition>> {
                    unless_empty(alert_ids, self.transitions_of(alert_ids)).await
                }

                async fn apply_alert_change(&self, change: &AlertChange) -> StoreResult<bool> {
                    let a = &change.alert;
                    let mut tx = self.writer().begin().await?;
                    // One set of parameters for both statements ($17: the seq the update
                    // expects). A racing writer (on PostgreSQL under READ COMMITTED, it waits
                    // for ours) finds `seq` (or the open-alert index) moved on: it writes
                    // nothing.
                    let sql = match change.expected_seq {
                        None => format!(
                            "INSERT INTO alerts ({ALERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, \
                             $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) ON CONFLICT DO NOTHING"
                        ),
                        Some(_) => "UPDATE alerts SET state = $5, value = $6, pending_since = $7, \
                             started_at = $8, resolved_at = $9, last_notified_at = $10, \
                             last_eval_ts = $11, acknowledged_by = $12, acknowledged_at = $13, \
                             ack_comment = $14, seq = $15 WHERE id = $1 AND seq = $17"
                            .to_string(),
                    };
                    let written = sqlx::query(&sql)
                        .bind(Id(a.id))
                        .bind(Id(a.rule_id))
                        .bind(opt_id(a.device_id))
                        .bind(&a.metric)
                        .bind(a.state.as_str())
                        .bind(a.value)
                        .bind(opt_micros(a.pending_since))
                        .bind(opt_micros(a.started_at))
                        .bind(opt_micros(a.resolved_at))
                        .bind(opt_micros(a.last_notified_at))
                        .bind(opt_micros(a.last_eval_ts))
                        .bind(&a.acknowledged_by)
                        .bind(opt_micros(a.acknowledged_at))
                        .bind(&a.ack_comment)
                        .bind(a.seq)
                        .bind(Micros(a.created_at))
                        .bind(change.expected_seq)
                        .execute(&mut *tx)
                        .await
                        .map_err(dangling("the alert's rule or device"))?;
                    if written.rows_affected() != 1 {
                        // Another writer made this transition (or a different one) first.
                        return Ok(false);
                    }
                    sqlx::query(
                        "INSERT INTO alert_transitions (alert_id, seq, event, from_state, \
                         to_state, at, value, muted, actor) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    )
                    .bind(Id(a.id))
                    .bind(a.seq)
                    .bind(&change.event)
                    .bind(change.from_state.map(AlertState::as_str))
                    .bind(a.state.as_str())
                    .bind(Micros(change.at))
                    .bind(a.value)
                    .bind(change.muted)
                    .bind(&change.actor)
                    .execute(&mut *tx)
                    .await?;
                    for delivery in &change.deliveries {
                        sqlx::query(
                            "INSERT INTO deliveries (id, idempotency_key, channel_id, alert_id, \
                             rule_id, event, message, state, attempts, next_attempt_at, \
                             created_at, expires_at) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, $8, $8, $9)",
                        )
                        .bind(Id(Uuid::now_v7()))
                        .bind(change.idempotency_key(delivery.channel_id))
                        .bind(Id(delivery.channel_id))
                        .bind(Id(a.id))
                        .bind(Id(a.rule_id))
                        .bind(&change.event)
                        .bind(&delivery.message)
                        .bind(Micros(change.at))
                        .bind(Micros(delivery.expires_at))
                        .execute(&mut *tx)
                        .await?;
                    }
                    tx.commit().await?;
                    Ok(true)
                }

                async fn record_evaluations(
                    &self,
                    stamps: &[EvaluationStamp],
                ) -> StoreResult<Vec<Uuid>> {
                    unless_empty(stamps, self.stamp_evaluations(stamps)).await
                }

                async fn claim_deliveries(
                    &self,
                    now: DateTime<Utc>,
                    lease: Duration,
                    limit: u32,
                ) -> StoreResult<Vec<Delivery>> {
                    let until = TimeDelta::from_std(lease)
                        .ok()
                        .and_then(|lease| now.checked_add_signed(lease))
                        .ok_or_else(|| StoreError::Corrupt(format!("lease {lease:?}")))?;
                    // The lease (`locked_until`) keeps a claimed row from being claimed again
                    // while it is sent. A notification waits for the earlier ones of its alert to
                    // the same channel (order).
                    let mut claimed: Vec<Delivery> = sqlx::query_as(&format!(
                        "UPDATE deliveries SET locked_until = $1, attempts = attempts + 1 \
                         WHERE id IN (SELECT id FROM deliveries d WHERE state = 'pending' \
                           AND next_attempt_at <= $2 \
                           AND (locked_until IS NULL OR locked_until <= $2) \
                           AND NOT EXISTS (SELECT 1 FROM deliveries e \
                               WHERE e.alert_id = d.alert_id AND e.channel_id = d.channel_id \
                               AND e.state = 'pending' AND (e.created_at < d.created_at \
                                   OR (e.created_at = d.created_at AND e.id < d.id))) \
                           ORDER BY next_attempt_at, created_at LIMIT $3 {}) \
                         RETURNING *",
                        Self::CLAIM_LOCK
                    ))
                    .bind(Micros(until))
                    .bind(Micros(now))
                    .bind(i64::from(limit))
                    .fetch_all(self.writer())
                    .await?;
                    claimed.sort_by_key(|d| (d.next_attempt_at, d.created_at));
                    Ok(claimed)
                }

                async fn mark_delivered(&self, ids: &[Uuid], at: DateTime<Utc>) -> StoreResult<()> {
                    self.deliveries_delivered(ids, at).await
                }

                async fn reschedule_delivery(
                    &self,
                    id: Uuid,
                    next_attempt_at: DateTime<Utc>,
                    error: &str,
                ) -> StoreResult<()> {
                    sqlx::query(
                        "UPDATE deliveries SET next_attempt_at = $1, last_error = $2, \
                         locked_until = NULL WHERE id = $3 AND state = 'pending'",
                    )
                    .bind(Micros(next_attempt_at))
                    .bind(error)
                    .bind(Id(id))
                    .execute(self.writer())
                    .await?;
                    Ok(())
                }

                async fn mark_dead(&self, id: Uuid, error: &str) -> StoreResult<()> {
                    sqlx::query(
                        "UPDATE deliveries SET state = 'dead', last_error = $1, \
                         locked_until = NULL WHERE id = $2 AND state = 'pending'",
                    )
                    .bind(error)
                    .bind(Id(id))
                    .execute(self.writer())
                    .await?;
                    Ok(())
                }

                async fn list_deliveries(
                    &self,
                    state: Option<DeliveryState>,
                    limit: u32,
                ) -> StoreResult<Vec<Delivery>> {
                    Ok(sqlx::query_as(
                        "SELECT * FROM deliveries WHERE $1 IS NULL OR state = $1 \
                         ORDER BY created_at DESC, id DESC LIMIT $2",
                    )
                    .bind(state.map(DeliveryState::as_str))
                    .bind(i64::from(limit))
                    .fetch_all(self.pool())
                    .await?)
                }

                async fn outbox_stats(&self) -> StoreResult<OutboxStats> {
                    let (pending, oldest): (i64, Option<Micros>) = sqlx::query_as(
                        "SELECT count(*) AS pending, min(created_at) AS oldest FROM deliveries \
                         WHERE state = 'pending'",
                    )
                    .fetch_one(self.pool())
                    .await?;
                    Ok(OutboxStats {
                        pending: pending as u64,
                        oldest_pending: oldest.map(DateTime::from),
                    })
                }

                async fn create_silence(&self, s: &NewSilence) -> StoreResult<Silence> {
                    Ok(sqlx::query_as(
                        "INSERT INTO silences (id, rule_id, device_id, group_id, starts_at, \
                         until, comment, created_by, created_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING *",
                    )
                    .bind(Id(Uuid::now_v7()))
                    .bind(opt_id(s.rule_id))
                    .bind(opt_id(s.device_id))
                    .bind(opt_id(s.group_id))
                    .bind(Micros(s.starts_at))
                    .bind(Micros(s.until))
                    .bind(&s.comment)
                    .bind(&s.created_by)
                    .bind(Micros(Utc::now()))
                    .fetch_one(self.writer())
                    .await
                    .map_err(dangling("the silenced rule, device or group"))?)
                }

                async fn list_silences(
                    &self,
                    active_at: Option<DateTime<Utc>>,
                ) -> StoreResult<Vec<Silence>> {
                    Ok(sqlx::query_as(
                        "SELECT * FROM silences WHERE $1 IS NULL OR until > $1 \
                         ORDER BY until DESC, id",
                    )
                    .bind(opt_micros(active_at))
                    .fetch_all(self.pool())
                    .await?)
                }

                async fn delete_silence(&self, id: Uuid) -> StoreResult<()> {
                    delete_by_id(self, "silences", id).await
                }

                async fn prune_alert_history(
                    &self,
                    before: DateTime<Utc>,
                ) -> StoreResult<AlertPruneCounts> {
                    let before = Micros(before);
                    let mut tx = self.writer().begin().await?;
                    let alerts = sqlx::query(
                        "DELETE FROM alerts WHERE state = 'resolved' AND resolved_at < $1",
                    )
                    .bind(before)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    let deliveries = sqlx::query(
                        "DELETE FROM deliveries WHERE state IN ('delivered', 'dead') \
                         AND created_at < $1",
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
        };
    };
}
pub(super) use alert_store;
