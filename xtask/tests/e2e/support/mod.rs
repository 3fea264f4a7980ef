//! The end-to-end harness: Debian "hosts" in Docker containers reached over ssh
//! ([`cluster`]), release tarballs of the real `ddms` binary and of misbehaving wrappers around
//! it ([`release`]), `ansible-playbook` runs with their PLAY RECAP parsed ([`ansible`]), the
//! Terraform path's stand-ins ([`terraform`]) and a device's reading end to end ([`device`]);
//! the tests wait for conditions with [`wait`].
//!
//! The API is shared with other end-to-end tests (the deploy scenarios): add to it, do not
//! rename.

// Each test uses only part of the harness.
#![allow(dead_code)]

pub mod ansible;
pub mod cluster;
pub mod ddms_binary;
pub mod device;
pub mod release;
pub mod terraform;
pub mod wait;

// The integration tests' port allocator (below the ephemeral range, never the same port twice).
#[path = "../../../../app/tests/support/ports.rs"]
pub mod ports;

use std::path::PathBuf;
use std::process::{Command, Output};

use anyhow::{ensure, Context, Result};

/// One cluster at a time: on a 2-core machine, three clusters of containers (with PostgreSQL,
/// Mosquitto and ddms in each) provisioning at once time out. Each container test holds this
/// for its whole run.
pub fn one_cluster_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static CLUSTERS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    CLUSTERS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The workspace root (the parent of the xtask crate).
pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

/// Runs a command to completion and fails with its output unless it exits 0.
pub fn run(command: &mut Command) -> Result<Output> {
    let output = command
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output)
}

/// The last `n` lines of a text, for failure messages.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `curl` over HTTPS checked against `ca`, with a bearer `token` and a JSON `body` if
/// given: (status, body).
pub fn https(
    ca: &std::path::Path,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> Result<(u16, String)> {
    curl(Some(ca), method, url, token, body)
}

/// `curl` `method` `url` (HTTPS checked against `ca` when given), with a bearer `token` and a
/// JSON `body` if given: (status, body).
pub fn curl(
    ca: Option<&std::path::Path>,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> Result<(u16, String)> {
    let mut command = Command::new("curl");
    command.args(["--silent", "--show-error", "--max-time", "10", "-X", method]);
    if let Some(ca) = ca {
        command.arg("--cacert").arg(ca);
    }
    command.args(["--write-out", "\n%{http_code}"]);
    if let Some(token) = token {
        command.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    if let Some(body) = body {
        command
            .args(["-H", "Content-Type: application/json", "--data"])
            .arg(body.to_string());
    }
    let output = run(command.arg(url))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Ok((code.trim().parse()?, body.to_string()))
}

/// A fresh random secret of 64 hex digits, from the kernel.
pub fn random_secret() -> Result<String> {
    let mut secret = String::new();
    while secret.len() < 64 {
        let uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid")?;
        secret.extend(uuid.chars().filter(char::is_ascii_hexdigit));
    }
    secret.truncate(64);
    Ok(secret)
}
