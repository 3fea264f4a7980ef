//! [`SnapshotStore`](crate::store::SnapshotStore) for both backends: backups in each backend's
//! own format, written and loaded by `store::snapshot`, which holds both formats and the one
//! list of tables.

/// Implements `SnapshotStore` for `$store` with the given functions of `store::snapshot`. The
/// backend provides `async fn prepare_import(&self, snapshot: &Snapshot) -> StoreResult<()>`,
/// run before a load (PostgreSQL creates the daily partitions the readings need).
macro_rules! snapshot_store {
    ($store:ty, export: $export:path, import: $import:path, unlisted: $unlisted:path) => {
        const _: () = {
            use std::path::Path;

            use async_trait::async_trait;

            use $crate::store::{Snapshot, SnapshotStore, StoreResult};

            #[async_trait]
            impl SnapshotStore for $store {
                async fn export_snapshot(&self, dir: &Path) -> StoreResult<Snapshot> {
                    $export(&self.pool, dir).await
                }

                async fn import_snapshot(
                    &self,
                    dir: &Path,
                    snapshot: &Snapshot,
                    replace: bool,
                ) -> StoreResult<()> {
                    self.prepare_import(snapshot).await?;
                    $import(self.writer(), dir, snapshot, replace).await
                }

                async fn tables_outside_snapshots(&self) -> StoreResult<Vec<String>> {
                    $unlisted(&self.pool).await
                }
            }
        };
    };
}
pub(in crate::store) use snapshot_store;
