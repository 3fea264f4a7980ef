//! Checking an archive: finding it (a path, or a name in `backup.dir` or S3), unpacking it,
//! reading its manifest (refused when of a newer format or naming anything but plain files)
//! and comparing every file's size and SHA-256 and every table's row count with it.

use std::path::{Path, PathBuf};

use super::{
    archive, blocking, damaged, io, is_archive_name, BackupError, Backups, Manifest, FORMAT,
};
use crate::store::{snapshot, Backend};

/// Where `verify` unpacks an archive, in its scratch directory.
const UNPACKED: &str = "unpacked";

/// A verified archive, unpacked into a temporary directory that lives as long as this.
#[derive(Debug)]
pub struct Verified {
    pub manifest: Manifest,
    unpacked: tempfile::TempDir,
}

impl Verified {
    pub(super) fn data_dir(&self) -> PathBuf {
        archive::data_dir(&self.unpacked.path().join(UNPACKED))
    }
}

impl Backups {
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
