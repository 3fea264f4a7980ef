//! `cargo xtask bench <name>`: performance targets as runnable measurements. Each benchmark
//! prints its figures and writes JSON under `target/bench/`; the drivers are examples of the
//! `ddms` crate (`app/examples/bench_*.rs`) or, for `deploy`, of xtask itself
//! (`xtask/examples/bench_deploy.rs`, sharing the end-to-end harness), so heavy dependencies
//! stay out of xtask's everyday tasks.

use anyhow::{bail, Result};
use xshell::{cmd, Shell};

/// Runs benchmark `name` with `rest`, the flags for its driver.
pub fn run(sh: &Shell, name: &str, rest: &[String]) -> Result<()> {
    match name {
        "ingest" => {
            cmd!(
                sh,
                "cargo build --release -p ddms --bin ddms --example bench_ingest"
            )
            .run()?;
            let target = crate::build::target_dir(sh)?;
            let ddms = target.join("release/ddms");
            let driver = target.join("release/examples/bench_ingest");
            let out = target.join("bench/ingest.json");
            cmd!(sh, "{driver} --ddms {ddms} --out {out} {rest...}").run()?;
            Ok(())
        }
        "modbus" => {
            cmd!(
                sh,
                "cargo build --release -p ddms --bin ddms --example bench_modbus"
            )
            .run()?;
            let target = crate::build::target_dir(sh)?;
            let ddms = target.join("release/ddms");
            let driver = target.join("release/examples/bench_modbus");
            let out = target.join("bench/modbus.json");
            cmd!(sh, "{driver} --ddms {ddms} --out {out} {rest...}").run()?;
            Ok(())
        }
        "sse" | "api" => {
            cmd!(
                sh,
                "cargo build --release -p ddms --bin ddms --example bench_web"
            )
            .run()?;
            let target = crate::build::target_dir(sh)?;
            let ddms = target.join("release/ddms");
            let driver = target.join("release/examples/bench_web");
            let out = target.join(format!("bench/{name}.json"));
            cmd!(sh, "{driver} {name} --ddms {ddms} --out {out} {rest...}").run()?;
            Ok(())
        }
        "deploy" => {
            // The fleet's releases wrap the release binary found beside the driver.
            cmd!(sh, "cargo build --release -p ddms --bin ddms").run()?;
            cmd!(sh, "cargo build --release -p xtask --example bench_deploy").run()?;
            let target = crate::build::target_dir(sh)?;
            let driver = target.join("release/examples/bench_deploy");
            let xtask = std::env::current_exe()?;
            let out = target.join("bench/deploy.json");
            cmd!(sh, "{driver} --xtask {xtask} --out {out} {rest...}").run()?;
            Ok(())
        }
        other => bail!("unknown benchmark `{other}`; one of: ingest, modbus, sse, api, deploy"),
    }
}
