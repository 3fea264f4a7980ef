//! `cargo xtask soak`: a hostile-client soak of one release ddms on loopback (SQLite, the
//! embedded broker). The driver is an example of the ddms crate (`app/examples/soak/`, like
//! the benchmarks) so that its HTTP and MQTT clients stay out of xtask; it prints a table,
//! writes `target/bench/soak.json` and exits non-zero when a bound is broken.

use anyhow::{bail, Result};
use xshell::{cmd, Shell};

pub fn run(sh: &Shell, args: &[String]) -> Result<()> {
    if args.iter().any(|a| a == "--ddms" || a == "--out") {
        bail!("soak: --ddms and --out are chosen by xtask");
    }
    cmd!(
        sh,
        "cargo build --release -p ddms --bin ddms --example soak"
    )
    .run()?;
    let target = crate::build::target_dir(sh)?;
    let ddms = target.join("release/ddms");
    let driver = target.join("release/examples/soak");
    let out = target.join("bench/soak.json");
    cmd!(sh, "{driver} --ddms {ddms} --out {out} {args...}").run()?;
    Ok(())
}
