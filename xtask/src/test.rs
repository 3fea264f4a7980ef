//! `cargo xtask test` / `ci`: every check a change must pass, in the order that fails fastest.

use std::time::Instant;

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

use crate::test_images;

pub struct Options {
    /// Refuse to touch Cargo.lock (CI).
    pub locked: bool,
    /// Also build the release binary and run README command 1.
    pub smoke: bool,
    /// What to do about missing tools before anything else.
    pub setup: crate::setup::Mode,
}

pub fn run(sh: &Shell, options: Options) -> Result<()> {
    let started = Instant::now();
    let locked = options.locked.then_some("--locked");

    step("the tools the suite needs", || {
        crate::setup::run(options.setup)
    })?;
    // Needed only by the last step, and the longest build of a cold run: started now, it
    // uses the CPU the tests leave idle (schema_compat/background.rs).
    let previous_release = crate::schema_compat::BackgroundBuild::start(sh);
    step("cargo fmt --check", || {
        cmd!(sh, "cargo fmt --all -- --check").run()?;
        Ok(())
    })?;
    step("cargo clippy -D warnings", || {
        cmd!(
            sh,
            "cargo clippy {locked...} --workspace --all-targets -- -D warnings"
        )
        .run()?;
        Ok(())
    })?;

    // Integration tests take services from Docker when it answers, else from local processes;
    // tests named `*container*` need Docker, so without it it is skipped loudly.
    let services = std::env::var("DDMS_TEST_SERVICES").unwrap_or_else(|_| "auto".into());
    let official = std::env::var("DDMS_TEST_IMAGES").is_ok_and(|v| v == "official");
    let docker = services != "local" && docker_answers(sh);
    let mut skip: Vec<&str> = Vec::new();
    if docker && !official {
        step("local Docker test images", || {
            test_images::build_local_images(sh, false)
        })?;
    } else if docker {
        // The end-to-end hosts have no official image: build them on Debian's.
        step("end-to-end host images (on debian:bookworm-slim)", || {
            test_images::build_host_images_on(sh, "debian:bookworm-slim", false)
        })?;
    } else {
        eprintln!(
            "xtask: WARNING: no usable Docker engine (or DDMS_TEST_SERVICES=local): the \
             testcontainers path is NOT tested in this run; services come from local processes"
        );
        skip.extend(["--skip", "container"]);
    }
    let services = if docker { services } else { "local".into() };
    // The end-to-end deploy scenarios load each container host with hundreds of requests a
    // second: they run the release binary (built here instead of in the smoke step below).
    let e2e_ddms = if docker {
        cmd!(sh, "cargo build {locked...} --release -p ddms --bin ddms").run()?;
        Some(crate::build::target_dir(sh)?.join("release/ddms"))
    } else {
        None
    };
    step("unit and integration tests", || {
        let _env = sh.push_env("DDMS_TEST_SERVICES", &services);
        let _ddms = e2e_ddms
            .as_ref()
            .map(|path| sh.push_env("DDMS_E2E_DDMS", path));
        cmd!(sh, "cargo test {locked...} --workspace -- {skip...}").run()?;
        Ok(())
    })?;
    if options.smoke {
        step(
            "README command 1 (release build, SQLite, nothing else)",
            || crate::smoke::run(sh, options.locked),
        )?;
    }
    // The release binary when this run built one (the smoke step, the end-to-end hosts), else
    // the debug binary the integration tests were run with.
    let (profile, binary) = if options.smoke || e2e_ddms.is_some() {
        ("release", "release/ddms")
    } else {
        ("debug", "debug/ddms")
    };
    step(
        &format!("the API fuzzed from openapi.json (schemathesis, {profile} build)"),
        || {
            let ddms = crate::build::target_dir(sh)?.join(binary);
            crate::apifuzz::run(sh, &ddms)
        },
    )?;
    // Last: it needs the previous release's binary, built from its own tree in the background.
    previous_release.finish();
    step(
        "schema N-1: the previous release on the new schema (SQLite, PostgreSQL)",
        || {
            crate::schema_compat::run(
                sh,
                &crate::schema_compat::Options {
                    previous: std::env::var(crate::schema_compat::PREVIOUS_ENV).ok(),
                    backends: crate::schema_compat::ALL_BACKENDS.to_vec(),
                    locked: options.locked,
                    new_binary: Some(crate::build::target_dir(sh)?.join(binary)),
                },
            )
        },
    )?;
    println!(
        "xtask: all checks passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn step(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    println!("\nxtask: ── {name}");
    let started = Instant::now();
    f().with_context(|| format!("step failed: {name}"))?;
    println!(
        "xtask: ── {name}: ok ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn docker_answers(sh: &Shell) -> bool {
    cmd!(sh, "docker version --format '{{.Server.Version}}'")
        .quiet()
        .ignore_stderr()
        .ignore_stdout()
        .run()
        .is_ok()
}
