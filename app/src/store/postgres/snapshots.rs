//! [`SnapshotStore`] on PostgreSQL: backups in this backend's format, written and loaded by
//! `store::snapshot`, which holds both backends' formats and the one list of tables. A load
//! first creates the daily partitions its readings need, as ingest would have.

use async_trait::async_trait;

use super::PostgresStore;
use crate::store::{snapshot, ReadingStore, Snapshot, SnapshotStore, StoreResult};

#[async_trait]
impl SnapshotStore for PostgresStore {
    async fn export_snapshot(&self, dir: &std::path::Path) -> StoreResult<Snapshot> {
        snapshot::postgres_export(&self.pool, dir).await
    }

    async fn import_snapshot(
        &self,
        dir: &std::path::Path,
        snapshot: &Snapshot,
        replace: bool,
    ) -> StoreResult<()> {
        if let Some((oldest, newest)) = snapshot.readings_span {
            // Daily partitions for the loaded readings (at most the newest year's; older
            // ones land in the default partition), as ingest would have created them.
            let year_before = newest.checked_sub_signed(chrono::Duration::days(366));
            let start = year_before.map_or(oldest, |year_before| oldest.max(year_before));
            let days = (newest - start).num_days().max(0) as u32;
            // `ensure_partitions` starts the day before the one it is given.
            self.ensure_partitions(start + chrono::Duration::days(1), days)
                .await?;
        }
        snapshot::postgres_import(&self.pool, dir, snapshot, replace).await
    }

    async fn tables_outside_snapshots(&self) -> StoreResult<Vec<String>> {
        snapshot::postgres_unlisted_tables(&self.pool).await
    }
}
