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

/// Unpacks an archive into `into` (`manifest.json` and `data/`), refusing any entry that is
/// not a plain file at one of those places. Returns the manifest's bytes.
pub fn unpack(archive: &Path, into: &Path) -> Result<Vec<u8>, String> {
    let file = File::open(archive).map_err(|e| format!("cannot open it: {e}"))?;
    let mut tar = tar::Archive::new(GzDecoder::new(io::BufReader::new(file)));
    std::fs::create_dir_all(into.join(DATA)).map_err(|e| e.to_string())?;
    let mut manifest = None;
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
        let target = match path.split_once('/') {
            None if path == MANIFEST => into.join(MANIFEST),
            Some((DATA, name))
                if !name.is_empty() && !name.contains('/') && name != "." && name != ".." =>
            {
                into.join(DATA).join(name)
            }
            _ => return Err(format!("unexpected entry `{path}`")),
        };
        let mut out = File::create(&target).map_err(|e| e.to_string())?;
        io::copy(&mut entry, &mut out).map_err(|e| format!("unreadable archive: {e}"))?;
        out.flush().map_err(|e| e.to_string())?;
        if path == MANIFEST {
            manifest = Some(std::fs::read(&target).map_err(|e| e.to_string())?);
        }
    }
    manifest.ok_or_else(|| format!("it has no {MANIFEST}"))
}

/// The unpacked data directory of [`unpack`].
pub fn data_dir(unpacked: &Path) -> std::path::PathBuf {
    unpacked.join(DATA)
}
