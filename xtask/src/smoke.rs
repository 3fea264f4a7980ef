//! README command 1, end to end: the release binary serves on embedded defaults (SQLite in a
//! fresh data dir, nothing else installed) and its probes answer.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use xshell::{cmd, Shell};

pub fn run(sh: &Shell, locked: bool) -> Result<()> {
    // The artifact a deploy ships, checked and unpacked as a host would.
    let artifact = crate::build::run(sh, locked)?;
    let unpacked = std::env::temp_dir().join(format!("ddms-smoke-release-{}", std::process::id()));
    sh.remove_path(&unpacked)?;
    sh.create_dir(&unpacked)?;
    {
        let dist = artifact.tarball.parent().expect("dist dir").to_path_buf();
        let _dir = sh.push_dir(&dist);
        let checksum = &artifact.checksum;
        cmd!(sh, "sha256sum --check --quiet {checksum}").run()?;
    }
    let tarball = &artifact.tarball;
    cmd!(sh, "tar -xzf {tarball} -C {unpacked} --strip-components=1").run()?;
    let binary = unpacked.join("ddms").display().to_string();
    ensure!(
        unpacked.join("ops/systemd/ddms@.service").is_file(),
        "the tarball lacks ops/"
    );
    println!("smoke: release {} verified and unpacked", artifact.version);

    let workdir = std::env::temp_dir().join(format!("ddms-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&workdir)?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut command = Command::new(&binary);
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(&workdir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (key, _) in std::env::vars() {
        if key.starts_with("DDMS_") {
            command.env_remove(key);
        }
    }
    let child = command.spawn().with_context(|| format!("spawn {binary}"))?;
    let mut guard = KillOnDrop(child);
    let result = check(port);
    stop(&mut guard.0)?;
    let _ = std::fs::remove_dir_all(&workdir);
    let _ = std::fs::remove_dir_all(&unpacked);
    result?;
    println!("smoke: README command 1 serves /health, /ready, /metrics and /api/version on SQLite");
    Ok(())
}

fn check(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, _)) = get(port, "/health") {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "ddms did not answer /health within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, body) = get(port, "/ready")?;
    ensure!(status == 200, "/ready answered {status}: {body}");
    ensure!(
        body.contains("\"sqlite\""),
        "/ready does not report SQLite: {body}"
    );
    let (status, body) = get(port, "/api/version")?;
    ensure!(
        status == 200 && body.contains("\"version\""),
        "/api/version: {status} {body}"
    );
    let (status, body) = get(port, "/metrics")?;
    ensure!(status == 200, "/metrics answered {status}");
    ensure!(
        body.contains("# TYPE ddms_http_requests_total counter"),
        "/metrics lacks the request counter"
    );
    Ok(())
}

/// A minimal HTTP/1.0 GET, to keep an HTTP client out of xtask.
fn get(port: u16, path: &str) -> Result<(u16, String)> {
    use std::io::Write;
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed HTTP response")?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body))
}

fn stop(child: &mut Child) -> Result<()> {
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait()? {
            ensure!(status.success(), "ddms exited with {status} after SIGTERM");
            let mut out = String::new();
            if let Some(mut stdout) = child.stdout.take() {
                stdout.read_to_string(&mut out)?;
            }
            ensure!(
                out.contains("ddms is serving"),
                "no start-up log line: {out}"
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("ddms did not exit within 30 s of SIGTERM");
        }
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
