//! Decoding the alerting tables' PostgreSQL rows.

use sqlx::postgres::PgRow;
use sqlx::Row;
use uuid::Uuid;

use crate::store::alerts::*;
use crate::store::StoreResult;

pub(super) fn rule_from_row(row: &PgRow, channels: Vec<Uuid>) -> StoreResult<AlertRule> {
    Ok(AlertRule {
        id: row.try_get("id")?,
        rule: NewAlertRule {
            name: row.try_get("name")?,
            kind: row.try_get("kind")?,
            device_id: row.try_get("device_id")?,
            group_id: row.try_get("group_id")?,
            metric: row.try_get("metric")?,
            condition: row.try_get("condition")?,
            threshold: row.try_get("threshold")?,
            threshold_high: row.try_get("threshold_high")?,
            clear_threshold: row.try_get("clear_threshold")?,
            clear_threshold_high: row.try_get("clear_threshold_high")?,
            for_s: row.try_get("for_s")?,
            repeat_interval_s: row.try_get("repeat_interval_s")?,
            no_data_s: row.try_get("no_data_s")?,
            system_check: row.try_get("system_check")?,
            severity: row.try_get("severity")?,
            channels,
            enabled: row.try_get("enabled")?,
        },
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

pub(super) fn channel_from_row(row: &PgRow) -> StoreResult<ChannelInfo> {
    Ok(ChannelInfo {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        kind: row.try_get("kind")?,
        settings: row.try_get("settings")?,
        has_secret: row.try_get("has_secret")?,
        allow_private: row.try_get("allow_private")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

pub(super) fn alert_from_row(row: &PgRow) -> StoreResult<Alert> {
    let state: String = row.try_get("state")?;
    Ok(Alert {
        id: row.try_get("id")?,
        rule_id: row.try_get("rule_id")?,
        device_id: row.try_get("device_id")?,
        metric: row.try_get("metric")?,
        state: AlertState::parse(&state)?,
        value: row.try_get("value")?,
        pending_since: row.try_get("pending_since")?,
        started_at: row.try_get("started_at")?,
        resolved_at: row.try_get("resolved_at")?,
        last_notified_at: row.try_get("last_notified_at")?,
        last_eval_ts: row.try_get("last_eval_ts")?,
        acknowledged_by: row.try_get("acknowledged_by")?,
        acknowledged_at: row.try_get("acknowledged_at")?,
        ack_comment: row.try_get("ack_comment")?,
        seq: row.try_get("seq")?,
        created_at: row.try_get("created_at")?,
    })
}

pub(super) fn delivery_from_row(row: &PgRow) -> StoreResult<Delivery> {
    let state: String = row.try_get("state")?;
    Ok(Delivery {
        id: row.try_get("id")?,
        idempotency_key: row.try_get("idempotency_key")?,
        channel_id: row.try_get("channel_id")?,
        alert_id: row.try_get("alert_id")?,
        rule_id: row.try_get("rule_id")?,
        event: row.try_get("event")?,
        message: row.try_get("message")?,
        state: DeliveryState::parse(&state)?,
        attempts: row.try_get("attempts")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        last_error: row.try_get("last_error")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        delivered_at: row.try_get("delivered_at")?,
    })
}

pub(super) fn silence_from_row(row: &PgRow) -> StoreResult<Silence> {
    Ok(Silence {
        id: row.try_get("id")?,
        silence: NewSilence {
            rule_id: row.try_get("rule_id")?,
            device_id: row.try_get("device_id")?,
            group_id: row.try_get("group_id")?,
            starts_at: row.try_get("starts_at")?,
            until: row.try_get("until")?,
            comment: row.try_get("comment")?,
            created_by: row.try_get("created_by")?,
        },
        created_at: row.try_get("created_at")?,
    })
}
