//! `cargo xtask <task>`: the project's one automation entry point. One module per task; plain
//! processes through xshell, no heavy dependencies.

mod apifuzz;
mod bench;
mod build;
mod certs;
mod deploy;
mod fuzz;
mod image;
mod images;
mod smoke;
mod soak;
mod test;
#[cfg(test)]
mod tidy;

use std::path::PathBuf;

use anyhow::{bail, Result};
use xshell::{cmd, Shell};

const USAGE: &str = "\
cargo xtask <task>

tasks:
  test [--no-smoke]   everything: fmt check, clippy -D warnings, local test images (when Docker
                      answers), unit + integration tests, tidy, and README command 1 smoke run
  ci                  what CI runs: `test` with --locked dependencies
  apifuzz [--debug]   the API fuzzed from its openapi.json by schemathesis against a running
                      ddms (release build unless --debug); part of `test`
  soak [--seconds S]  hostile-client soak of a release ddms on loopback (slowloris, invented
                      methods and paths, login floods, MQTT floods, SSE churn) beside a good
                      device and dashboard; fails when a bound breaks; JSON in target/bench/
  images [--force]    build the local Docker test images (debootstrap → postgres, mosquitto,
                      host, dbhost, systemd-host)
  bench ingest [--seconds S] [--devices N] [--rate MSGS_PER_S] [--metrics PER_MSG]
                      MQTT → Mosquitto → ddms → PostgreSQL vs a raw COPY; JSON in target/bench/
  bench modbus [--devices N] [--interval-ms I] [--seconds S] [--dead-fraction F]
                      many simulated Modbus devices polled by a release ddms; JSON in target/bench/
  bench deploy [--switches N] [--rate R] [--min-requests M]
                      blue-green switches under load on the Docker e2e fleet: switch time,
                      per-host deploy time, failed requests; JSON in target/bench/
  fuzz [--seconds N] [--target NAME]... [--dev]
                      each fuzz target of app/fuzz/ for N seconds (default 30) with cargo fuzz
                      (nightly; cargo-fuzz installed if missing); fails on any crash. Not in `ci`
  image [--repository NAME] [--locked]
                      the container image of ops/container/: a static ddms (crt-static glibc)
                      on scratch, tagged NAME:<version> and NAME:latest (default NAME: ddms)
  build               release tarball (binary, ops/, example config, docs) and its .sha256
  smoke               build the release, verify and unpack it, run README command 1 against it
  deploy --env E [--version V] [--artifact PATH] [--inventory FILE] [--batch N] [--report FILE]
                      upload the release to the environment's hosts (Ansible inventory, else
                      `terraform output`) over ssh and run `ddms release install` + `activate`
                      host by host; on a failure roll back the hosts this run switched; JSON
                      report (default target/deploy/). DDMS_RELEASE_* variables are passed on
  rollback --env E [--inventory FILE] [--batch N] [--report FILE]
                      `ddms release rollback` on every host
  status --env E [--inventory FILE]
                      `ddms release status` of every host as one JSON; exit 1 unless each host
                      has exactly one active slot that runs and is ready
  provision --env E [--inventory FILE] [--auto-approve] [-- ANSIBLE-PLAYBOOK-ARGS]
                      terraform apply in terraform/envs/E (unless an Ansible inventory is
                      given or exists), inventory from its outputs, ansible-playbook site.yml
  certs [--out DIR] [--host NAME]... [--device ID]... [--days N] [--force]
                      TLS material: a CA, server certificates for the dashboard and the broker,
                      device client certificates; existing files are kept unless --force
";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sh = Shell::new()?;
    sh.change_dir(project_root());
    let flag = |name: &str| args.iter().any(|a| a == name);
    match args.first().map(String::as_str) {
        Some("test") => test::run(
            &sh,
            test::Options {
                locked: false,
                smoke: !flag("--no-smoke"),
            },
        ),
        Some("ci") => test::run(
            &sh,
            test::Options {
                locked: true,
                smoke: true,
            },
        ),
        Some("images") => images::build_local_images(&sh, flag("--force")),
        Some("bench") => bench::run(&sh, &args[1..]),
        Some("apifuzz") => {
            let profile = if flag("--debug") { "debug" } else { "release" };
            let release = (profile == "release").then_some("--release");
            cmd!(sh, "cargo build {release...} -p ddms --bin ddms").run()?;
            let ddms = build::target_dir(&sh)?.join(profile).join("ddms");
            apifuzz::run(&sh, &ddms)
        }
        Some("soak") => soak::run(&sh, &args[1..]),
        Some("fuzz") => fuzz::run(&sh, &fuzz::parse(&args[1..])?),
        Some("image") => image::run(&sh, &image::parse(&args[1..])?).map(|_| ()),
        Some("build") => build::run(&sh, flag("--locked")).map(|_| ()),
        Some("smoke") => smoke::run(&sh, false),
        Some("certs") => certs::run(&certs::parse(&args[1..])?),
        Some(task @ ("deploy" | "rollback" | "status")) => {
            let options = deploy::parse(task, &args[1..])?;
            let code = match task {
                "deploy" => deploy::deploy(&sh, &options)?,
                "rollback" => deploy::rollback(&sh, &options)?,
                _ => deploy::status(&sh, &options)?,
            };
            std::process::exit(code)
        }
        Some("provision") => deploy::provision(&sh, &deploy::parse("provision", &args[1..])?),
        Some("help" | "--help" | "-h") | None => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown task `{other}`\n\n{USAGE}"),
    }
}

fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}
