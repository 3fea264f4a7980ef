//! The host-side install script ([`ssh::install_script`]) run for real with `sh`, on a host
//! root in a temp dir that has no ddms release yet: the case where the binary that would check
//! a signature is the artifact's own. The artifact's `ddms` is a script that leaves a marker,
//! so each case shows whether anything from the artifact ran. The signatures are checked by the
//! `minisign` command (Debian's package), as on a host.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::ssh;
use crate::signing;

struct Fixture {
    dir: tempfile::TempDir,
    root: PathBuf,
    marker: PathBuf,
    tarball: PathBuf,
    sha256: String,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("etc/ddms")).unwrap();
    let marker = dir.path().join("ran");
    let top = dir.path().join("stage/ddms-9.9.9-x86_64-linux");
    std::fs::create_dir_all(&top).unwrap();
    std::fs::write(
        top.join("ddms"),
        format!("#!/bin/sh\necho \"$@\" > '{}'\n", marker.display()),
    )
    .unwrap();
    std::fs::set_permissions(top.join("ddms"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let tarball = dir.path().join("ddms-9.9.9-x86_64-linux.tar.gz");
    let status = Command::new("tar")
        .arg("-czf")
        .arg(&tarball)
        .arg("-C")
        .arg(dir.path().join("stage"))
        .arg("ddms-9.9.9-x86_64-linux")
        .status()
        .unwrap();
    assert!(status.success());
    let sha256 = super::sha256_file(&tarball).unwrap();
    Fixture {
        dir,
        root,
        marker,
        tarball,
        sha256,
    }
}

fn key_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (secret, public) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pub")),
    );
    signing::keygen(
        &signing::KeygenOptions {
            secret_key: secret.clone(),
            public_key: public.clone(),
            unencrypted: true,
            force: false,
        },
        Path::new(env!("CARGO_MANIFEST_DIR")),
    )
    .unwrap();
    (secret, public)
}

/// Uploads (copies) the tarball and, if given, a signature into a fresh upload directory and
/// runs the install script as on a host; returns whether it succeeded and its standard error.
fn install(f: &Fixture, signature: Option<&Path>) -> (bool, String) {
    let _ = std::fs::remove_file(&f.marker);
    let up = tempfile::Builder::new()
        .prefix("ddms-upload.")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(up.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let name = f.tarball.file_name().unwrap().to_str().unwrap();
    std::fs::copy(&f.tarball, up.path().join(name)).unwrap();
    if let Some(signature) = signature {
        std::fs::copy(signature, up.path().join(format!("{name}.minisig"))).unwrap();
    }
    let script = ssh::install_script(
        up.path().to_str().unwrap(),
        name,
        &f.sha256,
        signature.is_some(),
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .env("DDMS_RELEASE_ROOT", &f.root)
        // No `ddms` on PATH: the host has no release yet.
        .env("PATH", "/usr/bin:/bin")
        .env_remove("SUDO_UID")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn without_a_release_yet_minisign_checks_the_signature_before_the_artifacts_ddms_runs() {
    // The script insists on root-owned private directories, as on a host.
    if !running_as_root() {
        eprintln!("SKIPPED: the install script needs root (CI runs as root)");
        return;
    }
    let f = fixture();
    let keys = f.dir.path().join("keys");
    let (secret, public) = key_pair(&keys, "release");
    let (other_secret, _) = key_pair(&keys, "other");

    // No key pinned: as before, the artifact's own binary installs it.
    let (ok, stderr) = install(&f, None);
    assert!(ok, "{stderr}");
    assert!(std::fs::read_to_string(&f.marker)
        .unwrap()
        .starts_with("release install "));

    std::fs::copy(&public, f.root.join("etc/ddms/release.pub")).unwrap();

    let (ok, stderr) = install(&f, None);
    assert!(!ok && stderr.contains("is not signed"), "{stderr}");
    assert!(!f.marker.exists(), "an unsigned artifact's ddms ran");

    let elsewhere = f.dir.path().join("other-sig");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let foreign = elsewhere.join("a.tar.gz");
    std::fs::copy(&f.tarball, &foreign).unwrap();
    let foreign_sig = signing::sign(&foreign, &other_secret).unwrap();
    let (ok, stderr) = install(&f, Some(&foreign_sig));
    assert!(
        !ok && stderr.contains("is not signed by this host's release key"),
        "{stderr}"
    );
    assert!(!f.marker.exists(), "a wrongly signed artifact's ddms ran");

    let good_sig = signing::sign(&f.tarball, &secret).unwrap();
    let (ok, stderr) = install(&f, Some(&good_sig));
    assert!(ok, "{stderr}");
    assert!(f.marker.exists(), "the signed artifact was not installed");
}

/// A file this process creates is owned by its effective user.
fn running_as_root() -> bool {
    let probe = tempfile::NamedTempFile::new().unwrap();
    std::fs::metadata(probe.path()).unwrap().uid() == 0
}
