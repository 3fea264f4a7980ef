//! The RDS tier (`database_tier = "rds"`) of the Terraform path on Docker: a plain PostgreSQL
//! 15 container on the cluster's network stands in for RDS — TLS on, and an RDS-like master
//! `ddms` (LOGIN CREATEROLE CREATEDB, no superuser) that owns the database `ddms` — a service
//! host in group `mosquitto` for the broker, two ddms hosts behind the load balancer's
//! stand-in. `cargo xtask provision --from-output` with an output of that shape (the master's
//! name and address in `database`, its password in `database_password`) makes ddms' own role
//! with the master (ansible/roles/ddms/tasks/database_role.yml) and deploys, with no hand
//! edit. Then `/ready` answers 200 through the load balancer from every ddms host, every
//! connection of theirs to the database is the role `ddms_app` over TLS, never the master,
//! and the role has no superuser, CREATEROLE or CREATEDB; a device's reading is stored.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::json;

use crate::fleet::{admin_token, say};
use crate::support::cluster::{Cluster, DBHOST_IMAGE};
use crate::support::device::{mqtt_reading_stored, Broker};
use crate::support::terraform::{assert_ready_through, provision, Outputs, TcpProxy};
use crate::support::wait::{self, Check};
use crate::support::{random_secret, run, tail};

const POSTGRES_IMAGE: &str = "ddms-test/postgres:15";
/// Terraform's default master user name (terraform/modules/database).
const MASTER: &str = "ddms";
/// The role ddms connects as (`RDS_DDMS_ROLE` in xtask/src/deploy/fleet.rs).
const ROLE: &str = "ddms_app";

#[test]
fn e2e_container_provision_rds_tier_from_terraform_output_connects_as_its_own_role() -> Result<()> {
    let _exclusive = crate::support::one_cluster_at_a_time();
    let started = Instant::now();
    // The ddms hosts on the database host's image: the first one runs the role task's psql.
    let mut cluster =
        Cluster::start_with_image("ddms-e2e-rds", &["ddms1", "ddms2"], true, DBHOST_IMAGE)?;
    let master_password = random_secret()?;
    let (rds, rds_ip) = start_rds(&mut cluster, &master_password)?;
    let lb = TcpProxy::to_ddms_hosts(&cluster)?;
    let broker = cluster
        .db_host()
        .context("the cluster has a service host")?;
    let outputs = Outputs {
        ddms: cluster.ddms_hosts(),
        service: vec![(broker, "mosquitto")],
        single_host: false,
        database: json!({ "tier": "rds", "address": rds_ip, "port": 5432, "name": "ddms", "username": MASTER }),
        database_password: Some(master_password.clone()),
        mqtt: json!({ "address": broker.ip, "port": 8883, "public_address": "127.0.0.1" }),
        load_balancer: Some("127.0.0.1".into()),
    };
    say("xtask provision --from-output (database tier rds)");
    // The image has psql but no package lists to install the `postgresql-client` metapackage
    // from: the role's documented "it is there already".
    let extra = json!({ "ddms_database_client_packages": [] });
    let provisioned = provision(
        &cluster,
        Path::new(env!("CARGO_BIN_EXE_xtask")),
        &outputs.json()?,
        &extra,
    )?;
    ensure!(
        !provisioned.stdout.contains(&master_password)
            && !provisioned.stderr.contains(&master_password),
        "provision printed the master's password"
    );

    say("/ready through the load balancer stand-in");
    assert_ready_through(&lb, &provisioned.ca())?;

    say("ddms' connections to the database are its own role's, over TLS");
    let hosts: Vec<String> = cluster.ddms_hosts().iter().map(|h| h.ip.clone()).collect();
    let sessions = wait::until(
        "a connection from every ddms host",
        Duration::from_secs(30),
        || {
            let rows = psql(
                &rds,
                "SELECT a.client_addr, a.usename, s.ssl FROM pg_stat_activity a \
                 JOIN pg_stat_ssl s USING (pid) \
                 WHERE a.datname = 'ddms' AND a.client_addr IS NOT NULL ORDER BY 1, 2",
            )?;
            let missing: Vec<&String> = hosts
                .iter()
                .filter(|ip| !rows.lines().any(|r| r.starts_with(&format!("{ip}|"))))
                .collect();
            Ok(if missing.is_empty() {
                Check::Holds(rows)
            } else {
                Check::Missing(format!("none from {missing:?} in:\n{rows}"))
            })
        },
    )?;
    for row in sessions.lines() {
        let fields: Vec<&str> = row.split('|').collect();
        ensure!(
            hosts.iter().any(|ip| ip == fields[0]),
            "a connection from elsewhere: {row}"
        );
        ensure!(
            fields[1..] == [ROLE, "t"],
            "ddms must connect as `{ROLE}` over TLS, not as the master:\n{sessions}"
        );
    }
    say(format!(
        "the stand-in's sessions (client|user|ssl):\n{sessions}"
    ));
    let role = psql(
        &rds,
        &format!(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, rolcanlogin, \
             (SELECT datdba::regrole::text FROM pg_database WHERE datname = 'ddms') \
             FROM pg_roles WHERE rolname = '{ROLE}'"
        ),
    )?;
    ensure!(
        role.trim() == format!("f|f|f|t|{ROLE}"),
        "`{ROLE}` must be a login role without superuser, CREATEROLE or CREATEDB that owns \
         the database (superuser|createrole|createdb|login|owner): {role}"
    );
    let master = psql(
        &rds,
        &format!("SELECT rolsuper FROM pg_roles WHERE rolname = '{MASTER}'"),
    )?;
    ensure!(
        master.trim() == "f",
        "the stand-in's master is no superuser"
    );

    say("a device's reading through the broker host into the database");
    let token = admin_token(&cluster, "ddms1", "e2e")?;
    let api = format!("https://127.0.0.1:{}", lb.port);
    // Devices are told the load balancer's address, whose stand-in forwards HTTPS only: the
    // device publishes to the broker host directly.
    mqtt_reading_stored(
        &provisioned.ca(),
        &api,
        &token,
        Broker::At(&broker.ip, 8883),
        7.25,
    )?;
    say("xtask provision again: nothing changes");
    provisioned.again_changes_nothing(&cluster, Path::new(env!("CARGO_BIN_EXE_xtask")))?;
    say(format!(
        "RDS tier provisioned from a Terraform output, ddms connected as `{ROLE}`, in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Starts the RDS stand-in: PostgreSQL 15 with TLS (the image's snakeoil certificate: ddms
/// connects with `sslmode=require`, which does not verify it), the superuser `postgres` for
/// this test's own looks, and the master [`MASTER`] as RDS makes it, owning the database
/// `ddms`. Returns once it accepts TCP connections: (container, address).
fn start_rds(cluster: &mut Cluster, master_password: &str) -> Result<(String, String)> {
    let init = cluster.dir().join("rds-master.sql");
    std::fs::write(
        &init,
        format!(
            "CREATE ROLE {MASTER} LOGIN CREATEROLE CREATEDB PASSWORD '{master_password}';\n\
             CREATE DATABASE ddms OWNER {MASTER};\n"
        ),
    )?;
    let superuser_password = format!("POSTGRES_PASSWORD={}", random_secret()?);
    let (container, ip) = cluster.start_service(
        "rds",
        &[
            "--env",
            &superuser_password,
            POSTGRES_IMAGE,
            "postgres",
            "-c",
            "ssl=on",
            "-c",
            "ssl_cert_file=/etc/ssl/certs/ssl-cert-snakeoil.pem",
            "-c",
            "ssl_key_file=/etc/ssl/private/ssl-cert-snakeoil.key",
        ],
        &[(&init, "/docker-entrypoint-initdb.d/rds-master.sql")],
    )?;
    wait::until(
        "the RDS stand-in accepting connections",
        Duration::from_secs(60),
        || {
            let out = Command::new("docker")
                .args(["exec", &container, "pg_isready", "-q", "-h", "127.0.0.1"])
                .output()?;
            Ok(if out.status.success() {
                Check::Holds(())
            } else {
                let logs = Command::new("docker")
                    .args(["logs", "--tail", "5", &container])
                    .output()?;
                Check::Missing(tail(&String::from_utf8_lossy(&logs.stderr), 5))
            })
        },
    )?;
    Ok((container, ip))
}

/// `sql`'s rows in the stand-in's database `ddms`, as its superuser sees them (`|`-separated).
fn psql(container: &str, sql: &str) -> Result<String> {
    let out = run(Command::new("docker")
        .args([
            "exec", container, "psql", "-X", "-U", "postgres", "-d", "ddms",
        ])
        .args(["-v", "ON_ERROR_STOP=1", "-tAc", sql]))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
