//! [`LeaseStore`](crate::store::LeaseStore) on SQLite: leases among the instances sharing the
//! database file, taken row by row in one transaction (no arrays) and expiring by the caller's
//! clock, as integer microseconds (PostgreSQL uses the database's clock).

use std::time::Duration;

use chrono::Utc;

use super::{micros, SqliteStore};
use crate::store::common::leases::lease_store;
use crate::store::StoreResult;

lease_store!(SqliteStore);

impl SqliteStore {
    async fn take_leases(
        &self,
        names: &[String],
        holder: &str,
        ttl: Duration,
    ) -> StoreResult<Vec<String>> {
        let now = micros(Utc::now());
        let expires = now + ttl.as_micros() as i64;
        let mut tx = self.writer().begin().await?;
        let mut held = Vec::with_capacity(names.len());
        for name in names {
            let row: Option<String> = sqlx::query_scalar(
                "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                 expires_at = excluded.expires_at \
                 WHERE leases.holder = excluded.holder OR leases.expires_at < $4 \
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

    async fn give_up_leases(&self, names: &[String], holder: &str) -> StoreResult<()> {
        let mut tx = self.writer().begin().await?;
        for name in names {
            sqlx::query("DELETE FROM leases WHERE holder = $1 AND name = $2")
                .bind(holder)
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
