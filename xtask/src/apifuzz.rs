//! The whole API generated from its own description: schemathesis (PyPI) reads
//! `app/src/http/openapi.json` and sends generated requests — valid and invalid — to a running
//! ddms (SQLite, embedded broker), signed in as an owner with an API token so that the requests
//! reach the handlers, not only the authentication. A run fails on any 5xx and on any answer the
//! document does not describe (status code, content type, body schema). Bounded and reproducible:
//! a fixed number of examples per operation, a fixed seed, deterministic generation, one worker.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use xshell::{cmd, Shell};

/// The version `cargo xtask setup` installs; another one may generate other cases.
pub const SCHEMATHESIS_VERSION: &str = "4.32.5";
/// Examples per operation and phase: about a minute against a release build.
const MAX_EXAMPLES: &str = "25";
const SEED: &str = "12";
/// Checks that are about the answers; `all` would add heuristics (e.g. "a made-up id must
/// give 404 for every method") that are not promises of the document.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_schema_conformance,response_headers_conformance";

pub fn run(sh: &Shell, ddms: &Path) -> Result<()> {
    let version = cmd!(sh, "schemathesis --version")
        .quiet()
        .ignore_stderr()
        .read()
        .unwrap_or_default();
    if !version.contains(SCHEMATHESIS_VERSION) {
        bail!(
            "schemathesis {SCHEMATHESIS_VERSION} is needed for the API fuzzing step (found: \
             {found}). Install it with `python3 -m pip install schemathesis=={SCHEMATHESIS_VERSION}` \
             (`cargo xtask setup` does), then run `cargo xtask test` again, or this step alone with \
             `cargo xtask apifuzz`",
            found = if version.trim().is_empty() {
                "none"
            } else {
                version.trim()
            }
        );
    }
    let dir = std::env::temp_dir().join(format!("ddms-apifuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = fuzz(sh, ddms, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn fuzz(sh: &Shell, ddms: &Path, dir: &Path) -> Result<()> {
    let port = crate::ports::free_port()?;
    let broker_port = crate::ports::free_port()?;
    let env = |command: &mut Command| {
        for (key, _) in std::env::vars() {
            if key.starts_with("DDMS_") {
                command.env_remove(key);
            }
        }
        command
            .current_dir(dir)
            .env(
                "DDMS_DATABASE__URL",
                format!("sqlite://{}", dir.join("ddms.db").display()),
            )
            .env("DDMS_MQTT__MODE", "embedded")
            .env(
                "DDMS_MQTT__EMBEDDED__LISTEN",
                format!("127.0.0.1:{broker_port}"),
            )
            .env("DDMS_PROVISIONING__TOKEN", "apifuzz-provisioning-token")
            .env("DDMS_BACKUP__DIR", dir.join("backups"))
            .env("DDMS_LOG__LEVEL", "warn");
    };
    // An owner (so that user management has a last owner to protect) and the owner token the
    // requests carry.
    let mut add = Command::new(ddms);
    env(&mut add);
    let mut child = add
        .args(["user", "add", "--username", "fuzz-owner", "--role", "owner"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(b"apifuzz owner password\n")?;
    ensure!(child.wait()?.success(), "ddms user add failed");
    let mut create = Command::new(ddms);
    env(&mut create);
    let out = create
        .args(["token", "create", "--name", "apifuzz", "--role", "owner"])
        .output()?;
    ensure!(
        out.status.success(),
        "ddms token create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout)?.trim().to_string();

    let log_path = dir.join("ddms.log");
    let log = std::fs::File::create(&log_path)?;
    let mut serve = Command::new(ddms);
    env(&mut serve);
    let child = serve
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawn {}", ddms.display()))?;
    let mut guard = KillOnDrop(child);
    wait_healthy(port, &mut guard.0)?;

    let url = format!("http://127.0.0.1:{port}");
    let auth = format!("Authorization: Bearer {token}");
    let report = crate::build::target_dir(sh)?.join("apifuzz");
    let junit = report.join("junit.xml");
    // `DELETE /api/tokens/{id}` with the token's own id would end the run's credentials: ids
    // are random UUIDs, which generated ids do not hit. `/api/stream` never ends its answer
    // (schemathesis reads whole bodies); the streams have their own integration tests.
    let result = cmd!(
        sh,
        "schemathesis run app/src/http/openapi.json --url {url} --header {auth}
            --checks {CHECKS} --max-examples {MAX_EXAMPLES} --seed {SEED}
            --generation-deterministic --workers 1
            --exclude-path /api/stream
            --request-timeout 30 --no-color --report junit --report-junit-path {junit}"
    )
    .run();
    let stopped = stop(&mut guard.0);
    if result.is_err() || stopped.is_err() {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        eprintln!("apifuzz: last lines of the ddms log:");
        for line in tail.into_iter().rev() {
            eprintln!("  {line}");
        }
    }
    result.context("schemathesis found answers the API document does not describe (above)")?;
    stopped?;
    println!(
        "apifuzz: every generated request got a documented answer; JUnit report in {}",
        junit.display()
    );
    Ok(())
}

fn wait_healthy(port: u16, child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("ddms exited with {status} before it listened");
        }
        ensure!(Instant::now() < deadline, "ddms did not listen within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop(child: &mut Child) -> Result<()> {
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status()?;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if let Some(status) = child.try_wait()? {
            ensure!(status.success(), "ddms exited with {status} after SIGTERM");
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "ddms did not exit within 40 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
