//! [`SnapshotStore`](crate::store::SnapshotStore) on PostgreSQL: the shared implementation
//! (`common::snapshots`) with PostgreSQL's snapshot format. A load first creates the daily
//! partitions its readings need, as ingest would have.

use super::PostgresStore;
use crate::store::common::snapshots::snapshot_store;
use crate::store::{snapshot, ReadingStore, Snapshot, StoreResult};

snapshot_store!(
    PostgresStore,
    export: snapshot::postgres_export,
    import: snapshot::postgres_import,
    unlisted: snapshot::postgres_unlisted_tables
);

impl PostgresStore {
    async fn prepare_import(&self, snapshot: &Snapshot) -> StoreResult<()> {
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
        Ok(())
    }
}
