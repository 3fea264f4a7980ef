//! The archive: a gzip'd tar of `manifest.json` (first) and `data/<file>` for each file of
//! the snapshot. Blocking I/O; callers run it on the blocking pool.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256};

pub const MANIFEST: &str = "manifest.json";
const DATA: &str = "data";

/// SHA-256 (hex) and size of a file.
pub fn hash_file(path: &Path) -> io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((hex::encode(hasher.finalize()), bytes));
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
}

/// Writes the archive to `target` and syncs it to disk; returns its size.
pub fn write(target: &Path, manifest: &[u8], data_dir: &Path, files: &[String]) -> io::Result<u64> {
    use std::os::unix::fs::OpenOptionsExt;
    // Owner-only: the archive holds password, token and device-secret hashes.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(target)?;
    let mut tar = tar::Builder::new(GzEncoder::new(
        BufWriter::with_capacity(1 << 20, file),
        Compression::default(),
    ));
    let mut header = tar::Header::new_gnu();
    header.set_size(manifest.len() as u64);
    header.set_mode(0o600);
    header.set_mtime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    header.set_cksum();
    tar.append_data(&mut header, MANIFEST, manifest)?;
    for name in files {
        tar.append_path_with_name(data_dir.join(name), format!("{DATA}/{name}"))?;
    }
    let file = tar
        .into_inner()?
        .finish()?
        .into_inner()
        .map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(file.metadata()?.len())
}

/// The most a manifest may hold. Real ones are a few KiB (one line per table and file).
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;
/// The most an archive may unpack to, whatever its manifest declares: a guard against an
/// archive (from S3 or handed to `ddms backup restore`) that fills the disk.
pub const MAX_UNPACKED_BYTES: u64 = 256 << 30;

/// What [`unpack`] needs of the manifest: each data file's declared size.
#[derive(serde::Deserialize)]
struct Declared {
    files: Vec<DeclaredFile>,
}

#[derive(serde::Deserialize)]
struct DeclaredFile {
    path: String,
    bytes: u64,
}

/// Unpacks an archive into `into` (`manifest.json` and `data/`), refusing any entry that is
/// not a plain file at one of those places. Returns the manifest's bytes.
///
/// Bounded before anything large is written, so a decompression bomb fails fast with a clear
/// error: the manifest comes first and holds at most [`MAX_MANIFEST_BYTES`]; every data entry
/// must be listed in it, once, with exactly its declared size; and the declared sizes together
/// must stay under [`MAX_UNPACKED_BYTES`] and fit in the free space where `into` is.
pub fn unpack(archive: &Path, into: &Path) -> Result<Vec<u8>, String> {
    let file = File::open(archive).map_err(|e| format!("cannot open it: {e}"))?;
    let mut tar = tar::Archive::new(GzDecoder::new(io::BufReader::new(file)));
    std::fs::create_dir_all(into.join(DATA)).map_err(|e| e.to_string())?;
    let mut manifest: Option<(Vec<u8>, Declared)> = None;
    let mut unpacked = std::collections::HashSet::new();
    let entries = tar
        .entries()
        .map_err(|e| format!("not a tar.gz archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("unreadable archive: {e}"))?;
        let path = entry
            .path()
            .map_err(|e| format!("unreadable entry name: {e}"))?
            .to_string_lossy()
            .into_owned();
        if !entry.header().entry_type().is_file() {
            return Err(format!("unexpected entry `{path}` (not a file)"));
        }
        let size = entry.size();
        let name = match path.split_once('/') {
            None if path == MANIFEST => None,
            Some((DATA, name))
                if !name.is_empty() && !name.contains('/') && name != "." && name != ".." =>
            {
                Some(name.to_string())
            }
            _ => return Err(format!("unexpected entry `{path}`")),
        };
        let Some(name) = name else {
            if manifest.is_some() {
                return Err(format!("{MANIFEST} appears twice"));
            }
            if size > MAX_MANIFEST_BYTES {
                return Err(format!(
                    "its {MANIFEST} is {size} bytes, more than the {MAX_MANIFEST_BYTES} a manifest may hold"
                ));
            }
            let mut bytes = Vec::new();
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| format!("unreadable archive: {e}"))?;
            let declared: Declared =
                serde_json::from_slice(&bytes).map_err(|e| format!("unreadable manifest: {e}"))?;
            check_declared_total(&declared, into)?;
            std::fs::write(into.join(MANIFEST), &bytes).map_err(|e| e.to_string())?;
            manifest = Some((bytes, declared));
            continue;
        };
        let Some((_, declared)) = &manifest else {
            return Err(format!("`{path}` comes before {MANIFEST}"));
        };
        let Some(expected) = declared.files.iter().find(|f| f.path == name) else {
            return Err(format!("data/{name} is not in the manifest"));
        };
        if size != expected.bytes {
            return Err(format!(
                "data/{name} is {size} bytes in the archive; the manifest says {} bytes",
                expected.bytes
            ));
        }
        if !unpacked.insert(name.clone()) {
            return Err(format!("data/{name} appears twice"));
        }
        let target = into.join(DATA).join(&name);
        let mut out = File::create(&target).map_err(|e| e.to_string())?;
        // The tar reader stops at the entry's size, which was just bounded.
        io::copy(&mut entry, &mut out).map_err(|e| format!("unreadable archive: {e}"))?;
        out.flush().map_err(|e| e.to_string())?;
    }
    manifest
        .map(|(bytes, _)| bytes)
        .ok_or_else(|| format!("it has no {MANIFEST}"))
}

/// The declared sizes together are under [`MAX_UNPACKED_BYTES`] and fit where they go.
fn check_declared_total(declared: &Declared, into: &Path) -> Result<(), String> {
    let total = declared
        .files
        .iter()
        .try_fold(0u64, |sum, f| sum.checked_add(f.bytes))
        .unwrap_or(u64::MAX);
    if total > MAX_UNPACKED_BYTES {
        return Err(format!(
            "its manifest declares {total} bytes of data, more than the {MAX_UNPACKED_BYTES} a backup may unpack to"
        ));
    }
    if let Ok(stat) = nix::sys::statvfs::statvfs(into) {
        let free = stat.blocks_available().saturating_mul(stat.fragment_size());
        if total > free {
            return Err(format!(
                "its manifest declares {total} bytes of data, but only {free} bytes are free in {}",
                into.display()
            ));
        }
    }
    Ok(())
}

/// The unpacked data directory of [`unpack`].
pub fn data_dir(unpacked: &Path) -> std::path::PathBuf {
    unpacked.join(DATA)
}
