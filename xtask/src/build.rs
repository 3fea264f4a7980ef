//! `cargo xtask build`: the release artifact — `ddms-<version>-<target>.tar.gz` holding the
//! binary, `ops/`, the example configuration and the docs, plus a `.sha256` file that
//! `ddms release install` checks before unpacking and, given a signing key, a `.minisig`
//! signature that hosts pinning the release key demand ([`crate::signing`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

pub struct Artifact {
    pub tarball: PathBuf,
    pub checksum: PathBuf,
    pub version: String,
}

pub fn run(sh: &Shell, locked: bool, signing_key: Option<&Path>) -> Result<Artifact> {
    let locked = locked.then_some("--locked");
    cmd!(sh, "cargo build {locked...} --release -p ddms").run()?;
    let target_dir = target_dir(sh)?;
    let binary = target_dir.join("release/ddms");
    let version_line = cmd!(sh, "{binary} --version").read()?;
    // "ddms 0.1.0 (git abc)" → "0.1.0"
    let version = version_line
        .split_whitespace()
        .nth(1)
        .context("unexpected `ddms --version` output")?
        .to_string();
    let target = format!("{}-linux", std::env::consts::ARCH);
    let name = format!("ddms-{version}-{target}");
    let dist = target_dir.join("dist");
    let stage = dist.join(&name);
    sh.remove_path(&stage)?;
    sh.create_dir(&stage)?;
    sh.copy_file(&binary, &stage)?;
    for file in ["README.md", "ARCHITECTURE.md", "ddms.example.toml"] {
        sh.copy_file(file, &stage)?;
    }
    copy_dir(sh, Path::new("ops"), &stage.join("ops"))?;
    // README links into docs/: the operator reading the unpacked release follows them there.
    copy_dir(sh, Path::new("docs"), &stage.join("docs"))?;
    sh.write_file(stage.join("VERSION"), format!("{version_line}\n"))?;

    let tarball = dist.join(format!("{name}.tar.gz"));
    let checksum = dist.join(format!("{name}.tar.gz.sha256"));
    {
        let _dir = sh.push_dir(&dist);
        // Reproducible-ish: fixed owner and sorted entries.
        cmd!(
            sh,
            "tar --sort=name --owner=0 --group=0 --numeric-owner -czf {name}.tar.gz {name}"
        )
        .run()?;
        let sum = cmd!(sh, "sha256sum {name}.tar.gz").read()?;
        sh.write_file(&checksum, format!("{sum}\n"))?;
    }
    sh.remove_path(&stage)?;
    println!("build: {}", tarball.display());
    println!("build: {}", checksum.display());
    // A signature left from an earlier build of the same version would not match this tarball.
    sh.remove_path(crate::signing::signature_path(&tarball))?;
    match signing_key {
        Some(key) => println!("build: {}", crate::signing::sign(&tarball, key)?.display()),
        None => println!(
            "build: not signed (no --signing-key or {}): hosts that pin a release key will \
             refuse it",
            crate::signing::KEY_ENV
        ),
    }
    Ok(Artifact {
        tarball,
        checksum,
        version,
    })
}

fn copy_dir(sh: &Shell, from: &Path, to: &Path) -> Result<()> {
    sh.create_dir(to)?;
    for entry in std::fs::read_dir(from)? {
        let path = entry?.path();
        let dest = to.join(path.file_name().expect("a file name"));
        if path.is_dir() {
            // Test-only image definitions are not part of a release.
            if path.file_name().is_some_and(|n| n == "test-images") {
                continue;
            }
            copy_dir(sh, &path, &dest)?;
        } else {
            sh.copy_file(&path, &dest)?;
        }
    }
    Ok(())
}

pub fn target_dir(sh: &Shell) -> Result<PathBuf> {
    let metadata = cmd!(sh, "cargo metadata --format-version 1 --no-deps")
        .quiet()
        .read()
        .context("cargo metadata")?;
    let start = metadata
        .find("\"target_directory\":\"")
        .context("no target_directory in cargo metadata")?
        + "\"target_directory\":\"".len();
    let end = start + metadata[start..].find('"').context("malformed metadata")?;
    Ok(PathBuf::from(metadata[start..end].replace("\\\\", "\\")))
}
