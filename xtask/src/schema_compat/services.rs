//! What the N-1 scenario talks to: `ddms` processes, a throwaway PostgreSQL, HTTP/1.0 by hand
//! (xtask has no HTTP client; smoke.rs does the same) and `mosquitto_pub` as the device.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::ports::free_port;

/// Polls `probe` every 100 ms until it gives a value, or fails with its last error at the
/// deadline.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(value) => return Ok(value),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("{what}: not within {} s", timeout.as_secs())))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// One `ddms` binary with the scenario's configuration: the database, the embedded broker on
/// its own port, a provisioning token; nothing from the caller's `DDMS_*` environment.
#[derive(Clone)]
pub struct Ddms {
    pub label: String,
    pub binary: PathBuf,
    pub dir: PathBuf,
    pub database_url: String,
    pub provisioning_token: String,
}

impl Ddms {
    fn command(&self, broker_port: u16) -> Command {
        let mut command = Command::new(&self.binary);
        for (key, _) in std::env::vars() {
            if key.starts_with("DDMS_") {
                command.env_remove(key);
            }
        }
        command
            .current_dir(&self.dir)
            .env("DDMS_DATABASE__URL", &self.database_url)
            .env("DDMS_MQTT__MODE", "embedded")
            .env(
                "DDMS_MQTT__EMBEDDED__LISTEN",
                format!("127.0.0.1:{broker_port}"),
            )
            .env("DDMS_PROVISIONING__TOKEN", &self.provisioning_token)
            .env("DDMS_BACKUP__DIR", self.dir.join("backups"))
            .env("DDMS_LOG__LEVEL", "warn");
        command
    }

    /// A one-shot subcommand (`migrate`, `user add`, `token create`): its stdout, trimmed.
    pub fn run(&self, args: &[&str], stdin: &str) -> Result<String> {
        let mut child = self
            .command(free_port()?)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {}", self.binary.display()))?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(stdin.as_bytes())?;
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "{} ddms {}: {}\n{}",
            self.label,
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }

    /// `ddms serve` on free ports, once `/ready` answers 200.
    pub fn serve(&self) -> Result<Server> {
        let port = free_port()?;
        let broker = free_port()?;
        let log = self.dir.join(format!("{}.log", self.label));
        let file = std::fs::File::create(&log)?;
        let child = self
            .command(broker)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("spawn {}", self.binary.display()))?;
        let mut server = Server {
            label: self.label.clone(),
            port,
            log,
            child: Some(child),
        };
        let ready = wait_for(
            &format!("{} ddms /ready", self.label),
            Duration::from_secs(60),
            || {
                if let Some(status) = server.child.as_mut().and_then(|c| c.try_wait().ok()?) {
                    bail!("exited with {status} before it was ready");
                }
                let answer = http(port, "GET", "/ready", &[], None)?;
                ensure!(
                    answer.status == 200,
                    "/ready: {} {}",
                    answer.status,
                    answer.body
                );
                Ok(())
            },
        );
        if let Err(e) = ready {
            server.print_log();
            return Err(e);
        }
        Ok(server)
    }
}

/// A serving `ddms`; killed when dropped, stopped with [`Server::stop`] to check its exit.
pub struct Server {
    pub label: String,
    pub port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl Server {
    /// SIGTERM, then the exit status: a graceful stop is part of a deploy.
    pub fn stop(mut self) -> Result<()> {
        let mut child = self.child.take().context("stopped twice")?;
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        let status = wait_for(
            &format!("{} ddms to exit after SIGTERM", self.label),
            Duration::from_secs(40),
            || child.try_wait()?.context("still running"),
        )?;
        ensure!(status.success(), "{} ddms exited with {status}", self.label);
        Ok(())
    }

    pub fn print_log(&self) {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        eprintln!("schema-compat: last lines of the {} ddms log:", self.label);
        for line in &lines[lines.len().saturating_sub(40)..] {
            eprintln!("  {line}");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub struct Answer {
    pub status: u16,
    pub set_cookies: Vec<String>,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.body).with_context(|| format!("not JSON: {}", self.body))
    }
}

/// One HTTP/1.0 request (the server closes the connection after the answer).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&serde_json::Value>,
) -> Result<Answer> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("malformed HTTP answer")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed status line")?;
    let set_cookies = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(name, _)| name.eq_ignore_ascii_case("set-cookie"))
        .filter_map(|(_, value)| value.trim().split(';').next().map(str::to_string))
        .collect();
    Ok(Answer {
        status,
        set_cookies,
        body: body.to_string(),
    })
}

/// Publishes each payload as one QoS 1 message, the way a device does (client id = username,
/// its own topic); mosquitto_pub exits 0 once every message is acknowledged, and ddms
/// acknowledges only what it committed.
pub fn publish(credentials: &serde_json::Value, topic: &str, payloads: &[String]) -> Result<()> {
    let field = |name: &str| -> Result<String> {
        Ok(match &credentials[name] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            other => bail!("MQTT credentials without {name}: {other}"),
        })
    };
    let username = field("username")?;
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", &field("host")?, "-p", &field("port")?])
        .args(["-V", "5", "-q", "1", "-i", &username, "-u", &username])
        .args(["-P", &field("password")?, "-t", topic, "-l"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("mosquitto_pub (package mosquitto-clients)")?;
    let mut lines = payloads.join("\n");
    lines.push('\n');
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(lines.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "mosquitto_pub to {topic}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The database the window runs on, in [`Postgres`].
pub const DATABASE: &str = "ddms_compat";

/// A PostgreSQL of its own in a temporary directory (initdb, trust authentication on
/// loopback), as the integration tests start it without Docker (app/tests/support/services.rs);
/// run as the `postgres` user when xtask runs as root, which PostgreSQL refuses.
pub struct Postgres {
    dir: PathBuf,
    port: u16,
    child: Child,
    bin: PathBuf,
}

impl Postgres {
    pub fn start(dir: &Path) -> Result<Postgres> {
        let bin = std::env::var_os("DDMS_TEST_PG_BINDIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
        ensure!(
            bin.join("initdb").is_file(),
            "{}/initdb is missing: install postgresql-15 (`cargo xtask setup` does) or set DDMS_TEST_PG_BINDIR",
            bin.display()
        );
        let run_as = if id("-u", None)? == 0 {
            Some((id("-u", Some("postgres"))?, id("-g", Some("postgres"))?))
        } else {
            None
        };
        std::fs::create_dir_all(dir)?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
        }
        let data = dir.join("data");
        let status = as_user(Command::new(bin.join("initdb")), run_as)
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
            .args(["--no-sync", "--no-instructions"])
            .stdout(Stdio::null())
            .status()
            .context("initdb")?;
        ensure!(status.success(), "initdb failed: {status}");
        let port = free_port()?;
        let log = std::fs::File::create(dir.join("postgres.log"))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.join("postgres.log"), Some(uid), Some(gid))?;
        }
        let child = as_user(Command::new(bin.join("postgres")), run_as)
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("postgres")?;
        let mut postgres = Postgres {
            dir: dir.to_path_buf(),
            port,
            child,
            bin: bin.clone(),
        };
        let pg_isready = bin.join("pg_isready");
        wait_for(
            "PostgreSQL to accept connections",
            Duration::from_secs(60),
            || {
                if let Some(status) = postgres.child.try_wait()? {
                    let log = std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
                    bail!("postgres exited with {status}: {log}");
                }
                let ok = Command::new(&pg_isready)
                    .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                    .status()?
                    .success();
                ensure!(ok, "pg_isready");
                Ok(())
            },
        )?;
        postgres.psql("postgres", &format!("CREATE DATABASE {DATABASE}"))?;
        Ok(postgres)
    }

    /// Runs `sql` in `database` with psql, as the superuser.
    pub fn psql(&self, database: &str, sql: &str) -> Result<()> {
        let status = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", database])
            .args(["-v", "ON_ERROR_STOP=1", "-qc", sql])
            .stdout(Stdio::null())
            .status()
            .context("psql")?;
        ensure!(status.success(), "{sql}: {status}");
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{DATABASE}", self.port)
    }
}

/// For tests that play a database server with roles and passwords (the ddms role's database
/// task: `deploy/database_role_tests.rs`).
#[cfg(test)]
impl Postgres {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory of its binaries (`psql` among them).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// psql connected as `user` with `password` to `database` over TCP (PG* environment, so
    /// the password is on no command line), stopping at the first error, printing rows bare.
    pub fn client(&self, user: &str, password: &str, database: &str) -> Command {
        let mut command = Command::new(self.bin.join("psql"));
        command
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", user)
            .env("PGPASSWORD", password)
            .env("PGDATABASE", database)
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-qtA"])
            .stdin(Stdio::null());
        command
    }

    /// From now on every role but `postgres` logs in over TCP with its password (SCRAM), as on
    /// a real server; the superuser keeps trust. Waits until the server applies it: a wrong
    /// password for `probe_user` (a role with a password) is refused.
    pub fn require_passwords(&self, probe_user: &str) -> Result<()> {
        std::fs::write(
            self.dir.join("data/pg_hba.conf"),
            "local all all trust\n\
             host all postgres 127.0.0.1/32 trust\n\
             host all all 127.0.0.1/32 scram-sha-256\n",
        )?;
        self.psql("postgres", "SELECT pg_reload_conf()")?;
        wait_for(
            "PostgreSQL to require passwords",
            Duration::from_secs(30),
            || {
                let out = self
                    .client(probe_user, "not the password", "postgres")
                    .args(["-c", "SELECT 1"])
                    .output()?;
                ensure!(!out.status.success(), "a wrong password still logs in");
                Ok(())
            },
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT: PostgreSQL's fast shutdown (ends sessions, no waiting for clients).
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn as_user(mut command: Command, run_as: Option<(u32, u32)>) -> Command {
    if let Some((uid, gid)) = run_as {
        command.uid(uid).gid(gid);
    }
    command
}

/// `id -u [user]` / `id -g [user]`.
fn id(flag: &str, user: Option<&str>) -> Result<u32> {
    let out = Command::new("id").arg(flag).args(user).output()?;
    ensure!(
        out.status.success(),
        "id {flag} {}: {}",
        user.unwrap_or_default(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().parse()?)
}
