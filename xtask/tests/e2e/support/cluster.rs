//! A cluster of Debian hosts in Docker containers (`ddms-test/host:bookworm`, or another image
//! for the ddms hosts, and `ddms-test/dbhost:bookworm` for the database host), on a network of
//! their own, reached from this machine over ssh with a key pair generated for the cluster;
//! other containers (a database standing in for a managed one) may join the network.
//!
//! Containers and the network are removed when the [`Cluster`] is dropped, also when the test
//! panics. Each container is labelled with the test process's pid, so a cluster left behind
//! by a killed test process is removed by the next [`Cluster::start`].

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use super::run;

pub const HOST_IMAGE: &str = "ddms-test/host:bookworm";
pub const DBHOST_IMAGE: &str = "ddms-test/dbhost:bookworm";
/// The host image with systemd as PID 1 ([`Cluster::start_with_systemd`]).
pub const SYSTEMD_HOST_IMAGE: &str = "ddms-test/systemd-host:bookworm";
/// What systemd needs to run as a container's PID 1 on this engine (cgroup v1, and no
/// `--privileged`: it fails where the engine's own root lacks a capability): mount and
/// namespace rights for the units' sandboxing, the host's cgroup tree, a fresh /run.
const SYSTEMD_RUN_ARGS: [&str; 9] = [
    "--cap-add",
    "SYS_ADMIN",
    "--cgroupns=host",
    "--volume",
    "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--tmpfs",
    "/run",
    "--tmpfs",
    "/run/lock",
];
/// The name of the database host, in the inventory group `db`.
pub const DB_HOST: &str = "db1";
/// Label on every container and network of a cluster; its value is the owning test's pid.
const PID_LABEL: &str = "org.ddms.e2e.pid";
const SSH_WAIT: Duration = Duration::from_secs(60);

/// One host of the cluster.
#[derive(Debug, Clone)]
pub struct Host {
    /// The name the tests and the inventory use (`ddms1`, `db`).
    pub name: String,
    /// The container's (unique) name.
    pub container: String,
    /// The container's address on the cluster network, reachable from this machine.
    pub ip: String,
    pub ssh_port: u16,
    /// Inventory group: `ddms` or `db`.
    pub group: &'static str,
}

pub struct Cluster {
    dir: tempfile::TempDir,
    key: PathBuf,
    network: String,
    /// The owner label every container and the network carry.
    label: String,
    hosts: Vec<Host>,
    /// Containers on the network that are no host ([`Cluster::start_service`]).
    services: Vec<String>,
}

static CLUSTERS: AtomicUsize = AtomicUsize::new(0);

impl Cluster {
    /// Starts one container per name in `hosts` (group `ddms`) and, with `with_db`, a database
    /// host named [`DB_HOST`] (group `db`); returns once every sshd accepts the cluster's key.
    /// `name_prefix` starts every container's and the network's name.
    pub fn start(name_prefix: &str, hosts: &[&str], with_db: bool) -> Result<Cluster> {
        Self::start_with_image(name_prefix, hosts, with_db, HOST_IMAGE)
    }

    /// Like [`Cluster::start`], with systemd as PID 1 on the ddms hosts
    /// ([`SYSTEMD_HOST_IMAGE`]); the database host is the usual one.
    pub fn start_with_systemd(name_prefix: &str, hosts: &[&str], with_db: bool) -> Result<Cluster> {
        Self::start_with_image(name_prefix, hosts, with_db, SYSTEMD_HOST_IMAGE)
    }

    /// Like [`Cluster::start`], with the ddms hosts on `host_image`: [`DBHOST_IMAGE`] for a
    /// host that is its own database and broker host (single-host mode), or one that needs
    /// `psql` (the RDS tier's role task); the database host is the usual one.
    pub fn start_with_image(
        name_prefix: &str,
        hosts: &[&str],
        with_db: bool,
        host_image: &'static str,
    ) -> Result<Cluster> {
        ensure!(
            !hosts.contains(&DB_HOST),
            "`{DB_HOST}` is the database host's name"
        );
        reap_abandoned();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name_prefix}-"))
            .tempdir()?;
        let key = dir.path().join("id_ed25519");
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "ddms-e2e", "-f"])
            .arg(&key)
            .stdin(Stdio::null()))?;
        let public_key = std::fs::read_to_string(key.with_extension("pub"))?;
        let pid = std::process::id().to_string();
        let id = format!(
            "{name_prefix}-{pid}-{}",
            CLUSTERS.fetch_add(1, Ordering::SeqCst)
        );
        let label = format!("{PID_LABEL}={pid}");
        run(Command::new("docker").args(["network", "create", "--label", &label, &id]))?;
        // From here on, Drop cleans up whatever was created.
        let mut cluster = Cluster {
            dir,
            key,
            network: id.clone(),
            label,
            hosts: Vec::new(),
            services: Vec::new(),
        };
        let wanted = hosts
            .iter()
            .map(|name| (*name, host_image, "ddms"))
            .chain(with_db.then_some((DB_HOST, DBHOST_IMAGE, "db")));
        for (name, image, group) in wanted {
            let container = format!("{id}-{name}");
            let extra: &[&str] = if image == SYSTEMD_HOST_IMAGE {
                &SYSTEMD_RUN_ARGS
            } else {
                &[]
            };
            run(Command::new("docker")
                .args(["run", "--detach", "--name", &container, "--hostname", name])
                .args(["--network", &id, "--label", &cluster.label])
                .args(extra)
                .args([
                    "--env",
                    &format!("DDMS_TEST_SSH_PUBKEY={}", public_key.trim()),
                ])
                .arg(image))?;
            let ip = container_ip(&container, &id)?;
            cluster.hosts.push(Host {
                name: name.to_string(),
                container,
                ip,
                ssh_port: 22,
                group,
            });
        }
        for host in cluster.hosts.clone() {
            cluster.wait_for_ssh(&host)?;
        }
        Ok(cluster)
    }

    /// Starts a container that is no ssh host on the cluster's network: `docker create`
    /// `docker_args` (options, the image, its command), then `files` (local path, path in the
    /// container) copied in, then `docker start`; removed with the cluster. Returns the
    /// container's name and address.
    pub fn start_service(
        &mut self,
        name: &str,
        docker_args: &[&str],
        files: &[(&Path, &str)],
    ) -> Result<(String, String)> {
        let container = format!("{}-{name}", self.network);
        run(Command::new("docker")
            .args(["create", "--name", &container, "--hostname", name])
            .args(["--network", &self.network, "--label", &self.label])
            .args(docker_args))?;
        self.services.push(container.clone());
        for (local, remote) in files {
            run(Command::new("docker")
                .arg("cp")
                .arg(local)
                .arg(format!("{container}:{remote}")))?;
        }
        run(Command::new("docker").args(["start", &container]))?;
        let ip = container_ip(&container, &self.network)?;
        Ok((container, ip))
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The hosts of group `ddms`.
    pub fn ddms_hosts(&self) -> Vec<&Host> {
        self.hosts.iter().filter(|h| h.group == "ddms").collect()
    }

    pub fn db_host(&self) -> Option<&Host> {
        self.hosts.iter().find(|h| h.group == "db")
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host `{name}` in the cluster"))
    }

    /// A temp dir that lives as long as the cluster (key pair, inventory, artifacts).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The private key every host accepts for root.
    pub fn ssh_key(&self) -> &Path {
        &self.key
    }

    /// The OpenSSH client options the cluster's hosts need (key, no host key checks, batch).
    pub fn ssh_options(&self) -> Vec<String> {
        vec![
            "-i".into(),
            self.key.display().to_string(),
            "-o".into(),
            "StrictHostKeyChecking=no".into(),
            "-o".into(),
            "UserKnownHostsFile=/dev/null".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "LogLevel=ERROR".into(),
            "-o".into(),
            "ConnectTimeout=5".into(),
        ]
    }

    /// The `ssh root@<host> <cmd>` command, not started: to spawn it (a deploy that runs while
    /// load is applied, or one killed midway) or to read its output.
    pub fn ssh_command(&self, host: &str, cmd: &str) -> Command {
        let host = self.host(host);
        let mut command = Command::new("ssh");
        command
            .args(self.ssh_options())
            .args(["-p", &host.ssh_port.to_string()])
            .arg(format!("root@{}", host.ip))
            .arg(cmd)
            .stdin(Stdio::null());
        command
    }

    /// `ssh root@<host> <cmd>` (the remote shell runs `cmd`); the output, whatever the status.
    pub fn ssh(&self, host: &str, cmd: &str) -> Result<Output> {
        self.ssh_command(host, cmd)
            .output()
            .context("cannot run ssh")
    }

    /// Like [`Cluster::ssh`], but fails unless `cmd` exits 0; returns its stdout.
    pub fn ssh_ok(&self, host: &str, cmd: &str) -> Result<String> {
        let output = self.ssh(host, cmd)?;
        ensure!(
            output.status.success(),
            "`{cmd}` on {host} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Copies a local file to `remote` on the host (scp).
    pub fn scp_to(&self, host: &str, local: &Path, remote: &str) -> Result<()> {
        let host = self.host(host);
        run(Command::new("scp")
            .args(self.ssh_options())
            .args(["-q", "-P", &host.ssh_port.to_string()])
            .arg(local)
            .arg(format!("root@{}:{remote}", host.ip))
            .stdin(Stdio::null()))?;
        Ok(())
    }

    /// Writes an Ansible inventory of the cluster to `path`: groups `ddms` and `db`, each host
    /// with its address, user root and the cluster's key; `vars` (a JSON object) become
    /// `all.vars`. (JSON is YAML, and Ansible's YAML inventory plugin reads it.)
    pub fn write_inventory(&self, path: &Path, vars: &Value) -> Result<()> {
        ensure!(
            vars.is_object() || vars.is_null(),
            "inventory vars must be a JSON object"
        );
        let mut groups = serde_json::Map::new();
        for group in ["ddms", "db"] {
            let mut hosts = serde_json::Map::new();
            for host in self.hosts.iter().filter(|h| h.group == group) {
                hosts.insert(
                    host.name.clone(),
                    json!({
                        "ansible_host": host.ip,
                        "ansible_port": host.ssh_port,
                    }),
                );
            }
            groups.insert(group.to_string(), json!({ "hosts": hosts }));
        }
        let mut all_vars = json!({
            "ansible_user": "root",
            "ansible_ssh_private_key_file": self.key.display().to_string(),
            "ansible_ssh_common_args":
                "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
            "ansible_python_interpreter": "/usr/bin/python3",
        });
        if let Some(vars) = vars.as_object() {
            for (k, v) in vars {
                all_vars[k] = v.clone();
            }
        }
        let inventory = json!({ "all": { "vars": all_vars, "children": groups } });
        std::fs::write(path, serde_json::to_string_pretty(&inventory)?)?;
        Ok(())
    }

    /// `docker logs` of a host, for failure messages.
    pub fn logs(&self, host: &str) -> String {
        Command::new("docker")
            .args(["logs", "--tail", "50", &self.host(host).container])
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default()
    }

    fn wait_for_ssh(&self, host: &Host) -> Result<()> {
        let deadline = Instant::now() + SSH_WAIT;
        loop {
            let output = self.ssh(&host.name, "true")?;
            if output.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "sshd on {} ({}) did not accept the key within {SSH_WAIT:?}: {}\n{}",
                    host.name,
                    host.ip,
                    String::from_utf8_lossy(&output.stderr),
                    self.logs(&host.name)
                );
            }
            // sleep: the poll interval of this wait with a deadline (it reports the host's logs)
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let containers: Vec<&str> = self
            .hosts
            .iter()
            .map(|h| h.container.as_str())
            .chain(self.services.iter().map(String::as_str))
            .collect();
        if !containers.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "--force", "--volumes"])
                .args(&containers)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &self.network])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn container_ip(container: &str, network: &str) -> Result<String> {
    let format = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
    let output = run(Command::new("docker").args(["inspect", "--format", &format, container]))?;
    let ip = String::from_utf8_lossy(&output.stdout).trim().to_string();
    ensure!(!ip.is_empty(), "{container} has no address on {network}");
    Ok(ip)
}

/// Removes containers and networks of cluster owners that no longer run (a test process that
/// was killed before its Drop ran).
fn reap_abandoned() {
    let filter = format!("label={PID_LABEL}");
    let listed = |args: &[&str]| -> Vec<(String, String)> {
        Command::new("docker")
            .args(args)
            .args(["--filter", &filter, "--format"])
            .arg(format!("{{{{.ID}}}} {{{{.Label \"{PID_LABEL}\"}}}}"))
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter_map(|l| l.split_once(' '))
                    .map(|(id, pid)| (id.to_string(), pid.trim().to_string()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let dead = |pid: &str| !Path::new("/proc").join(pid).exists();
    let containers: Vec<String> = listed(&["ps", "--all"])
        .into_iter()
        .filter(|(_, pid)| dead(pid))
        .map(|(id, _)| id)
        .collect();
    if !containers.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "--force", "--volumes"])
            .args(&containers)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    for (id, pid) in listed(&["network", "ls"]) {
        if dead(&pid) {
            let _ = Command::new("docker")
                .args(["network", "rm", &id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
