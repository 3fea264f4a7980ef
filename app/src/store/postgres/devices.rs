//! [`DeviceStore`] on PostgreSQL: groups, devices, their series and MQTT credentials. Readings
//! carry no foreign key (a partitioned table), so deleting a device deletes them and their
//! rollups explicitly, in the same transaction as the device.

use async_trait::async_trait;
use sqlx::Row;
use uuid::Uuid;

use super::PostgresStore;
use crate::store::{
    Device, DeviceStore, Group, MqttCredentials, NewDevice, SeriesId, StoreError, StoreResult,
};

const DEVICE_COLUMNS: &str =
    "id, name, protocol, group_id, config, enabled, created_at, updated_at";

fn device_from_row(row: &sqlx::postgres::PgRow) -> StoreResult<Device> {
    let protocol: String = row.try_get("protocol")?;
    Ok(Device {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        protocol: protocol.parse().map_err(StoreError::Corrupt)?,
        group_id: row.try_get("group_id")?,
        config: row.try_get("config")?,
        enabled: row.try_get("enabled")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

#[async_trait]
impl DeviceStore for PostgresStore {
    async fn create_group(&self, name: &str) -> StoreResult<Group> {
        let row = sqlx::query(
            "INSERT INTO device_groups (id, name) VALUES ($1, $2) RETURNING id, name, created_at",
        )
        .bind(Uuid::now_v7())
        .bind(name)
        .fetch_one(&self.pool)
        .await?;
        Ok(Group {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            created_at: row.try_get("created_at")?,
        })
    }

    async fn list_groups(&self) -> StoreResult<Vec<Group>> {
        let rows = sqlx::query("SELECT id, name, created_at FROM device_groups ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(Group {
                    id: row.try_get("id")?,
                    name: row.try_get("name")?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect()
    }

    async fn delete_group(&self, id: Uuid) -> StoreResult<()> {
        let done = sqlx::query("DELETE FROM device_groups WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn create_device(&self, device: &NewDevice) -> StoreResult<Device> {
        let sql = format!(
            "INSERT INTO devices (id, name, protocol, group_id, config, enabled) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {DEVICE_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(Uuid::now_v7())
            .bind(&device.name)
            .bind(device.protocol.as_str())
            .bind(device.group_id)
            .bind(&device.config)
            .bind(device.enabled)
            .fetch_one(&self.pool)
            .await?;
        device_from_row(&row)
    }

    async fn get_device(&self, id: Uuid) -> StoreResult<Device> {
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1");
        let row = sqlx::query(&sql).bind(id).fetch_one(&self.pool).await?;
        device_from_row(&row)
    }

    async fn list_devices(&self) -> StoreResult<Vec<Device>> {
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices ORDER BY name");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(device_from_row).collect()
    }

    async fn update_device(&self, id: Uuid, device: &NewDevice) -> StoreResult<Device> {
        let sql = format!(
            "UPDATE devices SET name = $2, protocol = $3, group_id = $4, config = $5, enabled = $6, \
             updated_at = now() WHERE id = $1 RETURNING {DEVICE_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .bind(&device.name)
            .bind(device.protocol.as_str())
            .bind(device.group_id)
            .bind(&device.config)
            .bind(device.enabled)
            .fetch_one(&self.pool)
            .await?;
        device_from_row(&row)
    }

    async fn delete_device(&self, id: Uuid) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        // Readings carry no foreign key (partitioned table), so they go explicitly.
        for table in ["readings", "readings_1m", "readings_1h"] {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE series_id IN (SELECT id FROM series WHERE device_id = $1)"
            ))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        let deleted = sqlx::query("DELETE FROM devices WHERE id = $1")
            .bind(id)
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
             ON CONFLICT (device_id, metric) DO UPDATE SET unit = COALESCE(EXCLUDED.unit, series.unit) \
             RETURNING id",
        )
        .bind(device_id)
        .bind(metric)
        .bind(unit)
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    async fn find_series(&self, device_id: Uuid, metric: &str) -> StoreResult<Option<SeriesId>> {
        Ok(
            sqlx::query_scalar("SELECT id FROM series WHERE device_id = $1 AND metric = $2")
                .bind(device_id)
                .bind(metric)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn device_series(
        &self,
        device_id: Uuid,
    ) -> StoreResult<Vec<(String, SeriesId, Option<String>)>> {
        Ok(
            sqlx::query_as("SELECT metric, id, unit FROM series WHERE device_id = $1")
                .bind(device_id)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn put_mqtt_credentials(&self, credentials: &MqttCredentials) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO mqtt_credentials (device_id, username, secret_hash) VALUES ($1, $2, $3) \
             ON CONFLICT (device_id) DO UPDATE SET username = EXCLUDED.username, \
             secret_hash = EXCLUDED.secret_hash, created_at = now()",
        )
        .bind(credentials.device_id)
        .bind(&credentials.username)
        .bind(&credentials.secret_hash)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn find_mqtt_credentials(&self, username: &str) -> StoreResult<MqttCredentials> {
        let row = sqlx::query(
            "SELECT device_id, username, secret_hash FROM mqtt_credentials WHERE username = $1",
        )
        .bind(username)
        .fetch_one(&self.pool)
        .await?;
        Ok(MqttCredentials {
            device_id: row.try_get("device_id")?,
            username: row.try_get("username")?,
            secret_hash: row.try_get("secret_hash")?,
        })
    }
}
