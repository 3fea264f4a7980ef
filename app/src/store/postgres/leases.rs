//! [`LeaseStore`] on PostgreSQL: leases among the instances sharing the database, all taken
//! in one statement and expiring by the database's clock.

use std::time::Duration;

use async_trait::async_trait;

use super::PostgresStore;
use crate::store::{LeaseStore, StoreResult};

#[async_trait]
impl LeaseStore for PostgresStore {
    async fn acquire_leases(
        &self,
        names: &[String],
        holder: &str,
        ttl: Duration,
    ) -> StoreResult<Vec<String>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        // The database clock decides expiry, so instances with skewed clocks still agree.
        let held = sqlx::query_scalar(
            "INSERT INTO leases (name, holder, expires_at) \
             SELECT n, $2, now() + make_interval(secs => $3) FROM unnest($1::text[]) AS n \
             ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at \
             WHERE leases.holder = EXCLUDED.holder OR leases.expires_at < now() \
             RETURNING name",
        )
        .bind(names)
        .bind(holder)
        .bind(ttl.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        Ok(held)
    }

    async fn release_leases(&self, names: &[String], holder: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM leases WHERE holder = $2 AND name = ANY($1)")
            .bind(names)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
