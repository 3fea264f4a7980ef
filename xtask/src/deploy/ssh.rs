//! System OpenSSH and scp towards one inventory host, and the shell snippets run there.
//!
//! Every ssh and scp runs in its own process group, so a Ctrl-C in the terminal reaches only
//! xtask (which finishes the current host, then rolls back) and not the remote commands. A
//! remote deploy step is tied to our ssh's standard input instead: when it closes — xtask
//! died, even by SIGKILL — the host's `ddms release` gets SIGHUP and takes its own way back
//! (switch back, release the lock) rather than running on unattended.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::inventory::Host;

/// What one remote command did.
#[derive(Debug)]
pub struct Outcome {
    /// The remote exit status; None when ssh itself failed (255) or was killed.
    pub code: Option<i32>,
    pub stdout: String,
    /// The last lines of standard error, for reports.
    pub stderr_tail: String,
    pub duration: Duration,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// A one-line reason for a failure.
    pub fn reason(&self) -> String {
        let last = self
            .stderr_tail
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        match self.code {
            Some(code) => format!("exit status {code}: {last}"),
            None => format!("ssh failed: {last}"),
        }
    }
}

fn target(host: &Host) -> String {
    match &host.user {
        Some(user) => format!("{user}@{}", host.address),
        None => host.address.clone(),
    }
}

/// Options both ssh and scp take: no prompts, dead connections noticed within ~15 s.
fn common_options(cmd: &mut Command, host: &Host) {
    cmd.args([
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=10",
        "-o",
        "ServerAliveInterval=5",
        "-o",
        "ServerAliveCountMax=3",
    ]);
    if let Some(key) = &host.key {
        cmd.arg("-i").arg(key).args(["-o", "IdentitiesOnly=yes"]);
    }
    cmd.args(&host.ssh_args);
    cmd.process_group(0);
}

/// Runs `script` with `sh` on `host` (through `sudo -n` when the ssh user is not root), with
/// `env` exported — after the host's own `/etc/ddms/release.env` (KEY=VALUE lines, e.g. the
/// `DDMS_RELEASE_*` options its provisioning chose), so what the caller sets wins. Standard
/// error is echoed line by line with the host's name; standard output is collected. Standard
/// input stays open until the command ends (see the module comment).
pub fn run(host: &Host, env: &[(String, String)], script: &str) -> Result<Outcome> {
    let mut full = String::from(HOST_ENV);
    for (key, value) in env {
        full.push_str(&format!("export {key}={}\n", quote(value)));
    }
    full.push_str(script);
    let mut remote = String::new();
    if host.user.as_deref().is_some_and(|u| u != "root") {
        remote.push_str("sudo -n ");
    }
    remote.push_str("sh -c ");
    remote.push_str(&quote(&full));

    let mut cmd = Command::new("ssh");
    common_options(&mut cmd, host);
    cmd.arg("-p").arg(host.port.to_string());
    cmd.arg(target(host)).arg("--").arg(remote);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().context("start ssh (is OpenSSH installed?)")?;
    // Held, never written: its end-of-file tells the host that we are gone.
    let stdin = child.stdin.take();
    let mut stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let name = host.name.clone();
    let err_thread = std::thread::spawn(move || {
        let mut tail: Vec<String> = Vec::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("  [{name}] {line}");
            tail.push(line);
            if tail.len() > 20 {
                tail.remove(0);
            }
        }
        tail.join("\n")
    });
    let mut out = String::new();
    stdout.read_to_string(&mut out).context("read ssh output")?;
    let status = child.wait().context("wait for ssh")?;
    drop(stdin);
    let stderr_tail = err_thread.join().unwrap_or_default();
    let code = status.code().filter(|c| *c != 255);
    Ok(Outcome {
        code,
        stdout: out,
        stderr_tail,
        duration: started.elapsed(),
    })
}

/// Copies `files` into `dir` on `host` with scp.
pub fn upload(host: &Host, files: &[&Path], dir: &str) -> Result<Outcome> {
    let mut cmd = Command::new("scp");
    common_options(&mut cmd, host);
    cmd.arg("-q").arg("-P").arg(host.port.to_string());
    cmd.args(files);
    let address = if host.address.contains(':') {
        format!("[{}]", host.address)
    } else {
        host.address.clone()
    };
    let user = host
        .user
        .as_ref()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    cmd.arg(format!("{user}{address}:{dir}/"));
    cmd.stdin(Stdio::null());
    let started = Instant::now();
    let output = cmd.output().context("start scp")?;
    Ok(Outcome {
        code: output.status.code().filter(|c| *c != 255),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr_tail: String::from_utf8_lossy(&output.stderr).into_owned(),
        duration: started.elapsed(),
    })
}

/// Single-quotes `s` for a POSIX shell.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r#"'\''"#))
}

/// The host's own release options, when its provisioning wrote them.
const HOST_ENV: &str =
    "if [ -r /etc/ddms/release.env ]; then set -a; . /etc/ddms/release.env; set +a; fi\n";

/// Where artifacts are uploaded on a host (then `ddms release install` copies them into the
/// release tree).
pub const UPLOAD_DIR: &str = "/var/tmp/ddms-deploy";

/// Finds the `ddms` that drives `ddms release` on the host: the last known good release's (the
/// state machine that already passed a watch there, so a broken new release cannot break its
/// own deploy or rollback), else one on PATH. Sets `$ddms` (empty when there is none) and
/// `$root` (`DDMS_RELEASE_ROOT` without a trailing slash).
const FIND_DDMS: &str = r#"
root="${DDMS_RELEASE_ROOT:-/}"; root="${root%/}"
lkg=$(sed -n 's/.*"last_known_good": *"\([^"]*\)".*/\1/p' "$root/var/lib/ddms/release-state.json" 2>/dev/null | head -n 1)
ddms=""
if [ -n "$lkg" ] && [ -x "$root/opt/ddms/releases/$lkg/ddms" ]; then
  ddms="$root/opt/ddms/releases/$lkg/ddms"
elif command -v ddms >/dev/null 2>&1; then
  ddms=$(command -v ddms)
fi
"#;

/// Runs "$@" and sends it SIGHUP should our standard input close first (xtask gone). A
/// background job's standard input is /dev/null in a non-interactive shell, hence fd 3.
const GUARD: &str = r#"
guarded() {
  exec 3<&0
  "$@" &
  pid=$!
  ( cat <&3 >/dev/null; kill -HUP "$pid" 2>/dev/null ) >/dev/null 2>&1 &
  watcher=$!
  wait "$pid"; rc=$?
  kill "$watcher" 2>/dev/null
  return $rc
}
"#;

pub fn mkdir_script() -> String {
    format!("mkdir -p {UPLOAD_DIR} && chmod 0700 {UPLOAD_DIR}")
}

/// `ddms release install` of an uploaded artifact; prints the install JSON. On a host without
/// any ddms yet, the binary comes from the artifact itself, after its checksum was verified.
pub fn install_script(artifact_name: &str) -> String {
    let art = quote(&format!("{UPLOAD_DIR}/{artifact_name}"));
    format!(
        r#"set -u
{FIND_DDMS}
art={art}
if [ -z "$ddms" ]; then
  want=$(cut -d ' ' -f 1 "$art.sha256")
  have=$(sha256sum "$art" | cut -d ' ' -f 1)
  if [ "$want" != "$have" ]; then
    echo "checksum mismatch: $art has sha256 $have, its .sha256 says $want" >&2
    exit 1
  fi
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  tar -xzf "$art" -C "$tmp" --wildcards '*/ddms' || exit 1
  ddms=$(find "$tmp" -mindepth 2 -maxdepth 2 -type f -name ddms | head -n 1)
fi
"$ddms" release install "$art"
rc=$?
rm -f "$art" "$art.sha256"
exit $rc
"#
    )
}

/// `ddms release activate RELEASE`, guarded; prints the host's deploy record.
pub fn activate_script(release: &str) -> String {
    let release = quote(release);
    format!(
        r#"set -u
{FIND_DDMS}
[ -n "$ddms" ] || ddms="$root/opt/ddms/releases/"{release}"/ddms"
{GUARD}
guarded "$ddms" release activate {release}
"#
    )
}

/// `ddms release rollback`, guarded; prints the host's deploy record.
pub fn rollback_script() -> String {
    format!(
        r#"set -u
{FIND_DDMS}
[ -n "$ddms" ] || {{ echo "no ddms release on this host" >&2; exit 1; }}
{GUARD}
guarded "$ddms" release rollback
"#
    )
}

/// `ddms release status` (JSON).
pub fn status_script() -> String {
    format!(
        r#"set -u
{FIND_DDMS}
[ -n "$ddms" ] || {{ echo "no ddms release on this host" >&2; exit 1; }}
exec "$ddms" release status
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_the_shell() {
        for s in ["plain", "it's", "a b\n$c `d` \"e\"", ""] {
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", quote(s)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), s);
        }
    }

    #[test]
    fn the_scripts_are_valid_shell() {
        for script in [
            mkdir_script(),
            install_script("ddms-1.0.0-x86_64-linux.tar.gz"),
            activate_script("1.0.0"),
            rollback_script(),
            status_script(),
        ] {
            let out = Command::new("sh")
                .arg("-n")
                .arg("-c")
                .arg(&script)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{script}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn the_last_known_good_release_drives_the_host() {
        let root = std::env::temp_dir().join(format!("xtask-find-{}", std::process::id()));
        let bin = root.join("opt/ddms/releases/0.3.0");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(root.join("var/lib/ddms")).unwrap();
        std::fs::write(
            root.join("var/lib/ddms/release-state.json"),
            "{\n  \"active_slot\": \"green\",\n  \"last_known_good\": \"0.3.0\",\n  \"previous_known_good\": \"0.2.0\"\n}\n",
        )
        .unwrap();
        std::fs::write(bin.join("ddms"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            bin.join("ddms"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("{FIND_DDMS}\nprintf %s \"$ddms\""))
            .env("DDMS_RELEASE_ROOT", format!("{}/", root.display()))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            bin.join("ddms").display().to_string()
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
