//! [`SettingsStore`](crate::store::SettingsStore) for both backends: runtime settings as JSON by
//! key (`jsonb` on PostgreSQL, JSON text on SQLite).

/// Implements `SettingsStore` for `$store`; the same SQL serves both backends.
macro_rules! settings_store {
    ($store:ty) => {
        const _: () = {
            use async_trait::async_trait;
            use chrono::Utc;

            use $crate::store::{SettingsStore, StoreResult};

            #[async_trait]
            impl SettingsStore for $store {
                async fn get_setting(&self, key: &str) -> StoreResult<Option<serde_json::Value>> {
                    Ok(
                        sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
                            .bind(key)
                            .fetch_optional(&self.pool)
                            .await?,
                    )
                }

                async fn put_setting(
                    &self,
                    key: &str,
                    value: &serde_json::Value,
                ) -> StoreResult<()> {
                    sqlx::query(
                        "INSERT INTO settings (key, value, updated_at) VALUES ($1, $2, $3) \
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                         updated_at = excluded.updated_at",
                    )
                    .bind(key)
                    .bind(value)
                    .bind(Utc::now())
                    .execute(self.writer())
                    .await?;
                    Ok(())
                }
            }
        };
    };
}
pub(in crate::store) use settings_store;
