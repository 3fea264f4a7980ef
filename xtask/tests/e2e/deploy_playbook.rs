//! `ansible/deploy.yml`: a rolling deploy through `ddms release` on each host, one host per
//! batch; a release that never gets ready stops the roll-out at the first host, which keeps
//! serving its previous release. (That a second run of the same release changes nothing is
//! the provisioning test's: site.yml runs the same release tasks.)

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::support::ansible::ansible_playbook;
use crate::support::cluster::Cluster;
use crate::support::release::{release_tarball, Artifact, Kind};
use crate::support::{run, tail};

#[test]
fn e2e_container_deploy_playbook_rolls_out_host_by_host_and_stops_at_a_release_that_never_gets_ready(
) -> Result<()> {
    let _exclusive = crate::support::one_cluster_at_a_time();
    // No database host: SQLite on each host, MQTT off — this test is about the roll-out.
    let cluster = Cluster::start("ddms-e2e-deploy", &["ddms1", "ddms2"], false)?;
    let dir = cluster.dir();
    let certs = dir.join("certs");
    run(std::process::Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["certs", "--days", "2", "--out"])
        .arg(&certs))?;
    let inventory = dir.join("hosts.yml");
    cluster.write_inventory(
        &inventory,
        &json!({
            "common_apt_update_cache": false,
            "nginx_tls_cert_src": certs.join("server.crt").display().to_string(),
            "nginx_tls_key_src": certs.join("server.key").display().to_string(),
            "ddms_database_url": "sqlite:///var/lib/ddms/ddms.db",
            "ddms_mqtt_mode": "off",
            "ddms_service_manager": "direct",
            "ddms_watch": 2,
            "ddms_ready_timeout": 8,
            "ddms_drain_timeout": 10,
            "ddms_lock_ttl": 15,
        }),
    )?;
    // Provision with v1, then roll v2 out with deploy.yml.
    let v1 = release_tarball(dir, "v1", Kind::Good)?;
    let provisioned = ansible_playbook(
        "site.yml",
        &inventory,
        &json!({
            "ddms_release": v1.release,
            "ddms_artifact_src": v1.tarball.display().to_string(),
        }),
        &[],
    )?;
    assert!(
        provisioned.code == 0 && provisioned.all_ok(),
        "site.yml: {:?}\n{}",
        provisioned.recap,
        tail(&provisioned.stdout, 60)
    );

    let deploy = |artifact: &Artifact| {
        ansible_playbook(
            "deploy.yml",
            &inventory,
            &json!({
                "ddms_release": artifact.release,
                "ddms_artifact_src": artifact.tarball.display().to_string(),
                "ddms_serial": 1,
                "ddms_max_fail_percentage": 0,
            }),
            &[],
        )
    };
    let v2 = release_tarball(dir, "v2", Kind::Good)?;
    let run = deploy(&v2)?;
    assert!(
        run.code == 0 && run.all_ok() && run.recap.len() == 2,
        "deploy.yml v2: {:?}\n{}",
        run.recap,
        tail(&run.stdout, 60)
    );
    for host in ["ddms1", "ddms2"] {
        assert!(run.recap[host].changed > 0, "v2 on {host}: {:?}", run.recap);
        let status = status(&cluster, host)?;
        assert_eq!(serving(&status), Some("v2"), "{host}: {status:#}");
        assert_eq!(status["previous_known_good"], "v1", "{status:#}");
    }

    let broken = release_tarball(dir, "v3", Kind::NeverReady)?;
    let run = deploy(&broken)?;
    assert_ne!(
        run.code, 0,
        "a release that never gets ready fails the play"
    );
    assert_eq!(
        run.recap.get("ddms1").map(|r| r.failed),
        Some(1),
        "{:?}\n{}",
        run.recap,
        tail(&run.stdout, 60)
    );
    // serial 1, max_fail_percentage 0: the second host was never touched.
    let untouched = status(&cluster, "ddms2")?;
    assert!(
        !untouched["releases"]
            .as_array()
            .context("releases")?
            .iter()
            .any(|r| r == "v3"),
        "{untouched:#}"
    );
    for host in ["ddms1", "ddms2"] {
        let status = status(&cluster, host)?;
        assert_eq!(serving(&status), Some("v2"), "{host}: {status:#}");
        assert_eq!(status["last_known_good"], "v2", "{status:#}");
    }
    let record = status(&cluster, "ddms1")?["last_deploy"].clone();
    assert_eq!(record["release"], "v3", "{record:#}");
    assert_eq!(record["result"], "aborted", "{record:#}");
    Ok(())
}

fn status(cluster: &Cluster, host: &str) -> Result<Value> {
    let out = cluster.ssh_ok(host, "/usr/local/bin/ddms release status")?;
    serde_json::from_str(&out).with_context(|| format!("status on {host}: {out}"))
}

/// The release of the active slot when it runs and is ready.
fn serving(status: &Value) -> Option<&str> {
    let active = status["active_slot"].as_str()?;
    let slot = &status["slots"][active];
    (slot["running"] == true && slot["ready"] == true)
        .then(|| slot["release"].as_str())
        .flatten()
}
