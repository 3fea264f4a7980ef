//! Starting and stopping slots, behind one trait: [`Systemd`] (`ddms@<slot>` units, production)
//! and [`Direct`], a small supervisor for hosts without systemd (containers, tests).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::probe::excerpt;
use super::{write_atomic, Layout, ReleaseError};
use crate::config::Slot;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceManagerKind {
    Systemd,
    Direct,
}

impl ServiceManagerKind {
    /// systemd when it runs this host (`/run/systemd/system` exists), else direct.
    pub fn detect() -> ServiceManagerKind {
        if Path::new("/run/systemd/system").is_dir() {
            ServiceManagerKind::Systemd
        } else {
            ServiceManagerKind::Direct
        }
    }
}

impl std::str::FromStr for ServiceManagerKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "systemd" => Ok(ServiceManagerKind::Systemd),
            "direct" => Ok(ServiceManagerKind::Direct),
            "auto" => Ok(ServiceManagerKind::detect()),
            other => Err(format!(
                "unknown service manager `{other}`; expected systemd, direct or auto"
            )),
        }
    }
}

#[async_trait]
pub trait ServiceManager: Send + Sync {
    fn name(&self) -> &'static str;
    /// Starts the slot (runs `<root>/opt/ddms/slots/<slot>/ddms serve`); returns once started,
    /// not once ready.
    async fn start(&self, slot: Slot) -> Result<(), ReleaseError>;
    /// Stops the slot with SIGTERM (ddms drains) and waits until it is gone.
    async fn stop(&self, slot: Slot) -> Result<(), ReleaseError>;
    async fn is_active(&self, slot: Slot) -> Result<bool, ReleaseError>;
    /// The last lines the slot logged, for error messages.
    fn recent_log(&self, _slot: Slot) -> Option<String> {
        None
    }
}

/// `systemctl start|stop|is-active ddms@<slot>`.
pub struct Systemd;

impl Systemd {
    async fn systemctl(args: &[&str]) -> Result<std::process::Output, ReleaseError> {
        tokio::process::Command::new("systemctl")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| ReleaseError::Service {
                manager: "systemd",
                detail: format!("cannot run systemctl: {e}"),
            })
    }

    async fn must(args: &[&str]) -> Result<(), ReleaseError> {
        let output = Self::systemctl(args).await?;
        if output.status.success() {
            Ok(())
        } else {
            Err(ReleaseError::Service {
                manager: "systemd",
                detail: format!(
                    "`systemctl {}` failed ({}): {}",
                    args.join(" "),
                    output.status,
                    excerpt(&String::from_utf8_lossy(&output.stderr))
                ),
            })
        }
    }
}

fn unit(slot: Slot) -> String {
    format!("ddms@{slot}.service")
}

#[async_trait]
impl ServiceManager for Systemd {
    fn name(&self) -> &'static str {
        "systemd"
    }

    async fn start(&self, slot: Slot) -> Result<(), ReleaseError> {
        // A unit that failed before would otherwise keep its failed state in `status`.
        let _ = Self::systemctl(&["reset-failed", &unit(slot)]).await;
        Self::must(&["start", &unit(slot)]).await
    }

    async fn stop(&self, slot: Slot) -> Result<(), ReleaseError> {
        // Waits for the unit to stop; TimeoutStopSec bounds the drain.
        Self::must(&["stop", &unit(slot)]).await
    }

    async fn is_active(&self, slot: Slot) -> Result<bool, ReleaseError> {
        let output = Self::systemctl(&["is-active", "--quiet", &unit(slot)]).await?;
        Ok(output.status.success())
    }

    fn recent_log(&self, slot: Slot) -> Option<String> {
        let output = std::process::Command::new("journalctl")
            .args(["-u", &unit(slot), "-n", "5", "--no-pager", "-o", "cat"])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        Some(String::from_utf8_lossy(&output.stdout).trim().to_string()).filter(|s| !s.is_empty())
    }
}

/// A supervisor for hosts without systemd. `start` runs the slot's `ddms serve` detached in
/// its own process group, logging to `<state>/<slot>.log`, with the slot env file, `DDMS_SLOT`
/// and `DDMS_CONFIG`, and records its pid in `<state>/<slot>.pid`; `stop` sends SIGTERM to the
/// group, waits up to the drain timeout, then SIGKILL; `is_active` checks the recorded process.
pub struct Direct {
    pub layout: Layout,
    pub app_config: PathBuf,
    pub drain_timeout: Duration,
}

impl Direct {
    pub fn pid_file(&self, slot: Slot) -> PathBuf {
        self.layout.state_dir().join(format!("{slot}.pid"))
    }

    pub fn log_file(&self, slot: Slot) -> PathBuf {
        self.layout.state_dir().join(format!("{slot}.log"))
    }

    fn pid(&self, slot: Slot) -> Option<i32> {
        std::fs::read_to_string(self.pid_file(slot))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn failed(detail: String) -> ReleaseError {
        ReleaseError::Service {
            manager: "direct",
            detail,
        }
    }
}

/// The process runs (not a zombie) and is a `serve` (the pid was not reused by another
/// program).
pub fn serve_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S …": the state follows the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    if matches!(state, Some("Z" | "X") | None) {
        return false;
    }
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        // Empty while the exec that started it is still setting up its arguments.
        Ok(cmdline) if cmdline.is_empty() => true,
        Ok(cmdline) => cmdline.split(|b| *b == 0).any(|arg| arg == b"serve"),
        Err(_) => false,
    }
}

/// `KEY=VALUE` lines; blank lines and `#` comments skipped, surrounding quotes removed.
pub fn parse_env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let (key, value) = line.split_once('=')?;
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            Some((key.trim().to_string(), value.to_string()))
        })
        .collect()
}

#[async_trait]
impl ServiceManager for Direct {
    fn name(&self) -> &'static str {
        "direct"
    }

    async fn start(&self, slot: Slot) -> Result<(), ReleaseError> {
        if self.is_active(slot).await? {
            return Ok(());
        }
        let state_dir = self.layout.state_dir();
        std::fs::create_dir_all(&state_dir).map_err(ReleaseError::io(&state_dir))?;
        let env_path = self.layout.slot_env(slot);
        let env_text = std::fs::read_to_string(&env_path).map_err(ReleaseError::io(&env_path))?;
        let log_path = self.log_file(slot);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(ReleaseError::io(&log_path))?;
        let log_err = log.try_clone().map_err(ReleaseError::io(&log_path))?;
        let binary = self.layout.slot_link(slot).join("ddms");
        let mut command = std::process::Command::new(&binary);
        command
            .arg("serve")
            .current_dir(&state_dir)
            .envs(parse_env_file(&env_text))
            .env("DDMS_SLOT", slot.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        // Like `ddms migrate` in the deploy: the host's configuration file when there is one,
        // else defaults and environment (containers configured by environment alone).
        if self.app_config.exists() {
            command.env("DDMS_CONFIG", &self.app_config);
        } else {
            command.env_remove("DDMS_CONFIG");
        }
        // Its own process group: a Ctrl-C or a hangup of the deploying shell does not reach
        // it, and `stop` signals the whole group.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command
            .spawn()
            .map_err(|e| Self::failed(format!("cannot start {}: {e}", binary.display())))?;
        let pid = child.id();
        write_atomic(&self.pid_file(slot), format!("{pid}\n").as_bytes())?;
        // Reap it if it exits while this process lives; after that it belongs to init.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        tracing::info!(slot = %slot, pid, log = %log_path.display(), "slot started");
        Ok(())
    }

    async fn stop(&self, slot: Slot) -> Result<(), ReleaseError> {
        let Some(pid) = self.pid(slot) else {
            return Ok(());
        };
        if serve_alive(pid) {
            let group = Pid::from_raw(pid);
            let _ = killpg(group, Signal::SIGTERM);
            let deadline = Instant::now() + self.drain_timeout;
            while serve_alive(pid) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if serve_alive(pid) {
                tracing::warn!(slot = %slot, pid, "slot did not stop within the drain timeout; killing it");
                let _ = killpg(group, Signal::SIGKILL);
                let deadline = Instant::now() + Duration::from_secs(10);
                while serve_alive(pid) && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if serve_alive(pid) {
                    return Err(Self::failed(format!(
                        "slot {slot} (pid {pid}) survived SIGKILL"
                    )));
                }
            }
        }
        let pid_file = self.pid_file(slot);
        match std::fs::remove_file(&pid_file) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ReleaseError::Io {
                path: pid_file,
                source: e,
            }),
        }
    }

    async fn is_active(&self, slot: Slot) -> Result<bool, ReleaseError> {
        Ok(self.pid(slot).is_some_and(serve_alive))
    }

    fn recent_log(&self, slot: Slot) -> Option<String> {
        let text = std::fs::read_to_string(self.log_file(slot)).ok()?;
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(5)..].join("\n");
        Some(excerpt(&tail)).filter(|s| !s.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_are_read_like_systemd_reads_them() {
        let vars = parse_env_file(
            "# slot blue\nDDMS_HTTP__LISTEN=127.0.0.1:8081\n\nDDMS_LOG__LEVEL = \"debug\"\nnot a pair\n",
        );
        assert_eq!(
            vars,
            [
                (
                    "DDMS_HTTP__LISTEN".to_string(),
                    "127.0.0.1:8081".to_string()
                ),
                ("DDMS_LOG__LEVEL".to_string(), "debug".to_string()),
            ]
        );
    }

    #[test]
    fn only_a_live_serve_process_counts_as_a_running_slot() {
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let mut serve = std::process::Command::new("sh")
            .args(["-c", "sleep 30; exit 0", "ddms", "serve"])
            .spawn()
            .unwrap();
        // A child that has not finished its exec has an empty cmdline, which counts as
        // running (see `serve_alive`): wait for both execs before judging them.
        for pid in [other.id(), serve.id()] {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.is_empty())
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        assert!(!serve_alive(other.id() as i32));
        assert!(serve_alive(serve.id() as i32));
        serve.kill().unwrap();
        // Not yet reaped: a zombie does not count either.
        std::thread::sleep(Duration::from_millis(200));
        assert!(!serve_alive(serve.id() as i32));
        serve.wait().unwrap();
        other.kill().unwrap();
        other.wait().unwrap();
        assert!(!serve_alive(i32::MAX));
    }
}
