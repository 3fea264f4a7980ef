//! `ansible/site.yml` provisions a cluster from scratch, and a second run changes nothing.

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};

use crate::support::ansible::{ansible_playbook, PlaybookRun};
use crate::support::cluster::Cluster;
use crate::support::release::{release_tarball, Kind};
use crate::support::{run, tail};

#[test]
fn e2e_container_site_playbook_provisions_two_hosts_and_a_second_run_changes_nothing() -> Result<()>
{
    let _exclusive = crate::support::one_cluster_at_a_time();
    let cluster = Cluster::start("ddms-e2e-site", &["ddms1", "ddms2"], true)?;
    let dir = cluster.dir();
    let certs = tls_material(&cluster)?;
    let artifact = release_tarball(dir, "v1", Kind::Good)?;
    let inventory = dir.join("hosts.yml");
    cluster.write_inventory(&inventory, &provisioning_vars(&certs))?;
    let release = json!({
        "ddms_release": artifact.release,
        "ddms_artifact_src": artifact.tarball.display().to_string(),
    });

    let first = ansible_playbook("site.yml", &inventory, &release, &[])?;
    assert_provisioned(&first, &cluster)?;
    for host in cluster.ddms_hosts() {
        let ready = https_get(&certs, &host.ip, "/ready")?;
        assert_eq!(
            ready.0, 200,
            "/ready through nginx on {}: {}",
            host.name, ready.1
        );
        let version = https_get(&certs, &host.ip, "/api/version")?;
        assert_eq!(version.0, 200, "{}", version.1);
        let version: Value = serde_json::from_str(&version.1)?;
        assert_eq!(version["version"], artifact.version.as_str(), "{version}");
        let status = release_status(&cluster, &host.name)?;
        let active: Vec<&str> = ["blue", "green"]
            .into_iter()
            .filter(|slot| status["slots"][slot]["active"] == true)
            .collect();
        assert_eq!(active.len(), 1, "exactly one active slot: {status:#}");
        let slot = &status["slots"][active[0]];
        assert_eq!(slot["release"], "v1", "{status:#}");
        assert_eq!(slot["running"], true, "{status:#}");
        assert_eq!(slot["ready"], true, "{status:#}");
        assert_eq!(version["slot"], active[0], "nginx serves the active slot");
        let idle = if active[0] == "blue" { "green" } else { "blue" };
        assert_eq!(status["slots"][idle]["running"], false, "{status:#}");
        assert_eq!(status["last_known_good"], "v1", "{status:#}");
        assert_release_env(&cluster, &host.name)?;
    }
    if mqtt_external() {
        // /ready needs the broker; the broker's log says who connected, over TLS, as whom.
        let log = cluster.ssh_ok("db1", "cat /var/log/mosquitto/mosquitto.log")?;
        for host in cluster.ddms_hosts() {
            let ingester = format!("from {}:", host.ip);
            assert!(
                log.lines().any(|l| l.contains(&ingester)
                    && l.contains(&format!("as ddms-{}-", host.name))
                    && l.contains("u'ddms'")),
                "{}'s ingester is not connected to Mosquitto as `ddms`:\n{log}",
                host.name
            );
        }
    }

    let second = ansible_playbook("site.yml", &inventory, &release, &[])?;
    assert_provisioned(&second, &cluster)?;
    let changed: Vec<(&String, u32)> = second
        .recap
        .iter()
        .filter(|(_, r)| r.changed > 0)
        .map(|(host, r)| (host, r.changed))
        .collect();
    assert!(
        changed.is_empty(),
        "the second run changed {changed:?}:\n{}",
        second.changed_tasks().join("\n")
    );
    // Still one deploy per host: the second run did not activate again.
    for host in cluster.ddms_hosts() {
        let deploys = cluster.ssh_ok(&host.name, "wc -l < /var/lib/ddms/deploys.jsonl")?;
        assert_eq!(deploys.trim(), "1", "{}", host.name);
    }
    Ok(())
}

/// The role wrote the host's `ddms release` options where `cargo xtask deploy` loads them:
/// root-owned, world-readable (no secrets), the inventory's gates, sourced as `xtask` does.
fn assert_release_env(cluster: &Cluster, host: &str) -> Result<()> {
    let file = "/etc/ddms/release.env";
    let mode = cluster.ssh_ok(host, &format!("stat -c '%a %U:%G' {file}"))?;
    assert_eq!(mode.trim(), "644 root:root", "{host}: {file}");
    let sourced = cluster.ssh_ok(
        host,
        &format!("env -i sh -c 'set -a; . {file}; set +a; env' | grep '^DDMS_' | sort"),
    )?;
    for expected in [
        "DDMS_CONFIG=/etc/ddms/ddms.toml",
        "DDMS_RELEASE_SERVICE_MANAGER=direct",
        "DDMS_RELEASE_WATCH=2",
        "DDMS_RELEASE_READY_TIMEOUT=60",
        "DDMS_RELEASE_DRAIN_TIMEOUT=10",
        "DDMS_RELEASE_LOCK_TTL=15",
        "DDMS_RELEASE_MAX_5XX_RATIO=0.01",
        "DDMS_RELEASE_BLUE_PORT=8081",
        "DDMS_RELEASE_GREEN_PORT=8082",
    ] {
        assert!(
            sourced.lines().any(|l| l == expected),
            "{host}: {file} lacks {expected}:\n{sourced}"
        );
    }
    // Who deploys is the deploying machine's to say, not the host's.
    assert!(
        !sourced.contains("DDMS_RELEASE_ACTOR"),
        "{host}:\n{sourced}"
    );
    Ok(())
}

/// Every host of the cluster is in the recap with failed=0 and unreachable=0.
pub(crate) fn assert_provisioned(run: &PlaybookRun, cluster: &Cluster) -> Result<()> {
    for host in cluster.hosts() {
        let recap = run.recap.get(&host.name);
        ensure!(
            run.code == 0 && recap.is_some_and(|r| r.failed == 0 && r.unreachable == 0 && r.ok > 0),
            "site.yml on {} (exit {}): {recap:?}\n{}\n{}",
            host.name,
            run.code,
            tail(&run.stdout, 80),
            tail(&run.stderr, 20)
        );
    }
    Ok(())
}

pub(crate) struct Certs {
    dir: std::path::PathBuf,
}

impl Certs {
    pub(crate) fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// A CA and the dashboard's and broker's certificates for every host's address, by
/// `cargo xtask certs` (this crate's own binary).
pub(crate) fn tls_material(cluster: &Cluster) -> Result<Certs> {
    let dir = cluster.dir().join("certs");
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    command.args(["certs", "--days", "2", "--out"]).arg(&dir);
    for host in cluster.hosts() {
        command.args(["--host", &host.ip]);
    }
    run(&mut command)?;
    Ok(Certs { dir })
}

/// A fresh random secret (hex), never stored anywhere but the test's temp dir.
fn secret() -> Result<String> {
    let bytes = std::fs::read("/proc/sys/kernel/random/uuid")
        .and_then(|a| std::fs::read("/proc/sys/kernel/random/uuid").map(|b| [a, b].concat()))
        .context("random bytes")?;
    Ok(String::from_utf8_lossy(&bytes)
        .chars()
        .filter(char::is_ascii_hexdigit)
        .collect())
}

/// The inventory variables of the test environment: secrets made up here, the TLS files, no
/// apt index refresh (the images have every package), the direct service manager, short gates.
pub(crate) fn provisioning_vars(certs: &Certs) -> Value {
    let secret = || secret().expect("random secret");
    let mqtt = if mqtt_external() { "external" } else { "off" };
    json!({
        "common_apt_update_cache": false,
        "postgresql_ddms_password": secret(),
        "mosquitto_dynsec_admin_password": secret(),
        "mosquitto_ddms_password": secret(),
        "mosquitto_tls_cert_src": certs.file("broker.crt"),
        "mosquitto_tls_key_src": certs.file("broker.key"),
        "mosquitto_tls_ca_src": certs.file("ca.crt"),
        // No syslog daemon in the containers.
        "mosquitto_log_dest": "file /var/log/mosquitto/mosquitto.log",
        "nginx_tls_cert_src": certs.file("server.crt"),
        "nginx_tls_key_src": certs.file("server.key"),
        "ddms_mqtt_mode": mqtt,
        "ddms_service_manager": "direct",
        "ddms_watch": 2,
        "ddms_ready_timeout": 60,
        "ddms_drain_timeout": 10,
        "ddms_lock_ttl": 15,
        "ddms_actor": "e2e-test",
    })
}

/// MQTT through the db host's Mosquitto over TLS (with dynamic security), unless
/// `DDMS_E2E_MQTT=off`.
fn mqtt_external() -> bool {
    std::env::var("DDMS_E2E_MQTT").map_or(true, |v| v != "off")
}

/// `GET https://<ip><path>` with curl, verifying nginx's certificate against the test CA:
/// (status, body).
pub(crate) fn https_get(certs: &Certs, ip: &str, path: &str) -> Result<(u16, String)> {
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10", "--cacert"])
        .arg(Path::new(&certs.file("ca.crt")))
        .args(["--write-out", "\n%{http_code}"])
        .arg(format!("https://{ip}{path}"))
        .output()
        .context("cannot run curl")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(
        output.status.success(),
        "curl https://{ip}{path}: {}{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Ok((code.trim().parse()?, body.to_string()))
}

/// `ddms release status` on a host (through the link the role maintains), as JSON.
fn release_status(cluster: &Cluster, host: &str) -> Result<Value> {
    let out = cluster.ssh_ok(
        host,
        "DDMS_RELEASE_SERVICE_MANAGER=direct /usr/local/bin/ddms release status",
    )?;
    serde_json::from_str(&out).with_context(|| format!("status on {host}: {out}"))
}
