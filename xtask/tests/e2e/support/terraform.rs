//! The Terraform path on the Docker fleet, for the tests of `cargo xtask provision
//! --from-output`: a `terraform output -json` of the environments' shape
//! (`terraform/envs/*/outputs.tf`) describing a cluster's containers as the instances, the
//! network load balancer as a TCP proxy in this process, and the provision run itself with
//! only what a test fleet needs on top of the output.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};

use super::ansible::{ansible_dir, parse_recap, PlaybookRun};
use super::cluster::{Cluster, Host};
use super::release::{release_tarball, Kind};
use super::{https, project_root, run, tail};

/// What a Terraform environment says about its fleet, for [`Outputs::json`].
pub struct Outputs<'a> {
    /// `ddms_hosts`.
    pub ddms: Vec<&'a Host>,
    /// `service_hosts`, each with its Ansible group (`db`, or `mosquitto` next to RDS).
    pub service: Vec<(&'a Host, &'static str)>,
    pub single_host: bool,
    /// `database`: `{ tier, address, port, name, username }`.
    pub database: Value,
    /// `database_password`: RDS's master password; `None` in the other tiers.
    pub database_password: Option<String>,
    /// `mqtt`: `{ address, port, public_address }`.
    pub mqtt: Value,
    /// `load_balancer.dns_name`; `None` in single-host mode.
    pub load_balancer: Option<String>,
}

impl Outputs<'_> {
    /// As `terraform output -json` prints them: the containers' addresses are both public and
    /// private, their own host keys the pinned ones.
    pub fn json(&self) -> Result<Value> {
        let v = |value: Value| json!({ "sensitive": false, "type": "any", "value": value });
        let entry = |h: &Host| json!({ "name": h.name, "address": h.ip, "ssh_user": "root", "ssh_port": h.ssh_port });
        let mut keys = serde_json::Map::new();
        let mut private = serde_json::Map::new();
        for host in self.ddms.iter().chain(self.service.iter().map(|(h, _)| h)) {
            // From the container itself, not over an unverified ssh connection.
            let out = run(Command::new("docker").args([
                "exec",
                &host.container,
                "cat",
                "/etc/ssh/ssh_host_ed25519_key.pub",
            ]))?;
            let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
            keys.insert(host.name.clone(), json!(key));
            private.insert(host.name.clone(), json!(host.ip));
        }
        let service: Vec<Value> = self
            .service
            .iter()
            .map(|(h, group)| {
                let mut e = entry(h);
                e["groups"] = json!([group]);
                e
            })
            .collect();
        let ddms: Vec<Value> = self.ddms.iter().map(|h| entry(h)).collect();
        let load_balancer = self
            .load_balancer
            .as_ref()
            .map(|dns| json!({ "dns_name": dns, "zone_id": "Z0" }));
        Ok(json!({
            "ddms_hosts": v(json!(ddms)),
            "single_host": v(json!(self.single_host)),
            "service_hosts": v(json!(service)),
            "private_addresses": v(Value::Object(private)),
            "ssh_host_keys": v(Value::Object(keys)),
            "database": v(self.database.clone()),
            "database_password": v(json!(self.database_password)),
            "mqtt": v(self.mqtt.clone()),
            "load_balancer": v(json!(load_balancer)),
        }))
    }
}

/// What `cargo xtask provision` wrote and printed.
pub struct Provisioned {
    /// The inventory directory (`hosts.yml`, `group_vars/`, `certs/`, `known_hosts`).
    pub inventory: PathBuf,
    pub stdout: String,
    pub stderr: String,
}

impl Provisioned {
    /// The CA of the inventory's TLS material.
    pub fn ca(&self) -> PathBuf {
        self.inventory.join("certs/ca.crt")
    }
}

/// `<xtask> provision --env e2e --from-output` with `outputs` and a first release: what
/// only a test fleet needs (containers: no apt refresh, no syslog, no systemd; short gates),
/// then `extra`, go in as extra vars; everything about the fleet comes from the output. Fails
/// unless it succeeds with every host of the cluster ok in the PLAY RECAP.
pub fn provision(
    cluster: &Cluster,
    xtask: &Path,
    outputs: &Value,
    extra: &Value,
) -> Result<Provisioned> {
    let dir = cluster.dir();
    let output = dir.join("terraform-output.json");
    std::fs::write(&output, serde_json::to_vec_pretty(outputs)?)?;
    let artifact = release_tarball(dir, "v1", Kind::Good)?;
    let mut vars = json!({
        "common_apt_update_cache": false,
        "mosquitto_log_dest": "file /var/log/mosquitto/mosquitto.log",
        "ddms_service_manager": "direct",
        "ddms_watch": 2,
        "ddms_ready_timeout": 60,
        "ddms_drain_timeout": 10,
        "ddms_lock_ttl": 15,
        "ddms_actor": "e2e-test",
        "ddms_release": artifact.release,
        "ddms_artifact_src": artifact.tarball.display().to_string(),
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        vars[k] = v.clone();
    }
    let extra = dir.join("extra-vars.json");
    std::fs::write(&extra, serde_json::to_vec_pretty(&vars)?)?;
    run_provision(cluster, xtask, &output, &extra)
}

impl Provisioned {
    /// `provision` once more with the same output and extra vars, as a later run regenerates
    /// the inventory (keeping its secrets and certificates): Ansible changes nothing on any
    /// host, and no host fails.
    pub fn again_changes_nothing(&self, cluster: &Cluster, xtask: &Path) -> Result<()> {
        let dir = cluster.dir();
        let again = run_provision(
            cluster,
            xtask,
            &dir.join("terraform-output.json"),
            &dir.join("extra-vars.json"),
        )?;
        let run = PlaybookRun {
            code: 0,
            recap: parse_recap(&again.stdout)?,
            stdout: again.stdout,
            stderr: again.stderr,
        };
        let changed = run.changed_hosts();
        ensure!(
            changed.is_empty(),
            "the second provision changed {changed:?}:\n{}",
            run.changed_tasks().join("\n")
        );
        Ok(())
    }
}

/// One `xtask provision --from-output` run with `extra` (a vars file); fails unless every host
/// of the cluster is ok in the PLAY RECAP.
fn run_provision(
    cluster: &Cluster,
    xtask: &Path,
    output: &Path,
    extra: &Path,
) -> Result<Provisioned> {
    let inventory = cluster.dir().join("inventory");
    let out = Command::new(xtask)
        .args(["provision", "--env", "e2e", "--cloud-init-timeout", "120"])
        .arg("--from-output")
        .arg(output)
        .arg("--out")
        .arg(&inventory)
        .arg("--")
        .arg("-e")
        .arg(format!("@{}", extra.display()))
        .current_dir(project_root())
        .env("DDMS_DEPLOY_SSH_KEY", cluster.ssh_key())
        .env("ANSIBLE_CONFIG", ansible_dir().join("ansible.cfg"))
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_RETRY_FILES_ENABLED", "False")
        .env_remove("ANSIBLE_HOST_KEY_CHECKING")
        .output()
        .context("run xtask provision")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        out.status.success(),
        "xtask provision failed ({}):\n{}\n{}",
        out.status,
        tail(&stdout, 80),
        tail(&stderr, 30)
    );
    let recap = parse_recap(&stdout)?;
    for host in cluster.hosts() {
        let r = recap.get(&host.name);
        ensure!(
            r.is_some_and(|r| r.ok > 0 && r.failed == 0 && r.unreachable == 0),
            "site.yml on {}: {r:?}\n{}",
            host.name,
            tail(&stdout, 40)
        );
    }
    Ok(Provisioned {
        inventory,
        stdout,
        stderr,
    })
}

/// `/ready` answers 200, with the database and the MQTT broker ok, at `base`
/// (`https://<address>`) for a client trusting only `ca`; the readiness report.
pub fn assert_ready(ca: &Path, base: &str) -> Result<Value> {
    let (code, body) = https(ca, "GET", &format!("{base}/ready"), None, None)?;
    ensure!(code == 200, "{base}/ready: {code} {body}");
    let ready: Value = serde_json::from_str(&body).with_context(|| body.clone())?;
    ensure!(
        ready["components"]["database"]["status"] == "ok"
            && ready["components"]["migrations"]["status"] == "ok"
            && ready["components"]["mqtt"]["status"] == "ok"
            && ready["components"]["mqtt"]["mode"] == "external",
        "{base}/ready: {ready:#}"
    );
    Ok(ready)
}

/// `/ready` through the load balancer, three times per backend: 200 each time, and every
/// backend served at least twice.
pub fn assert_ready_through(lb: &TcpProxy, ca: &Path) -> Result<()> {
    for _ in 0..3 * lb.counts.len() {
        assert_ready(ca, &format!("https://127.0.0.1:{}", lb.port))
            .context("through the load balancer")?;
    }
    let served = lb.served();
    ensure!(
        served.iter().all(|&n| n >= 2),
        "every ddms host serves through the load balancer: {served:?}"
    );
    Ok(())
}

/// The network load balancer's stand-in: TCP on 127.0.0.1, each connection to the next
/// backend in turn, bytes passed through untouched (TLS stays with nginx).
pub struct TcpProxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
    counts: Arc<Vec<AtomicUsize>>,
}

impl TcpProxy {
    /// A proxy to port 443 of every ddms host of the cluster.
    pub fn to_ddms_hosts(cluster: &Cluster) -> Result<TcpProxy> {
        TcpProxy::start(
            cluster
                .ddms_hosts()
                .iter()
                .map(|h| format!("{}:443", h.ip))
                .collect(),
        )
    }

    pub fn start(backends: Vec<String>) -> Result<TcpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let counts: Arc<Vec<AtomicUsize>> =
            Arc::new(backends.iter().map(|_| AtomicUsize::new(0)).collect());
        let (stop2, counts2) = (stop.clone(), counts.clone());
        std::thread::spawn(move || {
            let mut next = 0usize;
            for client in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let i = next % backends.len();
                next += 1;
                let Ok(backend) = TcpStream::connect_timeout(
                    &backends[i].parse().unwrap(),
                    Duration::from_secs(5),
                ) else {
                    continue;
                };
                counts2[i].fetch_add(1, Ordering::SeqCst);
                pipe(client.try_clone().unwrap(), backend.try_clone().unwrap());
                pipe(backend, client);
            }
        });
        Ok(TcpProxy { port, stop, counts })
    }

    /// Connections each backend took, in backend order.
    pub fn served(&self) -> Vec<usize> {
        self.counts
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .collect()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies `from` → `to` on a thread until EOF, then half-closes `to`.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
