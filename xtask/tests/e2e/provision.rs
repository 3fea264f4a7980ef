//! `ansible/site.yml` on one cluster, phase after phase (one fleet: provisioning it is most of
//! the time): it provisions from scratch; a second run changes nothing; `--check --diff` on the
//! provisioned fleet fails nothing, changes nothing and prints no secret; the ACME webroot
//! (ACME off, the default) is served by nginx and certbot is not installed; and a changed
//! setting is live through every host's nginx after another run, with 0 failed requests under
//! load and a `restarted` record in each host's deploy log.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::fleet::{host_ddms, say};
use crate::support::ansible::{ansible_playbook, PlaybookRun};
use crate::support::cluster::Cluster;
use crate::support::release::{release_tarball, Kind};
use crate::support::{run, tail};
use crate::traffic::{Target, Traffic};

/// API reads per second offered to each host's nginx while site.yml applies a setting: steady
/// traffic through the whole restart (the debug binary may serve it; the deploy scenarios are
/// where throughput is measured).
const RATE_PER_HOST: f64 = 40.0;
/// The origin the setting under test allows (`http.cors.allowed_origins`): visible through
/// nginx as `access-control-allow-origin` once the running process has it.
const ORIGIN: &str = "https://scada.example.net";

#[test]
fn e2e_container_site_playbook_provisions_is_idempotent_checks_clean_and_applies_a_setting_under_load(
) -> Result<()> {
    let _exclusive = crate::support::one_cluster_at_a_time();
    let started = Instant::now();
    let cluster = Cluster::start("ddms-e2e-site", &["ddms1", "ddms2"], true)?;
    let dir = cluster.dir();
    let certs = tls_material(&cluster)?;
    let artifact = release_tarball(dir, "v1", Kind::Good)?;
    let inventory = dir.join("hosts.yml");
    let vars = provisioning_vars(&certs);
    cluster.write_inventory(&inventory, &vars)?;
    let release = json!({
        "ddms_release": artifact.release,
        "ddms_artifact_src": artifact.tarball.display().to_string(),
    });

    say("site.yml: provision");
    let first = ansible_playbook("site.yml", &inventory, &release, &[])?;
    assert_provisioned(&first, &cluster)?;
    for host in cluster.ddms_hosts() {
        let ready = https_get(&certs, &host.ip, "/ready")?;
        assert_eq!(
            ready.0, 200,
            "/ready through nginx on {}: {}",
            host.name, ready.1
        );
        let version = https_get(&certs, &host.ip, "/api/version")?;
        assert_eq!(version.0, 200, "{}", version.1);
        let version: Value = serde_json::from_str(&version.1)?;
        assert_eq!(version["version"], artifact.version.as_str(), "{version}");
        let status = release_status(&cluster, &host.name)?;
        let active: Vec<&str> = ["blue", "green"]
            .into_iter()
            .filter(|slot| status["slots"][slot]["active"] == true)
            .collect();
        assert_eq!(active.len(), 1, "exactly one active slot: {status:#}");
        let slot = &status["slots"][active[0]];
        assert_eq!(slot["release"], "v1", "{status:#}");
        assert_eq!(slot["running"], true, "{status:#}");
        assert_eq!(slot["ready"], true, "{status:#}");
        assert_eq!(version["slot"], active[0], "nginx serves the active slot");
        let idle = if active[0] == "blue" { "green" } else { "blue" };
        assert_eq!(status["slots"][idle]["running"], false, "{status:#}");
        assert_eq!(status["last_known_good"], "v1", "{status:#}");
        assert_release_env(&cluster, &host.name)?;
    }
    if mqtt_external() {
        // /ready needs the broker; the broker's log says who connected, over TLS, as whom.
        let log = cluster.ssh_ok("db1", "cat /var/log/mosquitto/mosquitto.log")?;
        for host in cluster.ddms_hosts() {
            let ingester = format!("from {}:", host.ip);
            assert!(
                log.lines().any(|l| l.contains(&ingester)
                    && l.contains(&format!("as ddms-{}-", host.name))
                    && l.contains("u'ddms'")),
                "{}'s ingester is not connected to Mosquitto as `ddms`:\n{log}",
                host.name
            );
        }
    }

    say("site.yml: a second run");
    let second = ansible_playbook("site.yml", &inventory, &release, &[])?;
    assert_provisioned(&second, &cluster)?;
    let changed = second.changed_hosts();
    assert!(
        changed.is_empty(),
        "the second run changed {changed:?}:\n{}",
        second.changed_tasks().join("\n")
    );

    say("site.yml --check --diff on the provisioned fleet");
    let check = ansible_playbook("site.yml", &inventory, &release, &["--check", "--diff"])?;
    assert_provisioned(&check, &cluster)?;
    let changed = check.changed_hosts();
    assert!(
        changed.is_empty(),
        "--check --diff would change {changed:?}:\n{}",
        check.changed_tasks().join("\n")
    );
    assert_no_secret_printed(&vars, &[&first, &second, &check])?;

    // Still one deploy per host: neither the second run nor check mode activated again.
    for host in cluster.ddms_hosts() {
        let deploys = cluster.ssh_ok(&host.name, "wc -l < /var/lib/ddms/deploys.jsonl")?;
        assert_eq!(deploys.trim(), "1", "{}", host.name);
    }
    for host in cluster.ddms_hosts() {
        assert_acme_webroot_served_without_certbot(&cluster, &host.name, &host.ip)?;
    }

    say("site.yml with a changed setting, under load");
    setting_applied_under_load(&cluster, &certs, &inventory, &release, &vars)?;
    say(format!(
        "site.yml scenarios done in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// site.yml with `http.cors.allowed_origins` added (`ddms_config_extra_toml`) while every host's
/// nginx serves a steady load: 0 failed requests, the origin allowed through every host's nginx
/// afterwards, and the handler's `ddms release restart` recorded on every host.
fn setting_applied_under_load(
    cluster: &Cluster,
    certs: &Certs,
    inventory: &Path,
    release: &Value,
    vars: &Value,
) -> Result<()> {
    for host in cluster.ddms_hosts() {
        let allowed = allowed_origin(certs, &host.ip)?;
        ensure!(
            allowed.is_none(),
            "{}: {ORIGIN} allowed before the setting: {allowed:?}",
            host.name
        );
    }
    let token = host_ddms(
        cluster,
        &cluster.ddms_hosts()[0].name,
        "token create --name e2e-site --role viewer",
    )?
    .lines()
    .rev()
    .find(|l| !l.trim().is_empty())
    .context("token create printed nothing")?
    .trim()
    .to_string();
    let targets: Vec<Target> = cluster
        .ddms_hosts()
        .iter()
        .map(|h| Target {
            host: h.name.clone(),
            base: format!("https://{}", h.ip),
        })
        .collect();
    let ca_pem = std::fs::read(certs.file("ca.crt"))?;
    let traffic = Traffic::start(&targets, &ca_pem, &token, RATE_PER_HOST, 0)?;
    // The play starts once every host answers the load (a failure here is the load's own).
    let flowing = wait_until(Duration::from_secs(30), || {
        let stats = traffic.stats();
        targets
            .iter()
            .all(|t| stats.per_host.get(&t.host).copied().unwrap_or(0) >= 20)
            || stats.failed > 0
    });
    let changed = {
        let mut extra = release.clone();
        extra["ddms_config_extra_toml"] =
            json!(format!("[http.cors]\nallowed_origins = [\"{ORIGIN}\"]\n"));
        ansible_playbook("site.yml", inventory, &extra, &[])
    };
    let (stats, _) = traffic.stop();
    let play = changed?;
    ensure!(flowing, "the load never reached every host: {stats:?}");
    assert_provisioned(&play, cluster)?;
    assert_no_secret_printed(vars, &[&play])?;
    ensure!(
        stats.failed == 0,
        "{} of {} requests failed during site.yml {:?}; first: {:#?}",
        stats.failed,
        stats.sent,
        stats.by_kind,
        stats.samples
    );
    let restarts: Vec<String> = play
        .changed_tasks()
        .into_iter()
        .filter(|t| t.contains("ddms release restart"))
        .collect();
    for host in cluster.ddms_hosts() {
        ensure!(
            restarts
                .iter()
                .any(|t| t.ends_with(&format!("[{}]", host.name))),
            "no restart handler changed {}: {:?}",
            host.name,
            play.changed_tasks()
        );
        let allowed = allowed_origin(certs, &host.ip)?;
        ensure!(
            allowed.as_deref() == Some(ORIGIN),
            "{}: access-control-allow-origin {allowed:?} through nginx after site.yml",
            host.name
        );
        let last = cluster.ssh_ok(&host.name, "tail -n 1 /var/lib/ddms/deploys.jsonl")?;
        let record: Value = serde_json::from_str(&last)
            .with_context(|| format!("{}'s last deploy record: {last}", host.name))?;
        ensure!(
            record["command"] == "restart" && record["result"] == "restarted",
            "{}'s last deploy record: {record:#}",
            host.name
        );
        ensure!(record["release"] == "v1", "{record:#}");
    }
    say(format!(
        "setting live on every host; {} requests during site.yml, 0 failed (p50 {:?} ms, p99 {:?} ms)",
        stats.ok,
        stats.latency_quantile(0.5),
        stats.latency_quantile(0.99)
    ));
    Ok(())
}

/// `access-control-allow-origin` of `GET /api/version` with `Origin: ORIGIN`, through nginx.
fn allowed_origin(certs: &Certs, ip: &str) -> Result<Option<String>> {
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10", "--cacert"])
        .arg(certs.file("ca.crt"))
        .args(["--header", &format!("Origin: {ORIGIN}")])
        .args(["--output", "/dev/null", "--dump-header", "-"])
        .arg(format!("https://{ip}/api/version"))
        .output()
        .context("cannot run curl")?;
    let headers = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success() && headers.starts_with("HTTP/") && headers.contains(" 200"),
        "GET https://{ip}/api/version: {}{headers}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(headers.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("access-control-allow-origin")
            .then(|| value.trim().to_string())
    }))
}

/// With ACME off (the default) nothing of it is installed, and the webroot the site serves on
/// port 80 is readable by nginx's user: a file put there is answered over HTTP.
fn assert_acme_webroot_served_without_certbot(
    cluster: &Cluster,
    host: &str,
    ip: &str,
) -> Result<()> {
    let certbot = cluster.ssh(host, "dpkg-query -W -f '${Status}' certbot")?;
    ensure!(
        !String::from_utf8_lossy(&certbot.stdout).contains("installed"),
        "{host}: certbot installed with ACME off"
    );
    let webroot = "/var/www/ddms-acme";
    let mode = cluster.ssh_ok(host, &format!("stat -c '%a %U:%G' {webroot}"))?;
    ensure!(mode.trim() == "755 root:root", "{host}: {webroot} {mode}");
    let token = format!("e2e-probe-{}", std::process::id());
    cluster.ssh_ok(
        host,
        &format!(
            "install -d -m 0755 {webroot}/.well-known/acme-challenge && \
             echo {token} > {webroot}/.well-known/acme-challenge/{token}"
        ),
    )?;
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10"])
        .args(["--write-out", "\n%{http_code}"])
        .arg(format!("http://{ip}/.well-known/acme-challenge/{token}"))
        .output()
        .context("cannot run curl")?;
    cluster.ssh_ok(host, &format!("rm -r {webroot}/.well-known"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    ensure!(
        text.trim_end().ends_with("\n200") && text.starts_with(&token),
        "{host}: GET http://{ip}/.well-known/acme-challenge/{token}: {}{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// None of the inventory's secrets appears in what the runs printed (`no_log` on every task
/// that handles one; `--diff` included).
fn assert_no_secret_printed(vars: &Value, runs: &[&PlaybookRun]) -> Result<()> {
    for key in [
        "postgresql_ddms_password",
        "mosquitto_dynsec_admin_password",
        "mosquitto_ddms_password",
    ] {
        let secret = vars[key].as_str().context("secret")?;
        for run in runs {
            if run.stdout.contains(secret) || run.stderr.contains(secret) {
                bail!("ansible-playbook printed {key}");
            }
        }
    }
    Ok(())
}

/// Polls `condition` every 100 ms until it holds or `timeout` passes; whether it held.
fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        // sleep: the poll interval of this wait with a deadline
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The role wrote the host's `ddms release` options where `cargo xtask deploy` loads them:
/// root-owned, world-readable (no secrets), the inventory's gates, sourced as `xtask` does.
fn assert_release_env(cluster: &Cluster, host: &str) -> Result<()> {
    let file = "/etc/ddms/release.env";
    let mode = cluster.ssh_ok(host, &format!("stat -c '%a %U:%G' {file}"))?;
    assert_eq!(mode.trim(), "644 root:root", "{host}: {file}");
    let sourced = cluster.ssh_ok(
        host,
        &format!("env -i sh -c 'set -a; . {file}; set +a; env' | grep '^DDMS_' | sort"),
    )?;
    for expected in [
        "DDMS_CONFIG=/etc/ddms/ddms.toml",
        "DDMS_RELEASE_SERVICE_MANAGER=direct",
        "DDMS_RELEASE_WATCH=2",
        "DDMS_RELEASE_READY_TIMEOUT=60",
        "DDMS_RELEASE_DRAIN_TIMEOUT=10",
        "DDMS_RELEASE_LOCK_TTL=15",
        "DDMS_RELEASE_MAX_5XX_RATIO=0.01",
        "DDMS_RELEASE_BLUE_PORT=8081",
        "DDMS_RELEASE_GREEN_PORT=8082",
    ] {
        assert!(
            sourced.lines().any(|l| l == expected),
            "{host}: {file} lacks {expected}:\n{sourced}"
        );
    }
    // Who deploys is the deploying machine's to say, not the host's.
    assert!(
        !sourced.contains("DDMS_RELEASE_ACTOR"),
        "{host}:\n{sourced}"
    );
    Ok(())
}

/// Every host of the cluster is in the recap with failed=0 and unreachable=0.
pub(crate) fn assert_provisioned(run: &PlaybookRun, cluster: &Cluster) -> Result<()> {
    for host in cluster.hosts() {
        let recap = run.recap.get(&host.name);
        ensure!(
            run.code == 0 && recap.is_some_and(|r| r.failed == 0 && r.unreachable == 0 && r.ok > 0),
            "site.yml on {} (exit {}): {recap:?}\n{}\n{}",
            host.name,
            run.code,
            tail(&run.stdout, 80),
            tail(&run.stderr, 20)
        );
    }
    Ok(())
}

pub(crate) struct Certs {
    dir: std::path::PathBuf,
}

impl Certs {
    pub(crate) fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// A CA and the dashboard's and broker's certificates for every host's address, by
/// `cargo xtask certs` (this crate's own binary).
pub(crate) fn tls_material(cluster: &Cluster) -> Result<Certs> {
    let dir = cluster.dir().join("certs");
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    command.args(["certs", "--days", "2", "--out"]).arg(&dir);
    for host in cluster.hosts() {
        command.args(["--host", &host.ip]);
    }
    run(&mut command)?;
    Ok(Certs { dir })
}

/// A fresh random secret (hex), never stored anywhere but the test's temp dir.
fn secret() -> Result<String> {
    let bytes = std::fs::read("/proc/sys/kernel/random/uuid")
        .and_then(|a| std::fs::read("/proc/sys/kernel/random/uuid").map(|b| [a, b].concat()))
        .context("random bytes")?;
    Ok(String::from_utf8_lossy(&bytes)
        .chars()
        .filter(char::is_ascii_hexdigit)
        .collect())
}

/// The inventory variables of the test environment: secrets made up here, the TLS files, no
/// apt index refresh (the images have every package), the direct service manager, short gates.
pub(crate) fn provisioning_vars(certs: &Certs) -> Value {
    let secret = || secret().expect("random secret");
    let mqtt = if mqtt_external() { "external" } else { "off" };
    json!({
        "common_apt_update_cache": false,
        "postgresql_ddms_password": secret(),
        "mosquitto_dynsec_admin_password": secret(),
        "mosquitto_ddms_password": secret(),
        "mosquitto_tls_cert_src": certs.file("broker.crt"),
        "mosquitto_tls_key_src": certs.file("broker.key"),
        "mosquitto_tls_ca_src": certs.file("ca.crt"),
        // No syslog daemon in the containers.
        "mosquitto_log_dest": "file /var/log/mosquitto/mosquitto.log",
        "nginx_tls_cert_src": certs.file("server.crt"),
        "nginx_tls_key_src": certs.file("server.key"),
        "ddms_mqtt_mode": mqtt,
        "ddms_service_manager": "direct",
        "ddms_watch": 2,
        "ddms_ready_timeout": 60,
        "ddms_drain_timeout": 10,
        "ddms_lock_ttl": 15,
        "ddms_actor": "e2e-test",
    })
}

/// MQTT through the db host's Mosquitto over TLS (with dynamic security), unless
/// `DDMS_E2E_MQTT=off`.
fn mqtt_external() -> bool {
    std::env::var("DDMS_E2E_MQTT").map_or(true, |v| v != "off")
}

/// `GET https://<ip><path>` with curl, verifying nginx's certificate against the test CA:
/// (status, body).
pub(crate) fn https_get(certs: &Certs, ip: &str, path: &str) -> Result<(u16, String)> {
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10", "--cacert"])
        .arg(Path::new(&certs.file("ca.crt")))
        .args(["--write-out", "\n%{http_code}"])
        .arg(format!("https://{ip}{path}"))
        .output()
        .context("cannot run curl")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(
        output.status.success(),
        "curl https://{ip}{path}: {}{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Ok((code.trim().parse()?, body.to_string()))
}

/// `ddms release status` on a host (through the link the role maintains), as JSON.
fn release_status(cluster: &Cluster, host: &str) -> Result<Value> {
    let out = cluster.ssh_ok(
        host,
        "DDMS_RELEASE_SERVICE_MANAGER=direct /usr/local/bin/ddms release status",
    )?;
    serde_json::from_str(&out).with_context(|| format!("status on {host}: {out}"))
}
