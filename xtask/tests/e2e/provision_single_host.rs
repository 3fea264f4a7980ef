//! Single-host mode (`single_host = true`) of the Terraform path on Docker: one container
//! (the database host's image, PostgreSQL and Mosquitto preinstalled) stands in for the one
//! instance, which is its own database and broker host, with no load balancer. `cargo xtask
//! provision --from-output` with an output of that shape (database tier `single_host`, no
//! service hosts) provisions PostgreSQL, Mosquitto and ddms on it, with no hand edit. Then
//! `/ready` answers 200 over HTTPS on the host with its database and broker ok, PostgreSQL
//! listens on loopback only and ddms is connected to it there, and a device's reading,
//! published to the host's broker with the credentials the API issued, is stored and read back.

use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Result};
use serde_json::json;

use crate::fleet::{admin_token, say};
use crate::support::cluster::{Cluster, DBHOST_IMAGE};
use crate::support::device::{mqtt_reading_stored, Broker};
use crate::support::terraform::{assert_ready, provision, Outputs};

#[test]
fn e2e_container_provision_single_host_from_terraform_output_stores_a_device_reading() -> Result<()>
{
    let _exclusive = crate::support::one_cluster_at_a_time();
    let started = Instant::now();
    let cluster = Cluster::start_with_image("ddms-e2e-single", &["ddms1"], false, DBHOST_IMAGE)?;
    let host = cluster.host("ddms1");
    // terraform/envs/*/outputs.tf with single_host = true: loopback for the database and the
    // broker, the instance's own address for devices, no service host, no load balancer.
    let outputs = Outputs {
        ddms: vec![host],
        service: Vec::new(),
        single_host: true,
        database: json!({ "tier": "single_host", "address": "127.0.0.1", "port": 5432, "name": "ddms", "username": "ddms" }),
        database_password: None,
        mqtt: json!({ "address": "127.0.0.1", "port": 8883, "public_address": host.ip }),
        load_balancer: None,
    };
    say("xtask provision --from-output (single-host mode)");
    let provisioned = provision(
        &cluster,
        Path::new(env!("CARGO_BIN_EXE_xtask")),
        &outputs.json()?,
        &json!({}),
    )?;
    let ca = provisioned.ca();
    let base = format!("https://{}", host.ip);

    say("/ready on the host, its database and broker ok");
    let ready = assert_ready(&ca, &base)?;
    ensure!(
        ready["components"]["database"]["backend"] == "postgres",
        "{ready:#}"
    );

    // The database is the host's own, reached on loopback and listening nowhere else.
    let listening = cluster.ssh_ok("ddms1", "ss -ltnH 'sport = :5432'")?;
    ensure!(
        !listening.trim().is_empty()
            && listening
                .lines()
                .all(|l| l.split_whitespace().nth(3) == Some("127.0.0.1:5432")),
        "PostgreSQL must listen on loopback only:\n{listening}"
    );
    let connected = cluster.ssh_ok(
        "ddms1",
        "runuser -u postgres -- psql -X -tAc \"SELECT count(*) FROM pg_stat_activity \
         WHERE usename = 'ddms' AND datname = 'ddms' AND client_addr = '127.0.0.1'\"",
    )?;
    ensure!(
        connected.trim().parse::<u32>().is_ok_and(|n| n > 0),
        "ddms has no connection to the host's PostgreSQL over loopback: {connected}"
    );

    say("a device's reading through the host's Mosquitto into its PostgreSQL");
    let token = admin_token(&cluster, "ddms1", "e2e")?;
    let device = mqtt_reading_stored(&ca, &base, &token, Broker::AsTold, 21.5)?;
    // Devices are told the instance's own address: there is no load balancer.
    ensure!(
        device["mqtt"]["host"] == host.ip.as_str() && device["mqtt"]["port"] == 8883,
        "{:#}",
        device["mqtt"]["host"]
    );
    say("xtask provision again: nothing changes");
    provisioned.again_changes_nothing(&cluster, Path::new(env!("CARGO_BIN_EXE_xtask")))?;
    say(format!(
        "single host provisioned from a Terraform output, serving and storing readings in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}
