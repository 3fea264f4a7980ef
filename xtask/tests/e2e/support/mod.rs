//! The end-to-end harness: Debian "hosts" in Docker containers reached over ssh
//! ([`cluster`]), release tarballs of the real `ddms` binary and of misbehaving wrappers around
//! it ([`release`]), and `ansible-playbook` runs with their PLAY RECAP parsed ([`ansible`]);
//! the tests wait for conditions with [`wait`].
//!
//! The API is shared with other end-to-end tests (the deploy scenarios): add to it, do not
//! rename.

// Each test uses only part of the harness.
#![allow(dead_code)]

pub mod ansible;
pub mod cluster;
pub mod ddms_binary;
pub mod release;
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
