//! [`SettingsStore`] on PostgreSQL: runtime settings as `jsonb` by key.

use async_trait::async_trait;

use super::PostgresStore;
use crate::store::{SettingsStore, StoreResult};

#[async_trait]
impl SettingsStore for PostgresStore {
    async fn get_setting(&self, key: &str) -> StoreResult<Option<serde_json::Value>> {
        Ok(
            sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn put_setting(&self, key: &str, value: &serde_json::Value) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
