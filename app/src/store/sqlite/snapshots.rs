//! [`SnapshotStore`] on SQLite: backups in this backend's format, written and loaded by
//! `store::snapshot`, which holds both backends' formats and the one list of tables.

use async_trait::async_trait;

use super::SqliteStore;
use crate::store::{snapshot, Snapshot, SnapshotStore, StoreResult};

#[async_trait]
impl SnapshotStore for SqliteStore {
    async fn export_snapshot(&self, dir: &std::path::Path) -> StoreResult<Snapshot> {
        snapshot::sqlite_export(&self.pool, dir).await
    }

    async fn import_snapshot(
        &self,
        dir: &std::path::Path,
        snapshot: &Snapshot,
        replace: bool,
    ) -> StoreResult<()> {
        snapshot::sqlite_import(&self.pool, dir, snapshot, replace).await
    }

    async fn tables_outside_snapshots(&self) -> StoreResult<Vec<String>> {
        snapshot::sqlite_unlisted_tables(&self.pool).await
    }
}
