//! A blue-green host in a temp dir for the `ddms release` tests, built from real parts: release
//! tarballs packed like `cargo xtask build` packs them (around the real `ddms` binary, or a
//! small shell wrapper of it for misbehaving releases), a real nginx running the shipped site
//! configuration (`ops/nginx/ddms.conf`, TLS with a throwaway certificate) on free ports, the
//! `direct` service manager, and SQLite in the temp root.

// Each test binary uses only part of these helpers.
#![allow(dead_code)]

mod load;

pub use load::{insecure_client, insecure_client_without_timeout, Load};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use super::app::{ddms_bin, ddms_command};
use super::services::{free_port, Reaper};

/// A release tarball and its published checksum.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub tarball: PathBuf,
    pub checksum: PathBuf,
    /// The release name `ddms release install` derives from the top directory.
    pub release: String,
}

/// Packs `ddms` (the real binary or a wrapper script) as release `label`: a tarball
/// `ddms-<label>.tar.gz` whose top directory `ddms-<label>/` holds `ddms`, `VERSION`, the
/// docs and `ops/`, plus `ddms-<label>.tar.gz.sha256` in sha256sum format.
pub fn pack_release(out: &Path, label: &str, ddms: &Path) -> Result<Artifact> {
    let name = format!("ddms-{label}");
    let stage = out.join(format!("stage-{label}"));
    let top = stage.join(&name);
    std::fs::create_dir_all(top.join("ops/nginx"))?;
    std::fs::copy(ddms, top.join("ddms")).with_context(|| format!("copy {}", ddms.display()))?;
    std::fs::set_permissions(top.join("ddms"), std::fs::Permissions::from_mode(0o755))?;
    let version = Command::new(ddms_bin()).arg("--version").output()?;
    ensure!(version.status.success(), "ddms --version failed");
    std::fs::write(top.join("VERSION"), &version.stdout)?;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in ["README.md", "ARCHITECTURE.md", "ddms.example.toml"] {
        std::fs::copy(repo.join(file), top.join(file))?;
    }
    for file in ["ddms.conf", "ddms-upstream.conf"] {
        std::fs::copy(
            repo.join("ops/nginx").join(file),
            top.join("ops/nginx").join(file),
        )?;
    }
    let tarball = format!("{name}.tar.gz");
    run(Command::new("tar")
        .args([
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-I",
            "gzip -1",
            "-cf",
        ])
        .arg(out.join(&tarball))
        .arg("-C")
        .arg(&stage)
        .arg(&name))?;
    let sum = Command::new("sha256sum")
        .arg(&tarball)
        .current_dir(out)
        .output()?;
    ensure!(sum.status.success(), "sha256sum failed");
    let checksum = out.join(format!("{tarball}.sha256"));
    std::fs::write(&checksum, &sum.stdout)?;
    std::fs::remove_dir_all(&stage)?;
    Ok(Artifact {
        tarball: out.join(tarball),
        checksum,
        release: label.to_string(),
    })
}

fn run(command: &mut Command) -> Result<()> {
    let output = command.output().with_context(|| format!("{command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// A `ddms` wrapper script: `body` is shell, with `$REAL` the real binary.
fn wrapper(dir: &Path, name: &str, body: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!("#!/bin/sh\nREAL='{}'\n{body}\n", ddms_bin().display()),
    )?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// The artifacts every release test installs, packed once per test process.
pub struct Artifacts {
    /// The real binary, as releases `v1`, `v2`, `v3`, `v4` (four names for one build).
    pub good: Vec<Artifact>,
    /// `serve` with a database that cannot be reached: `/ready` never answers 200.
    pub never_ready: Artifact,
    /// Serves normally until nginx has been switched to it, then crashes (SIGKILL) a second
    /// later: inside the post-switch watch.
    pub crashes_after_switch: Artifact,
    /// TLS material for nginx.
    pub cert: PathBuf,
    pub key: PathBuf,
    pub dir: PathBuf,
}

pub fn artifacts() -> &'static Artifacts {
    static ARTIFACTS: OnceLock<(Artifacts, Reaper)> = OnceLock::new();
    &ARTIFACTS
        .get_or_init(|| {
            let dir = std::env::temp_dir().join(format!(
                "ddms-release-artifacts-{}",
                uuid::Uuid::new_v4().simple()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            // Removed when the test process ends.
            let reaper = Reaper::spawn(r#"rm -rf "$1""#, &[dir.clone().into()]).unwrap();
            let artifacts = build_artifacts(&dir).expect("release artifacts are packed");
            (artifacts, reaper)
        })
        .0
}

fn build_artifacts(dir: &Path) -> Result<Artifacts> {
    let good = ["v1", "v2", "v3", "v4"]
        .iter()
        .map(|label| pack_release(dir, label, &ddms_bin()))
        .collect::<Result<Vec<_>>>()?;
    let scripts = dir.join("scripts");
    std::fs::create_dir_all(&scripts)?;
    let never_ready = wrapper(
        &scripts,
        "never-ready",
        // Port 9 (discard) refuses connections: the database never answers.
        "if [ \"$1\" = serve ]; then\n  export DDMS_DATABASE__URL=postgres://ddms:x@127.0.0.1:9/ddms\nfi\nexec \"$REAL\" \"$@\"",
    )?;
    let crashes = wrapper(
        &scripts,
        "crashes-after-switch",
        // The upstream include names this slot's port once nginx has been switched to it.
        "if [ \"$1\" = serve ]; then\n\
         \x20 \"$REAL\" \"$@\" &\n\
         \x20 child=$!\n\
         \x20 port=${DDMS_HTTP__LISTEN##*:}\n\
         \x20 until grep -q \"127.0.0.1:$port max_fails=0;\" \"$UPSTREAM\" 2>/dev/null; do sleep 0.1; done\n\
         \x20 sleep 1\n\
         \x20 kill -KILL $child\n\
         \x20 exit 1\n\
         fi\n\
         exec \"$REAL\" \"$@\"",
    )?;
    let cert = dir.join("server.crt");
    let key = dir.join("server.key");
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdin(Stdio::null()))?;
    Ok(Artifacts {
        good,
        never_ready: pack_release(dir, "never-ready", &never_ready)?,
        crashes_after_switch: pack_release(dir, "crashes", &crashes)?,
        cert,
        key,
        dir: dir.to_path_buf(),
    })
}

/// What one `ddms release …` run did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The JSON on the last line of stdout (the deploy record, or a report).
    pub fn json(&self) -> Value {
        let line = self
            .stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_else(|| panic!("no output; stderr:\n{}", self.stderr));
        serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\nstderr:\n{}", self.stderr))
    }

    /// The names of the steps in the record, with their results (`watch:failed`).
    pub fn steps(&self) -> Vec<String> {
        self.json()["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .map(|s| {
                format!(
                    "{}:{}",
                    s["name"].as_str().unwrap(),
                    s["result"].as_str().unwrap()
                )
            })
            .collect()
    }

    pub fn step_ms(&self, name: &str) -> u64 {
        self.json()["steps"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|s| s["name"] == name)
            .and_then(|s| s["duration_ms"].as_u64())
            .unwrap_or_else(|| panic!("no step {name}: {}", self.stdout))
    }
}

/// A host root with nginx in front of two slots.
pub struct ReleaseHost {
    pub root: PathBuf,
    pub blue_port: u16,
    pub green_port: u16,
    pub https_port: u16,
    /// `ddms release` options (timeouts) for every run; change with [`ReleaseHost::set`].
    options: std::collections::BTreeMap<String, String>,
    nginx: std::process::Child,
    nginx_dir: PathBuf,
    _reaper: Reaper,
}

impl ReleaseHost {
    /// A fresh host: layout under a temp root, ddms.toml (SQLite, MQTT off), nginx running.
    pub async fn start() -> Result<ReleaseHost> {
        ReleaseHost::start_with_mqtt("mode = \"off\"\n").await
    }

    /// A fresh host whose ddms.toml has `mqtt` as its `[mqtt]` table (and its sub-tables).
    pub async fn start_with_mqtt(mqtt: &str) -> Result<ReleaseHost> {
        let artifacts = artifacts();
        let root = std::env::temp_dir().join(format!(
            "ddms-release-host-{}",
            uuid::Uuid::new_v4().simple()
        ));
        // Before anything runs: kills the slots and nginx and removes the root when the host is
        // dropped or the test process ends.
        let reaper = Reaper::spawn(
            r#"for f in "$1"/var/lib/ddms/*.pid; do [ -f "$f" ] && kill -KILL "-$(cat "$f")" 2>/dev/null; done
               [ -f "$1/nginx/nginx.pid" ] && kill -TERM "$(cat "$1/nginx/nginx.pid")" 2>/dev/null
               sleep 1; rm -rf "$1""#,
            &[root.clone().into()],
        )?;
        let etc = root.join("etc/ddms");
        std::fs::create_dir_all(&etc)?;
        std::fs::create_dir_all(root.join("var/lib/ddms"))?;
        let state = root.join("var/lib/ddms");
        std::fs::write(
            etc.join("ddms.toml"),
            format!(
                "data_dir = {data:?}\n[database]\nurl = {url:?}\n[http]\nshutdown_timeout = 10\n\
                 [log]\nformat = \"json\"\n[mqtt]\n{mqtt}",
                data = state.join("data").display().to_string(),
                url = format!("sqlite://{}", state.join("ddms.db").display()),
            ),
        )?;
        let (blue_port, green_port) = (free_port()?, free_port()?);
        let (http_port, https_port) = (free_port()?, free_port()?);

        // nginx: the shipped site, moved onto free ports and into the temp root.
        let nginx_dir = root.join("nginx");
        std::fs::create_dir_all(&nginx_dir)?;
        let upstream = root.join("etc/nginx/ddms/ddms-upstream.conf");
        std::fs::create_dir_all(upstream.parent().unwrap())?;
        let shipped_upstream = include_str!("../../../ops/nginx/ddms-upstream.conf");
        ensure!(shipped_upstream.contains("127.0.0.1:8081"));
        std::fs::write(
            &upstream,
            shipped_upstream.replace("127.0.0.1:8081", &format!("127.0.0.1:{blue_port}")),
        )?;
        let mut site = include_str!("../../../ops/nginx/ddms.conf").to_string();
        let certs_dir = format!("{}/", artifacts.dir.display());
        for (from, to) in [
            (
                "/etc/nginx/ddms/ddms-upstream.conf".to_string(),
                upstream.display().to_string(),
            ),
            ("/etc/ddms/tls/".to_string(), certs_dir),
            (
                "/var/www/ddms-acme".to_string(),
                nginx_dir.display().to_string(),
            ),
            (
                "listen 80;".to_string(),
                format!("listen 127.0.0.1:{http_port};"),
            ),
            ("listen [::]:80;".to_string(), String::new()),
            (
                "listen 443 ssl http2;".to_string(),
                format!("listen 127.0.0.1:{https_port} ssl http2;"),
            ),
            ("listen [::]:443 ssl http2;".to_string(), String::new()),
        ] {
            ensure!(
                site.contains(&from),
                "ops/nginx/ddms.conf no longer has `{from}`"
            );
            site = site.replace(&from, &to);
        }
        let d = nginx_dir.display();
        std::fs::write(nginx_dir.join("site.conf"), site)?;
        // nginx's workers would run as `nobody`, which cannot enter a 0700 temp dir.
        let user = if std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&nginx_dir)?) == 0 {
            "user root;\n"
        } else {
            ""
        };
        std::fs::write(
            nginx_dir.join("nginx.conf"),
            format!(
                "daemon off;\n{user}worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
                 worker_shutdown_timeout 10s;\nevents {{ worker_connections 512; }}\n\
                 http {{\n  log_format upstreams '$status $upstream_addr $request_uri';\n  \
                 access_log {d}/access.log upstreams;\n  client_body_temp_path {d}/body;\n  \
                 proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
                 uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  include {d}/site.conf;\n}}\n"
            ),
        )?;
        let nginx = Command::new(nginx_bin())
            .arg("-p")
            .arg(&nginx_dir)
            .arg("-c")
            .arg(nginx_dir.join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(nginx_dir.join("stderr.log"))?)
            .spawn()
            .context("start nginx")?;
        let host = ReleaseHost {
            root,
            blue_port,
            green_port,
            https_port,
            options: [
                ("--ready-timeout", "30"),
                ("--watch", "3"),
                ("--drain-timeout", "15"),
                ("--lock-ttl", "10"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            nginx,
            nginx_dir,
            _reaper: reaper,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", https_port)).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "nginx did not start: {}",
                    std::fs::read_to_string(host.nginx_dir.join("stderr.log")).unwrap_or_default()
                );
            }
            // sleep: the poll interval of this wait with a deadline (it reports nginx's stderr)
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(host)
    }

    /// Sets a `ddms release` option for the following runs (`--watch`, `20`).
    pub fn set(&mut self, option: &str, value: &str) {
        self.options.insert(option.to_string(), value.to_string());
    }

    pub fn public_url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.https_port)
    }

    pub fn port(&self, slot: &str) -> u16 {
        match slot {
            "blue" => self.blue_port,
            "green" => self.green_port,
            other => panic!("no slot {other}"),
        }
    }

    /// `ddms release <args>` against this host (host options first, then `options`).
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = ddms_command(&self.root);
        command
            .arg("release")
            .arg("--root")
            .arg(&self.root)
            .args(["--service-manager", "direct"])
            .args(["--blue-port", &self.blue_port.to_string()])
            .args(["--green-port", &self.green_port.to_string()])
            .arg("--nginx-bin")
            .arg(nginx_bin())
            .arg("--nginx-prefix")
            .arg(&self.nginx_dir)
            .arg("--nginx-conf")
            .arg(self.nginx_dir.join("nginx.conf"))
            .args(["--public-url", &self.public_url("/")])
            .args(["--actor", "release-test"])
            .args(self.options.iter().flat_map(|(k, v)| [k, v]))
            .args(args)
            // The crashing release's wrapper watches the include.
            .env(
                "UPSTREAM",
                self.root.join("etc/nginx/ddms/ddms-upstream.conf"),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    pub async fn release(&self, args: &[&str]) -> Run {
        let child = self.command(args).spawn().expect("spawn ddms release");
        let output = tokio::time::timeout(Duration::from_secs(240), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("`ddms release {args:?}` did not finish"))
            .expect("wait for ddms release");
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    pub async fn install(&self, artifact: &Artifact) -> Run {
        self.install_path(&artifact.tarball, None).await
    }

    pub async fn install_path(&self, tarball: &Path, checksum: Option<&Path>) -> Run {
        let tarball = tarball.display().to_string();
        match checksum {
            Some(checksum) => {
                let checksum = checksum.display().to_string();
                self.release(&["install", &tarball, "--checksum", &checksum])
                    .await
            }
            None => self.release(&["install", &tarball]).await,
        }
    }

    /// Installs and activates; panics unless both succeed.
    pub async fn deploy(&self, artifact: &Artifact) -> Run {
        let installed = self.install(artifact).await;
        assert_eq!(installed.code, 0, "install: {}", installed.stderr);
        let run = self.release(&["activate", &artifact.release]).await;
        assert_eq!(
            run.code, 0,
            "activate {}: {}\n{}",
            artifact.release, run.stdout, run.stderr
        );
        run
    }

    pub async fn status(&self) -> Value {
        let run = self.release(&["status"]).await;
        assert_eq!(run.code, 0, "status: {}", run.stderr);
        serde_json::from_str(&run.stdout).expect("status is JSON")
    }

    /// Every record in deploys.jsonl.
    pub fn deploys(&self) -> Vec<Value> {
        std::fs::read_to_string(self.root.join("var/lib/ddms/deploys.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("deploy records are JSON"))
            .collect()
    }

    /// nginx's access log: `<status> <upstream addr> <uri>` per request.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.nginx_dir.join("access.log")).unwrap_or_default()
    }

    /// A viewer API token (the database exists once a release was activated).
    pub async fn viewer_token(&self) -> String {
        self.token("viewer").await
    }

    /// An API token with `role` (`viewer`, `admin`).
    pub async fn token(&self, role: &str) -> String {
        let output = ddms_command(&self.root)
            .args([
                "token",
                "create",
                "--name",
                &format!("test-{role}"),
                "--role",
                role,
            ])
            .env("DDMS_CONFIG", self.root.join("etc/ddms/ddms.toml"))
            .stdin(Stdio::null())
            .output()
            .await
            .expect("ddms token create");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// The slot nginx sends new connections to, asked through nginx.
    pub async fn serving_slot(&self) -> Option<String> {
        let client = insecure_client();
        let response = client
            .get(self.public_url("/api/version"))
            .send()
            .await
            .ok()?;
        let body: Value = response.json().await.ok()?;
        body["slot"].as_str().map(str::to_string)
    }

    /// The release each slot's link points at.
    pub fn slot_release(&self, slot: &str) -> Option<String> {
        std::fs::read_link(self.root.join("opt/ddms/slots").join(slot))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
    }

    pub fn releases(&self) -> Vec<String> {
        files_under(&self.root.join("opt/ddms/releases"))
    }
}

/// The names in `dir`, sorted (none when it does not exist).
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A refused install left nothing in `releases` (no temp directory, no release).
pub fn assert_nothing_installed(releases: &Path) {
    let left = files_under(releases);
    assert!(left.is_empty(), "{left:?}");
}

impl Drop for ReleaseHost {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master takes its workers down with it.
        let master = nix::unistd::Pid::from_raw(self.nginx.id() as i32);
        let _ = nix::sys::signal::kill(master, nix::sys::signal::Signal::SIGTERM);
        let _ = self.nginx.wait();
    }
}

/// Debian's nginx; `/usr/sbin` is not on every user's PATH.
pub fn nginx_bin() -> PathBuf {
    let debian = PathBuf::from("/usr/sbin/nginx");
    if debian.exists() {
        debian
    } else {
        PathBuf::from("nginx")
    }
}
