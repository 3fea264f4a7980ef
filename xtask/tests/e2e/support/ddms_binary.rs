//! The `ddms` binary the xtask tests run: the end-to-end hosts' releases are made of it, and
//! xtask's schema-compat tests (`xtask/src/schema_compat/`, whose `mod.rs` includes this file
//! by path) run the N-1 window with it, and `xtask/src/deploy/database_role_tests.rs` its
//! migrations as the RDS role. Self-contained (std and anyhow) so both crates can hold it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{ensure, Context, Result};

/// `DDMS_E2E_DDMS` when set (`cargo xtask test` passes its release build: the deploy scenarios
/// put hundreds of requests a second through each host); else the debug binary cargo built for
/// the workspace tests, `<target>/debug/ddms`, found from this test binary
/// (`<target>/debug/deps/…`). When that is missing (only the xtask crate was built), it is
/// built with `cargo build -p ddms` into a target dir of its own, as the running `cargo test`
/// holds the lock of the usual one.
pub fn ddms_binary() -> Result<&'static Path> {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    if let Some(path) = BINARY.get() {
        return Ok(path);
    }
    if let Some(path) = std::env::var_os("DDMS_E2E_DDMS").map(PathBuf::from) {
        ensure!(
            path.is_file(),
            "DDMS_E2E_DDMS={} is not a file",
            path.display()
        );
        return Ok(BINARY.get_or_init(|| path));
    }
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the test binary lives in <target>/<profile>/deps")?;
    let mut candidate = profile_dir.join("ddms");
    if !candidate.is_file() {
        let target = profile_dir
            .parent()
            .context("<target>/<profile>")?
            .join("e2e-ddms");
        eprintln!(
            "xtask tests: {} is missing; building it into {}",
            candidate.display(),
            target.display()
        );
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask lives in the workspace root")?;
        let status = Command::new(cargo)
            .args(["build", "-p", "ddms", "--target-dir"])
            .arg(&target)
            .current_dir(workspace)
            .status()
            .context("cannot run cargo build -p ddms")?;
        ensure!(status.success(), "cargo build -p ddms failed ({status})");
        candidate = target.join("debug").join("ddms");
        ensure!(
            candidate.is_file(),
            "cargo build -p ddms did not produce {}",
            candidate.display()
        );
    }
    Ok(BINARY.get_or_init(|| candidate))
}
