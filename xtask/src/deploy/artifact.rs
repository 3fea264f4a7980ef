//! The release a deploy ships: `--artifact`, `cargo xtask build`'s for `--version`, or a
//! fresh build; its checksum and signature beside it.

use sha2::{Digest, Sha256};

use super::*;

/// The artifact to deploy: `--artifact`, else `cargo xtask build`'s for `--version`, else a
/// fresh `cargo xtask build` (signed when `DDMS_SIGNING_KEY` names a key). Returns it, its
/// checksum and its signature, when `<artifact>.minisig` is there.
pub(super) fn artifact(
    sh: &Shell,
    options: &Options,
) -> Result<(PathBuf, PathBuf, Option<PathBuf>)> {
    let tarball = match (&options.artifact, &options.version) {
        (Some(path), _) => path.clone(),
        (None, Some(version)) => {
            let name = format!("ddms-{version}-{}-linux.tar.gz", std::env::consts::ARCH);
            let path = target_dir(sh)?.join("dist").join(name);
            ensure!(
                path.exists(),
                "no artifact for version {version} at {}: run `cargo xtask build` or pass --artifact",
                path.display()
            );
            path
        }
        (None, None) => {
            let key = crate::signing::key_path(None);
            crate::build::run(sh, false, key.as_deref())?.tarball
        }
    };
    let mut checksum = tarball.clone().into_os_string();
    checksum.push(".sha256");
    let checksum = PathBuf::from(checksum);
    ensure!(
        tarball.is_file(),
        "artifact {} not found",
        tarball.display()
    );
    ensure!(
        checksum.is_file(),
        "the artifact's published checksum {} is missing",
        checksum.display()
    );
    ensure!(
        artifact_file_name(&tarball).is_some(),
        "artifact file name {:?}: only letters, digits, '.', '_', '-' and '+' (not first) are \
         accepted, as it becomes part of remote paths",
        tarball.file_name().unwrap_or_default()
    );
    let signature = Some(crate::signing::signature_path(&tarball)).filter(|p| p.is_file());
    Ok((tarball, checksum, signature))
}

/// The artifact's file name, when it is safe to use on the hosts.
pub(super) fn artifact_file_name(tarball: &Path) -> Option<String> {
    tarball
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| ssh::valid_artifact_name(n))
        .map(str::to_string)
}

pub(super) fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("read {}", path.display()))?;
    Ok(format!("{:x}", hasher.finalize()))
}
