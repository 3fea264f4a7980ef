//! How `cargo xtask deploy` gets an artifact onto a host: through a non-root ssh user with
//! passwordless sudo, and past a local user of the host who tries to swap the artifact (and its
//! checksum) between the upload and root's install. One unprovisioned host for the upload and
//! install steps, and a provisioned fleet for a whole deploy through the sudo user.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::support::cluster::Cluster;
use crate::support::release::{ddms_binary, release_tarball, Artifact, Kind};
use crate::support::run;

const HOST: &str = "ddms1";
/// What the tampered binary leaves when anything runs it.
const MARKER: &str = "/tmp/ddms-pwned";

#[test]
fn deploy_upload_container_sudo_user_deploys_and_a_local_user_cannot_swap_the_artifact(
) -> Result<()> {
    let _exclusive = crate::support::one_cluster_at_a_time();
    let cluster = Cluster::start("ddms-e2e-upload", &[HOST], false)?;
    let dir = cluster.dir().to_path_buf();
    let genuine_sha = sha256_of(ddms_binary()?)?;

    // (b) A non-root ssh user with passwordless sudo (as cloud images have).
    cluster.ssh_ok(HOST, ADD_SUDO_USER)?;
    let up1 = release_tarball(&dir, "up1", Kind::Good)?;
    let report = deploy(&cluster, "deployer", &up1)?;
    let host = upload_and_install_ok(&report).context("deploy as `deployer` with sudo")?;
    ensure!(host["release"] == "up1", "installed: {host}");
    ensure!(
        installed_sha(&cluster, "up1")? == genuine_sha,
        "up1's binary is not the one uploaded"
    );
    let owner = cluster.ssh_ok(HOST, "stat -c %U /opt/ddms/releases/up1/ddms")?;
    ensure!(owner.trim() == "root", "installed as {owner}");
    no_leftovers(&cluster)?;

    // (a) A local user pre-creates the old fixed upload path as a symlink to a directory of
    // hers and swaps every artifact it can reach, with a matching checksum, for one whose binary leaves
    // a marker as whoever runs it.
    let evil = evil_artifact(&dir, "up2")?;
    cluster.ssh_ok(HOST, "useradd -m -s /bin/sh mallory")?;
    cluster.scp_to(HOST, &evil, "/home/mallory/evil.tar.gz")?;
    let watcher = dir.join("watch.sh");
    std::fs::write(&watcher, WATCHER)?;
    cluster.scp_to(HOST, &watcher, "/home/mallory/watch.sh")?;
    cluster.ssh_ok(
        HOST,
        "set -e; cd /home/mallory; \
         sha256sum evil.tar.gz | sed 's/evil.tar.gz/ddms-up2.tar.gz/' > evil.sha256; \
         chown mallory: evil.tar.gz evil.sha256 watch.sh; \
         su -s /bin/sh mallory -c 'mkdir -m 0777 /home/mallory/drop; \
           ln -s /home/mallory/drop /var/tmp/ddms-deploy; \
           setsid sh /home/mallory/watch.sh </dev/null >/dev/null 2>&1 &'",
    )?;
    wait_for(
        &cluster,
        "test -e /home/mallory/watching",
        "the watcher to start",
    )?;

    let up2 = release_tarball(&dir, "up2", Kind::Good)?;
    let report = deploy(&cluster, "root", &up2)?;
    let marker = cluster.ssh(HOST, &format!("cat {MARKER}"))?;
    ensure!(
        !marker.status.success(),
        "the tampered binary ran on the host as uid {}; report: {report}",
        String::from_utf8_lossy(&marker.stdout).trim()
    );
    let installed = cluster.ssh(HOST, "sha256sum /opt/ddms/releases/up2/ddms")?;
    if installed.status.success() {
        let sha = String::from_utf8_lossy(&installed.stdout);
        ensure!(
            sha.split_whitespace().next() == Some(genuine_sha.as_str()),
            "up2 was installed from the swapped artifact; report: {report}"
        );
    }
    // Unaffected, not merely refused: mallory's files never came near the install.
    let host = upload_and_install_ok(&report).context("deploy past the watcher")?;
    ensure!(host["release"] == "up2", "installed: {host}");
    ensure!(
        cluster
            .ssh(HOST, "pgrep -u mallory -f watch.sh")?
            .status
            .success(),
        "the watcher died, so the run proves nothing"
    );
    no_leftovers(&cluster)?;
    Ok(())
}

/// A whole deploy (upload, install, activate with its watch) to a provisioned fleet through a
/// non-root ssh user with passwordless sudo, then `cargo xtask status` through the same user.
#[test]
fn deploy_upload_container_a_sudo_user_deploys_to_a_provisioned_fleet() -> Result<()> {
    let _exclusive = crate::support::one_cluster_at_a_time();
    let xtask = std::path::PathBuf::from(env!("CARGO_BIN_EXE_xtask"));
    let fleet = crate::fleet::Fleet::provision("ddms-e2e-sudo", &xtask, "v1")?;
    for host in crate::fleet::HOSTS {
        fleet.cluster.ssh_ok(host, ADD_SUDO_USER)?;
    }
    let v2 = release_tarball(fleet.cluster.dir(), "v2", Kind::Good)?;
    let inventory = fleet.cluster.dir().join("hosts-deployer.yml");
    fleet
        .cluster
        .write_inventory(&inventory, &json!({ "ansible_user": "deployer" }))?;
    let report_path = fleet.cluster.dir().join("report-deployer-v2.json");
    let output = Command::new(&xtask)
        .args(["deploy", "--env", "e2e", "--inventory"])
        .arg(&inventory)
        .arg("--artifact")
        .arg(&v2.tarball)
        .arg("--report")
        .arg(&report_path)
        .envs([
            ("DDMS_RELEASE_WATCH", "3"),
            ("DDMS_RELEASE_READY_TIMEOUT", "30"),
            ("DDMS_RELEASE_DRAIN_TIMEOUT", "15"),
        ])
        .stdin(Stdio::null())
        .output()?;
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).with_context(|| {
            format!(
                "no report:\n{}",
                crate::support::tail(&String::from_utf8_lossy(&output.stderr), 40)
            )
        })?)?;
    ensure!(
        output.status.success() && report["result"] == "ok",
        "deploy through sudo: {report}"
    );
    for host in crate::fleet::HOSTS {
        let record = crate::fleet::host_record(&report, host)?;
        ensure!(record["release"] == "v2", "{host}: {record}");
        ensure!(record["record"]["result"] == "ok", "{host}: {record}");
    }
    let status = Command::new(&xtask)
        .args(["status", "--env", "e2e", "--inventory"])
        .arg(&inventory)
        .output()?;
    ensure!(
        status.status.success(),
        "status through sudo: {}{}",
        String::from_utf8_lossy(&status.stdout),
        String::from_utf8_lossy(&status.stderr)
    );
    for host in crate::fleet::HOSTS {
        let left = fleet.cluster.ssh_ok(
            host,
            "ls -d /tmp/ddms-upload.* /var/tmp/ddms-install.* 2>/dev/null || true",
        )?;
        ensure!(left.trim().is_empty(), "{host}: left behind: {left}");
    }
    Ok(())
}

/// A user `deployer` that logs in with the cluster's key and may run anything through
/// passwordless sudo (as cloud images set up their default user).
const ADD_SUDO_USER: &str = "set -e; useradd -m -s /bin/sh deployer; usermod -p '*' deployer; \
     install -d -m 0700 -o deployer -g deployer ~deployer/.ssh; \
     install -m 0600 -o deployer -g deployer /root/.ssh/authorized_keys ~deployer/.ssh/; \
     echo 'deployer ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/deployer; \
     chmod 0440 /etc/sudoers.d/deployer";

/// Swaps whatever artifact it can reach, as the unprivileged user `mallory`: in the old fixed
/// upload path (her symlink's target), and in any of the deploy's temp directories it can
/// read. Polls (it is the attacker, not the test, that loops).
const WATCHER: &str = r#"evil=/home/mallory/evil.tar.gz
sum=/home/mallory/evil.sha256
touch /home/mallory/watching
while :; do
  for f in /home/mallory/drop/*.tar.gz /tmp/ddms-upload.*/*.tar.gz /var/tmp/ddms-install.*/*.tar.gz; do
    [ -f "$f" ] || continue
    cmp -s "$f" "$evil" || { cp "$evil" "$f.new" 2>/dev/null && mv -f "$f.new" "$f" 2>/dev/null; }
    cmp -s "$f.sha256" "$sum" || { cp "$sum" "$f.sha256.new" 2>/dev/null && mv -f "$f.sha256.new" "$f.sha256" 2>/dev/null; }
  done
  sleep 0.01
done
"#;

/// `ddms-<release>.tar.gz` whose `ddms` writes the uid running it to [`MARKER`] and then
/// passes for a ddms binary.
fn evil_artifact(dir: &Path, release: &str) -> Result<std::path::PathBuf> {
    let stage = dir.join("evil-stage");
    let top = stage.join(format!("ddms-{release}"));
    std::fs::create_dir_all(&top)?;
    let binary = top.join("ddms");
    std::fs::write(
        &binary,
        format!("#!/bin/sh\nid -u > {MARKER}\necho 'ddms 9.9.9 (git evil)'\n"),
    )?;
    run(Command::new("chmod").arg("0755").arg(&binary))?;
    let tarball = dir.join("evil.tar.gz");
    run(Command::new("tar")
        .arg("-czf")
        .arg(&tarball)
        .arg("-C")
        .arg(&stage)
        .arg(format!("ddms-{release}")))?;
    Ok(tarball)
}

/// `cargo xtask deploy` of `artifact` to the cluster's host as ssh user `user`; the report.
/// Activation cannot succeed on an unprovisioned host and is not judged here.
fn deploy(cluster: &Cluster, user: &str, artifact: &Artifact) -> Result<Value> {
    let dir = cluster.dir();
    let inventory = dir.join(format!("hosts-{user}.yml"));
    cluster.write_inventory(&inventory, &json!({ "ansible_user": user }))?;
    let report = dir.join(format!("report-{user}-{}.json", artifact.release));
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["deploy", "--env", "e2e", "--inventory"])
        .arg(&inventory)
        .arg("--artifact")
        .arg(&artifact.tarball)
        .arg("--report")
        .arg(&report)
        .env("DDMS_RELEASE_READY_TIMEOUT", "5")
        .env("DDMS_RELEASE_WATCH", "1")
        .stdin(Stdio::null())
        .output()?;
    let text = std::fs::read_to_string(&report).with_context(|| {
        format!(
            "no report from xtask deploy (exit {:?}):\n{}",
            output.status.code(),
            crate::support::tail(&String::from_utf8_lossy(&output.stderr), 40)
        )
    })?;
    Ok(serde_json::from_str(&text)?)
}

/// The host's entry of `report` when its upload and install steps both succeeded.
fn upload_and_install_ok(report: &Value) -> Result<&Value> {
    let host = report["hosts"]
        .as_array()
        .and_then(|h| h.first())
        .with_context(|| format!("no host in the report: {report}"))?;
    for name in ["upload", "install"] {
        let step = host["steps"]
            .as_array()
            .and_then(|steps| steps.iter().find(|s| s["name"] == name));
        match step {
            Some(step) if step["ok"] == true => {}
            Some(step) => bail!("step {name} failed: {}; host: {host}", step["detail"]),
            None => bail!("no step {name}; host: {host}"),
        }
    }
    Ok(host)
}

fn installed_sha(cluster: &Cluster, release: &str) -> Result<String> {
    let out = cluster.ssh_ok(
        HOST,
        &format!("sha256sum /opt/ddms/releases/{release}/ddms"),
    )?;
    Ok(out
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// Neither the upload nor the private install directory outlives a deploy.
fn no_leftovers(cluster: &Cluster) -> Result<()> {
    let left = cluster.ssh_ok(
        HOST,
        "ls -d /tmp/ddms-upload.* /var/tmp/ddms-install.* /home/deployer/ddms-upload.* 2>/dev/null || true",
    )?;
    ensure!(left.trim().is_empty(), "left behind: {left}");
    Ok(())
}

fn sha256_of(path: &Path) -> Result<String> {
    let out = run(Command::new("sha256sum").arg(path))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// Polls `cmd` on the host until it succeeds.
fn wait_for(cluster: &Cluster, cmd: &str, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if cluster.ssh(HOST, cmd)?.status.success() {
            return Ok(());
        }
        // sleep: the poll interval of this wait with a deadline
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out waiting for {what}")
}
