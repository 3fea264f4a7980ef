//! [`StatusStore`] on SQLite: the status board's rows (one per device, replaced) and its
//! notifications, at most one open per kind and device (a partial unique index).

use async_trait::async_trait;
use chrono::Utc;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use uuid::Uuid;

use super::{opt_uuid, uuid, SqliteStore};
use crate::store::{
    DeviceStatus, NewNotification, Notification, StatusStore, StoreError, StoreResult,
};

const NOTIFICATION_COLUMNS: &str =
    "id, kind, device_id, message, created_at, cleared_at, acknowledged_at, acknowledged_by";

fn notification_from_row(row: &SqliteRow) -> StoreResult<Notification> {
    Ok(Notification {
        id: uuid(row, "id")?,
        kind: row.try_get("kind")?,
        device_id: opt_uuid(row, "device_id")?,
        message: row.try_get("message")?,
        created_at: row.try_get("created_at")?,
        cleared_at: row.try_get("cleared_at")?,
        acknowledged_at: row.try_get("acknowledged_at")?,
        acknowledged_by: row.try_get("acknowledged_by")?,
    })
}

#[async_trait]
impl StatusStore for SqliteStore {
    async fn put_device_status(&self, status: &DeviceStatus) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO device_status \
             (device_id, status, last_error, last_seen_at, consecutive_failures, changed_at) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET \
             status = excluded.status, last_error = excluded.last_error, \
             last_seen_at = excluded.last_seen_at, \
             consecutive_failures = excluded.consecutive_failures, changed_at = excluded.changed_at",
        )
        .bind(status.device_id.to_string())
        .bind(status.status.as_str())
        .bind(&status.last_error)
        .bind(status.last_seen_at)
        .bind(i64::from(status.consecutive_failures))
        .bind(status.changed_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_device_status(&self) -> StoreResult<Vec<DeviceStatus>> {
        let rows = sqlx::query(
            "SELECT device_id, status, last_error, last_seen_at, consecutive_failures, changed_at \
             FROM device_status",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let status: String = row.try_get("status")?;
                let failures: i64 = row.try_get("consecutive_failures")?;
                Ok(DeviceStatus {
                    device_id: uuid(row, "device_id")?,
                    status: status.parse().map_err(StoreError::Corrupt)?,
                    last_error: row.try_get("last_error")?,
                    last_seen_at: row.try_get("last_seen_at")?,
                    consecutive_failures: failures.clamp(0, i64::from(u32::MAX)) as u32,
                    changed_at: row.try_get("changed_at")?,
                })
            })
            .collect()
    }

    async fn open_notification(&self, n: &NewNotification) -> StoreResult<Notification> {
        let insert = format!(
            "INSERT INTO notifications (id, kind, device_id, message, created_at) \
             VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (kind, device_id) WHERE cleared_at IS NULL AND acknowledged_at IS NULL \
             DO NOTHING RETURNING {NOTIFICATION_COLUMNS}"
        );
        let device = n.device_id.map(|d| d.to_string());
        if let Some(row) = sqlx::query(&insert)
            .bind(Uuid::now_v7().to_string())
            .bind(&n.kind)
            .bind(&device)
            .bind(&n.message)
            .bind(Utc::now())
            .fetch_optional(&self.pool)
            .await?
        {
            return notification_from_row(&row);
        }
        let existing = format!(
            "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE kind = ? AND device_id = ? \
             AND cleared_at IS NULL AND acknowledged_at IS NULL"
        );
        let row = sqlx::query(&existing)
            .bind(&n.kind)
            .bind(&device)
            .fetch_one(&self.pool)
            .await?;
        notification_from_row(&row)
    }

    async fn list_open_notifications(&self, kind: &str) -> StoreResult<Vec<Notification>> {
        let sql = format!(
            "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE kind = ? \
             AND cleared_at IS NULL AND acknowledged_at IS NULL ORDER BY created_at, id"
        );
        let rows = sqlx::query(&sql).bind(kind).fetch_all(&self.pool).await?;
        rows.iter().map(notification_from_row).collect()
    }

    async fn acknowledge_notification(&self, id: Uuid, by: &str) -> StoreResult<Notification> {
        let sql = format!(
            "UPDATE notifications SET acknowledged_at = COALESCE(acknowledged_at, ?), \
             acknowledged_by = COALESCE(acknowledged_by, ?) WHERE id = ? \
             RETURNING {NOTIFICATION_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(Utc::now())
            .bind(by)
            .bind(id.to_string())
            .fetch_one(&self.pool)
            .await?;
        notification_from_row(&row)
    }

    async fn clear_notification(&self, kind: &str, device_id: Uuid) -> StoreResult<bool> {
        let result = sqlx::query(
            "UPDATE notifications SET cleared_at = ? WHERE kind = ? AND device_id = ? \
             AND cleared_at IS NULL AND acknowledged_at IS NULL",
        )
        .bind(Utc::now())
        .bind(kind)
        .bind(device_id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }
}
