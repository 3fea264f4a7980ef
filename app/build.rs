//! Embeds the git commit so `ddms --version` and `/api/version` name the exact build.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=BUILD_GIT_SHA");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let git_dir = repo.join(".git");
    if git_dir.join("HEAD").exists() {
        println!("cargo:rerun-if-changed={}", git_dir.join("HEAD").display());
        println!("cargo:rerun-if-changed={}", git_dir.join("refs").display());
    }
    // Builds without a git checkout (release tarballs, Nix) pass the sha in BUILD_GIT_SHA.
    let sha = std::env::var("BUILD_GIT_SHA").ok().or_else(|| {
        Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(&repo)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    });
    println!(
        "cargo:rustc-env=BUILD_GIT_SHA={}",
        sha.filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".into())
    );
}
