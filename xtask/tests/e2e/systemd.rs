//! `ddms release` with the systemd service manager, on a host whose PID 1 is systemd
//! (`ddms-test/systemd-host`): `ansible/site.yml` installs `ops/systemd/ddms@.service` and
//! activates the first release as `ddms@<slot>` under it, hardened as shipped; then
//! `cargo xtask deploy` — given no `DDMS_RELEASE_*` at all, so the service manager and the gates
//! come from the host's `/etc/ddms/release.env` — starts the other slot's unit and stops the
//! old one.

use std::process::{Command, Stdio};

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};

use crate::provision::{assert_provisioned, https_get, provisioning_vars, tls_material};
use crate::support::ansible::ansible_playbook;
use crate::support::cluster::Cluster;
use crate::support::release::{release_tarball, Kind};
use crate::support::{project_root, tail};

const HOST: &str = "ddms1";

#[test]
fn e2e_container_systemd_host_runs_slots_as_hardened_units_and_a_deploy_moves_to_the_other_slot(
) -> Result<()> {
    let _exclusive = crate::support::one_cluster_at_a_time();
    let cluster = Cluster::start_with_systemd("ddms-e2e-systemd", &[HOST], true)?;
    // sshd answers once boot reached it; wait for the rest of boot too.
    let boot = cluster.ssh(
        HOST,
        "systemctl is-system-running --wait; systemctl --failed --no-legend",
    )?;
    let boot = String::from_utf8_lossy(&boot.stdout).into_owned();
    ensure!(
        boot.starts_with("running"),
        "systemd did not boot cleanly:\n{boot}"
    );

    let dir = cluster.dir();
    let certs = tls_material(&cluster)?;
    let mut vars = provisioning_vars(&certs);
    vars["ddms_service_manager"] = json!("systemd");
    let inventory = dir.join("hosts.yml");
    cluster.write_inventory(&inventory, &vars)?;
    let v1 = release_tarball(dir, "v1", Kind::Good)?;
    let release = json!({
        "ddms_release": v1.release,
        "ddms_artifact_src": v1.tarball.display().to_string(),
    });
    let provisioned = ansible_playbook("site.yml", &inventory, &release, &[])?;
    assert_provisioned(&provisioned, &cluster)?;

    let unit = cluster.ssh_ok(HOST, "cat /etc/systemd/system/ddms@.service")?;
    let shipped = std::fs::read_to_string(project_root().join("ops/systemd/ddms@.service"))?;
    assert_eq!(unit, shipped, "the role installs the unit as shipped");
    let first = active_slot(&cluster)?;
    assert_unit_serves(&cluster, &first, "v1")?;
    let second = if first == "blue" { "green" } else { "blue" };
    assert_unit_stopped(&cluster, second)?;

    // A deploy from the fleet side with nothing but the artifact: release.env decides.
    let v2 = release_tarball(dir, "v2", Kind::Good)?;
    let report = dir.join("deploy.json");
    let mut deploy = Command::new(env!("CARGO_BIN_EXE_xtask"));
    deploy
        .args(["deploy", "--env", "e2e", "--inventory"])
        .arg(&inventory)
        .arg("--artifact")
        .arg(&v2.tarball)
        .arg("--report")
        .arg(&report)
        .stdin(Stdio::null());
    for (key, _) in std::env::vars() {
        if key.starts_with("DDMS_RELEASE_") {
            deploy.env_remove(key);
        }
    }
    let output = deploy.output().context("cannot run xtask deploy")?;
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report).with_context(|| {
            format!(
                "no deploy report:\n{}",
                tail(&String::from_utf8_lossy(&output.stderr), 40)
            )
        })?)?;
    ensure!(
        output.status.success() && report["result"] == "ok",
        "deploy of v2 (exit {:?}): {report:#}\n{}\n{}",
        output.status.code(),
        tail(&String::from_utf8_lossy(&output.stderr), 40),
        journal(&cluster, second)
    );
    // The watch lasted the role's `ddms_watch` (2 s), not `ddms release`'s default of 30 s:
    // the host's release.env reached the deploy.
    let watch = report["hosts"][0]["record"]["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["name"] == "watch"))
        .and_then(|s| s["duration_ms"].as_u64())
        .with_context(|| format!("no watch step: {report:#}"))?;
    assert!((2_000..10_000).contains(&watch), "watch took {watch} ms");
    assert_eq!(active_slot(&cluster)?, second);
    assert_unit_serves(&cluster, second, "v2")?;
    assert_unit_stopped(&cluster, &first)?;
    let (code, version) = https_get(&certs, &cluster.host(HOST).ip, "/api/version")?;
    assert_eq!(code, 200, "{version}");
    let version: Value = serde_json::from_str(&version)?;
    assert_eq!(version["version"], v2.version.as_str(), "{version}");
    assert_eq!(
        version["slot"], second,
        "nginx serves the new slot: {version}"
    );
    Ok(())
}

/// `ddms release status` with the host's own options (release.env), as JSON.
fn status(cluster: &Cluster) -> Result<Value> {
    let out = cluster.ssh_ok(
        HOST,
        "set -a; . /etc/ddms/release.env; set +a; /usr/local/bin/ddms release status",
    )?;
    serde_json::from_str(&out).with_context(|| format!("status: {out}"))
}

fn active_slot(cluster: &Cluster) -> Result<String> {
    let status = status(cluster)?;
    let active: Vec<&str> = ["blue", "green"]
        .into_iter()
        .filter(|slot| status["slots"][slot]["active"] == true)
        .collect();
    ensure!(active.len() == 1, "exactly one active slot: {status:#}");
    Ok(active[0].to_string())
}

/// `ddms@<slot>` is active under the shipped hardening, runs `release`'s binary as the service
/// user with no capabilities, and is what `ddms release status` calls running and ready.
fn assert_unit_serves(cluster: &Cluster, slot: &str, release: &str) -> Result<()> {
    let unit = format!("ddms@{slot}");
    let show = cluster.ssh_ok(
        HOST,
        &format!(
            "systemctl show {unit} -p ActiveState -p SubState -p MainPID -p User \
             -p NoNewPrivileges -p ProtectSystem -p PrivateTmp -p CapabilityBoundingSet"
        ),
    )?;
    let property = |name: &str| {
        show.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_default()
            .to_string()
    };
    let context = || format!("{unit}:\n{show}\n{}", journal(cluster, slot));
    ensure!(property("ActiveState") == "active", "{}", context());
    ensure!(property("SubState") == "running", "{}", context());
    ensure!(property("User") == "ddms", "{}", context());
    ensure!(property("NoNewPrivileges") == "yes", "{}", context());
    ensure!(property("ProtectSystem") == "strict", "{}", context());
    ensure!(property("PrivateTmp") == "yes", "{}", context());
    ensure!(
        property("CapabilityBoundingSet").is_empty(),
        "{}",
        context()
    );
    let pid = property("MainPID");
    let process = cluster.ssh_ok(
        HOST,
        &format!(
            "tr '\\0' ' ' < /proc/{pid}/cmdline; echo; readlink -f /opt/ddms/slots/{slot}/ddms; \
             id -u ddms; grep -E '^(Uid|CapEff|NoNewPrivs):' /proc/{pid}/status"
        ),
    )?;
    // (/proc/<pid>/exe is not readable here: the container's root has no CAP_SYS_PTRACE.)
    let mut lines = process.lines();
    let command = lines.next().unwrap_or_default().trim();
    assert_eq!(
        command,
        format!("/opt/ddms/slots/{slot}/ddms serve"),
        "{unit}: {process}"
    );
    let binary = lines.next().unwrap_or_default();
    assert_eq!(
        binary,
        format!("/opt/ddms/releases/{release}/ddms"),
        "{unit}: {process}"
    );
    let uid = lines.next().unwrap_or_default().trim().to_string();
    assert_ne!(uid, "0", "{process}");
    let rest: Vec<String> = lines
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    // In the order of /proc/<pid>/status.
    assert_eq!(
        rest,
        [
            format!("Uid: {uid} {uid} {uid} {uid}"),
            "CapEff: 0000000000000000".to_string(),
            "NoNewPrivs: 1".to_string(),
        ],
        "{unit}: {process}"
    );
    let status = status(cluster)?;
    assert_eq!(status["slots"][slot]["release"], release, "{status:#}");
    assert_eq!(status["slots"][slot]["running"], true, "{status:#}");
    assert_eq!(status["slots"][slot]["ready"], true, "{status:#}");
    Ok(())
}

fn assert_unit_stopped(cluster: &Cluster, slot: &str) -> Result<()> {
    let state = cluster.ssh(HOST, &format!("systemctl is-active ddms@{slot}"))?;
    let state = String::from_utf8_lossy(&state.stdout).trim().to_string();
    ensure!(
        state == "inactive",
        "ddms@{slot} is {state}\n{}",
        journal(cluster, slot)
    );
    Ok(())
}

/// The slot unit's journal, for failure messages.
fn journal(cluster: &Cluster, slot: &str) -> String {
    cluster
        .ssh(HOST, &format!("journalctl --no-pager -n 40 -u ddms@{slot}"))
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
