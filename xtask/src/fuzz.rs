//! `cargo xtask fuzz`: every target of `app/fuzz/` under libFuzzer for a bounded time each.
//! Not part of `ci` (minutes, and the nightly toolchain); run it after changing a parser.

use anyhow::{bail, Result};
use xshell::{cmd, Shell};

/// Per target, unless `--seconds` says otherwise.
pub const DEFAULT_SECONDS: u64 = 30;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub seconds: u64,
    /// Only these targets (`--target NAME`, repeatable); all when empty.
    pub targets: Vec<String>,
    /// Unoptimised build (`--dev`): compiles much faster, fuzzes slower.
    pub dev: bool,
}

pub fn run(sh: &Shell, options: &Options) -> Result<()> {
    ensure_cargo_fuzz(sh)?;
    let _app = sh.push_dir("app");
    let available: Vec<String> = cmd!(sh, "cargo +nightly fuzz list")
        .read()?
        .lines()
        .map(str::to_string)
        .collect();
    if let Some(unknown) = options.targets.iter().find(|t| !available.contains(t)) {
        bail!(
            "fuzz: no target `{unknown}`; there are {}",
            available.join(", ")
        );
    }
    let targets = if options.targets.is_empty() {
        available
    } else {
        options.targets.clone()
    };
    // No sanitizer: ddms forbids `unsafe`, so what a run can find are panics (including integer
    // overflow, hence debug assertions on) and the invariants the targets assert.
    let mut build = vec!["--sanitizer=none", "--debug-assertions"];
    if options.dev {
        build.push("--dev");
    }
    let time = format!("-max_total_time={}", options.seconds);
    let mut crashed = Vec::new();
    for target in &targets {
        println!("fuzz: {target} for {} s", options.seconds);
        let build = &build;
        let result = cmd!(
            sh,
            "cargo +nightly fuzz run {build...} {target} -- {time} -print_final_stats=1"
        )
        .run();
        if result.is_err() {
            crashed.push(target.clone());
        }
    }
    if !crashed.is_empty() {
        bail!(
            "fuzz: {} crashed (inputs under app/fuzz/artifacts/<target>/)",
            crashed.join(", ")
        );
    }
    println!("fuzz: {} targets, no crash", targets.len());
    Ok(())
}

/// `cargo fuzz` needs the nightly toolchain and cargo-fuzz; the latter is installed if missing.
fn ensure_cargo_fuzz(sh: &Shell) -> Result<()> {
    if cmd!(sh, "rustup run nightly rustc --version")
        .quiet()
        .ignore_stdout()
        .run()
        .is_err()
    {
        bail!("fuzz: the nightly toolchain is missing (`rustup toolchain install nightly`)");
    }
    if cmd!(sh, "cargo fuzz --version")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .is_err()
    {
        println!("fuzz: installing cargo-fuzz");
        cmd!(sh, "cargo install cargo-fuzz --locked").run()?;
    }
    Ok(())
}
