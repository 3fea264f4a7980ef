//! `cargo xtask <task>`: the project's one automation entry point. One module per task; plain
//! processes through xshell, no heavy dependencies. The command line is `cli/` (clap).

mod apifuzz;
mod bench;
mod build;
mod certs;
mod cli;
mod container_image;
mod deploy;
mod fuzz;
mod schema_compat;
mod setup;
// The integration tests' port allocator: ports below the ephemeral range, never handed out
// twice, so a server started a moment later does not lose its port to some client socket.
#[path = "../../app/tests/support/ports.rs"]
mod ports;
mod signing;
mod smoke;
mod soak;
mod test;
mod test_images;
#[cfg(test)]
mod tidy;

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use xshell::{cmd, Shell};

use cli::{Cli, Task};

fn main() -> Result<()> {
    let cli = Cli::parse();
    let sh = Shell::new()?;
    sh.change_dir(project_root());
    match cli.task {
        Task::Test {
            no_smoke,
            no_install,
        } => test::run(
            &sh,
            test::Options {
                locked: false,
                smoke: !no_smoke,
                setup: if no_install {
                    setup::Mode::Check
                } else {
                    setup::Mode::Auto
                },
            },
        ),
        Task::Ci => test::run(
            &sh,
            test::Options {
                locked: true,
                smoke: true,
                setup: setup::Mode::Auto,
            },
        ),
        Task::Setup { check } => setup::run(if check {
            setup::Mode::Check
        } else {
            setup::Mode::Install
        }),
        Task::Images { force } => test_images::build_local_images(&sh, force),
        Task::Bench { bench } => {
            let (name, args) = bench.driver_args();
            bench::run(&sh, name, &args)
        }
        Task::Apifuzz { debug } => {
            let profile = if debug { "debug" } else { "release" };
            let release = (!debug).then_some("--release");
            cmd!(sh, "cargo build {release...} -p ddms --bin ddms").run()?;
            let ddms = build::target_dir(&sh)?.join(profile).join("ddms");
            apifuzz::run(&sh, &ddms)
        }
        Task::Soak {
            seconds,
            baseline,
            settle,
            slowloris,
        } => {
            let args: Vec<String> = [
                ("--seconds", seconds),
                ("--baseline", baseline),
                ("--settle", settle),
                ("--slowloris", slowloris),
            ]
            .into_iter()
            .filter_map(|(flag, value)| value.map(|v| [flag.to_string(), v]))
            .flatten()
            .collect();
            soak::run(&sh, &args)
        }
        Task::Fuzz {
            seconds,
            targets,
            dev,
        } => fuzz::run(
            &sh,
            &fuzz::Options {
                seconds,
                targets,
                dev,
            },
        ),
        Task::Image { repository, locked } => {
            container_image::run(&sh, &container_image::Options { repository, locked }).map(|_| ())
        }
        Task::Build {
            locked,
            signing_key,
        } => build::run(&sh, locked, signing_key.as_deref()).map(|_| ()),
        Task::Keygen {
            secret_key,
            public_key,
            unencrypted,
            force,
        } => {
            let id = signing::keygen(
                &signing::KeygenOptions {
                    secret_key: secret_key.clone(),
                    public_key: public_key.clone(),
                    unencrypted,
                    force,
                },
                &project_root(),
            )?;
            println!("keygen: key id {id}");
            println!(
                "keygen: secret key {} (keep it out of the repository)",
                secret_key.display()
            );
            println!(
                "keygen: public key {} (pin it on the hosts: ddms_release_public_key)",
                public_key.display()
            );
            Ok(())
        }
        Task::Sign {
            artifact,
            signing_key,
        } => {
            println!(
                "sign: {}",
                signing::sign(&artifact, &signing_key)?.display()
            );
            Ok(())
        }
        Task::Smoke => smoke::run(&sh, false),
        Task::SchemaCompat {
            previous,
            build_only: true,
            ..
        } => schema_compat::build_previous(&sh, previous.as_deref()).map(|_| ()),
        Task::SchemaCompat {
            previous, backends, ..
        } => schema_compat::run(
            &sh,
            &schema_compat::Options {
                previous,
                backends: if backends.is_empty() {
                    schema_compat::ALL_BACKENDS.to_vec()
                } else {
                    backends
                },
                locked: false,
                new_binary: None,
            },
        ),
        Task::Certs {
            out,
            hosts,
            devices,
            days,
            force,
        } => certs::run(&Task::certs_options(&out, &hosts, &devices, days, force)?),
        Task::Deploy(args) => exit(deploy::deploy(&sh, &args.options()?)?),
        Task::Rollback(args) => exit(deploy::rollback(&sh, &args.options()?)?),
        Task::Status(args) => exit(deploy::status(&sh, &args.options()?)?),
        Task::History(args) => {
            let (options, last, json) = args.options()?;
            exit(deploy::history::run(&sh, &options, last, json)?)
        }
        Task::Provision(args) => deploy::provision(&sh, &args.options()?),
    }
}

fn exit(code: i32) -> ! {
    std::process::exit(code)
}

fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

/// The last `n` lines of a text (a command's output), for error messages.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
