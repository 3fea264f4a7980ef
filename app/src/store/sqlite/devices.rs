//! [`DeviceStore`] on SQLite: groups, devices, their series and MQTT credentials. Readings and
//! rollups carry no foreign key to their series, so deleting a device deletes them explicitly,
//! in the same transaction as the device.

use async_trait::async_trait;
use chrono::Utc;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use uuid::Uuid;

use super::{json, opt_uuid, uuid, SqliteStore};
use crate::store::{
    Device, DeviceStore, Group, MqttCredentials, NewDevice, SeriesId, StoreError, StoreResult,
};

const DEVICE_COLUMNS: &str =
    "id, name, protocol, group_id, config, enabled, created_at, updated_at";

fn device_from_row(row: &SqliteRow) -> StoreResult<Device> {
    let protocol: String = row.try_get("protocol")?;
    Ok(Device {
        id: uuid(row, "id")?,
        name: row.try_get("name")?,
        protocol: protocol.parse().map_err(StoreError::Corrupt)?,
        group_id: opt_uuid(row, "group_id")?,
        config: json(row, "config")?,
        enabled: row.try_get("enabled")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

#[async_trait]
impl DeviceStore for SqliteStore {
    async fn create_group(&self, name: &str) -> StoreResult<Group> {
        let group = Group {
            id: Uuid::now_v7(),
            name: name.to_string(),
            created_at: Utc::now(),
        };
        sqlx::query("INSERT INTO device_groups (id, name, created_at) VALUES (?, ?, ?)")
            .bind(group.id.to_string())
            .bind(&group.name)
            .bind(group.created_at)
            .execute(&self.pool)
            .await?;
        Ok(group)
    }

    async fn list_groups(&self) -> StoreResult<Vec<Group>> {
        let rows = sqlx::query("SELECT id, name, created_at FROM device_groups ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(Group {
                    id: uuid(row, "id")?,
                    name: row.try_get("name")?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect()
    }

    async fn delete_group(&self, id: Uuid) -> StoreResult<()> {
        let done = sqlx::query("DELETE FROM device_groups WHERE id = ?")
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn create_device(&self, device: &NewDevice) -> StoreResult<Device> {
        let now = Utc::now();
        let sql = format!(
            "INSERT INTO devices (id, name, protocol, group_id, config, enabled, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING {DEVICE_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(Uuid::now_v7().to_string())
            .bind(&device.name)
            .bind(device.protocol.as_str())
            .bind(device.group_id.map(|g| g.to_string()))
            .bind(device.config.to_string())
            .bind(device.enabled)
            .bind(now)
            .bind(now)
            .fetch_one(&self.pool)
            .await?;
        device_from_row(&row)
    }

    async fn get_device(&self, id: Uuid) -> StoreResult<Device> {
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = ?");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_one(&self.pool)
            .await?;
        device_from_row(&row)
    }

    async fn list_devices(&self) -> StoreResult<Vec<Device>> {
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices ORDER BY name");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(device_from_row).collect()
    }

    async fn update_device(&self, id: Uuid, device: &NewDevice) -> StoreResult<Device> {
        let sql = format!(
            "UPDATE devices SET name = ?, protocol = ?, group_id = ?, config = ?, enabled = ?, \
             updated_at = ? WHERE id = ? RETURNING {DEVICE_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(&device.name)
            .bind(device.protocol.as_str())
            .bind(device.group_id.map(|g| g.to_string()))
            .bind(device.config.to_string())
            .bind(device.enabled)
            .bind(Utc::now())
            .bind(id.to_string())
            .fetch_one(&self.pool)
            .await?;
        device_from_row(&row)
    }

    async fn delete_device(&self, id: Uuid) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        for table in ["readings", "readings_1m", "readings_1h"] {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE series_id IN (SELECT id FROM series WHERE device_id = ?)"
            ))
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        }
        let deleted = sqlx::query("DELETE FROM devices WHERE id = ?")
            .bind(id.to_string())
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
        let id = sqlx::query_scalar(
            "INSERT INTO series (device_id, metric, unit) VALUES (?, ?, ?) \
             ON CONFLICT (device_id, metric) DO UPDATE SET unit = COALESCE(excluded.unit, series.unit) \
             RETURNING id",
        )
        .bind(device_id.to_string())
        .bind(metric)
        .bind(unit)
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    async fn find_series(&self, device_id: Uuid, metric: &str) -> StoreResult<Option<SeriesId>> {
        Ok(
            sqlx::query_scalar("SELECT id FROM series WHERE device_id = ? AND metric = ?")
                .bind(device_id.to_string())
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
            sqlx::query_as("SELECT metric, id, unit FROM series WHERE device_id = ?")
                .bind(device_id.to_string())
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn put_mqtt_credentials(&self, credentials: &MqttCredentials) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO mqtt_credentials (device_id, username, secret_hash, created_at) \
             VALUES (?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET \
             username = excluded.username, secret_hash = excluded.secret_hash, \
             created_at = excluded.created_at",
        )
        .bind(credentials.device_id.to_string())
        .bind(&credentials.username)
        .bind(&credentials.secret_hash)
        .bind(Utc::now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn find_mqtt_credentials(&self, username: &str) -> StoreResult<MqttCredentials> {
        let row = sqlx::query(
            "SELECT device_id, username, secret_hash FROM mqtt_credentials WHERE username = ?",
        )
        .bind(username)
        .fetch_one(&self.pool)
        .await?;
        Ok(MqttCredentials {
            device_id: uuid(&row, "device_id")?,
            username: row.try_get("username")?,
            secret_hash: row.try_get("secret_hash")?,
        })
    }
}
