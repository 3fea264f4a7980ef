//! The nginx side of a switch: rewrite the upstream include (temp file + rename), check the
//! whole configuration with `nginx -t` (putting the previous include back when it fails), then
//! a graceful reload (`nginx -s reload`): old workers finish their requests on the old
//! upstream while new connections go to the new one.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use super::probe::excerpt;
use super::{write_atomic, ReleaseError};
use crate::config::Slot;

const NGINX_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Nginx {
    /// The nginx binary (`nginx`).
    pub bin: PathBuf,
    /// `-c FILE`: the main configuration (nginx's built-in default when unset).
    pub conf: Option<PathBuf>,
    /// `-p DIR`: the prefix (nginx's built-in default when unset).
    pub prefix: Option<PathBuf>,
    /// The include that holds `upstream ddms { … }`.
    pub upstream: PathBuf,
}

/// The upstream include: the active slot, and the other slot as `backup`. nginx sends a
/// request to the backup only when the active slot refuses or fails it (`proxy_next_upstream`).
/// That covers the end of a switch: nginx's old workers, whose configuration still names the
/// old slot as active, finish requests they accepted before the reload — under load, seconds
/// of them — and once the old slot has stopped, those go to its backup: the new active slot.
pub fn render_upstream(slot: Slot, port: u16, standby_port: u16, release: &str) -> String {
    format!(
        "# Written by `ddms release`: the active slot, the other one as backup (blue = 8081,\n\
         # green = 8082 by default). Active: {slot} (release {release}).\n\
         upstream ddms {{\n    server 127.0.0.1:{port} max_fails=0;\n    \
         server 127.0.0.1:{standby_port} max_fails=0 backup;\n    keepalive 32;\n}}\n"
    )
}

impl Nginx {
    /// The slot port the include points at now.
    pub fn current_port(&self) -> Option<u16> {
        let text = std::fs::read_to_string(&self.upstream).ok()?;
        parse_port(&text)
    }

    /// The include as it is now (`None`: absent).
    pub fn current(&self) -> Result<Option<String>, ReleaseError> {
        match std::fs::read_to_string(&self.upstream) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ReleaseError::Io {
                path: self.upstream.clone(),
                source: e,
            }),
        }
    }

    /// Puts `content` in place, checks and reloads. On failure the previous include is back
    /// and nginx still runs the previous configuration.
    pub async fn apply(&self, content: &str) -> Result<(), ReleaseError> {
        let previous = self.current()?;
        write_atomic(&self.upstream, content.as_bytes())?;
        let checked = self.run(&["-t"]).await;
        let result = match checked {
            Ok(()) => self.run(&["-s", "reload"]).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            self.restore(previous.as_deref())?;
            return Err(e);
        }
        Ok(())
    }

    /// Writes back a previous include (or removes ours when there was none) without reloading.
    fn restore(&self, previous: Option<&str>) -> Result<(), ReleaseError> {
        match previous {
            Some(text) => write_atomic(&self.upstream, text.as_bytes()),
            None => std::fs::remove_file(&self.upstream).map_err(ReleaseError::io(&self.upstream)),
        }
    }

    async fn run(&self, args: &[&str]) -> Result<(), ReleaseError> {
        let mut command = tokio::process::Command::new(&self.bin);
        if let Some(prefix) = &self.prefix {
            command.arg("-p").arg(prefix);
        }
        if let Some(conf) = &self.conf {
            command.arg("-c").arg(conf);
        }
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let shown = format!("{} {}", self.bin.display(), args.join(" "));
        let output = tokio::time::timeout(NGINX_TIMEOUT, command.output())
            .await
            .map_err(|_| ReleaseError::Nginx(format!("`{shown}` timed out")))?
            .map_err(|e| ReleaseError::Nginx(format!("cannot run `{shown}`: {e}")))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(ReleaseError::Nginx(format!(
                "`{shown}` failed ({}): {}",
                output.status,
                excerpt(&String::from_utf8_lossy(&output.stderr))
            )))
        }
    }
}

/// The active (first non-backup) server's port.
fn parse_port(text: &str) -> Option<u16> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#') && !line.contains(" backup"))
        .find_map(|line| {
            let rest = line.strip_prefix("server")?.trim_start();
            let addr = rest.split([' ', ';']).next()?;
            addr.rsplit_once(':')?.1.parse().ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rendered_upstream_names_the_active_port_first_and_the_other_as_backup() {
        let text = render_upstream(Slot::Green, 8082, 8081, "0.2.0");
        assert_eq!(parse_port(&text), Some(8082));
        assert_eq!(text.matches("server ").count(), 2, "{text}");
        assert!(
            text.contains("server 127.0.0.1:8081 max_fails=0 backup;"),
            "{text}"
        );
        let shipped = include_str!("../../../ops/nginx/ddms-upstream.conf");
        assert_eq!(parse_port(shipped), Some(8081));
        assert!(shipped.contains("127.0.0.1:8082 max_fails=0 backup;"));
    }
}
