//! The harness itself: hosts answer over ssh, take files, and accept the release tarballs.

use anyhow::Result;

use crate::support::cluster::Cluster;
use crate::support::release::{release_tarball, Kind};

#[test]
fn e2e_container_hosts_answer_ssh_and_install_a_release_tarball() -> Result<()> {
    let _exclusive = crate::support::one_cluster_at_a_time();
    let cluster = Cluster::start("ddms-e2e-harness", &["ddms1"], false)?;
    assert_eq!(cluster.hosts().len(), 1);
    assert!(cluster.db_host().is_none());
    let host = &cluster.ddms_hosts()[0];
    assert_eq!(
        cluster.ssh_ok("ddms1", "hostname")?.trim(),
        "ddms1",
        "ssh reaches the container named in the inventory"
    );
    // tini is PID 1 (it reaps the slots `ddms release` starts); no systemd.
    assert_eq!(cluster.ssh_ok("ddms1", "cat /proc/1/comm")?.trim(), "tini");
    assert!(!cluster
        .ssh("ddms1", "test -d /run/systemd/system")?
        .status
        .success());

    let artifact = release_tarball(cluster.dir(), "e2e1", Kind::Good)?;
    cluster.scp_to("ddms1", &artifact.tarball, "/tmp/")?;
    cluster.scp_to("ddms1", &artifact.checksum, "/tmp/")?;
    let name = artifact.tarball.file_name().unwrap().to_string_lossy();
    let installed = cluster.ssh_ok(
        "ddms1",
        &format!(
            "set -e; mkdir -p /tmp/x && tar -xzf /tmp/{name} -C /tmp/x && \
             /tmp/x/ddms-e2e1/ddms release install /tmp/{name}"
        ),
    )?;
    let installed: serde_json::Value = serde_json::from_str(
        installed
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap(),
    )?;
    assert_eq!(installed["release"], "e2e1", "{installed}");
    assert_eq!(installed["installed"], true, "{installed}");
    assert_eq!(
        installed["version_output"],
        artifact.version_output.as_str()
    );

    // The misbehaving releases are wrappers that pass the install's version check through
    // the real binary packed beside them.
    for (label, kind) in [
        ("e2e-never-ready", Kind::NeverReady),
        (
            "e2e-unhealthy",
            Kind::UnhealthyAfter(std::time::Duration::from_secs(1)),
        ),
    ] {
        let wrapped = release_tarball(cluster.dir(), label, kind)?;
        let name = wrapped.tarball.file_name().unwrap().to_string_lossy();
        cluster.scp_to("ddms1", &wrapped.tarball, "/tmp/")?;
        cluster.scp_to("ddms1", &wrapped.checksum, "/tmp/")?;
        let out = cluster.ssh_ok(
            "ddms1",
            &format!("/tmp/x/ddms-e2e1/ddms release install /tmp/{name}"),
        )?;
        assert!(out.contains(&format!("\"release\":\"{label}\"")), "{out}");
        let script = cluster.ssh_ok(
            "ddms1",
            &format!("head -c 2 /opt/ddms/releases/{label}/ddms"),
        )?;
        assert_eq!(script, "#!", "{label} is a wrapper script");
    }

    // A tampered tarball is refused on the host too.
    cluster.ssh_ok(
        "ddms1",
        &format!("cp /tmp/{name} /tmp/bad.tar.gz && cp /tmp/{name}.sha256 /tmp/bad.tar.gz.sha256 && printf x >> /tmp/bad.tar.gz"),
    )?;
    let refused = cluster.ssh(
        "ddms1",
        "/tmp/x/ddms-e2e1/ddms release install /tmp/bad.tar.gz",
    )?;
    assert!(!refused.status.success());

    // The inventory names every host with its address.
    let inventory = cluster.dir().join("hosts.yml");
    cluster.write_inventory(&inventory, &serde_json::json!({"answer": 42}))?;
    let written: serde_json::Value = serde_json::from_slice(&std::fs::read(&inventory)?)?;
    assert_eq!(
        written["all"]["children"]["ddms"]["hosts"]["ddms1"]["ansible_host"],
        host.ip.as_str()
    );
    assert_eq!(written["all"]["vars"]["answer"], 42);
    Ok(())
}
