//! [`DeviceStore`](crate::store::DeviceStore) for both backends: groups, devices, their series
//! and MQTT credentials. Readings and rollups carry no foreign key to their series (PostgreSQL:
//! a partitioned table), so deleting a device deletes them explicitly, in the same transaction
//! as the device.

pub(in crate::store) const DEVICE_COLUMNS: &str =
    "id, name, protocol, group_id, config, enabled, created_at, updated_at";

/// Implements `DeviceStore` for `$store`; the same SQL serves both backends.
macro_rules! device_store {
    ($store:ty) => {
        const _: () = {
            use async_trait::async_trait;
            use chrono::Utc;
            use uuid::Uuid;

            use $crate::store::common::devices::DEVICE_COLUMNS;
            use $crate::store::common::{opt_id, Id};
            use $crate::store::{
                Device, DeviceStore, DeviceVersion, Group, MqttCredentials, NewDevice, SeriesId,
                StoreError, StoreResult,
            };

            #[async_trait]
            impl DeviceStore for $store {
                async fn create_group(&self, name: &str) -> StoreResult<Group> {
                    Ok(sqlx::query_as(
                        "INSERT INTO device_groups (id, name, created_at) VALUES ($1, $2, $3) \
                         RETURNING id, name, created_at",
                    )
                    .bind(Id(Uuid::now_v7()))
                    .bind(name)
                    .bind(Utc::now())
                    .fetch_one(self.writer())
                    .await?)
                }

                async fn list_groups(&self) -> StoreResult<Vec<Group>> {
                    Ok(sqlx::query_as(
                        "SELECT id, name, created_at FROM device_groups ORDER BY name",
                    )
                    .fetch_all(&self.pool)
                    .await?)
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
                    Ok(sqlx::query_as(&format!(
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
                    .await?)
                }

                async fn get_device(&self, id: Uuid) -> StoreResult<Device> {
                    Ok(sqlx::query_as(&format!(
                        "SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1"
                    ))
                    .bind(Id(id))
                    .fetch_one(&self.pool)
                    .await?)
                }

                async fn list_devices(&self) -> StoreResult<Vec<Device>> {
                    Ok(sqlx::query_as(&format!(
                        "SELECT {DEVICE_COLUMNS} FROM devices ORDER BY name"
                    ))
                    .fetch_all(&self.pool)
                    .await?)
                }

                async fn list_device_versions(&self) -> StoreResult<Vec<DeviceVersion>> {
                    Ok(
                        sqlx::query_as("SELECT id, protocol, enabled, updated_at FROM devices")
                            .fetch_all(&self.pool)
                            .await?,
                    )
                }

                async fn update_device(&self, id: Uuid, device: &NewDevice) -> StoreResult<Device> {
                    Ok(sqlx::query_as(&format!(
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
                    .await?)
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
                    Ok(sqlx::query_as(
                        "SELECT device_id, username, secret_hash FROM mqtt_credentials \
                         WHERE username = $1",
                    )
                    .bind(username)
                    .fetch_one(&self.pool)
                    .await?)
                }
            }
        };
    };
}
pub(in crate::store) use device_store;
