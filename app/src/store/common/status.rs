//! [`StatusStore`](crate::store::StatusStore) for both backends: the status board's rows (one
//! per device, replaced) and its notifications, at most one open per kind and device (a partial
//! unique index).

use chrono::{DateTime, Utc};

use super::Id;
use crate::store::{DeviceStatus, StoreError, StoreResult};

pub(in crate::store) const NOTIFICATION_COLUMNS: &str =
    "id, kind, device_id, message, created_at, cleared_at, acknowledged_at, acknowledged_by";

/// `consecutive_failures` is read as BIGINT (an INTEGER column on PostgreSQL) so that one type
/// decodes it on both backends.
pub(in crate::store) const STATUS_COLUMNS: &str = "device_id, status, last_error, last_seen_at, \
     CAST(consecutive_failures AS BIGINT) AS consecutive_failures, changed_at";

/// Not the record itself: a count outside `u32` (only a damaged row holds one) is clamped.
#[derive(sqlx::FromRow)]
pub(in crate::store) struct StatusRow {
    device_id: Id,
    status: String,
    last_error: Option<String>,
    last_seen_at: Option<DateTime<Utc>>,
    consecutive_failures: i64,
    changed_at: DateTime<Utc>,
}

impl TryFrom<StatusRow> for DeviceStatus {
    type Error = StoreError;
    fn try_from(row: StatusRow) -> StoreResult<DeviceStatus> {
        Ok(DeviceStatus {
            device_id: row.device_id.0,
            status: row.status.parse().map_err(StoreError::Corrupt)?,
            last_error: row.last_error,
            last_seen_at: row.last_seen_at,
            consecutive_failures: row.consecutive_failures.clamp(0, i64::from(u32::MAX)) as u32,
            changed_at: row.changed_at,
        })
    }
}

/// Implements `StatusStore` for `$store`; the same SQL serves both backends.
macro_rules! status_store {
    ($store:ty) => {
        const _: () = {
            use async_trait::async_trait;
            use chrono::Utc;
            use uuid::Uuid;

            use $crate::store::common::status::{StatusRow, NOTIFICATION_COLUMNS, STATUS_COLUMNS};
            use $crate::store::common::{opt_id, Id};
            use $crate::store::{
                DeviceStatus, NewNotification, Notification, StatusStore, StoreResult,
            };

            #[async_trait]
            impl StatusStore for $store {
                async fn put_device_status(&self, status: &DeviceStatus) -> StoreResult<()> {
                    sqlx::query(
                        "INSERT INTO device_status (device_id, status, last_error, last_seen_at, \
                         consecutive_failures, changed_at) VALUES ($1, $2, $3, $4, $5, $6) \
                         ON CONFLICT (device_id) DO UPDATE SET status = excluded.status, \
                         last_error = excluded.last_error, last_seen_at = excluded.last_seen_at, \
                         consecutive_failures = excluded.consecutive_failures, \
                         changed_at = excluded.changed_at",
                    )
                    .bind(Id(status.device_id))
                    .bind(status.status.as_str())
                    .bind(&status.last_error)
                    .bind(status.last_seen_at)
                    .bind(i64::from(status.consecutive_failures))
                    .bind(status.changed_at)
                    .execute(self.writer())
                    .await?;
                    Ok(())
                }

                async fn list_device_status(&self) -> StoreResult<Vec<DeviceStatus>> {
                    sqlx::query_as::<_, StatusRow>(&format!(
                        "SELECT {STATUS_COLUMNS} FROM device_status"
                    ))
                    .fetch_all(&self.pool)
                    .await?
                    .into_iter()
                    .map(DeviceStatus::try_from)
                    .collect()
                }

                async fn open_notification(
                    &self,
                    n: &NewNotification,
                ) -> StoreResult<Notification> {
                    let insert = format!(
                        "INSERT INTO notifications (id, kind, device_id, message, created_at) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (kind, device_id) \
                         WHERE cleared_at IS NULL AND acknowledged_at IS NULL \
                         DO NOTHING RETURNING {NOTIFICATION_COLUMNS}"
                    );
                    if let Some(opened) = sqlx::query_as::<_, Notification>(&insert)
                        .bind(Id(Uuid::now_v7()))
                        .bind(&n.kind)
                        .bind(opt_id(n.device_id))
                        .bind(&n.message)
                        .bind(Utc::now())
                        .fetch_optional(self.writer())
                        .await?
                    {
                        return Ok(opened);
                    }
                    let existing = format!(
                        "SELECT {NOTIFICATION_COLUMNS} FROM notifications \
                         WHERE kind = $1 AND device_id = $2 \
                         AND cleared_at IS NULL AND acknowledged_at IS NULL"
                    );
                    Ok(sqlx::query_as(&existing)
                        .bind(&n.kind)
                        .bind(opt_id(n.device_id))
                        .fetch_one(&self.pool)
                        .await?)
                }

                async fn list_open_notifications(
                    &self,
                    kind: &str,
                ) -> StoreResult<Vec<Notification>> {
                    Ok(sqlx::query_as(&format!(
                        "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE kind = $1 \
                         AND cleared_at IS NULL AND acknowledged_at IS NULL \
                         ORDER BY created_at, id"
                    ))
                    .bind(kind)
                    .fetch_all(&self.pool)
                    .await?)
                }

                async fn acknowledge_notification(
                    &self,
                    id: Uuid,
                    by: &str,
                ) -> StoreResult<Notification> {
                    Ok(sqlx::query_as(&format!(
                        "UPDATE notifications SET \
                         acknowledged_at = COALESCE(acknowledged_at, $1), \
                         acknowledged_by = COALESCE(acknowledged_by, $2) \
                         WHERE id = $3 RETURNING {NOTIFICATION_COLUMNS}"
                    ))
                    .bind(Utc::now())
                    .bind(by)
                    .bind(Id(id))
                    .fetch_one(self.writer())
                    .await?)
                }

                async fn clear_notification(&self, kind: &str, device_id: Uuid) -> StoreResult<bool> {
                    let result = sqlx::query(
                        "UPDATE notifications SET cleared_at = $1 \
                         WHERE kind = $2 AND device_id = $3 \
                         AND cleared_at IS NULL AND acknowledged_at IS NULL",
                    )
                    .bind(Utc::now())
                    .bind(kind)
                    .bind(Id(device_id))
                    .execute(self.writer())
                    .await?;
                    Ok(result.rows_affected() > 0)
                }
            }
        };
    };
}
pub(in crate::store) use status_store;
