//! [`LeaseStore`] on SQLite: leases among the instances sharing the database file, taken in
//! one transaction and expiring by the caller's clock (PostgreSQL uses the database's).

use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;

use super::{micros, SqliteStore};
use crate::store::{LeaseStore, StoreResult};

#[async_trait]
impl LeaseStore for SqliteStore {
    async fn acquire_leases(
        &self,
        names: &[String],
        holder: &str,
        ttl: Duration,
    ) -> StoreResult<Vec<String>> {
        let now = micros(Utc::now());
        let expires = now + ttl.as_micros() as i64;
        let mut tx = self.pool.begin().await?;
        let mut held = Vec::with_capacity(names.len());
        for name in names {
            let row: Option<String> = sqlx::query_scalar(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?) \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                 expires_at = excluded.expires_at \
                 WHERE leases.holder = excluded.holder OR leases.expires_at < ? \
                 RETURNING name",
            )
            .bind(name)
            .bind(holder)
            .bind(expires)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            held.extend(row);
        }
        tx.commit().await?;
        Ok(held)
    }

    async fn release_leases(&self, names: &[String], holder: &str) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        for name in names {
            sqlx::query("DELETE FROM leases WHERE holder = ? AND name = ?")
                .bind(holder)
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
