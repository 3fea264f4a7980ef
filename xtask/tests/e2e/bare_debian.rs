//! README command 2's set-up phase on a machine with nothing but Debian and Rust: a container
//! of `ddms-test/base` (a minimal debootstrap, no Python, no PostgreSQL, no browser) with the
//! host's Rust toolchain mounted read-only runs the xtask this build made. `setup --check` must
//! first find things missing and exit 1, `setup` must install them (apt, pip, as root), and
//! `setup --check` must then report nothing missing.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{ensure, Context, Result};

use crate::support::tail;

const BASE_IMAGE: &str = "ddms-test/base:bookworm";
/// Containers are named `<prefix><pid>`: one left by a killed run is removed by the next.
const CONTAINER_PREFIX: &str = "ddms-e2e-bare-";

#[test]
fn e2e_container_bare_debian_setup_installs_what_the_suite_needs_then_reports_nothing_missing(
) -> Result<()> {
    // Installing Chromium, PostgreSQL and Docker's packages takes both cores for minutes: not
    // beside a cluster of hosts that must answer within their timeouts.
    let _exclusive = crate::support::one_cluster_at_a_time();
    remove_leftovers();
    let home = PathBuf::from(std::env::var_os("HOME").context("HOME is set")?);
    let rustup_home = std::env::var_os("RUSTUP_HOME").map_or(home.join(".rustup"), PathBuf::from);
    let cargo_home = std::env::var_os("CARGO_HOME").map_or(home.join(".cargo"), PathBuf::from);
    let name = format!("{CONTAINER_PREFIX}{}", std::process::id());
    let mount = |from: &std::path::Path, to: &str| format!("{}:{to}:ro", from.display());
    // Each step prints a marker with its exit status, so one run shows all three.
    let script = "xtask setup --check; echo \"== check before: $?\"; \
                  xtask setup; echo \"== setup: $?\"; \
                  xtask setup --check; echo \"== check after: $?\"";
    let mut docker = Command::new("docker");
    docker.args(["run", "--rm", "--name", &name]);
    pass_on_package_index_settings(&mut docker);
    let output = docker
        .args([
            "-v",
            &mount(env!("CARGO_BIN_EXE_xtask").as_ref(), "/usr/local/bin/xtask"),
        ])
        .args(["-v", &mount(&rustup_home, "/opt/rust/rustup")])
        .args(["-v", &mount(&cargo_home, "/opt/rust/cargo")])
        .args([
            "-e",
            "RUSTUP_HOME=/opt/rust/rustup",
            "-e",
            "CARGO_HOME=/opt/rust/cargo",
        ])
        .args([
            "-e",
            "PATH=/opt/rust/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ])
        .args([BASE_IMAGE, "sh", "-c", script])
        .output()
        .context("cannot run docker")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let context = || {
        format!(
            "{}\n--- stderr ---\n{}",
            tail(&stdout, 60),
            tail(&stderr, 30)
        )
    };
    ensure!(output.status.success(), "docker run failed: {}", context());

    let (before, rest) = split_at_marker(&stdout, "== check before: ")
        .with_context(|| format!("no first check: {}", context()))?;
    ensure!(
        rest.status == "1",
        "on a bare Debian `setup --check` must exit 1: {}",
        context()
    );
    // What only a full machine has, so the check looked for real.
    for package in [
        "postgresql-15",
        "chromium",
        "python3-pip",
        "schemathesis==4.32.5",
    ] {
        ensure!(
            before.contains(package),
            "the first check does not name {package} as missing: {}",
            context()
        );
    }
    let (_, setup) = split_at_marker(rest.after, "== setup: ")
        .with_context(|| format!("no setup run: {}", context()))?;
    ensure!(setup.status == "0", "`setup` failed: {}", context());
    let (after, check) = split_at_marker(setup.after, "== check after: ")
        .with_context(|| format!("no second check: {}", context()))?;
    ensure!(
        check.status == "0" && after.contains("setup: nothing missing"),
        "after `setup`, `setup --check` still finds something missing: {}",
        context()
    );
    Ok(())
}

struct Marker<'a> {
    status: &'a str,
    after: &'a str,
}

/// The text before `marker`, the status on its line, and the text after that line.
fn split_at_marker<'a>(text: &'a str, marker: &str) -> Option<(&'a str, Marker<'a>)> {
    let at = text.find(marker)?;
    let line_end = text[at..].find('\n').map_or(text.len(), |n| at + n);
    let status = text[at + marker.len()..line_end].trim();
    let after = text.get(line_end + 1..).unwrap_or("");
    Some((&text[..at], Marker { status, after }))
}

/// The machine's way to PyPI, as a new machine of this kind would have it: pip's settings and
/// proxies from the environment, and the CA bundle pip is told to trust (a TLS-inspecting
/// proxy's CA is in the host's bundle, not in the one Debian's ca-certificates installs).
fn pass_on_package_index_settings(docker: &mut Command) {
    let host_bundle = std::env::var("PIP_CERT")
        .unwrap_or_else(|_| "/etc/ssl/certs/ca-certificates.crt".to_owned());
    if std::path::Path::new(&host_bundle).is_file() {
        docker.args(["-v", &format!("{host_bundle}:/etc/ddms-host-ca.crt:ro")]);
        docker.args(["-e", "PIP_CERT=/etc/ddms-host-ca.crt"]);
    }
    for (key, value) in std::env::vars() {
        let upper = key.to_ascii_uppercase();
        let is_proxy = ["HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"].contains(&upper.as_str());
        if key == "PIP_CERT" || !(key.starts_with("PIP_") || is_proxy) {
            continue;
        }
        if key == "PIP_FIND_LINKS" && std::path::Path::new(&value).is_dir() {
            docker.args(["-v", &format!("{value}:{value}:ro")]);
        }
        docker.args(["-e", &format!("{key}={value}")]);
    }
}

fn remove_leftovers() {
    let listed = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("name={CONTAINER_PREFIX}")])
        .output();
    if let Ok(listed) = listed {
        for id in String::from_utf8_lossy(&listed.stdout).split_whitespace() {
            let _ = Command::new("docker").args(["rm", "-f", id]).output();
        }
    }
}
