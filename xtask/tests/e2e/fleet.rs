//! A provisioned fleet for the deploy scenarios and `cargo xtask bench deploy`: two ddms hosts
//! and a database host (the harness's [`Cluster`]), provisioned by `ansible/site.yml` with a
//! first release, a CA and server certificate from `cargo xtask certs`, an API token made with
//! `ddms token create` over ssh, and a Modbus device whose readings keep events flowing.
//! `cargo xtask deploy|status` run as processes against the fleet's inventory.

// The bench driver uses only part of this.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::support::ansible::ansible_playbook;
use crate::support::cluster::Cluster;
use crate::support::release::{release_tarball, Artifact, Kind};
use crate::support::run;
use crate::support::wait::{self, Check};
use crate::traffic::{self, ModbusDevice, Target};

pub const HOSTS: [&str; 2] = ["ddms1", "ddms2"];
/// The inventory environment name the fleet's reports carry.
pub const ENV: &str = "e2e";

pub struct Fleet {
    pub cluster: Cluster,
    pub inventory: PathBuf,
    pub ca_pem: Vec<u8>,
    pub token: String,
    pub targets: Vec<Target>,
    pub modbus: ModbusDevice,
    pub xtask: PathBuf,
    pub first: Artifact,
}

/// Prints a timestamped progress line (the suite is long; show where it is).
pub fn say(what: impl std::fmt::Display) {
    eprintln!("e2e {}: {what}", traffic::humantime(SystemTime::now()));
}

impl Fleet {
    /// Starts the cluster, provisions it with release `first` and waits until events flow.
    pub fn provision(name_prefix: &str, xtask: &Path, first: &str) -> Result<Fleet> {
        let started = Instant::now();
        let cluster = Cluster::start(name_prefix, &HOSTS, true)?;
        let dir = cluster.dir().to_path_buf();
        let first = release_tarball(&dir, first, Kind::Good)?;
        let certs = dir.join("certs");
        let mut certs_cmd = Command::new(xtask);
        certs_cmd
            .args(["certs", "--days", "2", "--out"])
            .arg(&certs);
        for host in cluster.hosts() {
            certs_cmd.args(["--host", &host.ip]);
        }
        run(&mut certs_cmd)?;
        let inventory = dir.join("hosts.yml");
        cluster.write_inventory(&inventory, &inventory_vars(&certs)?)?;
        let release = json!({
            "ddms_release": first.release,
            "ddms_artifact_src": first.tarball.display().to_string(),
        });
        say("ansible-playbook site.yml");
        let play = ansible_playbook("site.yml", &inventory, &release, &[])?;
        ensure!(
            play.code == 0 && play.all_ok(),
            "site.yml failed (exit {}):\n{}\n{}",
            play.code,
            crate::support::tail(&play.stdout, 60),
            crate::support::tail(&play.stderr, 20)
        );
        say(format!(
            "provisioned in {:.0} s",
            started.elapsed().as_secs_f64()
        ));
        let ca_pem = std::fs::read(certs.join("ca.crt"))?;
        let token = admin_token(&cluster, HOSTS[0], "e2e-deploy")?;
        let targets: Vec<Target> = cluster
            .ddms_hosts()
            .iter()
            .map(|h| Target {
                host: h.name.clone(),
                base: format!("https://{}", h.ip),
            })
            .collect();
        let modbus = ModbusDevice::start()?;
        let gateway = gateway(&cluster.ddms_hosts()[0].container)?;
        let fleet = Fleet {
            cluster,
            inventory,
            ca_pem,
            token,
            targets,
            modbus,
            xtask: xtask.to_path_buf(),
            first,
        };
        fleet.create_device(&gateway)?;
        fleet.wait_for_events(Duration::from_secs(60))?;
        Ok(fleet)
    }

    fn create_device(&self, gateway: &str) -> Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let client = traffic::client(&self.ca_pem, &self.token, Some(Duration::from_secs(10)))?;
            let response = client
                .post(format!("{}/api/devices", self.targets[0].base))
                .json(&traffic::modbus_device_json(gateway, self.modbus.port, 200))
                .send()
                .await?;
            let status = response.status();
            let body = response.text().await?;
            ensure!(status.is_success(), "POST /api/devices: {status} {body}");
            Ok(())
        })
    }

    /// Waits until events flow (the instance holding the device's lease commits readings).
    /// Whether every host's stream carries them is for the scenarios to judge.
    fn wait_for_events(&self, timeout: Duration) -> Result<()> {
        let probe = traffic::Traffic::start(&self.targets, &self.ca_pem, &self.token, 0.0, 2)?;
        let flowing = wait::until("3 events on a stream", timeout, || {
            Ok(if probe.sse().iter().any(|c| c.ids.len() >= 3) {
                Check::Holds(())
            } else {
                Check::Missing(format!(
                    "the Modbus device was read {} times",
                    self.modbus.reads()
                ))
            })
        });
        let (_, sse) = probe.stop();
        flowing.with_context(|| format!("the streams: {sse:?}"))
    }

    /// `cargo xtask deploy --env e2e --inventory … ARGS` with `env` set; the exit status and the
    /// report.
    pub fn deploy(&self, args: &[&str], env: &[(&str, &str)]) -> Result<(i32, Value)> {
        let report = self
            .cluster
            .dir()
            .join(format!("report-{}.json", uuid_like()));
        let mut cmd = self.xtask_command("deploy", env);
        cmd.args(args).arg("--report").arg(&report);
        let output = cmd.stdin(Stdio::null()).output()?;
        let code = output.status.code().unwrap_or(-1);
        let text = std::fs::read_to_string(&report).with_context(|| {
            format!(
                "no report from `xtask deploy {args:?}` (exit {code}):\n{}",
                crate::support::tail(&String::from_utf8_lossy(&output.stderr), 40)
            )
        })?;
        let value: Value = serde_json::from_str(&text)?;
        Ok((code, value))
    }

    /// A `cargo xtask <task> --env e2e --inventory …` command with `env` set.
    pub fn xtask_command(&self, task: &str, env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(&self.xtask);
        cmd.arg(task)
            .args(["--env", ENV, "--inventory"])
            .arg(&self.inventory);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    /// `cargo xtask status`: exit status and the aggregated JSON.
    pub fn status(&self) -> Result<(i32, Value)> {
        let output = self.xtask_command("status", &[]).output()?;
        let value = serde_json::from_slice(&output.stdout).with_context(|| {
            format!(
                "xtask status printed no JSON:\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
        Ok((output.status.code().unwrap_or(-1), value))
    }

    /// `/api/version` through a host's nginx.
    pub fn version(&self, host: &str) -> Result<Value> {
        let target = self
            .targets
            .iter()
            .find(|t| t.host == host)
            .context("no such host")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let client = traffic::client(&self.ca_pem, &self.token, Some(Duration::from_secs(10)))?;
            Ok(client
                .get(format!("{}/api/version", target.base))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?)
        })
    }
}

impl Fleet {
    /// What a host's nginx and ddms slots complained about lately (for failure messages).
    pub fn diagnostics(&self, host: &str) -> String {
        let script = "echo '-- nginx error.log'; tail -n 15 /var/log/nginx/error.log 2>&1; \
                      for f in /var/lib/ddms/blue.log /var/lib/ddms/green.log; do \
                      echo \"-- $f (all but request lines)\"; \
                      grep -v '\"request completed\"' \"$f\" 2>/dev/null | tail -n 12; done";
        match self.cluster.ssh(host, script) {
            Ok(output) => format!(
                "{host}:\n{}",
                String::from_utf8_lossy(&output.stdout).trim_end()
            ),
            Err(e) => format!("{host}: no diagnostics: {e:#}"),
        }
    }
}

/// The inventory variables: secrets made up here (never stored outside the cluster's temp
/// dir), the TLS files, no apt index refresh (the images have every package), the direct
/// service manager, and gates the scenarios override per deploy.
fn inventory_vars(certs: &Path) -> Result<Value> {
    let file = |name: &str| certs.join(name).display().to_string();
    Ok(json!({
        "common_apt_update_cache": false,
        "postgresql_ddms_password": secret()?,
        "mosquitto_dynsec_admin_password": secret()?,
        "mosquitto_ddms_password": secret()?,
        "mosquitto_tls_cert_src": file("broker.crt"),
        "mosquitto_tls_key_src": file("broker.key"),
        "mosquitto_tls_ca_src": file("ca.crt"),
        // No syslog daemon in the containers.
        "mosquitto_log_dest": "file /var/log/mosquitto/mosquitto.log",
        "nginx_tls_cert_src": file("server.crt"),
        "nginx_tls_key_src": file("server.key"),
        "ddms_service_manager": "direct",
        "ddms_watch": 2,
        "ddms_ready_timeout": 60,
        "ddms_drain_timeout": 10,
        "ddms_lock_ttl": 15,
        "ddms_actor": "e2e-provision",
    }))
}

/// A fresh random secret (hex) from the kernel.
fn secret() -> Result<String> {
    let mut out = String::new();
    for _ in 0..2 {
        out.push_str(&std::fs::read_to_string("/proc/sys/kernel/random/uuid")?);
    }
    Ok(out.chars().filter(char::is_ascii_hexdigit).collect())
}

/// Shell that sets `$ddms` to the host's last known good release's binary.
pub const LKG_DDMS: &str = "lkg=$(sed -n 's/.*\"last_known_good\": *\"\\([^\"]*\\)\".*/\\1/p' /var/lib/ddms/release-state.json); ddms=/opt/ddms/releases/$lkg/ddms";

/// Runs `ddms ARGS` on a host as the service would: the last known good release's binary with
/// the host's configuration.
pub fn host_ddms(cluster: &Cluster, host: &str, args: &str) -> Result<String> {
    cluster.ssh_ok(
        host,
        &format!("{LKG_DDMS}; cd /var/lib/ddms && $ddms --config /etc/ddms/ddms.toml {args}"),
    )
}

/// An admin API token named `name`, made with `ddms token create` on a host.
pub fn admin_token(cluster: &Cluster, host: &str, name: &str) -> Result<String> {
    Ok(host_ddms(
        cluster,
        host,
        &format!("token create --name {name} --role admin"),
    )?
    .lines()
    .rev()
    .find(|l| !l.trim().is_empty())
    .context("token create printed nothing")?
    .trim()
    .to_string())
}

/// The address the containers reach this machine at: their network's gateway.
fn gateway(container: &str) -> Result<String> {
    let output = run(Command::new("docker").args([
        "inspect",
        "--format",
        "{{range .NetworkSettings.Networks}}{{.Gateway}}{{end}}",
        container,
    ]))?;
    let gateway = String::from_utf8_lossy(&output.stdout).trim().to_string();
    ensure!(!gateway.is_empty(), "{container} has no gateway");
    Ok(gateway)
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A time the hosts wrote (RFC 3339).
pub fn parse_rfc3339(text: &str) -> Result<SystemTime> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .with_context(|| format!("time `{text}`"))?;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_nanos(t.unix_timestamp_nanos().try_into()?))
}

/// When traffic moved on a host: the end of the `switch` step of its deploy record.
pub fn switch_time(record: &Value) -> Result<SystemTime> {
    let started = parse_rfc3339(
        record["started_at"]
            .as_str()
            .context("record without started_at")?,
    )?;
    let mut elapsed = 0u64;
    for step in record["steps"].as_array().context("record without steps")? {
        elapsed += step["duration_ms"].as_u64().unwrap_or(0);
        if step["name"] == "switch" {
            return Ok(started + Duration::from_millis(elapsed));
        }
    }
    bail!("the record has no switch step: {record}")
}

/// RFC 3339 in UTC, as the hosts' lock and record files write times.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    time::OffsetDateTime::from_unix_timestamp_nanos(d.as_nanos() as i128)
        .expect("a time after the epoch")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("formats")
}

/// The host's record in a deploy report.
pub fn host_record<'a>(report: &'a Value, host: &str) -> Result<&'a Value> {
    report["hosts"]
        .as_array()
        .and_then(|hosts| hosts.iter().find(|h| h["name"] == host))
        .with_context(|| format!("no host {host} in the report: {report}"))
}
