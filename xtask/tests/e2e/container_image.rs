//! The container image (`cargo xtask image`) and `ops/container/compose.yaml` as a container
//! user runs them: ddms + PostgreSQL + Mosquitto (TLS, dynamic security), secrets as files,
//! healthchecks, a device that publishes over MQTT, a non-root static binary, a clean stop.
//!
//! The official `postgres:15` and `eclipse-mosquitto:2` cannot be pulled here: the compose
//! file takes its images from variables, and this test names the local stand-ins (unless
//! `DDMS_TEST_IMAGES=official`).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::support::ports::free_port;
use crate::support::{project_root, run, tail};

/// Every project this test starts is named `<prefix><pid>`, so a run killed half-way is
/// cleaned up by the next one.
const PROJECT_PREFIX: &str = "ddms-e2e-compose-";
const IMAGE_REPOSITORY: &str = "ddms-e2e";
const POSTGRES_IMAGE: &str = "ddms-test/postgres:15";
const MOSQUITTO_IMAGE: &str = "ddms-test/mosquitto:2";
/// The image's user, numeric.
const UID: u32 = 65532;

#[test]
fn e2e_container_compose_stack_serves_ingests_over_mqtt_tls_as_non_root_and_stops_with_exit_0(
) -> Result<()> {
    let _exclusive = crate::support::one_cluster_at_a_time();
    let dir = tempfile::Builder::new().prefix(PROJECT_PREFIX).tempdir()?;
    let image = build_image()?;

    // The secret files and certificates a user makes before the first `up` (README.md).
    let tls = dir.path().join("tls");
    run(Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["certs", "--days", "2", "--out"])
        .arg(&tls)
        .args(["--host", "mosquitto", "--host", "127.0.0.1"]))?;
    let secrets = dir.path().join("secrets");
    let postgres_password = secret()?;
    let values = BTreeMap::from([
        (
            "database_url",
            format!("postgres://ddms:{postgres_password}@postgres:5432/ddms"),
        ),
        ("postgres_password", postgres_password.clone()),
        ("mqtt_password", secret()?),
        ("mqtt_dynsec_password", secret()?),
        ("provisioning_token", secret()?),
    ]);
    std::fs::create_dir(&secrets)?;
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o700))?;
    for (name, value) in &values {
        let file = secrets.join(name);
        std::fs::write(&file, format!("{value}\n"))?;
        // Readable by the services' own users (ddms 65532, postgres); the directory is 0700.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o444))?;
    }

    let http_port = free_port()?;
    let mqtt_port = free_port()?;
    let http_publish = format!("127.0.0.1:{http_port}");
    let mqtt_publish = format!("127.0.0.1:{mqtt_port}");
    // What devices are told: the published port, not the service name inside the network.
    let mqtt_public_url = format!("mqtts://127.0.0.1:{mqtt_port}");
    let secrets_dir = secrets.display().to_string();
    let tls_dir = tls.display().to_string();
    let mut env = vec![
        ("APP_IMAGE", image.as_str()),
        ("HTTP_PUBLISH", &http_publish),
        ("MQTT_PUBLISH", &mqtt_publish),
        ("MQTT_PUBLIC_URL", &mqtt_public_url),
        ("SECRETS_DIR", &secrets_dir),
        ("TLS_DIR", &tls_dir),
    ];
    // Where the official images can be pulled, the compose file's defaults are used as they are.
    if std::env::var("DDMS_TEST_IMAGES").map_or(true, |v| v != "official") {
        env.extend([
            ("POSTGRES_IMAGE", POSTGRES_IMAGE),
            ("MOSQUITTO_IMAGE", MOSQUITTO_IMAGE),
        ]);
    }
    let stack = Stack::up(&dir.path().join("compose-logs"), &env)?;
    let base = format!("http://127.0.0.1:{http_port}");

    // Ready through the published port: PostgreSQL and Mosquitto reached by their service
    // names (DNS from a static glibc binary), over TLS for MQTT with the broker's CA.
    let ready = wait_for(Duration::from_secs(180), || {
        let (code, body) = http(&base, "GET", "/ready", None, None)?;
        ensure!(code == 200, "/ready answered {code}: {body}");
        Ok(body)
    })
    .with_context(|| stack.diagnostics())?;
    let ready: Value = serde_json::from_str(&ready)?;
    assert_eq!(ready["status"], "ready", "{ready:#}");
    let (code, version) = http(&base, "GET", "/api/version", None, None)?;
    assert_eq!(code, 200, "{version}");
    let version: Value = serde_json::from_str(&version)?;
    let tag = image.rsplit(':').next().unwrap_or_default();
    assert_eq!(version["version"], tag, "{version}");

    // A device created through the API gets a broker account (dynamic security), publishes
    // over TLS through the published port, and its reading is stored in PostgreSQL.
    let token = stack
        .exec_ok(
            "ddms",
            &[
                "ddms", "token", "create", "--name", "e2e", "--role", "admin",
            ],
        )?
        .trim()
        .to_string();
    let (code, device) = http(
        &base,
        "POST",
        "/api/devices",
        Some(&token),
        Some(&json!({"name": "compose-sensor", "protocol": "mqtt", "group": "e2e"})),
    )?;
    assert_eq!(code, 201, "{device}");
    let device: Value = serde_json::from_str(&device)?;
    let id = device["id"].as_str().context("device id")?.to_string();
    let mqtt = &device["mqtt"];
    // The credentials name the address outside the compose network, and the device uses
    // exactly what it was told.
    assert_eq!(mqtt["host"], "127.0.0.1", "{device:#}");
    assert_eq!(mqtt["port"], mqtt_port, "{device:#}");
    assert_eq!(mqtt["tls"], true, "{device:#}");
    let told_host = mqtt["host"].as_str().unwrap_or_default().to_string();
    let told_port = mqtt["port"].to_string();
    let publish = |value: f64| -> Result<()> {
        run(Command::new("mosquitto_pub")
            .args(["-h", &told_host, "-p", &told_port])
            .arg("--cafile")
            .arg(tls.join("ca.crt"))
            .args(["-u", mqtt["username"].as_str().unwrap_or_default()])
            .args(["-P", mqtt["password"].as_str().unwrap_or_default()])
            .args(["-i", mqtt["username"].as_str().unwrap_or_default()])
            .args(["-q", "1", "-t", &format!("devices/{id}/telemetry")])
            .args([
                "-m",
                &json!({"metrics": {"temperature": value}}).to_string(),
            ]))?;
        Ok(())
    };
    // The account reaches the broker right after the API answers; retry a refused first login.
    wait_for(Duration::from_secs(30), || publish(21.5)).with_context(|| stack.diagnostics())?;
    wait_for(Duration::from_secs(30), || {
        let (code, latest) = http(
            &base,
            "GET",
            &format!("/api/devices/{id}/latest"),
            Some(&token),
            None,
        )?;
        ensure!(code == 200, "latest answered {code}: {latest}");
        let latest: Value = serde_json::from_str(&latest)?;
        ensure!(
            latest["temperature"]["value"] == 21.5,
            "no reading yet: {latest}"
        );
        Ok(())
    })
    .with_context(|| stack.diagnostics())?;

    // The image's HEALTHCHECK (`ddms healthcheck`) says healthy.
    let container = stack.container("ddms")?;
    wait_for(Duration::from_secs(90), || {
        let health = inspect(&container, "{{.State.Health.Status}}")?;
        ensure!(health == "healthy", "health is {health}");
        Ok(())
    })
    .with_context(|| stack.diagnostics())?;

    // Not root: the image's numeric user, every uid of the process, no capabilities, and no
    // way to gain privileges.
    assert_eq!(
        inspect(&container, "{{.Config.User}}")?,
        format!("{UID}:{UID}")
    );
    let pid = inspect(&container, "{{.State.Pid}}")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    assert_eq!(
        field("Uid:"),
        format!("{UID} {UID} {UID} {UID}"),
        "{status}"
    );
    assert_eq!(
        field("Gid:"),
        format!("{UID} {UID} {UID} {UID}"),
        "{status}"
    );
    assert_eq!(field("CapEff:"), "0000000000000000", "{status}");
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");

    // The binary in the image is static, and nothing else is there to run (no shell).
    let binary = dir.path().join("ddms-from-image");
    run(Command::new("docker")
        .args(["cp", &format!("{container}:/usr/local/bin/ddms")])
        .arg(&binary))?;
    let file = run(Command::new("file").arg("-b").arg(&binary))?;
    let file = String::from_utf8_lossy(&file.stdout);
    assert!(
        file.contains("static") && !file.contains("interpreter"),
        "not a static executable: {file}"
    );
    let dynamic = run(Command::new("readelf").arg("--dynamic").arg(&binary))?;
    let dynamic = String::from_utf8_lossy(&dynamic.stdout);
    assert!(!dynamic.contains("(NEEDED)"), "needs libraries:\n{dynamic}");
    let listing = run(Command::new("sh")
        .arg("-c")
        .arg(format!("docker export {container} | tar -t")))?;
    let listing = String::from_utf8_lossy(&listing.stdout);
    let executables: Vec<&str> = listing
        .lines()
        .filter(|p| p.contains("bin/"))
        .filter(|p| !p.ends_with('/'))
        .collect();
    assert_eq!(executables, ["usr/local/bin/ddms"], "{listing}");

    // `docker compose stop` (then `down`) sends SIGTERM: ddms drains and exits 0 within the
    // grace period, not killed.
    let stopped = Instant::now();
    stack.compose_ok(&["stop", "--timeout", "40", "ddms"])?;
    let took = stopped.elapsed();
    let exit = inspect(&container, "{{.State.ExitCode}}")?;
    assert_eq!(exit, "0", "ddms exit code\n{}", stack.diagnostics());
    assert!(took < Duration::from_secs(40), "stopping took {took:?}");
    let logs = run(Command::new("docker").args(["logs", "--tail", "20", &container]))?;
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert!(
        logs.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|l| l["message"] == "shutdown complete"),
        "{logs}"
    );
    stack.down()?;
    Ok(())
}

/// `cargo xtask image --repository ddms-e2e`; the image's `<repository>:<version>`.
fn build_image() -> Result<String> {
    let output = run(Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["image", "--repository", IMAGE_REPOSITORY])
        .current_dir(project_root())
        .stdin(Stdio::null()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("image: "))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .with_context(|| format!("no `image:` line in\n{stdout}"))
}

/// A `docker compose` project of `ops/container/compose.yaml`, brought down (volumes too)
/// when dropped.
struct Stack {
    project: String,
    env: Vec<(String, String)>,
    compose: Vec<String>,
    logs: PathBuf,
}

impl Stack {
    fn up(logs: &Path, env: &[(&str, &str)]) -> Result<Stack> {
        let compose = compose_command()?;
        reap_abandoned(&compose);
        let stack = Stack {
            project: format!("{PROJECT_PREFIX}{}", std::process::id()),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            compose,
            logs: logs.to_path_buf(),
        };
        let output = stack.compose(&["up", "--detach"])?;
        if !output.status.success() {
            bail!(
                "compose up failed ({}):\n{}{}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                stack.diagnostics()
            );
        }
        Ok(stack)
    }

    fn command(&self, args: &[&str]) -> Command {
        project_command(&self.compose, &self.project, args, &self.env)
    }

    fn compose(&self, args: &[&str]) -> Result<Output> {
        self.command(args)
            .stdin(Stdio::null())
            .output()
            .context("cannot run docker compose")
    }

    fn compose_ok(&self, args: &[&str]) -> Result<String> {
        let output = run(self.command(args).stdin(Stdio::null()))?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn exec_ok(&self, service: &str, args: &[&str]) -> Result<String> {
        let mut full = vec!["exec", "-T", service];
        full.extend_from_slice(args);
        self.compose_ok(&full)
    }

    /// The container id of a service.
    fn container(&self, service: &str) -> Result<String> {
        let id = self.compose_ok(&["ps", "-q", service])?;
        let id = id.trim();
        ensure!(!id.is_empty(), "no container for {service}");
        Ok(id.to_string())
    }

    /// Every service's state and recent log lines, for failure messages (also kept in a file).
    fn diagnostics(&self) -> String {
        let ps = self
            .compose(&["ps", "--all"])
            .or_else(|_| self.compose(&["ps"]))
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let logs = self
            .compose(&["logs", "--no-color", "--tail", "40"])
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default();
        let text = format!("--- compose ps\n{ps}\n--- compose logs (tail)\n{logs}");
        let _ = std::fs::write(&self.logs, &text);
        tail(&text, 120)
    }

    fn down(&self) -> Result<()> {
        self.compose_ok(&["down", "--volumes", "--remove-orphans", "--timeout", "40"])?;
        Ok(())
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "--volumes", "--remove-orphans", "--timeout", "10"]);
    }
}

/// `docker compose` (v2) when the engine's CLI has it, else `docker-compose` (1.29+).
fn compose_command() -> Result<Vec<String>> {
    let v2 = Command::new("docker")
        .args(["compose", "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if v2 {
        return Ok(vec!["docker".into(), "compose".into()]);
    }
    let v1 = Command::new("docker-compose")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ensure!(
        v1,
        "neither `docker compose` nor `docker-compose` runs (Debian: apt-get install docker-compose)"
    );
    Ok(vec!["docker-compose".into()])
}

fn project_command(
    compose: &[String],
    project: &str,
    args: &[&str],
    env: &[(String, String)],
) -> Command {
    let file = project_root().join("ops/container/compose.yaml");
    let mut command = Command::new(&compose[0]);
    command
        .args(&compose[1..])
        .args(["--project-name", project, "--file"])
        .arg(file)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)));
    command
}

/// Brings down the projects of test processes that no longer run.
fn reap_abandoned(compose: &[String]) {
    let Ok(output) = Command::new("docker")
        .args([
            "ps",
            "--all",
            "--format",
            "{{.Label \"com.docker.compose.project\"}}",
        ])
        .output()
    else {
        return;
    };
    let mut projects: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|p| p.starts_with(PROJECT_PREFIX))
        .map(str::to_owned)
        .collect();
    projects.sort();
    projects.dedup();
    for project in projects {
        let pid = &project[PROJECT_PREFIX.len()..];
        if Path::new("/proc").join(pid).exists() {
            continue;
        }
        // The secret files are gone with the old run's temp dir; `down` does not read them,
        // but the compose file names them: point them at something that exists.
        let env: Vec<(String, String)> = ["SECRETS_DIR", "TLS_DIR"]
            .iter()
            .map(|k| (k.to_string(), "/nonexistent".to_string()))
            .collect();
        let _ = project_command(
            compose,
            &project,
            &["down", "--volumes", "--remove-orphans", "--timeout", "5"],
            &env,
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    }
}

fn inspect(container: &str, format: &str) -> Result<String> {
    let output = run(Command::new("docker").args(["inspect", "--format", format, container]))?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// `curl` to `base` + `path`: (status, body).
fn http(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Result<(u16, String)> {
    crate::support::curl(None, method, &format!("{base}{path}"), token, body)
}

/// Retries `f` every half second until it succeeds or `timeout` passes (then its last error).
fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(value) => return Ok(value),
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(format!("still failing after {timeout:?}")))
            }
            // sleep: the poll interval of this wait with a deadline (retrying until it holds)
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
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
