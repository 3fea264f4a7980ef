//! README command 1, end to end: the release binary serves on embedded defaults (SQLite in a
//! fresh data dir, nothing else installed) and its probes answer.

use std::io::Read;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use xshell::{cmd, Shell};

pub fn run(sh: &Shell, locked: bool) -> Result<()> {
    // The artifact a deploy ships, checked and unpacked as a host would.
    let artifact = crate::build::run(sh, locked, None)?;
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
    // Every link of the README it ships resolves inside the tarball (docs/ included).
    let readme = std::fs::read_to_string(unpacked.join("README.md")).context("README.md")?;
    for target in readme_links(&readme) {
        ensure!(
            unpacked.join(&target).exists(),
            "the tarball's README links to {target}, which the tarball lacks"
        );
    }
    println!("smoke: release {} verified and unpacked", artifact.version);

    let workdir = std::env::temp_dir().join(format!("ddms-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&workdir)?;
    let port = crate::ports::free_port()?;
    let mut command = Command::new(&binary);
    command
        .args(["serve", "--demo", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(&workdir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, _) in std::env::vars() {
        if key.starts_with("DDMS_") {
            command.env_remove(key);
        }
    }
    let mut child = command.spawn().with_context(|| format!("spawn {binary}"))?;
    // The demo prints its signed-in URL on stderr.
    let stderr = child.stderr.take().expect("piped stderr");
    let (token_tx, token_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("{line}");
            if let Some(token) = line.split("/#token=").nth(1) {
                let _ = token_tx.send(token.trim().to_string());
            }
        }
    });
    let mut guard = KillOnDrop(child);
    let result = check(port).and_then(|()| {
        let token = token_rx
            .recv_timeout(Duration::from_secs(30))
            .context("the demo printed no URL")?;
        check_demo(port, &token)
    });
    stop(&mut guard.0)?;
    let _ = std::fs::remove_dir_all(&workdir);
    let _ = std::fs::remove_dir_all(&unpacked);
    result?;
    println!(
        "smoke: README command 1 serves /health, /ready, /metrics and /api/version on SQLite, \
         with live demo readings"
    );
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

/// The demo devices exist and report values, read with the token from the printed URL.
fn check_demo(port: u16, token: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get_with(port, "/api/devices", Some(token))?;
        ensure!(
            status == 200,
            "/api/devices with the demo token: {status} {body}"
        );
        let devices = body.matches("\"protocol\":\"modbus\"").count();
        let online = body.matches("\"status\":\"online\"").count();
        if devices >= 3 && online >= 3 {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "demo devices did not come online: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn get(port: u16, path: &str) -> Result<(u16, String)> {
    get_with(port, path, None)
}

/// A minimal HTTP/1.0 GET, to keep an HTTP client out of xtask.
fn get_with(port: u16, path: &str, token: Option<&str>) -> Result<(u16, String)> {
    use std::io::Write;
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: localhost\r\n{auth}\r\n"
    )?;
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

/// The relative file targets of a Markdown text's inline links (`[text](path#anchor)`), without
/// their anchors; web addresses and in-page anchors are left out.
fn readme_links(markdown: &str) -> Vec<String> {
    markdown
        .split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .map(|target| target.split('#').next().unwrap_or_default().to_owned())
        .filter(|target| {
            !target.is_empty() && !target.contains("://") && !target.starts_with("mailto:")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn readme_links_are_the_relative_file_targets() {
        let text = "See [ops](docs/operating.md#backups), [site](https://example.net/x), \
                    [here](#top), ![shot](docs/dashboard.png) and [cfg](ddms.example.toml).";
        assert_eq!(
            super::readme_links(text),
            [
                "docs/operating.md",
                "docs/dashboard.png",
                "ddms.example.toml"
            ]
        );
    }
}
