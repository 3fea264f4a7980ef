//! [`DeviceStore`](crate::store::DeviceStore) for both backends: groups, devices, their series
//! and MQTT credentials. Readings and rollups carry no foreign key to their series (PostgreSQL:
//! a partitioned table), so deleting a device deletes them explicitly, in the same transaction
//! as the device.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Id;
use crate::store::{Device, DeviceVersion, Group, MqttCredentials, StoreError, StoreResult};

pub(in crate::store) const DEVICE_COLUMNS: &str =
    "id, name, protocol, group_id, config, enabled, created_at, updated_at";

#[derive(sqlx::FromRow)]
pub(in crate::store) struct GroupRow {
    id: Id,
    name: String,
    created_at: DateTime<Utc>,
}

impl From<GroupRow> for Group {
    fn from(row: GroupRow) -> Group {
        Group {
            id: row.id.0,
            name: row.name,
            created_at: row.created_at,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(in crate::store) struct DeviceRow {
    id: Id,
    name: String,
    protocol: String,
    group_id: Option<Id>,
    config: serde_json::Value,
    enabled: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<DeviceRow> for Device {
    type Error = StoreError;
    fn try_from(row: DeviceRow) -> StoreResult<Device> {
        Ok(Device {
            id: row.id.0,
            name: row.name,
            protocol: row.protocol.parse().map_err(StoreError::Corrupt)?,
            group_id: row.group_id.map(Uuid::from),
            config: row.config,
            enabled: row.enabled,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(in crate::store) struct DeviceVersionRow {
    id: Id,
    protocol: String,
    enabled: bool,
    updated_at: DateTime<Utc>,
}

impl TryFrom<DeviceVersionRow> for DeviceVersion {
    type Error = StoreError;
    fn try_from(row: DeviceVersionRow) -> StoreResult<DeviceVersion> {
        Ok(DeviceVersion {
            id: row.id.0,
            protocol: row.protocol.parse().map_err(StoreError::Corrupt)?,
            enabled: row.enabled,
            updated_at: row.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(in crate::store) struct CredentialsRow {
    device_id: Id,
    username: String,
    secret_hash: String,
}

impl From<CredentialsRow> for MqttCredentials {
    fn from(row: CredentialsRow) -> MqttCredentials {
        MqttCredentials {
            device_id: row.device_id.0,
            username: row.username,
            secret_hash: row.secret_hash,
        }
    }
}

/// Implements `DeviceStore` for `$store`; the same SQL serves both backends.
macro_rules! device_store {
    ($store:ty) => {
        const _: () = {
            use async_trait::async_trait;
            use chrono::Utc;
            use uuid::Uuid;

            use $crate::store::common::devices::{
                CredentialsRow, DeviceRow, DeviceVersionRow, GroupRow, DEVICE_COLUMNS,
            };
            use $crate::store::common::{opt_id, Id};
            use $crate::store::{
                Device, DeviceStore, DeviceVersion, Group, MqttCredentials, NewDevice, SeriesId,
                StoreError, StoreResult,
            };

            #[async_trait]
            impl DeviceStore for $store {
                async fn create_group(&self, name: &str) -> StoreResult<Group> {
                    let row: GroupRow = sqlx::query_as(
                        "INSERT INTO device_groups (id, name, created_at) VALUES ($1, $2, $3) \
                         RETURNING id, name, created_at",
                    )
                    .bind(Id(Uuid::now_v7()))
                    .bind(name)
                    .bind(Utc::now())
                    .fetch_one(self.writer())
                    .await?;
                    Ok(row.into())
                }

                async fn list_groups(&self) -> StoreResult<Vec<Group>> {
                    let rows: Vec<GroupRow> = sqlx::query_as(
                        "SELECT id, name, created_at FROM device_groups ORDER BY name",
                    )
                    .fetch_all(&self.pool)
                    .await?;
                    Ok(rows.into_iter().map(Group::from).collect())
                }

                async fn delete_group(&self, id: Uuid) -> StoreResult<()> {
                    let done = sqlx::query("DELETE FROM device_groups WHERE id = $1")
                        .bind(Id(id))
                        .execute(self.writer())
                        .await?;
                    if done.rows_affected() == 0 {
                        return Err(StoreError::NotFound);
                    }
                    Ok(())
                }

                async fn create_device(&self, device: &NewDevice) -> StoreResult<Device> {
                    let now = Utc::now();
                    sqlx::query_as::<_, DeviceRow>(&format!(
                        "INSERT INTO devices (id, name, protocol, group_id, config, enabled, \
                         created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
                         RETURNING {DEVICE_COLUMNS}"
                    ))
                    .bind(Id(Uuid::now_v7()))
                    .bind(&device.name)
                    .bind(device.protocol.as_str())
                    .bind(opt_id(device.group_id))
                    .bind(&device.config)
                    .bind(device.enabled)
                    .bind(now)
                    .fetch_one(self.writer())
                    .await?
                    .try_into()
                }

                async fn get_device(&self, id: Uuid) -> StoreResult<Device> {
                    sqlx::query_as::<_, DeviceRow>(&format!(
                        "SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1"
                    ))
                    .bind(Id(id))
                    .fetch_one(&self.pool)
                    .await?
                    .try_into()
                }

                async fn list_devices(&self) -> StoreResult<Vec<Device>> {
                    sqlx::query_as::<_, DeviceRow>(&format!(
                        "SELECT {DEVICE_COLUMNS} FROM devices ORDER BY name"
                    ))
                    .fetch_all(&self.pool)
                    .await?
                    .into_iter()
                    .map(Device::try_from)
                    .collect()
                }

                async fn list_device_versions(&self) -> StoreResult<Vec<DeviceVersion>> {
                    sqlx::query_as::<_, DeviceVersionRow>(
                        "SELECT id, protocol, enabled, updated_at FROM devices",
                    )
                    .fetch_all(&self.pool)
                    .await?
                    .into_iter()
                    .map(DeviceVersion::try_from)
                    .collect()
                }

                async fn update_device(&self, id: Uuid, device: &NewDevice) -> StoreResult<Device> {
                    sqlx::query_as::<_, DeviceRow>(&format!(
                        "UPDATE devices SET name = $2, protocol = $3, group_id = $4, config = $5, \
                         enabled = $6, updated_at = $7 WHERE id = $1 RETURNING {DEVICE_COLUMNS}"
                    ))
                    .bind(Id(id))
                    .bind(&device.name)
                    .bind(device.protocol.as_str())
                    .bind(opt_id(device.group_id))
                    .bind(&device.config)
                    .bind(device.enabled)
                    .bind(Utc::now())
                    .fetch_one(self.writer())
                    .await?
                    .try_into()
                }

                async fn delete_device(&self, id: Uuid) -> StoreResult<()> {
                    let mut tx = self.writer().begin().await?;
                    // Readings and rollups carry no foreign key, so they go explicitly.
                    for table in ["readings", "readings_1m", "readings_1h"] {
                        sqlx::query(&format!(
                            "DELETE FROM {table} WHERE series_id IN \
                             (SELECT id FROM series WHERE device_id = $1)"
                        ))
                        .bind(Id(id))
                        .execute(&mut *tx)
                        .await?;
                    }
                    let deleted = sqlx::query("DELETE FROM devices WHERE id = $1")
                        .bind(Id(id))
                        .execute(&mut *tx)
                        .await?;
                    if deleted.rows_affected() == 0 {
                        return Err(StoreError::NotFound);
                    }
                    tx.commit().await?;
                    Ok(())
                }

                async fn ensure_series(
                    &self,
                    device_id: Uuid,
                    metric: &str,
                    unit: Option<&str>,
                ) -> StoreResult<SeriesId> {
                    // The no-op update makes RETURNING yield the existing row too.
                    let id = sqlx::query_scalar(
                        "INSERT INTO series (device_id, metric, unit) VALUES ($1, $2, $3) \
                         ON CONFLICT (device_id, metric) \
                         DO UPDATE SET unit = COALESCE(excluded.unit, series.unit) RETURNING id",
                    )
                    .bind(Id(device_id))
                    .bind(metric)
                    .bind(unit)
                    .fetch_one(self.writer())
                    .await?;
                    Ok(id)
                }

                async fn find_series(
                    &self,
                    device_id: Uuid,
                    metric: &str,
                ) -> StoreResult<Option<SeriesId>> {
                    Ok(sqlx::query_scalar(
                        "SELECT id FROM series WHERE device_id = $1 AND metric = $2",
                    )
                    .bind(Id(device_id))
                    .bind(metric)
                    .fetch_optional(&self.pool)
                    .await?)
                }

                async fn device_series(
                    &self,
                    device_id: Uuid,
                ) -> StoreResult<Vec<(String, SeriesId, Option<String>)>> {
                    Ok(
                        sqlx::query_as("SELECT metric, id, unit FROM series WHERE device_id = $1")
                            .bind(Id(device_id))
                            .fetch_all(&self.pool)
                            .await?,
                    )
                }

                async fn put_mqtt_credentials(
                    &self,
                    credentials: &MqttCredentials,
                ) -> StoreResult<()> {
                    sqlx::query(
                        "INSERT INTO mqtt_credentials (device_id, username, secret_hash, \
                         created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (device_id) DO UPDATE \
                         SET username = excluded.username, secret_hash = excluded.secret_hash, \
                         created_at = excluded.created_at",
                    )
                    .bind(Id(credentials.device_id))
                    .bind(&credentials.username)
                    .bind(&credentials.secret_hash)
                    .bind(Utc::now())
                    .execute(self.writer())
                    .await?;
                    Ok(())
                }

                async fn find_mqtt_credentials(
                    &self,
                    username: &str,
                ) -> StoreResult<MqttCredentials> {
                    let row: CredentialsRow = sqlx::query_as(
                        "SELECT device_id, username, secret_hash FROM mqtt_credentials \
                         WHERE username = $1",
                    )
                    .bind(username)
                    .fetch_one(&self.pool)
                    .await?;
                    Ok(row.into())
                }
            }
        };
    };
}
pub(in crate::store) use device_store;
