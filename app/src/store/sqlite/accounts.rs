//! [`AccountStore`](crate::store::AccountStore) on SQLite: the shared implementation
//! (`common::accounts`), with user changes in a transaction that holds the write lock from its
//! start (`BEGIN IMMEDIATE`), so that the last enabled owner cannot be taken away by two changes
//! at once.

use super::SqliteStore;
use crate::store::common::accounts::account_store;
use crate::store::{StoreResult, ENABLED_OWNERS};

account_store!(SqliteStore, sqlx::Sqlite);

impl SqliteStore {
    /// A transaction that holds SQLite's write lock from its start (`BEGIN IMMEDIATE`), so no
    /// other change to users can come between its owner counts; and the owners before it.
    async fn lock_owners(&self) -> StoreResult<(sqlx::Transaction<'static, sqlx::Sqlite>, i64)> {
        let mut tx = self.writer().begin_with("BEGIN IMMEDIATE").await?;
        let owners: i64 = sqlx::query_scalar(ENABLED_OWNERS)
            .fetch_one(&mut *tx)
            .await?;
        Ok((tx, owners))
    }
}
