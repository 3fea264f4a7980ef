//! The alerting tables' rows as both backends decode them (UUIDs as [`Id`], timestamps as
//! [`Micros`]: microseconds on SQLite), and their records.

use uuid::Uuid;

use super::{
    Alert, AlertRule, AlertState, AlertTransition, ChannelInfo, Delivery, DeliveryState,
    NewAlertRule, NewSilence, Silence,
};
use crate::store::common::{Id, Micros};
use crate::store::StoreResult;

/// Channel columns: the secret itself stays in the database.
pub(super) const CHANNEL_COLUMNS: &str = "id, name, kind, settings, \
     secret IS NOT NULL AS has_secret, allow_private, created_at, updated_at";

pub(super) const ALERT_COLUMNS: &str = "id, rule_id, device_id, metric, state, value, \
     pending_since, started_at, resolved_at, last_notified_at, last_eval_ts, acknowledged_by, \
     acknowledged_at, ack_comment, seq, created_at";

fn opt_uuid(id: Option<Id>) -> Option<Uuid> {
    id.map(Uuid::from)
}

fn opt_time(ts: Option<Micros>) -> Option<chrono::DateTime<chrono::Utc>> {
    ts.map(|ts| ts.0)
}

#[derive(sqlx::FromRow)]
pub(super) struct RuleRow {
    pub(super) id: Id,
    name: String,
    kind: String,
    device_id: Option<Id>,
    group_id: Option<Id>,
    metric: Option<String>,
    condition: String,
    threshold: Option<f64>,
    threshold_high: Option<f64>,
    clear_threshold: Option<f64>,
    clear_threshold_high: Option<f64>,
    for_s: i64,
    repeat_interval_s: Option<i64>,
    no_data_s: Option<i64>,
    system_check: Option<String>,
    severity: String,
    enabled: bool,
    created_at: Micros,
    updated_at: Micros,
}

impl RuleRow {
    pub(super) fn into_rule(self, channels: Vec<Uuid>) -> AlertRule {
        AlertRule {
            id: self.id.0,
            rule: NewAlertRule {
                name: self.name,
                kind: self.kind,
                device_id: opt_uuid(self.device_id),
                group_id: opt_uuid(self.group_id),
                metric: self.metric,
                condition: self.condition,
                threshold: self.threshold,
                threshold_high: self.threshold_high,
                clear_threshold: self.clear_threshold,
                clear_threshold_high: self.clear_threshold_high,
                for_s: self.for_s,
                repeat_interval_s: self.repeat_interval_s,
                no_data_s: self.no_data_s,
                system_check: self.system_check,
                severity: self.severity,
                channels,
                enabled: self.enabled,
            },
            created_at: self.created_at.0,
            updated_at: self.updated_at.0,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct ChannelRow {
    id: Id,
    name: String,
    kind: String,
    settings: serde_json::Value,
    has_secret: bool,
    allow_private: bool,
    created_at: Micros,
    updated_at: Micros,
}

impl From<ChannelRow> for ChannelInfo {
    fn from(row: ChannelRow) -> ChannelInfo {
        ChannelInfo {
            id: row.id.0,
            name: row.name,
            kind: row.kind,
            settings: row.settings,
            has_secret: row.has_secret,
            allow_private: row.allow_private,
            created_at: row.created_at.0,
            updated_at: row.updated_at.0,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct AlertRow {
    id: Id,
    rule_id: Id,
    device_id: Option<Id>,
    metric: Option<String>,
    state: String,
    value: Option<f64>,
    pending_since: Option<Micros>,
    started_at: Option<Micros>,
    resolved_at: Option<Micros>,
    last_notified_at: Option<Micros>,
    last_eval_ts: Option<Micros>,
    acknowledged_by: Option<String>,
    acknowledged_at: Option<Micros>,
    ack_comment: Option<String>,
    seq: i64,
    created_at: Micros,
}

impl TryFrom<AlertRow> for Alert {
    type Error = crate::store::StoreError;
    fn try_from(row: AlertRow) -> StoreResult<Alert> {
        Ok(Alert {
            id: row.id.0,
            rule_id: row.rule_id.0,
            device_id: opt_uuid(row.device_id),
            metric: row.metric,
            state: AlertState::parse(&row.state)?,
            value: row.value,
            pending_since: opt_time(row.pending_since),
            started_at: opt_time(row.started_at),
            resolved_at: opt_time(row.resolved_at),
            last_notified_at: opt_time(row.last_notified_at),
            last_eval_ts: opt_time(row.last_eval_ts),
            acknowledged_by: row.acknowledged_by,
            acknowledged_at: opt_time(row.acknowledged_at),
            ack_comment: row.ack_comment,
            seq: row.seq,
            created_at: row.created_at.0,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct TransitionRow {
    alert_id: Id,
    seq: i64,
    event: String,
    from_state: Option<String>,
    to_state: String,
    at: Micros,
    value: Option<f64>,
    muted: bool,
    actor: Option<String>,
}

impl TryFrom<TransitionRow> for AlertTransition {
    type Error = crate::store::StoreError;
    fn try_from(row: TransitionRow) -> StoreResult<AlertTransition> {
        Ok(AlertTransition {
            alert_id: row.alert_id.0,
            seq: row.seq,
            event: row.event,
            from_state: row
                .from_state
                .as_deref()
                .map(AlertState::parse)
                .transpose()?,
            to_state: AlertState::parse(&row.to_state)?,
            at: row.at.0,
            value: row.value,
            muted: row.muted,
            actor: row.actor,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct DeliveryRow {
    id: Id,
    idempotency_key: String,
    channel_id: Id,
    alert_id: Option<Id>,
    rule_id: Option<Id>,
    event: String,
    message: serde_json::Value,
    state: String,
    attempts: i32,
    next_attempt_at: Micros,
    last_error: Option<String>,
    created_at: Micros,
    expires_at: Micros,
    delivered_at: Option<Micros>,
}

impl TryFrom<DeliveryRow> for Delivery {
    type Error = crate::store::StoreError;
    fn try_from(row: DeliveryRow) -> StoreResult<Delivery> {
        Ok(Delivery {
            id: row.id.0,
            idempotency_key: row.idempotency_key,
            channel_id: row.channel_id.0,
            alert_id: opt_uuid(row.alert_id),
            rule_id: opt_uuid(row.rule_id),
            event: row.event,
            message: row.message,
            state: DeliveryState::parse(&row.state)?,
            attempts: row.attempts,
            next_attempt_at: row.next_attempt_at.0,
            last_error: row.last_error,
            created_at: row.created_at.0,
            expires_at: row.expires_at.0,
            delivered_at: opt_time(row.delivered_at),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct SilenceRow {
    id: Id,
    rule_id: Option<Id>,
    device_id: Option<Id>,
    group_id: Option<Id>,
    starts_at: Micros,
    until: Micros,
    comment: Option<String>,
    created_by: String,
    created_at: Micros,
}

impl From<SilenceRow> for Silence {
    fn from(row: SilenceRow) -> Silence {
        Silence {
            id: row.id.0,
            silence: NewSilence {
                rule_id: opt_uuid(row.rule_id),
                device_id: opt_uuid(row.device_id),
                group_id: opt_uuid(row.group_id),
                starts_at: row.starts_at.0,
                until: row.until.0,
                comment: row.comment,
                created_by: row.created_by,
            },
            created_at: row.created_at.0,
        }
    }
}

/// A foreign key naming something that does not exist is the caller's mistake, not a fault.
pub(super) fn dangling(what: &'static str) -> impl Fn(sqlx::Error) -> crate::store::StoreError {
    move |err| match &err {
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
            crate::store::StoreError::Conflict(format!("{what} does not exist"))
        }
        _ => err.into(),
    }
}
