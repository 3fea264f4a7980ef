//! `ddms release install ARTIFACT`: copy the tarball into a private temp directory inside
//! `releases/` while hashing it (and, when the host pins a release key, verifying its
//! signature over the same bytes), verify the copy against the published SHA-256, unpack the
//! copy, check it (only now is anything from it run), and rename it into place atomically.
//! Any failure removes the temp directory: a refused artifact leaves nothing behind.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::signature::{self, SignatureCheck};
use super::state::{valid_release_name, ReleaseMeta, META_FILE};
use super::{Layout, ReleaseError};

const VERSION_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Installed {
    pub release: String,
    pub path: PathBuf,
    /// False when the same artifact was installed before (nothing changed).
    pub installed: bool,
    /// What this run established about the artifact's signature.
    pub signature: SignatureCheck,
    #[serde(flatten)]
    pub meta: ReleaseMeta,
}

/// Installs `artifact`, checked against `checksum` (default: `<artifact>.sha256`) and, when
/// the host pins a release key, against `signature_file` (default: `<artifact>.minisig`).
pub async fn install(
    layout: &Layout,
    artifact: &Path,
    checksum: Option<&Path>,
    signature_file: Option<&Path>,
) -> Result<Installed, ReleaseError> {
    let checksum = checksum
        .map(Path::to_path_buf)
        .unwrap_or_else(|| sibling_with_suffix(artifact, ".sha256"));
    let expected = published_digest(artifact, &checksum)?;
    // Whatever about the signature can be refused without reading the artifact is refused
    // here, before the copy: an unusable key file, a missing or malformed signature, one made
    // with another key.
    let key_path = layout.release_public_key();
    let signed = match signature::pinned_key(&key_path)? {
        Some(pinned) => {
            let path = signature_file
                .map(Path::to_path_buf)
                .unwrap_or_else(|| sibling_with_suffix(artifact, ".minisig"));
            let found = signature::read_signature(artifact, &path, &pinned)?;
            Some(signature::Expected::new(pinned, found, artifact)?)
        }
        None if signature_file.is_some() => {
            return Err(ReleaseError::NoPinnedKey { key: key_path })
        }
        None => None,
    };

    let releases = layout.releases_dir();
    std::fs::create_dir_all(&releases).map_err(ReleaseError::io(&releases))?;
    let temp = TempDir(releases.join(format!(".install-{}", uuid::Uuid::new_v4().simple())));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&temp.0)
        .map_err(ReleaseError::io(&temp.0))?;

    // The artifact is read exactly once, into a private copy; the checksum is taken of the
    // copy and everything after (unpacking, `ddms --version`) reads only the copy. Reading the
    // path twice would let whoever can change it between the reads (its owner, a FIFO, a
    // swap in a shared upload directory) get unchecked bytes unpacked and run as root. The
    // signature is verified over those same bytes, in the same pass, for the same reason.
    let copy = temp.0.join(PRIVATE_COPY);
    let (actual, verified) = {
        let (artifact, copy) = (artifact.to_path_buf(), copy.clone());
        tokio::task::spawn_blocking(move || {
            let mut verifier = signed.as_ref().map(|s| s.verifier()).transpose()?;
            let digest = copy_and_hash(&artifact, &copy, |bytes| {
                if let Some(verifier) = verifier.as_mut() {
                    verifier.update(bytes);
                }
            })?;
            Ok::<_, ReleaseError>((digest, verifier.map(signature::Verifier::finish)))
        })
        .await
        .expect("hashing does not panic")?
    };
    if actual != expected {
        return Err(ReleaseError::ChecksumMismatch {
            artifact: artifact.to_path_buf(),
            expected,
            actual,
        });
    }
    let signature = match verified {
        Some(result) => result?,
        None => {
            let reason = format!(
                "no release public key is pinned at {}: the artifact was checked against its \
                 checksum only, not its signature",
                key_path.display()
            );
            tracing::warn!(artifact = %artifact.display(), "not signature-checked: {reason}");
            SignatureCheck::Unchecked { reason }
        }
    };

    let top = {
        let (copy, dest, shown) = (copy.clone(), temp.0.clone(), artifact.to_path_buf());
        tokio::task::spawn_blocking(move || unpack(&copy, &dest, &shown))
            .await
            .expect("unpacking does not panic")?
    };
    let unpacked = temp.0.join(&top);
    let invalid = |reason: String| ReleaseError::InvalidArtifact {
        path: artifact.to_path_buf(),
        reason,
    };
    let binary = unpacked.join("ddms");
    if !binary.is_file() {
        return Err(invalid(format!("no `{top}/ddms` binary")));
    }
    let version_output = binary_version(&binary).await.map_err(invalid)?;
    let (version, git_sha) = parse_version_output(&version_output).ok_or_else(|| {
        invalid(format!(
            "`ddms --version` printed `{version_output}`, not `ddms <version> (git <sha>)`"
        ))
    })?;
    if let Ok(recorded) = std::fs::read_to_string(unpacked.join("VERSION")) {
        if recorded.trim() != version_output {
            return Err(invalid(format!(
                "VERSION says `{}` but the binary says `{version_output}`",
                recorded.trim()
            )));
        }
    }
    let name = release_name(&top, &version);
    if !valid_release_name(&name) {
        return Err(invalid(format!("`{name}` is not a usable release name")));
    }
    let meta = ReleaseMeta {
        name: name.clone(),
        version_output,
        version,
        git_sha,
        digest: format!("sha256:{actual}"),
        artifact: artifact
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        installed_at: Utc::now(),
    };

    let dest = layout.release_dir(&name);
    if dest.exists() {
        return match ReleaseMeta::load(layout, &name) {
            Ok(existing) if existing.digest == meta.digest => Ok(Installed {
                release: name,
                path: dest,
                installed: false,
                signature,
                meta: existing,
            }),
            Ok(existing) => Err(ReleaseError::ReleaseConflict {
                name,
                existing: format!(
                    "{}, {}, installed {}",
                    existing.artifact, existing.digest, existing.installed_at
                ),
            }),
            Err(_) => Err(ReleaseError::ReleaseConflict {
                name,
                existing: "a directory without release metadata".into(),
            }),
        };
    }
    let meta_path = unpacked.join(META_FILE);
    let mut json = serde_json::to_vec_pretty(&meta).expect("metadata serializes");
    json.push(b'\n');
    std::fs::write(&meta_path, json).map_err(ReleaseError::io(&meta_path))?;
    // rename(2) into a name that does not exist is atomic; a racing install of the same name
    // fails here instead of mixing two trees.
    std::fs::rename(&unpacked, &dest).map_err(ReleaseError::io(&dest))?;
    if let Ok(dir) = std::fs::File::open(&releases) {
        let _ = dir.sync_all();
    }
    drop(temp);
    Ok(Installed {
        release: name,
        path: dest,
        installed: true,
        signature,
        meta,
    })
}

/// Removes the directory when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sibling_with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The hex digest the checksum file gives for `artifact` (`sha256sum` format: `<hex>  <name>`,
/// or `<hex> *<name>`; a file with one line may name the artifact differently).
fn published_digest(artifact: &Path, checksum: &Path) -> Result<String, ReleaseError> {
    let text = ReleaseError::read_text(checksum, || ReleaseError::ChecksumMissing {
        artifact: artifact.to_path_buf(),
        checksum: checksum.to_path_buf(),
    })?;
    let invalid = |reason: String| ReleaseError::ChecksumInvalid {
        path: checksum.to_path_buf(),
        reason,
    };
    let entries: Vec<(String, String)> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|line| {
            let (hex, name) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let name = name.trim_start().trim_start_matches('*');
            (hex.to_ascii_lowercase(), name.to_string())
        })
        .collect();
    let artifact_name = artifact
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let entry = match entries.as_slice() {
        [] => return Err(invalid("empty".into())),
        [only] => only.clone(),
        many => many
            .iter()
            .find(|(_, name)| {
                Path::new(name).file_name().map(|n| n.to_string_lossy())
                    == Some(artifact_name.as_str().into())
            })
            .cloned()
            .ok_or_else(|| invalid(format!("no line for {artifact_name}")))?,
    };
    if entry.0.len() != 64 || !entry.0.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(invalid(format!("`{}` is not a SHA-256 digest", entry.0)));
    }
    Ok(entry.0)
}

/// The private copy of the artifact inside the install's temp directory. Its leading dot keeps
/// it apart from the archive's top directory (which [`unpack`] never lets start with one
/// without failing on the name clash).
const PRIVATE_COPY: &str = ".artifact.tar.gz";

/// Copies `from` (a regular file) to a new file `to` (mode 0600) in one pass, returning the
/// SHA-256 of exactly the bytes written; `also` sees the same bytes, in order.
fn copy_and_hash(
    from: &Path,
    to: &Path,
    mut also: impl FnMut(&[u8]),
) -> Result<String, ReleaseError> {
    let not_a_file = || ReleaseError::InvalidArtifact {
        path: from.to_path_buf(),
        reason: "not a regular file".into(),
    };
    // Checked before opening too: opening a FIFO would wait for a writer.
    if !std::fs::metadata(from)
        .map_err(ReleaseError::io(from))?
        .is_file()
    {
        return Err(not_a_file());
    }
    let mut source = std::fs::File::open(from).map_err(ReleaseError::io(from))?;
    if !source.metadata().map_err(ReleaseError::io(from))?.is_file() {
        return Err(not_a_file());
    }
    let mut copy = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(ReleaseError::io(to))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = source.read(&mut buffer).map_err(ReleaseError::io(from))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        also(&buffer[..n]);
        copy.write_all(&buffer[..n]).map_err(ReleaseError::io(to))?;
    }
    copy.flush().map_err(ReleaseError::io(to))?;
    Ok(hex::encode(hasher.finalize()))
}

/// Unpacks a `.tar.gz` whose entries all live under one top directory, which it returns.
/// Only directories and regular files are accepted: no links, devices, absolute paths or `..`.
/// `shown` is the path errors name (the artifact the operator gave, not its private copy).
fn unpack(artifact: &Path, dest: &Path, shown: &Path) -> Result<String, ReleaseError> {
    let invalid = |reason: String| ReleaseError::InvalidArtifact {
        path: shown.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(artifact).map_err(ReleaseError::io(artifact))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    archive.set_preserve_permissions(false);
    archive.set_overwrite(false);
    let mut top: Option<String> = None;
    let entries = archive
        .entries()
        .map_err(|e| invalid(format!("not a tar.gz archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| invalid(format!("unreadable archive: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| invalid(format!("bad entry name: {e}")))?
            .into_owned();
        let mut components = path.components();
        let first = match components.next() {
            Some(Component::Normal(first)) => first.to_string_lossy().into_owned(),
            Some(Component::CurDir) => match components.next() {
                Some(Component::Normal(first)) => first.to_string_lossy().into_owned(),
                _ => continue,
            },
            _ => {
                return Err(invalid(format!(
                    "entry `{}` escapes the archive",
                    path.display()
                )))
            }
        };
        if components.any(|c| !matches!(c, Component::Normal(_))) {
            return Err(invalid(format!(
                "entry `{}` escapes the archive",
                path.display()
            )));
        }
        match &top {
            None => top = Some(first),
            Some(top) if *top == first => {}
            Some(top) => {
                return Err(invalid(format!(
                    "entries under both `{top}/` and `{first}/`; expected one top directory"
                )))
            }
        }
        let kind = entry.header().entry_type();
        if !(kind.is_dir() || kind.is_file()) {
            return Err(invalid(format!(
                "entry `{}` is a {kind:?}; only files and directories are accepted",
                path.display()
            )));
        }
        let unpacked = entry
            .unpack_in(dest)
            .map_err(|e| invalid(format!("cannot unpack `{}`: {e}", path.display())))?;
        if !unpacked {
            return Err(invalid(format!(
                "entry `{}` escapes the archive",
                path.display()
            )));
        }
    }
    let top = top.ok_or_else(|| invalid("the archive is empty".into()))?;
    if !dest.join(&top).is_dir() {
        return Err(invalid(format!("`{top}` is not a directory")));
    }
    Ok(top)
}

/// Runs `<binary> --version`.
async fn binary_version(binary: &Path) -> Result<String, String> {
    let mut command = tokio::process::Command::new(binary);
    command
        .arg("--version")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(VERSION_TIMEOUT, command.output())
        .await
        .map_err(|_| "`ddms --version` did not finish".to_string())?
        .map_err(|e| format!("cannot run `ddms --version`: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "`ddms --version` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// `ddms 0.1.0 (git abc1234)` → (`0.1.0`, `abc1234`).
pub fn parse_version_output(text: &str) -> Option<(String, String)> {
    let rest = text.trim().strip_prefix("ddms ")?;
    let (version, rest) = rest.split_once(' ')?;
    let sha = rest.trim().strip_prefix("(git ")?.strip_suffix(')')?;
    Some((version.to_string(), sha.to_string()))
}

/// The release name from the tarball's top directory: `ddms-0.1.0-x86_64-linux` → `0.1.0`
/// (the contract's `/opt/ddms/releases/<version>/`). cargo-dist's archives name only the target
/// (`ddms-x86_64-unknown-linux-gnu`), so theirs is the binary's `version`. Other names are
/// taken as they are, less a leading `ddms-`.
pub fn release_name(top: &str, version: &str) -> String {
    let name = top.strip_prefix("ddms-").unwrap_or(top);
    let triple = name.split('-').collect::<Vec<_>>();
    if matches!(triple.as_slice(), [_, "unknown", "linux", "gnu" | "musl"]) {
        return version.to_string();
    }
    let suffix = format!("-{}-linux", std::env::consts::ARCH);
    name.strip_suffix(&suffix).unwrap_or(name).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_names_come_from_the_top_directory() {
        let arch = std::env::consts::ARCH;
        assert_eq!(
            release_name(&format!("ddms-0.1.0-{arch}-linux"), "0.1.0"),
            "0.1.0"
        );
        assert_eq!(release_name("ddms-v2", "0.1.0"), "v2");
        assert_eq!(release_name("custom", "0.1.0"), "custom");
        // cargo-dist archives: the directory names the target, the binary the version.
        assert_eq!(
            release_name("ddms-x86_64-unknown-linux-gnu", "0.2.0"),
            "0.2.0"
        );
        assert_eq!(
            release_name("ddms-aarch64-unknown-linux-musl", "0.2.0"),
            "0.2.0"
        );
    }

    #[test]
    fn version_output_splits_into_version_and_commit() {
        assert_eq!(
            parse_version_output("ddms 0.1.0 (git 1a2b3c4)\n"),
            Some(("0.1.0".into(), "1a2b3c4".into()))
        );
        assert_eq!(parse_version_output("other 1.0"), None);
    }

    #[test]
    fn checksum_files_are_read_in_sha256sum_format() {
        let dir = tempfile::tempdir().unwrap();
        let artifact = dir.path().join("ddms-1.tar.gz");
        let sum = dir.path().join("SHA256SUMS");
        let hex = "ab".repeat(32);
        std::fs::write(
            &sum,
            format!("{}  other.tar.gz\n{hex} *ddms-1.tar.gz\n", "cd".repeat(32)),
        )
        .unwrap();
        assert_eq!(published_digest(&artifact, &sum).unwrap(), hex);
        std::fs::write(&sum, "not-a-digest  ddms-1.tar.gz\n").unwrap();
        assert!(matches!(
            published_digest(&artifact, &sum),
            Err(ReleaseError::ChecksumInvalid { .. })
        ));
        assert!(matches!(
            published_digest(&artifact, &dir.path().join("missing")),
            Err(ReleaseError::ChecksumMissing { .. })
        ));
    }
}
