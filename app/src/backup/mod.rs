//! Backups: `ddms backup create|list|verify|restore`, the owner's `POST /api/system/backup`
//! and the `backup_schedule` setting.
//!
//! An archive (`ddms-backup-<UTC time>.tar.gz`) holds `manifest.json` and the files of one
//! consistent database snapshot ([`crate::store::snapshot`]); the manifest lists each file's
//! size and SHA-256 and each table's row count, which `verify` checks and `restore` checks
//! again after loading. Archives are written to a temporary name and renamed when complete,
//! kept in `backup.dir` (the newest `backup.keep`) and, with `backup.s3.bucket`, uploaded
//! (where the bucket's lifecycle rule decides how long they stay).

mod archive;
mod report;
pub mod s3;
pub mod schedule;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::settings::Settings;
use crate::store::{snapshot, Backend, NewAuditEntry, Snapshot, Store, StoreError};

pub use s3::{S3Error, S3Store};
pub use schedule::Schedule;

/// The manifest's format; a newer one is refused by older binaries.
pub const FORMAT: u32 = 1;
const NAME_PREFIX: &str = "ddms-backup-";
const NAME_SUFFIX: &str = ".tar.gz";
const NAME_TIME: &str = "%Y%m%dT%H%M%S%.3fZ";
const SCHEDULE_LEASE: &str = "backup";
/// Where `verify` unpacks an archive, in its scratch directory.
const UNPACKED: &str = "unpacked";

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
        let runs = IntCounterVec::new(
            Opts::new(
                "ddms_backup_runs_total",
                "Backups this instance ran, by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        let last_success = IntGauge::new(
            "ddms_backup_last_success_timestamp_seconds",
            "When this instance last completed a backup (Unix time; 0: not yet)",
        )
        .expect("valid metric");
        let last_bytes = IntGauge::new(
            "ddms_backup_last_size_bytes",
            "Size of the last completed backup archive",
        )
        .expect("valid metric");
        for metric in [
            Box::new(runs.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(last_success.clone()),
            Box::new(last_bytes.clone()),
        ] {
            registry.register(metric).expect("unique metric");
        }
        BackupMetrics {
            runs,
            last_success,
            last_bytes,
        }
    }
}

/// A verified archive, unpacked into a temporary directory that lives as long as this.
#[derive(Debug)]
pub struct Verified {
    pub manifest: Manifest,
    unpacked: tempfile::TempDir,
}

impl Verified {
    fn data_dir(&self) -> PathBuf {
        archive::data_dir(&self.unpacked.path().join(UNPACKED))
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
    alerts: Option<Arc<crate::alerts::Alerting>>,
    /// Runs started in the background ([`Backups::spawn`]), waited for at shutdown.
    tasks: tokio_util::task::TaskTracker,
}

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
        let mut status = self.backups.status.lock().expect("status lock");
        if status.running.as_deref() == Some(self.name.as_str()) {
            status.running = None;
        }
    }
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
        self.status.lock().expect("status lock").clone()
    }

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
                    tracing::info!(path = %path.display(), "removed an interrupted backup's leftovers")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove an interrupted backup's leftovers")
                }
            }
        }
    }

    /// Claims the run slot and names the archive; `Busy` while another backup runs.
    pub fn begin(self: &Arc<Self>, trigger: Trigger) -> Result<Run, BackupError> {
        let mut status = self.status.lock().expect("status lock");
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
                tracing::error!(backup = %run.name, trigger = ?run.trigger, error = %e, "backup failed")
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
        self.status.lock().expect("status lock").last = Some(LastRun {
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

    /// Finds the archive `which` (a path, or a name in the directory or S3), unpacks it and
    /// checks it against its manifest.
    pub async fn verify(&self, which: &str) -> Result<Verified, BackupError> {
        let scratch = tempfile::Builder::new()
            .prefix("ddms-restore-")
            .tempdir()
            .map_err(io("cannot create a temporary directory"))?;
        let archive_path = self.fetch(which, scratch.path()).await?;
        let name = archive_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| which.to_string());
        let unpacked = scratch.path().join(UNPACKED);
        let manifest = {
            let (archive_path, unpacked, name) =
                (archive_path.clone(), unpacked.clone(), name.clone());
            blocking(move || {
                let bytes = archive::unpack(&archive_path, &unpacked).map_err(damaged(&name))?;
                let manifest = parse_manifest(&name, &bytes)?;
                check_files(&manifest, &archive::data_dir(&unpacked)).map_err(damaged(&name))?;
                Ok(manifest)
            })
            .await?
        };
        let data = archive::data_dir(&unpacked);
        check_tables(&manifest, &data)
            .await
            .map_err(damaged(&name))?;
        Ok(Verified {
            manifest,
            unpacked: scratch,
        })
    }

    async fn fetch(&self, which: &str, scratch: &Path) -> Result<PathBuf, BackupError> {
        let path = Path::new(which);
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        if !is_archive_name(which) {
            return Err(BackupError::NotFound(which.into()));
        }
        let local = self.dir.join(which);
        if local.is_file() {
            return Ok(local);
        }
        if let Some(s3) = &self.s3 {
            let into = scratch.join(which);
            if s3.download(which, &into).await? {
                return Ok(into);
            }
        }
        Err(BackupError::NotFound(which.into()))
    }

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

/// The manifest of backup `name`, refused when damaged or of a newer format than this ddms reads.
pub fn parse_manifest(name: &str, bytes: &[u8]) -> Result<Manifest, BackupError> {
    let manifest: Manifest = serde_json::from_slice(bytes)
        .map_err(|e| damaged(name)(format!("unreadable manifest: {e}")))?;
    if manifest.format > FORMAT {
        return Err(BackupError::Incompatible(format!(
            "backup {name} has format {} (this ddms reads up to {FORMAT}); use a newer ddms",
            manifest.format
        )));
    }
    // The files are read (and restored) as `data/<path>`: a path that is not one plain name
    // would reach outside the unpacked archive.
    let paths = manifest.files.iter().map(|f| &f.path);
    if let Some(path) = paths
        .chain(&manifest.snapshot.files)
        .find(|path| !is_plain_file_name(path))
    {
        return Err(damaged(name)(format!(
            "the manifest lists `{path}`, which is not a plain file name"
        )));
    }
    Ok(manifest)
}

/// One path component naming a file: what `data/` of an archive may hold.
pub fn is_plain_file_name(path: &str) -> bool {
    !path.is_empty() && path != "." && path != ".." && !path.contains(['/', '\\', '\0'])
}

/// Every file the manifest lists is there with its size and SHA-256, and nothing else is.
fn check_files(manifest: &Manifest, data: &Path) -> Result<(), String> {
    let listed: Vec<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
    if let Some(missing) = manifest
        .snapshot
        .files
        .iter()
        .find(|f| !listed.contains(&f.as_str()))
    {
        return Err(format!("the manifest lists no checksum for {missing}"));
    }
    for entry in std::fs::read_dir(data)
        .map_err(|e| e.to_string())?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !listed.contains(&name.as_str()) {
            return Err(format!("data/{name} is not in the manifest"));
        }
    }
    for file in &manifest.files {
        let (sha256, bytes) = archive::hash_file(&data.join(&file.path))
            .map_err(|e| format!("data/{} is missing or unreadable: {e}", file.path))?;
        if bytes != file.bytes || sha256 != file.sha256 {
            return Err(format!(
                "data/{} does not match its checksum ({bytes} bytes, sha256 {sha256}; the manifest says {} bytes, sha256 {})",
                file.path, file.bytes, file.sha256
            ));
        }
    }
    Ok(())
}

/// The snapshot's own structure agrees with the manifest's table counts.
async fn check_tables(manifest: &Manifest, data: &Path) -> Result<(), String> {
    match manifest.snapshot.backend() {
        Some(Backend::Sqlite) => {
            let file = data.join(snapshot::SQLITE_FILE);
            snapshot::sqlite_check(&file)
                .await
                .map_err(|e| e.to_string())?;
            let found = snapshot::sqlite_describe(&file)
                .await
                .map_err(|e| e.to_string())?;
            for table in &manifest.snapshot.tables {
                let rows = found
                    .tables
                    .iter()
                    .find(|t| t.name == table.name)
                    .map_or(0, |t| t.rows);
                if rows != table.rows {
                    return Err(format!(
                        "table `{}` has {rows} rows; the manifest says {}",
                        table.name, table.rows
                    ));
                }
            }
            Ok(())
        }
        Some(Backend::Postgres) => {
            for table in &manifest.snapshot.tables {
                let rows = snapshot::postgres_count_rows(data, &table.name)
                    .await
                    .map_err(|e| e.to_string())?;
                if rows != table.rows {
                    return Err(format!(
                        "table `{}` has {rows} rows; the manifest says {}",
                        table.name, table.rows
                    ));
                }
            }
            Ok(())
        }
        None => Err(format!(
            "unknown database kind `{}`",
            manifest.snapshot.backend
        )),
    }
}

/// The `backup_schedule` runner, until `cancel`. With several instances on one database only
/// the holder of the `backup` lease takes a due backup; the lease is kept after the run (it
/// expires on its own), so an instance whose clock lags a little takes no second one.
pub async fn run_schedule(
    backups: Arc<Backups>,
    settings: Settings,
    holder: String,
    cancel: CancellationToken,
) {
    const LEASE_TTL: Duration = Duration::from_secs(30 * 60);
    let mut changes = settings.subscribe();
    loop {
        let text = settings.current().backup_schedule;
        let schedule = text.parse::<Schedule>().unwrap_or_else(|_| {
            tracing::warn!(backup_schedule = %text, "unreadable backup schedule; no scheduled backups");
            Schedule::Off
        });
        let wait = schedule
            .next_after(Utc::now())
            .map(|due| (due - Utc::now()).to_std().unwrap_or_default());
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
            () = async {
                match wait {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        let names = [SCHEDULE_LEASE.to_string()];
        match backups
            .store
            .acquire_leases(&names, &holder, LEASE_TTL)
            .await
        {
            Ok(held) if held.is_empty() => continue,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the backup lease; skipping this scheduled backup");
                continue;
            }
        }
        let run = match backups.begin(Trigger::Schedule) {
            Ok(run) => run,
            Err(e) => {
                tracing::warn!(error = %e, "scheduled backup skipped");
                continue;
            }
        };
        let name = run.name().to_string();
        let store = backups.store.clone();
        let schedule = schedule.to_string();
        backups.spawn(run, move |result| async move {
            let detail = match &result {
                Ok(info) => serde_json::json!({
                    "trigger": "schedule", "schedule": schedule, "bytes": info.bytes, "ok": true,
                }),
                Err(e) => serde_json::json!({
                    "trigger": "schedule", "schedule": schedule, "ok": false, "error": e.to_string(),
                }),
            };
            let entry = NewAuditEntry {
                actor: "schedule".into(),
                action: "backup.create".into(),
                target: Some(format!("backup:{name}")),
                detail,
                remote_addr: None,
            };
            if let Err(e) = store.append_audit(&entry).await {
                tracing::warn!(error = %e, "cannot audit the scheduled backup");
            }
        });
    }
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
