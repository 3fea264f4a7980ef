//! The ddms under test: a release binary on SQLite with the embedded broker, in a temporary
//! directory, and the devices that register with it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::driver;

pub struct Server {
    pub child: tokio::sync::Mutex<tokio::process::Child>,
    pub pid: u32,
    pub base: String,
    pub addr: SocketAddr,
    pub broker_port: u16,
    pub viewer: String,
    pub provisioning: String,
    pub log: std::path::PathBuf,
    dir: std::sync::Mutex<tempfile::TempDir>,
}

impl Server {
    /// `settings`: extra `DDMS_*` variables, after the soak's own (so they can override them).
    pub async fn start(ddms: &str, settings: &[(String, String)]) -> Result<Server> {
        let dir = tempfile::tempdir()?;
        let broker_port = driver::free_port()?;
        let port = driver::free_port()?;
        let provisioning = uuid::Uuid::new_v4().simple().to_string();
        let database_url = format!("sqlite://{}", dir.path().join("ddms.db").display());
        let env = |cmd: &mut tokio::process::Command| {
            cmd.env("DDMS_DATABASE__URL", &database_url)
                .env("DDMS_LOG__LEVEL", "warn")
                .env("DDMS_MQTT__MODE", "embedded")
                .env(
                    "DDMS_MQTT__EMBEDDED__LISTEN",
                    format!("127.0.0.1:{broker_port}"),
                )
                .env("DDMS_PROVISIONING__TOKEN", &provisioning)
                .envs(settings.iter().map(|(k, v)| (k, v)));
        };
        let mut token_cmd = driver::ddms_command(ddms, dir.path());
        env(&mut token_cmd);
        let viewer = driver::create_token(token_cmd, "dashboard", "viewer").await?;
        // The user whose password the login flood guesses.
        let mut add = driver::ddms_command(ddms, dir.path());
        env(&mut add);
        let mut adding = add
            .args(["user", "add", "--username", "operator", "--role", "viewer"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()?;
        adding
            .stdin
            .take()
            .context("stdin")?
            .write_all(b"the operator's real password\n")
            .await?;
        ensure!(adding.wait().await?.success(), "user add failed");

        let log = dir.path().join("ddms.log");
        let file = std::fs::File::create(&log)?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let mut serve = driver::ddms_command(ddms, dir.path());
        env(&mut serve);
        let child = serve
            .args(["serve", "--listen", &addr.to_string()])
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().context("ddms pid")?;
        let base = format!("http://{addr}");
        let client = reqwest::Client::new();
        driver::wait_ready(&client, &base, Duration::from_secs(60)).await?;
        Ok(Server {
            child: tokio::sync::Mutex::new(child),
            pid,
            base,
            addr,
            broker_port,
            viewer,
            provisioning,
            log,
            dir: std::sync::Mutex::new(dir),
        })
    }

    pub async fn stop(&self) -> Result<()> {
        let mut child = self.child.lock().await;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        let status = tokio::time::timeout(Duration::from_secs(40), child.wait())
            .await
            .context("ddms did not exit within 40 s of SIGTERM")??;
        ensure!(status.success(), "ddms exited with {status}");
        Ok(())
    }

    /// Leaves the data directory (database, log) in place after the run; its path.
    pub fn keep_data_dir(&self) -> std::path::PathBuf {
        let mut dir = self.dir.lock().unwrap();
        dir.disable_cleanup(true);
        dir.path().to_path_buf()
    }

    pub fn print_log_tail(&self) {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        eprintln!("soak: last lines of the ddms log:");
        for line in &lines[lines.len().saturating_sub(40)..] {
            eprintln!("  {line}");
        }
    }
}

#[derive(Clone)]
pub struct Device {
    pub id: String,
    pub username: String,
    pub password: String,
}

pub async fn register(
    client: &reqwest::Client,
    base: &str,
    provisioning: &str,
    name: &str,
    from: Option<IpAddr>,
) -> Result<Device> {
    let registrar = match from {
        Some(source) => reqwest::Client::builder().local_address(source).build()?,
        None => client.clone(),
    };
    let response = registrar
        .post(format!("{base}/api/devices/register"))
        .header("x-provisioning-token", provisioning)
        .json(&json!({ "name": name, "group": "soak" }))
        .send()
        .await?;
    ensure!(
        response.status() == 201,
        "register {name}: {}",
        response.text().await?
    );
    let body: Value = response.json().await?;
    let text = |v: &Value| {
        v.as_str()
            .map(str::to_string)
            .context("registration answer")
    };
    Ok(Device {
        id: text(&body["device_id"])?,
        username: text(&body["mqtt"]["username"])?,
        password: text(&body["mqtt"]["password"])?,
    })
}
