//! `cargo xtask provision --from-output` on the Docker fleet: the containers stand in for the
//! instances Terraform creates and a TCP proxy in this process for the network load balancer,
//! described by a `terraform output -json` of the environments' shape (host keys read from the
//! containers). Everything after `terraform apply` is the real code path: the inventory with
//! its group_vars, known_hosts and secrets, TLS material, the cloud-init wait, site.yml, with
//! host keys checked strictly. The fleet then serves `/ready` through the load balancer from
//! every ddms host, with no hand edit.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};

use crate::fleet::say;
use crate::support::cluster::Cluster;
use crate::support::project_root;
use crate::support::terraform::{assert_ready_through, provision, Outputs, TcpProxy};

#[test]
fn e2e_container_provision_from_terraform_output_serves_ready_through_the_load_balancer(
) -> Result<()> {
    let _exclusive = crate::support::one_cluster_at_a_time();
    let started = Instant::now();
    let cluster = Cluster::start("ddms-e2e-tf", &["ddms1", "ddms2"], true)?;
    let lb = TcpProxy::to_ddms_hosts(&cluster)?;
    let db = cluster.db_host().context("the cluster has a db host")?;
    let outputs = Outputs {
        ddms: cluster.ddms_hosts(),
        service: vec![(db, "db")],
        single_host: false,
        database: json!({ "tier": "host", "address": db.ip, "port": 5432, "name": "ddms", "username": "ddms" }),
        database_password: None,
        mqtt: json!({ "address": db.ip, "port": 8883, "public_address": "127.0.0.1" }),
        load_balancer: Some("127.0.0.1".into()),
    };
    say("xtask provision --from-output (a Terraform-shaped output of the Docker fleet)");
    let provisioned = provision(
        &cluster,
        Path::new(env!("CARGO_BIN_EXE_xtask")),
        &outputs.json()?,
        &json!({}),
    )?;
    let (inventory, stdout, stderr) = (
        &provisioned.inventory,
        &provisioned.stdout,
        &provisioned.stderr,
    );

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
    assert_ready_through(&lb, &provisioned.ca())?;
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
