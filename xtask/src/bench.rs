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
            // `--peer DIR`: side by side with the peer set's Python ingester (checked first,
            // before a long build).
            let mut rest = rest.to_vec();
            let peer = rest.iter().position(|a| a == "--peer");
            if let Some(i) = peer {
                let Some(dir) = rest.get(i + 1) else {
                    bail!("--peer needs the directory holding peer_ingest.py and mqtt_load.py");
                };
                let dir =
                    std::fs::canonicalize(dir).map_err(|e| anyhow::anyhow!("--peer {dir}: {e}"))?;
                check_peer(&dir)?;
                rest[i + 1] = dir.display().to_string();
            }
            cmd!(
                sh,
                "cargo build --release -p ddms --bin ddms --example bench_ingest"
            )
            .run()?;
            let target = crate::build::target_dir(sh)?;
            let ddms = target.join("release/ddms");
            let driver = target.join("release/examples/bench_ingest");
            let out = target.join(if peer.is_some() {
                "bench/ingest-peer.json"
            } else {
                "bench/ingest.json"
            });
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
        "mqtt-fleet" => {
            cmd!(
                sh,
                "cargo build --release -p ddms --bin ddms --example bench_mqtt_fleet"
            )
            .run()?;
            let target = crate::build::target_dir(sh)?;
            let ddms = target.join("release/ddms");
            let driver = target.join("release/examples/bench_mqtt_fleet");
            let out = target.join("bench/mqtt-fleet.json");
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
        other => bail!(
            "unknown benchmark `{other}`; one of: ingest, modbus, mqtt-fleet, sse, api, deploy"
        ),
    }
}

/// The peer set is two Python scripts that need paho-mqtt 2.2.0 and psycopg.
fn check_peer(dir: &std::path::Path) -> Result<()> {
    for script in ["peer_ingest.py", "mqtt_load.py"] {
        if !dir.join(script).is_file() {
            bail!(
                "--peer {}: no {script} there (give the directory of the benchmark peer set)",
                dir.display()
            );
        }
    }
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import paho.mqtt, psycopg; print(paho.mqtt.__version__)",
        ])
        .output()
        .map_err(|e| anyhow::anyhow!("running python3: {e}"))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || version != "2.2.0" {
        bail!(
            "the peer set needs python3 with paho-mqtt 2.2.0 and psycopg (found paho-mqtt \
             `{version}`; {}): pip install 'paho-mqtt==2.2.0' 'psycopg[binary]'",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
