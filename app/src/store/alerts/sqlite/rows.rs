//! Decoding the alerting tables' SQLite rows.

use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use uuid::Uuid;

use crate::store::alerts::*;
use crate::store::{StoreError, StoreResult};

pub(super) fn micros(ts: DateTime<Utc>) -> i64 {
    ts.timestamp_micros()
}

pub(super) fn ts(row: &SqliteRow, column: &str) -> StoreResult<DateTime<Utc>> {
    let us: i64 = row.try_get(column)?;
    DateTime::from_timestamp_micros(us)
        .ok_or_else(|| StoreError::Corrupt(format!("{column}: timestamp {us} out of range")))
}

pub(super) fn opt_ts(row: &SqliteRow, column: &str) -> StoreResult<Option<DateTime<Utc>>> {
    let us: Option<i64> = row.try_get(column)?;
    us.map(|us| {
        DateTime::from_timestamp_micros(us)
            .ok_or_else(|| StoreError::Corrupt(format!("{column}: timestamp {us} out of range")))
    })
    .transpose()
}

pub(super) fn uuid(row: &SqliteRow, column: &str) -> StoreResult<Uuid> {
    let text: String = row.try_get(column)?;
    Uuid::parse_str(&text).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

pub(super) fn opt_uuid(row: &SqliteRow, column: &str) -> StoreResult<Option<Uuid>> {
    let text: Option<String> = row.try_get(column)?;
    text.map(|t| Uuid::parse_str(&t).map_err(|e| StoreError::Corrupt(format!("{column}: {e}"))))
        .transpose()
}

pub(super) fn json(row: &SqliteRow, column: &str) -> StoreResult<serde_json::Value> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

pub(super) fn rule_from_row(row: &SqliteRow, channels: Vec<Uuid>) -> StoreResult<AlertRule> {
    Ok(AlertRule {
        id: uuid(row, "id")?,
        rule: NewAlertRule {
            name: row.try_get("name")?,
            kind: row.try_get("kind")?,
            device_id: opt_uuid(row, "device_id")?,
            group_id: opt_uuid(row, "group_id")?,
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
        created_at: ts(row, "created_at")?,
        updated_at: ts(row, "updated_at")?,
    })
}

pub(super) fn channel_from_row(row: &SqliteRow) -> StoreResult<ChannelInfo> {
    Ok(ChannelInfo {
        id: uuid(row, "id")?,
        name: row.try_get("name")?,
        kind: row.try_get("kind")?,
        settings: json(row, "settings")?,
        has_secret: row.try_get("has_secret")?,
        allow_private: row.try_get("allow_private")?,
        created_at: ts(row, "created_at")?,
        updated_at: ts(row, "updated_at")?,
    })
}

pub(super) fn alert_from_row(row: &SqliteRow) -> StoreResult<Alert> {
    let state: String = row.try_get("state")?;
    Ok(Alert {
        id: uuid(row, "id")?,
        rule_id: uuid(row, "rule_id")?,
        device_id: opt_uuid(row, "device_id")?,
        metric: row.try_get("metric")?,
        state: AlertState::parse(&state)?,
        value: row.try_get("value")?,
        pending_since: opt_ts(row, "pending_since")?,
        started_at: opt_ts(row, "started_at")?,
        resolved_at: opt_ts(row, "resolved_at")?,
        last_notified_at: opt_ts(row, "last_notified_at")?,
        last_eval_ts: opt_ts(row, "last_eval_ts")?,
        acknowledged_by: row.try_get("acknowledged_by")?,
        acknowledged_at: opt_ts(row, "acknowledged_at")?,
        ack_comment: row.try_get("ack_comment")?,
        seq: row.try_get("seq")?,
        created_at: ts(row, "created_at")?,
    })
}

pub(super) fn delivery_from_row(row: &SqliteRow) -> StoreResult<Delivery> {
    let state: String = row.try_get("state")?;
    Ok(Delivery {
        id: uuid(row, "id")?,
        idempotency_key: row.try_get("idempotency_key")?,
        channel_id: uuid(row, "channel_id")?,
        alert_id: opt_uuid(row, "alert_id")?,
        rule_id: opt_uuid(row, "rule_id")?,
        event: row.try_get("event")?,
        message: json(row, "message")?,
        state: DeliveryState::parse(&state)?,
        attempts: row.try_get("attempts")?,
        next_attempt_at: ts(row, "next_attempt_at")?,
        last_error: row.try_get("last_error")?,
        created_at: ts(row, "created_at")?,
        expires_at: ts(row, "expires_at")?,
        delivered_at: opt_ts(row, "delivered_at")?,
    })
}

pub(super) fn silence_from_row(row: &SqliteRow) -> StoreResult<Silence> {
    Ok(Silence {
        id: uuid(row, "id")?,
        silence: NewSilence {
            rule_id: opt_uuid(row, "rule_id")?,
            device_id: opt_uuid(row, "device_id")?,
            group_id: opt_uuid(row, "group_id")?,
            starts_at: ts(row, "starts_at")?,
            until: ts(row, "until")?,
            comment: row.try_get("comment")?,
            created_by: row.try_get("created_by")?,
        },
        created_at: ts(row, "created_at")?,
    })
}
