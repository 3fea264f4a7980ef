//! `cargo xtask provision --from-output` on the Docker fleet: the containers stand in for the
//! instances Terraform creates and a TCP proxy in this process for the network load balancer,
//! described by a `terraform output -json` of the environments' shape (host keys read from the
//! containers). Everything after `terraform apply` is the real code path: the inventory with
//! its group_vars, known_hosts and secrets, TLS material, the cloud-init wait, site.yml, with
//! host keys checked strictly. The fleet then serves `/ready` through the load balancer from
//! every ddms host, with no hand edit.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};

use crate::fleet::say;
use crate::support::ansible::ansible_dir;
use crate::support::cluster::Cluster;
use crate::support::release::{release_tarball, Kind};
use crate::support::{project_root, run, tail};

#[test]
fn e2e_container_provision_from_terraform_output_serves_ready_through_the_load_balancer(
) -> Result<()> {
    let _exclusive = crate::support::one_cluster_at_a_time();
    let started = Instant::now();
    let cluster = Cluster::start("ddms-e2e-tf", &["ddms1", "ddms2"], true)?;
    let dir = cluster.dir();
    let backends: Vec<String> = cluster
        .ddms_hosts()
        .iter()
        .map(|h| format!("{}:443", h.ip))
        .collect();
    let lb = TcpProxy::start(backends)?;
    let output = dir.join("terraform-output.json");
    std::fs::write(
        &output,
        serde_json::to_vec_pretty(&terraform_output(&cluster)?)?,
    )?;
    let artifact = release_tarball(dir, "v1", Kind::Good)?;
    // What only a test fleet needs (containers: no apt refresh, no syslog, no systemd) and
    // the release; everything about the fleet comes from the output.
    let extra = dir.join("extra-vars.json");
    std::fs::write(
        &extra,
        serde_json::to_vec_pretty(&json!({
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
        }))?,
    )?;
    let inventory = dir.join("inventory");

    say("xtask provision --from-output (a Terraform-shaped output of the Docker fleet)");
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["provision", "--env", "e2e", "--cloud-init-timeout", "120"])
        .arg("--from-output")
        .arg(&output)
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
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "xtask provision failed ({}):\n{}\n{}",
        out.status,
        tail(&stdout, 80),
        tail(&stderr, 30)
    );

    let recap = crate::support::ansible::parse_recap(&stdout)?;
    for host in cluster.hosts() {
        let r = recap.get(&host.name);
        ensure!(
            r.is_some_and(|r| r.ok > 0 && r.failed == 0 && r.unreachable == 0),
            "site.yml on {}: {r:?}\n{}",
            host.name,
            tail(&stdout, 40)
        );
    }

    // The secrets: generated, owner-only, never printed.
    for file in ["secrets.yml", "terraform_secrets.yml"] {
        let path = inventory.join("group_vars/all").join(file);
        let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
        ensure!(mode == 0o600, "{}: mode {mode:o}", path.display());
    }
    let secrets: Value = yaml_serde::from_str(&std::fs::read_to_string(
        inventory.join("group_vars/all/secrets.yml"),
    )?)?;
    for (name, value) in secrets.as_object().context("secrets.yml is a mapping")? {
        let value = value.as_str().context("a secret is a string")?;
        ensure!(value.len() >= 32, "{name} is short");
        ensure!(
            !stdout.contains(value) && !stderr.contains(value),
            "provision printed {name}"
        );
    }
    let known_hosts = std::fs::read_to_string(inventory.join("known_hosts"))?;
    for host in cluster.hosts() {
        ensure!(
            known_hosts
                .lines()
                .any(|l| l.starts_with(&format!("{} ssh-ed25519 ", host.ip))),
            "known_hosts lacks {}:\n{known_hosts}",
            host.ip
        );
    }

    say("xtask status reads the written inventory, host keys checked");
    let hosts_yml = inventory.join("hosts.yml");
    let status = xtask_status(&cluster, &hosts_yml)?;
    ensure!(
        status.status.success(),
        "status: {}",
        String::from_utf8_lossy(&status.stdout)
    );
    // A wrong pinned key is refused: the second ddms host gets the first one's.
    let lines: Vec<&str> = known_hosts.lines().collect();
    let first_key = lines[0].split_once(' ').unwrap().1;
    let (second, _) = lines[1].split_once(' ').unwrap();
    let mut tampered = format!("{second} {first_key}\n");
    for line in &lines {
        if !line.starts_with(&format!("{second} ")) {
            tampered.push_str(line);
            tampered.push('\n');
        }
    }
    std::fs::write(inventory.join("known_hosts"), tampered)?;
    let refused = xtask_status(&cluster, &hosts_yml)?;
    std::fs::write(inventory.join("known_hosts"), &known_hosts)?;
    let report: Value = serde_json::from_slice(&refused.stdout)
        .with_context(|| String::from_utf8_lossy(&refused.stderr).into_owned())?;
    ensure!(
        !refused.status.success()
            && report["hosts"]
                .as_array()
                .is_some_and(|h| h.iter().any(|h| h["address"] == second && h["ok"] == false)),
        "a host with the wrong pinned key must be refused: {report:#}"
    );

    say("/ready through the load balancer stand-in");
    let ca = inventory.join("certs/ca.crt");
    for _ in 0..6 {
        let output = run(Command::new("curl")
            .args(["--silent", "--show-error", "--max-time", "10", "--cacert"])
            .arg(&ca)
            .args(["--write-out", "\n%{http_code}"])
            .arg(format!("https://127.0.0.1:{}/ready", lb.port)))?;
        let text = String::from_utf8_lossy(&output.stdout);
        ensure!(
            text.trim_end().ends_with("\n200"),
            "/ready through the load balancer: {text}"
        );
    }
    let served = lb.served();
    ensure!(
        served.iter().all(|&n| n >= 2),
        "every ddms host serves through the load balancer: {served:?}"
    );
    say(format!(
        "provisioned from a Terraform output and serving through the load balancer in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// `cargo xtask status` over the generated inventory (read through ansible-inventory, so its
/// group_vars' ssh options, known_hosts included, apply).
fn xtask_status(cluster: &Cluster, hosts_yml: &std::path::Path) -> Result<std::process::Output> {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["status", "--env", "e2e", "--inventory"])
        .arg(hosts_yml)
        .current_dir(project_root())
        .env("DDMS_DEPLOY_SSH_KEY", cluster.ssh_key())
        .output()
        .context("run xtask status")
}

/// `terraform output -json` of terraform/envs/* (database tier `host`) for the cluster: the
/// containers' addresses are both public and private, their own host keys the pinned ones.
fn terraform_output(cluster: &Cluster) -> Result<Value> {
    let v = |value: Value| json!({ "sensitive": false, "type": "any", "value": value });
    let db = cluster.db_host().context("the cluster has a db host")?;
    let mut keys = serde_json::Map::new();
    let mut private = serde_json::Map::new();
    for host in cluster.hosts() {
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
    let ddms: Vec<Value> = cluster
        .ddms_hosts()
        .iter()
        .map(|h| json!({ "name": h.name, "address": h.ip, "ssh_user": "root", "ssh_port": h.ssh_port }))
        .collect();
    Ok(json!({
        "ddms_hosts": v(json!(ddms)),
        "single_host": v(json!(false)),
        "service_hosts": v(json!([{ "name": db.name, "address": db.ip, "ssh_user": "root", "ssh_port": db.ssh_port, "groups": ["db"] }])),
        "private_addresses": v(Value::Object(private)),
        "ssh_host_keys": v(Value::Object(keys)),
        "database": v(json!({ "tier": "host", "address": db.ip, "port": 5432, "name": "ddms", "username": "ddms" })),
        "database_password": v(Value::Null),
        "mqtt": v(json!({ "address": db.ip, "port": 8883, "public_address": "127.0.0.1" })),
        "load_balancer": v(json!({ "dns_name": "127.0.0.1", "zone_id": "Z0" })),
    }))
}

/// The network load balancer's stand-in: TCP on 127.0.0.1, each connection to the next
/// backend in turn, bytes passed through untouched (TLS stays with nginx).
struct TcpProxy {
    port: u16,
    stop: Arc<AtomicBool>,
    counts: Arc<Vec<AtomicUsize>>,
}

impl TcpProxy {
    fn start(backends: Vec<String>) -> Result<TcpProxy> {
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
    fn served(&self) -> Vec<usize> {
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
