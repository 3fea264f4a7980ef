//! [`SnapshotStore`](crate::store::SnapshotStore) on SQLite: the shared implementation
//! (`common::snapshots`) with SQLite's snapshot format.

use super::SqliteStore;
use crate::store::common::snapshots::snapshot_store;
use crate::store::{snapshot, Snapshot, StoreResult};

snapshot_store!(
    SqliteStore,
    export: snapshot::sqlite_export,
    import: snapshot::sqlite_import,
    unlisted: snapshot::sqlite_unlisted_tables
);

impl SqliteStore {
    /// Nothing to prepare: SQLite has no partitions.
    async fn prepare_import(&self, _snapshot: &Snapshot) -> StoreResult<()> {
        Ok(())
    }
}
