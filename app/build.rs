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
    // `sqlx::migrate!` embeds the migration files, but on stable Rust it cannot ask to be
    // rebuilt when a file is added to the folder (only the files it read are tracked): without
    // this, a new migration left the binary without it until something else changed.
    println!(
        "cargo:rerun-if-changed={}",
        repo.join("migrations").display()
    );
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
