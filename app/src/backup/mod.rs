//! Backups: `ddms backup create|list|verify|restore`, the owner's `POST /api/system/backup`
//! and the `backup_schedule` setting.
//!
//! An archive (`ddms-backup-<UTC time>.tar.gz`) holds `manifest.json` and the files of one
//! consistent database snapshot ([`crate::store::snapshot`]); the manifest lists each file's
//! size and SHA-256 and each table's row count, which `verify` checks and `restore` checks
//! again after loading. Archives are written to a temporary name and renamed when complete,
//! kept in `backup.dir` (the newest `backup.keep`) and, with `backup.s3.bucket`, uploaded
//! (where the bucket's lifecycle rule decides how long they stay).
//!
//! This file holds what the operations share: the types, archive names, errors, metrics,
//! [`Backups`] itself and `list`. Writing is `create.rs`, checking `verify.rs`, loading
//! `restore.rs`, the schedule `schedule.rs`, alerting `report.rs`, the tar.gz `archive.rs`
//! and S3 `s3.rs`.

mod archive;
mod create;
mod report;
mod restore;
pub mod s3;
pub mod schedule;
mod verify;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::locks::MutexExt;
use crate::metrics::registered;
use crate::store::{Snapshot, Store, StoreError};

pub use create::Run;
pub use s3::{S3Error, S3Store};
pub use schedule::{run_schedule, Schedule};
pub use verify::{is_plain_file_name, parse_manifest, Verified};

/// The manifest's format; a newer one is refused by older binaries.
pub const FORMAT: u32 = 1;
const NAME_PREFIX: &str = "ddms-backup-";
const NAME_SUFFIX: &str = ".tar.gz";
const NAME_TIME: &str = "%Y%m%dT%H%M%S%.3fZ";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("a backup is already running ({0})")]
    Busy(String),
    #[error("no backup `{0}` (neither a file nor an archive in the backup directory or S3; see `ddms backup list`)")]
    NotFound(String),
    /// The archive is damaged or was changed after it was written.
    #[error("backup {name} is damaged: {reason}")]
    Damaged { name: String, reason: String },
    #[error("{0}")]
    Incompatible(String),
    #[error("{0}")]
    NotEmpty(String),
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(StoreError),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
    let context = context.into();
    move |source| BackupError::Io { context, source }
}

fn damaged(name: &str) -> impl Fn(String) -> BackupError + '_ {
    move |reason| BackupError::Damaged {
        name: name.to_string(),
        reason,
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BackupError> + Send + 'static,
) -> Result<T, BackupError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| BackupError::Io {
            context: "backup worker".into(),
            source: std::io::Error::other(e),
        })?
}

/// `ddms-backup-<UTC time>.tar.gz`: names sort by time.
pub fn is_archive_name(name: &str) -> bool {
    created_at_of(name).is_some()
}

fn created_at_of(name: &str) -> Option<DateTime<Utc>> {
    let time = name.strip_prefix(NAME_PREFIX)?.strip_suffix(NAME_SUFFIX)?;
    let at = NaiveDateTime::parse_from_str(time, NAME_TIME)
        .ok()?
        .and_utc();
    // Exactly our format (the parser would also take other precisions), so names sort by time.
    (archive_name(at) == name).then_some(at)
}

fn archive_name(at: DateTime<Utc>) -> String {
    format!("{NAME_PREFIX}{}{NAME_SUFFIX}", at.format(NAME_TIME))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArchivedFile {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub ddms_version: String,
    pub git_sha: String,
    pub snapshot: Snapshot,
    pub files: Vec<ArchivedFile>,
}

impl Manifest {
    /// Rows in all tables. Saturating: the counts come from an archive, which may lie.
    pub fn rows(&self) -> u64 {
        self.snapshot
            .tables
            .iter()
            .fold(0u64, |sum, t| sum.saturating_add(t.rows))
    }

    /// "sqlite database of <time>, 15 tables, 1234 rows".
    pub fn summary(&self) -> String {
        format!(
            "{} database of {}, {} tables, {} rows",
            self.snapshot.backend,
            self.created_at.to_rfc3339(),
            self.snapshot.tables.len(),
            self.rows()
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Location {
    Local,
    S3,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupInfo {
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub bytes: u64,
    pub locations: Vec<Location>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub backups: Vec<BackupInfo>,
    /// Why the S3 copies could not be listed (the local ones still are).
    pub s3_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Api,
    Schedule,
    Cli,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastRun {
    pub name: String,
    pub trigger: Trigger,
    pub finished_at: DateTime<Utc>,
    pub ok: bool,
    pub bytes: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct BackupStatus {
    /// The archive being written now, if any.
    pub running: Option<String>,
    /// The last run of this process.
    pub last: Option<LastRun>,
}

#[derive(Clone)]
struct BackupMetrics {
    runs: IntCounterVec,
    last_success: IntGauge,
    last_bytes: IntGauge,
}

impl BackupMetrics {
    fn register(registry: &Registry) -> BackupMetrics {
        let runs = registered(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "ddms_backup_runs_total",
                    "Backups this instance ran, by result",
                ),
                &["result"],
            ),
        );
        let last_success = registered(
            registry,
            IntGauge::new(
                "ddms_backup_last_success_timestamp_seconds",
                "When this instance last completed a backup (Unix time; 0: not yet)",
            ),
        );
        let last_bytes = registered(
            registry,
            IntGauge::new(
                "ddms_backup_last_size_bytes",
                "Size of the last completed backup archive",
            ),
        );
        BackupMetrics {
            runs,
            last_success,
            last_bytes,
        }
    }
}

pub struct Backups {
    store: Arc<dyn Store>,
    dir: PathBuf,
    keep: usize,
    s3: Option<S3Store>,
    status: Mutex<BackupStatus>,
    metrics: Option<BackupMetrics>,
    /// Where the serving process reports failed and successful runs (see `report`).
    alerts: Option<Arc<dyn crate::signals::SignalSink>>,
    /// Runs started in the background ([`Backups::spawn`]), waited for at shutdown.
    tasks: tokio_util::task::TaskTracker,
}

impl Backups {
    pub async fn new(store: Arc<dyn Store>, config: &Config) -> Backups {
        Backups {
            store,
            dir: config.backup_dir(),
            keep: config.backup.keep,
            s3: S3Store::from_config(&config.backup.s3).await,
            status: Mutex::new(BackupStatus::default()),
            metrics: None,
            alerts: None,
            tasks: tokio_util::task::TaskTracker::new(),
        }
    }

    /// Runs the claimed backup in a task of its own (a big database takes longer than a
    /// request may); `then` gets the outcome. [`Backups::finish`] waits for it.
    pub fn spawn<F>(
        self: &Arc<Self>,
        run: Run,
        then: impl FnOnce(Result<BackupInfo, BackupError>) -> F + Send + 'static,
    ) where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let backups = self.clone();
        self.tasks.spawn(async move {
            let result = backups.run(run).await;
            then(result).await;
        });
    }

    /// At shutdown: lets a backup in progress complete, for at most `timeout` (a stopped
    /// one leaves only leftovers that the next start removes).
    pub async fn finish(&self, timeout: Duration) {
        self.tasks.close();
        if self.tasks.is_empty() {
            return;
        }
        tracing::info!("shutting down: waiting for the backup in progress");
        if tokio::time::timeout(timeout, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                timeout_s = timeout.as_secs(),
                "the backup in progress did not finish in time; it is abandoned"
            );
        }
    }

    /// Exports `ddms_backup_*` metrics to `registry` (the serving process).
    pub fn with_metrics(mut self, registry: &Registry) -> Backups {
        self.metrics = Some(BackupMetrics::register(registry));
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn s3_bucket(&self) -> Option<&str> {
        self.s3.as_ref().map(S3Store::bucket)
    }

    pub fn status(&self) -> BackupStatus {
        self.status.lock_unpoisoned().clone()
    }

    /// Archives in the directory and in S3, newest first.
    pub async fn list(&self) -> Result<Listing, BackupError> {
        let mut backups: Vec<BackupInfo> = local_archives(&self.dir)?
            .into_iter()
            .filter_map(|(name, bytes)| {
                Some(BackupInfo {
                    created_at: created_at_of(&name)?,
                    name,
                    bytes,
                    locations: vec![Location::Local],
                })
            })
            .collect();
        let mut s3_error = None;
        if let Some(s3) = &self.s3 {
            match s3.list().await {
                Ok(remote) => {
                    for archive in remote {
                        match backups.iter_mut().find(|b| b.name == archive.name) {
                            Some(known) => known.locations.push(Location::S3),
                            None => {
                                if let Some(created_at) = created_at_of(&archive.name) {
                                    backups.push(BackupInfo {
                                        name: archive.name,
                                        created_at,
                                        bytes: archive.bytes,
                                        locations: vec![Location::S3],
                                    });
                                }
                            }
                        }
                    }
                }
                Err(e) => s3_error = Some(e.to_string()),
            }
        }
        backups.sort_by(|a, b| b.name.cmp(&a.name));
        Ok(Listing { backups, s3_error })
    }
}

/// Archives in `dir`, newest first, with their sizes.
fn local_archives(dir: &Path) -> Result<Vec<(String, u64)>, BackupError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(format!("cannot read {}", dir.display()))(e)),
    };
    let mut archives: Vec<(String, u64)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let bytes = entry.metadata().ok().filter(|m| m.is_file())?.len();
            is_archive_name(&name).then_some((name, bytes))
        })
        .collect();
    archives.sort_by(|a, b| b.0.cmp(&a.0));
    Ok(archives)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_names_carry_their_time_and_sort_by_it() {
        let at = DateTime::parse_from_rfc3339("2026-12-03T14:05:09.042Z")
            .unwrap()
            .to_utc();
        let name = archive_name(at);
        assert_eq!(name, "ddms-backup-20261203T140509.042Z.tar.gz");
        assert_eq!(created_at_of(&name), Some(at));
        let later = archive_name(at + chrono::Duration::milliseconds(1));
        assert!(later > name);
        for other in [
            "ddms-backup-20261203T140509Z.tar.gz",
            "ddms-backup-latest.tar.gz",
            "notes.txt",
            ".ddms-backup-20261203T140509.042Z.tar.gz.partial",
        ] {
            assert!(!is_archive_name(other), "{other}");
        }
    }
}
