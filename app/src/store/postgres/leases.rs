//! [`LeaseStore`](crate::store::LeaseStore) on PostgreSQL: leases among the instances sharing
//! the database, all taken in one statement of arrays and expiring by the database's clock.

use std::time::Duration;

use super::PostgresStore;
use crate::store::common::leases::lease_store;
use crate::store::StoreResult;

lease_store!(PostgresStore);

impl PostgresStore {
    async fn take_leases(
        &self,
        names: &[String],
        holder: &str,
        ttl: Duration,
    ) -> StoreResult<Vec<String>> {
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

    async fn give_up_leases(&self, names: &[String], holder: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM leases WHERE holder = $2 AND name = ANY($1)")
            .bind(names)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
