//! [`AccountStore`](crate::store::AccountStore) on PostgreSQL: the shared implementation
//! (`common::accounts`), with user changes that lock every enabled owner's row first, so that
//! two changes cannot both take away the last enabled owner.

use super::PostgresStore;
use crate::store::common::accounts::account_store;
use crate::store::StoreResult;

account_store!(PostgresStore, sqlx::Postgres);

impl PostgresStore {
    /// A transaction holding row locks on every enabled owner, and how many there are: two
    /// changes to owners run one after the other, and the second sees the first's outcome (READ
    /// COMMITTED re-reads the rows a lock waited for), so both cannot take away "the other" last
    /// owner. (SQLite has no row locks: it takes the database's write lock instead.)
    async fn lock_owners(&self) -> StoreResult<(sqlx::Transaction<'static, sqlx::Postgres>, i64)> {
        let mut tx = self.pool.begin().await?;
        let owners = sqlx::query(
            "SELECT id FROM users WHERE role = 'owner' AND disabled_at IS NULL FOR UPDATE",
        )
        .fetch_all(&mut *tx)
        .await?
        .len() as i64;
        Ok((tx, owners))
    }
}
