//! Deploy scenarios that cut a deploy short or go after the hosts' state: a deploy killed
//! mid-way, prune, and a tampered release.

use super::*;

/// Shell that prints a line per slot of a host: its name, the release its link points to
/// (`../releases/<name>`), and whether the process its pid file names runs.
const SLOTS: &str = "for slot in blue green; do \
     pid=$(cat /var/lib/ddms/$slot.pid 2>/dev/null); \
     if [ -n \"$pid\" ] && kill -0 \"$pid\" 2>/dev/null; then up=running; else up=stopped; fi; \
     echo \"$slot $(readlink /opt/ddms/slots/$slot) $up\"; done";

pub(super) fn killed_deploy(fleet: &Fleet) -> Result<String> {
    let release = "v6";
    let v6 = artifact(fleet, release, Kind::Good)?;
    // Long enough that the next deploy reaches the host while the dead one's lease is valid.
    let ttl = 20u64;
    let ttl_s = ttl.to_string();
    let mut env = FAST.to_vec();
    env.retain(|(k, _)| *k != "DDMS_RELEASE_WATCH");
    env.push(("DDMS_RELEASE_WATCH", "8"));
    env.push(("DDMS_RELEASE_LOCK_TTL", &ttl_s));
    let mut killed_env = env.clone();
    killed_env.push(("DDMS_RELEASE_ACTOR", "e2e-killed"));
    let mut cmd = fleet.xtask_command("deploy", &killed_env);
    cmd.args(["--artifact", &v6])
        .arg("--report")
        .arg(fleet.cluster.dir().join("killed.json"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let mut child = cmd.spawn()?;
    // Kill it while the first host's activate holds its lock and is under way: it has started
    // the new release in the idle slot.
    let under_way = wait::until(
        &format!("the deploy to take {}'s lock", HOSTS[0]),
        Duration::from_secs(60),
        || {
            let lock = fleet.cluster.ssh_ok(
                HOSTS[0],
                "cat /var/lib/ddms/deploy.lock 2>/dev/null || true",
            )?;
            Ok(if lock.contains("e2e-killed") {
                Check::Holds(())
            } else {
                Check::Missing(format!("the lock file holds {lock:?}"))
            })
        },
    )
    .and_then(|()| {
        wait::until(
            &format!("the activate on {} to start {release} in a slot", HOSTS[0]),
            Duration::from_secs(60),
            || {
                let slots = fleet.cluster.ssh_ok(HOSTS[0], SLOTS)?;
                Ok(if slots.contains(&format!("/{release} running")) {
                    Check::Holds(())
                } else {
                    Check::Missing(format!("slots: {}", slots.trim().replace('\n', "; ")))
                })
            },
        )
    });
    if let Err(e) = under_way {
        let _ = child.kill();
        return Err(e);
    }
    // The host-side deploy dies (a runner whose VM went away): SIGKILL, so its lock is left
    // behind until the TTL. It goes first: killed after the local deploy, it saw its ssh session
    // end (a hangup), took the way back and released its lock before the kill arrived.
    let killed_remote = fleet.cluster.ssh_ok(
        HOSTS[0],
        "pids=$(pgrep -f '[r]elease activate' || true); [ -n \"$pids\" ] && kill -KILL $pids; echo \"$pids\"",
    )?;
    // Then the deploy, as a cancelled CI job is killed: the whole process group at once.
    let pgid = child.id() as i32;
    kill_group(pgid)?;
    let _ = child.wait();
    let killed_at = Instant::now();
    // The dead deploy's lease is still there, valid until its TTL runs out.
    let lease = fleet
        .cluster
        .ssh_ok(HOSTS[0], "cat /var/lib/ddms/deploy.lock")?;
    let lease: Value = serde_json::from_str(&lease).context("the lock file")?;
    ensure!(lease["holder"] == "e2e-killed", "lock: {lease}");
    let expires = fleet::parse_rfc3339(lease["expires_at"].as_str().context("expires_at")?)?;
    let mut attempts = Vec::new();
    let report = loop {
        let (code, report) = fleet.deploy(&["--artifact", &v6], &env)?;
        attempts.push((killed_at.elapsed(), code, report["result"].clone()));
        if code != 3 {
            break report;
        }
        ensure!(
            killed_at.elapsed() < Duration::from_secs(ttl + 30),
            "still refused {:?} after the kill: {attempts:?}",
            killed_at.elapsed()
        );
        // sleep: the poll interval of this wait with a deadline (a deploy let through after the kill)
        std::thread::sleep(Duration::from_millis(500));
    };
    ensure!(
        attempts.iter().any(|(_, code, _)| *code == 3),
        "no deploy was refused while the dead one's lease ran: {attempts:?}"
    );
    let record = &host_record(&report, HOSTS[0])?["record"];
    let took = fleet::parse_rfc3339(record["started_at"].as_str().context("started_at")?)?;
    ensure!(
        took >= expires,
        "the lock was taken at {record} before the lease ended ({lease})"
    );
    ensure!(report["result"] == "ok", "the next deploy: {report}");
    let (status_code, status) = fleet.status()?;
    ensure!(status_code == 0, "status: {status}");
    for host in status["hosts"].as_array().context("status hosts")? {
        let slots = host["status"]["slots"].as_object().context("slots")?;
        let active = slots.values().filter(|s| s["active"] == true).count();
        ensure!(
            active == 1,
            "{}: {active} active slots: {host}",
            host["name"]
        );
        ensure!(
            host["status"]["lock"].is_null(),
            "lock left: {}",
            host["status"]["lock"]
        );
    }
    Ok(format!(
        "killed xtask and the host-side deploy (pids {}), lease left until {}; attempts after the kill (elapsed, exit, result): {attempts:?}; status: one active slot per host, no lock",
        killed_remote.split_whitespace().collect::<Vec<_>>().join(" "),
        lease["expires_at"]
    ))
}

pub(super) fn kill_group(pgid: i32) -> Result<()> {
    // The shell's kill takes a negative pid (the group) in dash and bash alike.
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("kill -KILL -{pgid}"))
        .status()?;
    ensure!(status.success(), "kill -KILL -{pgid} failed");
    Ok(())
}

pub(super) fn prune_and_tamper(fleet: &Fleet) -> Result<String> {
    let host = HOSTS[0];
    let status: Value =
        serde_json::from_str(&fleet::host_ddms(&fleet.cluster, host, "release status")?)?;
    let lkg = status["last_known_good"]
        .as_str()
        .context("no last_known_good")?
        .to_string();
    let active_slot = status["active_slot"]
        .as_str()
        .context("no active slot")?
        .to_string();
    let active = status["slots"][&active_slot]["release"]
        .as_str()
        .context("active slot release")?
        .to_string();
    let releases_before = status["releases"].clone();
    let pruned: Value = serde_json::from_str(
        fleet::host_ddms(&fleet.cluster, host, "release prune --keep 1")?
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .context("prune printed nothing")?,
    )?;
    let status: Value =
        serde_json::from_str(&fleet::host_ddms(&fleet.cluster, host, "release status")?)?;
    let releases: Vec<&str> = status["releases"]
        .as_array()
        .context("releases")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    ensure!(
        releases.contains(&lkg.as_str()) && releases.contains(&active.as_str()),
        "prune removed the active ({active}) or last known good ({lkg}) release: {releases:?} (before {releases_before}; prune said {pruned})"
    );
    ensure!(
        releases.len() < releases_before.as_array().map_or(0, Vec::len),
        "prune --keep 1 removed nothing: {releases:?}"
    );

    // Tampered after its checksum was published: xtask refuses it before touching a host…
    let good = release_tarball(fleet.cluster.dir(), "v7", Kind::Good)?;
    let tampered_dir = fleet.cluster.dir().join("tampered");
    std::fs::create_dir_all(&tampered_dir)?;
    let tampered = tampered_dir.join(good.tarball.file_name().unwrap());
    let mut bytes = std::fs::read(&good.tarball)?;
    bytes.push(b'x');
    std::fs::write(&tampered, bytes)?;
    std::fs::copy(
        &good.checksum,
        tampered_dir.join(good.checksum.file_name().unwrap()),
    )?;
    let (code, report) = fleet.deploy(&["--artifact", &tampered.display().to_string()], &FAST)?;
    ensure!(code != 0, "a tampered artifact deployed: {report}");
    ensure!(
        report["error"]
            .as_str()
            .is_some_and(|e| e.contains("sha256")),
        "report: {report}"
    );
    ensure!(
        report["hosts"]
            .as_array()
            .is_some_and(|h| h.iter().all(|h| h["result"] == "skipped")),
        "hosts were touched: {report}"
    );
    // …and a host refuses it too, should it arrive there (over the same ssh path).
    fleet
        .cluster
        .ssh_ok(host, "mkdir -p /var/tmp/ddms-deploy")?;
    fleet
        .cluster
        .scp_to(host, &tampered, "/var/tmp/ddms-deploy/")?;
    fleet.cluster.scp_to(
        host,
        &tampered_dir.join(good.checksum.file_name().unwrap()),
        "/var/tmp/ddms-deploy/",
    )?;
    let name = tampered.file_name().unwrap().to_string_lossy().to_string();
    let refused = fleet.cluster.ssh(
        host,
        &format!(
            "{}; $ddms release install /var/tmp/ddms-deploy/{name}",
            fleet::LKG_DDMS
        ),
    )?;
    ensure!(
        !refused.status.success(),
        "the host installed a tampered artifact"
    );
    let stderr = String::from_utf8_lossy(&refused.stderr).to_string();
    let after: Value =
        serde_json::from_str(&fleet::host_ddms(&fleet.cluster, host, "release status")?)?;
    ensure!(
        !after["releases"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r == "v7")),
        "v7 appeared on the host: {}",
        after["releases"]
    );
    Ok(format!(
        "prune --keep 1 left {releases:?} (active {active}, last known good {lkg}); tampered: xtask exit {code} ({}), host: {}",
        report["error"],
        stderr.trim()
    ))
}
