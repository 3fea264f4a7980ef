//! Release tarballs that `ddms release install` accepts, packed like `cargo xtask build` packs
//! them, around the `ddms` binary cargo built for the workspace's tests (the same approach as
//! `app/tests/support/release.rs`, for hosts in containers): the real binary, or a shell
//! wrapper of it that misbehaves. The wrappers find the real binary beside themselves
//! (`ddms-real`), so the release works wherever it is unpacked.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

pub use super::ddms_binary::ddms_binary;
use super::{project_root, run};

/// A release tarball and its published checksum.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub tarball: PathBuf,
    pub checksum: PathBuf,
    /// The release name `ddms release install` derives from the top directory (= `version`
    /// given to [`release_tarball`]).
    pub release: String,
    /// What the binary says to `--version` (`ddms 0.1.0 (git abc1234)`).
    pub version_output: String,
    /// The version alone, as `/api/version` reports it (`0.1.0`).
    pub version: String,
}

/// How the release behaves once started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The real binary.
    Good,
    /// `serve` starts but its database never answers: `/ready` never says 200.
    NeverReady,
    /// Serves normally; once nginx's upstream include names its port (the switch), it stays
    /// up for the given time, then is killed (SIGKILL): `/ready` through nginx fails with a
    /// 5xx inside the post-switch watch.
    UnhealthyAfter(Duration),
}

/// Packs release `version` of the given kind into `dir`: `ddms-<version>.tar.gz` (top
/// directory `ddms-<version>/` with `ddms`, `VERSION`, the docs and `ops/`) and
/// `ddms-<version>.tar.gz.sha256` in sha256sum format.
pub fn release_tarball(dir: &Path, version: &str, kind: Kind) -> Result<Artifact> {
    ensure!(
        !version.is_empty()
            && version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')),
        "release name `{version}`: letters, digits, '.', '-' and '_' only"
    );
    let real = ddms_binary()?;
    let version_output = {
        let output = run(Command::new(real).arg("--version"))?;
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    let bare_version = version_output
        .split_whitespace()
        .nth(1)
        .context("`ddms --version` prints `ddms <version> (git <sha>)`")?
        .to_string();
    let name = format!("ddms-{version}");
    let stage = dir.join(format!("stage-{version}"));
    let top = stage.join(&name);
    if stage.exists() {
        std::fs::remove_dir_all(&stage)?;
    }
    std::fs::create_dir_all(&top)?;
    let wrapper_body = match kind {
        Kind::Good => None,
        Kind::NeverReady => Some(
            // Port 9 (discard) refuses connections: the database never answers.
            "if [ \"$1\" = serve ]; then\n\
             \x20 export DDMS_DATABASE__URL=postgres://ddms:x@127.0.0.1:9/ddms\n\
             fi\n\
             exec \"$REAL\" \"$@\""
                .to_string(),
        ),
        Kind::UnhealthyAfter(after) => Some(format!(
            "if [ \"$1\" = serve ]; then\n\
             \x20 \"$REAL\" \"$@\" &\n\
             \x20 child=$!\n\
             \x20 port=${{DDMS_HTTP__LISTEN##*:}}\n\
             \x20 upstream=${{DDMS_RELEASE_NGINX_UPSTREAM:-/etc/nginx/ddms/ddms-upstream.conf}}\n\
             \x20 until grep -q \"127.0.0.1:$port max_fails=0;\" \"$upstream\" 2>/dev/null; do sleep 0.1; done\n\
             \x20 sleep {}\n\
             \x20 kill -KILL $child\n\
             \x20 exit 1\n\
             fi\n\
             exec \"$REAL\" \"$@\"",
            after.as_secs_f64()
        )),
    };
    match wrapper_body {
        None => {
            std::fs::copy(real, top.join("ddms"))
                .with_context(|| format!("copy {}", real.display()))?;
        }
        Some(body) => {
            std::fs::copy(real, top.join("ddms-real"))?;
            std::fs::set_permissions(
                top.join("ddms-real"),
                std::fs::Permissions::from_mode(0o755),
            )?;
            std::fs::write(
                top.join("ddms"),
                format!("#!/bin/sh\nREAL=\"$(dirname \"$0\")/ddms-real\"\n{body}\n"),
            )?;
        }
    }
    std::fs::set_permissions(top.join("ddms"), std::fs::Permissions::from_mode(0o755))?;
    std::fs::write(top.join("VERSION"), format!("{version_output}\n"))?;
    let repo = project_root();
    for file in ["README.md", "ARCHITECTURE.md", "ddms.example.toml"] {
        std::fs::copy(repo.join(file), top.join(file))?;
    }
    for sub in ["nginx", "systemd", "mosquitto"] {
        let to = top.join("ops").join(sub);
        std::fs::create_dir_all(&to)?;
        for entry in std::fs::read_dir(repo.join("ops").join(sub))? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::copy(entry.path(), to.join(entry.file_name()))?;
            }
        }
    }
    let tarball = format!("{name}.tar.gz");
    run(Command::new("tar")
        .args([
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-I",
            "gzip -1",
            "-cf",
        ])
        .arg(dir.join(&tarball))
        .arg("-C")
        .arg(&stage)
        .arg(&name))?;
    let sum = run(Command::new("sha256sum").arg(&tarball).current_dir(dir))?;
    let checksum = dir.join(format!("{tarball}.sha256"));
    std::fs::write(&checksum, &sum.stdout)?;
    std::fs::remove_dir_all(&stage)?;
    Ok(Artifact {
        tarball: dir.join(tarball),
        checksum,
        release: version.to_string(),
        version_output,
        version: bare_version,
    })
}
