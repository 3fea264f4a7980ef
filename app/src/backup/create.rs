//! Writing a backup: claiming the one run at a time ([`Run`]), exporting the snapshot into a
//! staging directory, hashing its files, writing the archive under a temporary name and
//! renaming it, the upload to S3, keeping the newest `backup.keep`, and the outcome's status,
//! metrics, log and report. Also the clean-up of what an interrupted run left behind.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{
    archive, archive_name, blocking, created_at_of, io, local_archives, ArchivedFile, BackupError,
    BackupInfo, Backups, LastRun, Location, Manifest, Trigger, FORMAT,
};
use crate::locks::MutexExt;

/// The claim on the one backup that may run at a time; given back when dropped.
pub struct Run {
    backups: Arc<Backups>,
    name: String,
    created_at: DateTime<Utc>,
    trigger: Trigger,
}

impl Run {
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let mut status = self.backups.status.lock_unpoisoned();
        if status.running.as_deref() == Some(self.name.as_str()) {
            status.running = None;
        }
    }
}

impl Backups {
    /// Removes what an interrupted run left in the backup directory.
    pub fn clean_leftovers(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let removed = if name.starts_with(".staging-") {
                std::fs::remove_dir_all(&path)
            } else if name.starts_with('.') && name.ends_with(".partial") {
                std::fs::remove_file(&path)
            } else {
                continue;
            };
            match removed {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "removed an interrupted backup's leftovers");
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove an interrupted backup's leftovers");
                }
            }
        }
    }

    /// Claims the run slot and names the archive; `Busy` while another backup runs.
    pub fn begin(self: &Arc<Self>, trigger: Trigger) -> Result<Run, BackupError> {
        let mut status = self.status.lock_unpoisoned();
        if let Some(running) = &status.running {
            return Err(BackupError::Busy(running.clone()));
        }
        let mut created_at = Utc::now();
        // Names are unique: never the same millisecond as the last one.
        if let Some(last) = status.last.as_ref().and_then(|l| created_at_of(&l.name)) {
            if created_at <= last {
                created_at = last + chrono::Duration::milliseconds(1);
            }
        }
        let name = archive_name(created_at);
        status.running = Some(name.clone());
        Ok(Run {
            backups: self.clone(),
            name,
            created_at,
            trigger,
        })
    }

    /// Takes a backup now (see [`Backups::begin`] and [`Backups::run`]).
    pub async fn create(self: &Arc<Self>, trigger: Trigger) -> Result<BackupInfo, BackupError> {
        let run = self.begin(trigger)?;
        self.run(run).await
    }

    /// Writes the claimed archive, uploads it, prunes old ones; records the outcome.
    pub async fn run(&self, run: Run) -> Result<BackupInfo, BackupError> {
        let started = std::time::Instant::now();
        let result = self.write(&run).await;
        let (ok, bytes, error) = match &result {
            Ok(info) => (true, Some(info.bytes), None),
            Err(e) => (false, None, Some(e.to_string())),
        };
        match &result {
            Ok(info) => tracing::info!(
                backup = %info.name,
                bytes = info.bytes,
                trigger = ?run.trigger,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "backup written"
            ),
            Err(e) => {
                tracing::error!(backup = %run.name, trigger = ?run.trigger, error = %e, "backup failed");
            }
        }
        if let Some(metrics) = &self.metrics {
            metrics
                .runs
                .with_label_values(&[if ok { "ok" } else { "error" }])
                .inc();
            if let Some(bytes) = bytes {
                metrics.last_success.set(Utc::now().timestamp());
                metrics.last_bytes.set(bytes as i64);
            }
        }
        self.status.lock_unpoisoned().last = Some(LastRun {
            name: run.name.clone(),
            trigger: run.trigger,
            finished_at: Utc::now(),
            ok,
            bytes,
            error,
        });
        let trigger = run.trigger;
        drop(run);
        self.report(trigger, &result).await;
        result
    }

    async fn write(&self, run: &Run) -> Result<BackupInfo, BackupError> {
        let dir = self.dir.clone();
        {
            use std::os::unix::fs::DirBuilderExt;
            // Owner-only, like the archives in it.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(io(format!("cannot create {}", dir.display())))?;
        }
        let staging = tempfile::Builder::new()
            .prefix(".staging-")
            .tempdir_in(&dir)
            .map_err(io(format!("cannot write in {}", dir.display())))?;
        let data = staging.path().join("data");
        tokio::fs::create_dir(&data)
            .await
            .map_err(io("cannot create the staging directory"))?;
        let snapshot = self
            .store
            .export_snapshot(&data)
            .await
            .map_err(BackupError::Store)?;
        let name = run.name.clone();
        let created_at = run.created_at;
        let target = dir.join(&name);
        let bytes = blocking(move || {
            let mut files = Vec::new();
            for path in &snapshot.files {
                let (sha256, bytes) = archive::hash_file(&data.join(path))
                    .map_err(io(format!("cannot read {path}")))?;
                files.push(ArchivedFile {
                    path: path.clone(),
                    bytes,
                    sha256,
                });
            }
            let paths: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
            let manifest = Manifest {
                format: FORMAT,
                name: name.clone(),
                created_at,
                ddms_version: env!("CARGO_PKG_VERSION").into(),
                git_sha: env!("BUILD_GIT_SHA").into(),
                files,
                snapshot,
            };
            let manifest = serde_json::to_vec_pretty(&manifest).expect("serializes");
            let partial = dir.join(format!(".{name}.partial"));
            let bytes = archive::write(&partial, &manifest, &data, &paths)
                .map_err(io(format!("cannot write {}", partial.display())))?;
            std::fs::rename(&partial, &target)
                .map_err(io(format!("cannot rename to {}", target.display())))?;
            // The rename itself survives a crash only once the directory is synced.
            if let Ok(dir) = std::fs::File::open(&dir) {
                let _ = dir.sync_all();
            }
            drop(staging);
            Ok(bytes)
        })
        .await?;
        let mut locations = vec![Location::Local];
        if let Some(s3) = &self.s3 {
            s3.upload(&run.name, &self.dir.join(&run.name)).await?;
            locations.push(Location::S3);
        }
        self.prune().await;
        Ok(BackupInfo {
            name: run.name.clone(),
            created_at: run.created_at,
            bytes,
            locations,
        })
    }

    /// Keeps the newest `keep` archives in the directory (S3 keeps copies by its lifecycle).
    async fn prune(&self) {
        let local = local_archives(&self.dir).unwrap_or_default();
        for (name, _) in local.iter().skip(self.keep) {
            match tokio::fs::remove_file(self.dir.join(name)).await {
                Ok(()) => tracing::info!(backup = %name, "old backup deleted"),
                Err(e) => tracing::warn!(backup = %name, error = %e, "cannot delete an old backup"),
            }
        }
    }
}
