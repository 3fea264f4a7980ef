//! Restoring an archive into the configured database: verified first, refused for another
//! backend or a newer ddms's migrations, loaded all or nothing by `Store::import_snapshot`.

use super::{BackupError, Backups, Manifest};
use crate::store::StoreError;

impl Backups {
    /// Verifies the archive, migrates the database and loads the snapshot into it, all or
    /// nothing. The database must be empty unless `replace`. Stop the service first: a
    /// running one would keep writing (and, on SQLite, hold the database).
    pub async fn restore(&self, which: &str, replace: bool) -> Result<Manifest, BackupError> {
        let verified = self.verify(which).await?;
        let manifest = &verified.manifest;
        let backend = self.store.backend();
        if manifest.snapshot.backend() != Some(backend) {
            return Err(BackupError::Incompatible(format!(
                "backup {} is of a {} database; this one is {}",
                manifest.name,
                manifest.snapshot.backend,
                backend.name()
            )));
        }
        let status = self.store.migrate().await.map_err(BackupError::Store)?;
        // Once migrated, every migration this binary knows is applied: any other is newer.
        if let Some(newer) = manifest
            .snapshot
            .migrations
            .iter()
            .find(|v| !status.applied.contains(v) || status.unknown.contains(v))
        {
            return Err(BackupError::Incompatible(format!(
                "backup {} was made by a newer ddms (migration {newer}); restore it with ddms {} or later",
                manifest.name, manifest.ddms_version
            )));
        }
        self.store
            .import_snapshot(&verified.data_dir(), &manifest.snapshot, replace)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(message) => BackupError::NotEmpty(message),
                StoreError::Corrupt(reason) => BackupError::Damaged {
                    name: manifest.name.clone(),
                    reason,
                },
                other => BackupError::Store(other),
            })?;
        Ok(verified.manifest)
    }
}
