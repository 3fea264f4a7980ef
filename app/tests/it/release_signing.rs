//! `ddms release install` on a host that pins a release signing key (`etc/ddms/release.pub`
//! under its root) and on one that does not. Real parts: tarballs of the real binary packed as
//! `cargo xtask build` packs them, signed with the `minisign` crate (the app verifies with
//! `minisign-verify`), keys made per test in temp dirs.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use minisign::{KeyPair, PublicKey, SecretKey};
use sha2::{Digest, Sha256};

use crate::support::app::ddms_bin;
use crate::support::release::{
    artifacts, assert_nothing_installed, files_under, pack_release, Artifact, ReleaseHost,
};

/// minisign's key id, as `minisign -G` prints it.
fn key_id(pk: &PublicKey) -> String {
    pk.keynum()
        .iter()
        .rev()
        .map(|b| format!("{b:02X}"))
        .collect()
}

/// Pins `pk` on `host`, as the Ansible role does (root-owned, 0644).
fn pin(host: &ReleaseHost, pk: &PublicKey) -> PathBuf {
    let path = host.root.join("etc/ddms/release.pub");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, pk.to_box().unwrap().to_string()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path
}

/// Writes `<tarball>.minisig`, as `cargo xtask sign` does.
fn sign(tarball: &Path, keys: &KeyPair) -> PathBuf {
    sign_with(tarball, &keys.sk, &keys.pk)
}

fn sign_with(tarball: &Path, sk: &SecretKey, pk: &PublicKey) -> PathBuf {
    let name = tarball.file_name().unwrap().to_string_lossy().into_owned();
    let signature = minisign::sign(
        Some(pk),
        sk,
        std::fs::File::open(tarball).unwrap(),
        Some(&format!("timestamp:1700000000\tfile:{name}\thashed")),
        None,
    )
    .unwrap();
    let path = sibling(tarball, ".minisig");
    std::fs::write(&path, signature.to_string()).unwrap();
    path
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// A private copy of a shared artifact (tarball and `.sha256`) in `dir`.
fn copy_artifact(artifact: &Artifact, dir: &Path) -> PathBuf {
    let tarball = dir.join(artifact.tarball.file_name().unwrap());
    std::fs::copy(&artifact.tarball, &tarball).unwrap();
    std::fs::copy(&artifact.checksum, sibling(&tarball, ".sha256")).unwrap();
    tarball
}

/// Writes a `.sha256` that matches `tarball` as it is now.
fn republish_checksum(tarball: &Path) {
    let digest = hex::encode(Sha256::digest(std::fs::read(tarball).unwrap()));
    let name = tarball.file_name().unwrap().to_string_lossy();
    std::fs::write(sibling(tarball, ".sha256"), format!("{digest}  {name}\n")).unwrap();
}

/// A release whose `ddms` leaves `marker` behind whenever it runs (then runs the real one):
/// proof of whether anything from the artifact was run.
fn marking_release(dir: &Path, label: &str, marker: &Path) -> Artifact {
    let script = dir.join(format!("marking-{label}"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ntouch '{}'\nexec '{}' \"$@\"\n",
            marker.display(),
            ddms_bin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = dir.join(format!("packed-{label}"));
    std::fs::create_dir_all(&out).unwrap();
    pack_release(&out, label, &script).unwrap()
}

#[tokio::test]
async fn a_host_that_pins_a_key_installs_only_what_that_key_signed() {
    let artifacts = artifacts();
    let host = ReleaseHost::start().await.unwrap();
    let releases = host.root.join("opt/ddms/releases");
    let release_key = KeyPair::generate_unencrypted_keypair().unwrap();
    let other_key = KeyPair::generate_unencrypted_keypair().unwrap();
    let key_file = pin(&host, &release_key.pk);
    let work = tempfile::tempdir().unwrap();

    // Unsigned: refused before anything is copied or unpacked.
    let unsigned_dir = work.path().join("unsigned");
    std::fs::create_dir_all(&unsigned_dir).unwrap();
    let unsigned = copy_artifact(&artifacts.good[0], &unsigned_dir);
    let run = host.install_path(&unsigned, None).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("is not signed")
            && run.stderr.contains(&key_id(&release_key.pk))
            && run.stderr.contains(&key_file.display().to_string())
            && run.stderr.contains("nothing was installed"),
        "{}",
        run.stderr
    );
    assert_nothing_installed(&releases);

    // Tampered after signing, with the checksum published anew to match: only the signature
    // can tell. The changed `ddms` would leave a marker if anything from it ran.
    let marker = work.path().join("ran");
    let genuine_dir = work.path().join("genuine");
    std::fs::create_dir_all(&genuine_dir).unwrap();
    let genuine = copy_artifact(&artifacts.good[0], &genuine_dir);
    let genuine_signature = sign(&genuine, &release_key);
    let swapped = marking_release(work.path(), "v1", &marker);
    std::fs::copy(&genuine_signature, sibling(&swapped.tarball, ".minisig")).unwrap();
    let run = host.install(&swapped).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("is not signed by this host's release key")
            && run.stderr.contains("changed after it was signed")
            && run.stderr.contains("nothing was installed"),
        "{}",
        run.stderr
    );
    assert!(!marker.exists(), "the tampered artifact's ddms ran");
    assert_nothing_installed(&releases);

    // One flipped byte, checksum republished, the genuine signature beside it.
    let flipped_dir = work.path().join("flipped");
    std::fs::create_dir_all(&flipped_dir).unwrap();
    let flipped = copy_artifact(&artifacts.good[0], &flipped_dir);
    let mut bytes = std::fs::read(&flipped).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&flipped, &bytes).unwrap();
    republish_checksum(&flipped);
    std::fs::copy(&genuine_signature, sibling(&flipped, ".minisig")).unwrap();
    let run = host.install_path(&flipped, None).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("changed after it was signed"),
        "{}",
        run.stderr
    );
    assert_nothing_installed(&releases);

    // Intact, but signed by a key this host does not pin.
    let foreign_dir = work.path().join("foreign");
    std::fs::create_dir_all(&foreign_dir).unwrap();
    let foreign = copy_artifact(&artifacts.good[0], &foreign_dir);
    sign(&foreign, &other_key);
    let run = host.install_path(&foreign, None).await;
    assert_eq!(run.code, 1, "{run:?}");
    let expected = format!(
        "signed with key {}, but this host pins key {}",
        key_id(&other_key.pk),
        key_id(&release_key.pk)
    );
    assert!(run.stderr.contains(&expected), "{}", run.stderr);
    assert_nothing_installed(&releases);

    // Signed by the pinned key: installs, and says so.
    let run = host.install_path(&genuine, None).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let installed = run.json();
    assert_eq!(installed["release"], "v1");
    assert_eq!(installed["installed"], true);
    let signature = &installed["signature"];
    assert_eq!(signature["status"], "verified", "{installed}");
    assert_eq!(signature["key_id"], key_id(&release_key.pk));
    assert_eq!(
        signature["trusted_comment"],
        "timestamp:1700000000\tfile:ddms-v1.tar.gz\thashed"
    );
    assert_eq!(files_under(&releases), ["v1"]);
    assert!(releases.join("v1/ddms").is_file());

    // The marker proves something: the marking release, signed properly, does run.
    let marked = marking_release(work.path(), "marked", &marker);
    sign(&marked.tarball, &release_key);
    let run = host.install(&marked).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(marker.exists(), "a signed release's ddms --version ran");

    // --signature names the signature file; the key is still only the pinned one.
    let elsewhere = work.path().join("sig-elsewhere.minisig");
    let v2_dir = work.path().join("v2");
    std::fs::create_dir_all(&v2_dir).unwrap();
    let v2 = copy_artifact(&artifacts.good[1], &v2_dir);
    std::fs::rename(sign(&v2, &release_key), &elsewhere).unwrap();
    let tarball = v2.display().to_string();
    let run = host
        .release(&[
            "install",
            &tarball,
            "--signature",
            &elsewhere.display().to_string(),
        ])
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["signature"]["status"], "verified");
}

#[tokio::test]
async fn a_pinned_key_that_is_unusable_refuses_every_install() {
    let artifacts = artifacts();
    let host = ReleaseHost::start().await.unwrap();
    let releases = host.root.join("opt/ddms/releases");
    let keys = KeyPair::generate_unencrypted_keypair().unwrap();
    let key_file = pin(&host, &keys.pk);
    let work = tempfile::tempdir().unwrap();
    let tarball = copy_artifact(&artifacts.good[0], work.path());
    sign(&tarball, &keys);

    // Anyone in the group could choose which releases this host runs.
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o664)).unwrap();
    let run = host.install_path(&tarball, None).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("writable by group or others"),
        "{}",
        run.stderr
    );
    // A garbled key does not turn the check off either.
    std::fs::write(&key_file, "untrusted comment: x\nnot a key\n").unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = host.install_path(&tarball, None).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("release public key"), "{}", run.stderr);
    assert_nothing_installed(&releases);
}

#[tokio::test]
async fn without_a_pinned_key_install_says_the_signature_was_not_checked() {
    let artifacts = artifacts();
    let host = ReleaseHost::start().await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let tarball = copy_artifact(&artifacts.good[0], work.path());
    let keys = KeyPair::generate_unencrypted_keypair().unwrap();
    let signature = sign(&tarball, &keys);

    // A signature named explicitly but nothing to check it against: refused, not ignored.
    let run = host
        .release(&[
            "install",
            &tarball.display().to_string(),
            "--signature",
            &signature.display().to_string(),
        ])
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("no release public key is pinned"),
        "{}",
        run.stderr
    );

    let run = host.install_path(&tarball, None).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let installed = run.json();
    assert_eq!(installed["installed"], true);
    assert_eq!(installed["signature"]["status"], "unchecked", "{installed}");
    let reason = installed["signature"]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&host.root.join("etc/ddms/release.pub").display().to_string()),
        "{reason}"
    );
    assert!(
        run.stderr.contains("not signature-checked"),
        "{}",
        run.stderr
    );
}
