//! System OpenSSH and scp towards one inventory host, and the shell snippets run there.
//!
//! Every ssh and scp runs in its own process group, so a Ctrl-C in the terminal reaches only
//! xtask (which finishes the current host, then rolls back) and not the remote commands. A
//! remote deploy step is tied to our ssh's standard input instead: when it closes — xtask
//! died, even by SIGKILL — the host's `ddms release` gets SIGHUP and takes its own way back
//! (switch back, release the lock) rather than running on unattended.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

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

/// `[user@]address` for ssh. The inventory reader refuses names starting with `-`, and the
/// target always follows `--`, so it can never be read as an option.
fn target(host: &Host) -> String {
    match &host.user {
        Some(user) => format!("{user}@{}", host.address),
        None => host.address.clone(),
    }
}

/// Options both ssh and scp take: no prompts, dead connections noticed within ~15 s.
fn common_args(host: &Host) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=10",
        "-o",
        "ServerAliveInterval=5",
        "-o",
        "ServerAliveCountMax=3",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    if let Some(key) = &host.key {
        args.push("-i".into());
        args.push(key.into());
        args.extend(["-o", "IdentitiesOnly=yes"].map(OsString::from));
    }
    args.extend(host.ssh_args.iter().map(OsString::from));
    args
}

/// Whether a remote script runs as the ssh user or as root (`sudo -n` unless the ssh user is
/// root already).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum As {
    LoginUser,
    Root,
}

/// The `export NAME='value'` lines that forward `env`. Names must be `[A-Z0-9_]+` (they are
/// spliced into the script) and values are single-quoted, so neither can run anything.
pub fn env_prelude(env: &[(String, String)]) -> Result<String> {
    let mut out = String::new();
    for (key, value) in env {
        ensure!(
            valid_env_name(key),
            "cannot forward environment variable `{}`: names may only hold A-Z, 0-9 and '_'",
            key.escape_debug()
        );
        out.push_str(&format!("export {}={}\n", quote(key), quote(value)));
    }
    Ok(out)
}

/// `[A-Z0-9_]+`, not starting with a digit.
pub fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// The command line ssh gets to run `script` with `sh` on `host`.
fn ssh_args(host: &Host, who: As, env: &[(String, String)], script: &str) -> Result<Vec<OsString>> {
    let mut full = String::from(HOST_ENV);
    full.push_str(&env_prelude(env)?);
    full.push_str(script);
    let mut remote = String::new();
    if who == As::Root && host.user.as_deref().is_some_and(|u| u != "root") {
        remote.push_str("sudo -n ");
    }
    remote.push_str("sh -c ");
    remote.push_str(&quote(&full));
    let mut args = common_args(host);
    args.push("-p".into());
    args.push(host.port.to_string().into());
    // `--` ends the options: the target and the remote command are never read as options.
    args.push("--".into());
    args.push(target(host).into());
    args.push(remote.into());
    Ok(args)
}

/// Runs `script` with `sh` on `host` as `who`, with `env` exported — after the host's own
/// `/etc/ddms/release.env` (KEY=VALUE lines, e.g. the `DDMS_RELEASE_*` options its
/// provisioning chose), so what the caller sets wins. Standard error is echoed line by line
/// with the host's name; standard output is collected. Standard input stays open until the
/// command ends (see the module comment).
pub fn run_as(host: &Host, who: As, env: &[(String, String)], script: &str) -> Result<Outcome> {
    let mut cmd = Command::new("ssh");
    cmd.args(ssh_args(host, who, env, script)?);
    cmd.process_group(0);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().context("start ssh (is OpenSSH installed?)")?;
    // Held, never written: its end-of-file tells the host that we are gone.
    let stdin = child.stdin.take();
    let mut stdout = child.stdout.take().context("ssh has no stdout pipe")?;
    let stderr = child.stderr.take().context("ssh has no stderr pipe")?;
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

/// [`run_as`] root.
pub fn run(host: &Host, env: &[(String, String)], script: &str) -> Result<Outcome> {
    run_as(host, As::Root, env, script)
}

/// The command line scp gets to copy `files` into `dir` on `host`.
fn scp_args(host: &Host, files: &[&Path], dir: &str) -> Vec<OsString> {
    let mut args = common_args(host);
    args.push("-q".into());
    args.push("-P".into());
    args.push(host.port.to_string().into());
    // `--` ends the options: neither a file nor the target is read as one.
    args.push("--".into());
    args.extend(files.iter().map(|f| f.as_os_str().to_owned()));
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
    args.push(format!("{user}{address}:{dir}/").into());
    args
}

/// Copies `files` into `dir` on `host` with scp.
pub fn upload(host: &Host, files: &[&Path], dir: &str) -> Result<Outcome> {
    let mut cmd = Command::new("scp");
    cmd.args(scp_args(host, files, dir));
    cmd.process_group(0);
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
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The host's own release options, when its provisioning wrote them.
const HOST_ENV: &str =
    "if [ -r /etc/ddms/release.env ]; then set -a; . /etc/ddms/release.env; set +a; fi\n";

/// Finds the `ddms` that drives `ddms release` on the host: the last known good release's (the
/// state machine that already passed a watch there, so a broken new release cannot break its
/// own deploy or rollback), else one on PATH. Sets `$ddms` (empty when there is none) and
/// `$root` (`DDMS_RELEASE_ROOT` without a trailing slash).
pub const FIND_DDMS: &str = r#"
root="${DDMS_RELEASE_ROOT:-/}"; root="${root%/}"
lkg=$(sed -n 's/.*"last_known_good": *"\([^"]*\)".*/\1/p' "$root/var/lib/ddms/release-state.json" 2>/dev/null | head -n 1)
# Only a release name (as `ddms release` accepts them) may pick a binary under releases/.
case "$lkg" in .*|*[!A-Za-z0-9._+-]*) lkg="" ;; esac
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

/// Run as the ssh user (never through sudo): makes a fresh private directory for the upload
/// and prints its path. `mktemp -d` creates it atomically under a name nobody can guess, mode
/// 0700 and owned by the ssh user, so no other local user can pre-create, replace or write into
/// it — unlike a fixed path such as `/var/tmp/ddms-deploy`, which a local user could create
/// first and keep swapping files in. scp runs as that same user, so this works for root and
/// for a sudo-capable `ansible_user` alike.
pub fn upload_dir_script() -> String {
    r#"set -eu
umask 077
dir=$(mktemp -d "${TMPDIR:-/tmp}/ddms-upload.XXXXXXXXXX")
printf '%s\n' "$dir"
"#
    .to_string()
}

/// The upload directory [`upload_dir_script`] printed, if it looks like one: an absolute
/// path of plain characters (it is put into scp's target and into scripts).
pub fn parse_upload_dir(stdout: &str) -> Result<String> {
    let dir = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    ensure!(
        dir.starts_with('/')
            && !dir.split('/').any(|part| part == "..")
            && dir
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-')),
        "the host gave no usable upload directory: `{}`",
        dir.escape_debug()
    );
    Ok(dir.to_string())
}

/// Whether `name` can be an uploaded artifact's file name (it is spliced into scp's target
/// and scripts): `[A-Za-z0-9._+-]`, not starting with `-` or `.`.
pub fn valid_artifact_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(['-', '.'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'))
}

/// Run as the ssh user: removes an upload directory after a failed upload.
pub fn remove_upload_dir_script(dir: &str) -> String {
    format!("rm -rf -- {}\n", quote(dir))
}

/// As root: takes the artifact out of the ssh user's upload directory into a fresh root-owned
/// private directory, checks the copy against `sha256` (the digest xtask verified against
/// the published checksum on this machine — nothing in the upload directory is trusted for
/// it), and `ddms release install`s the copy; prints the install JSON. Both directories are
/// removed at the end. On a host without any ddms yet, the binary comes from the verified
/// copy. The upload directory must be a real directory owned by the ssh user (`SUDO_UID`, or
/// root) with mode 0700, else nothing happens.
///
/// With `signed`, `<artifact>.minisig` was uploaded too and is copied alongside: `ddms release
/// install` checks it when the host pins a release key (`/etc/ddms/release.pub`). On a host
/// that pins one but has no ddms yet, the binary that would check the signature is the
/// artifact's own, so `minisign` checks it first, and without minisign nothing is run.
pub fn install_script(upload_dir: &str, artifact_name: &str, sha256: &str, signed: bool) -> String {
    let up = quote(upload_dir);
    let name = quote(artifact_name);
    let want = quote(sha256);
    let signed = if signed { "1" } else { "" };
    format!(
        r#"set -u
umask 077
{FIND_DDMS}
up={up}
name={name}
want={want}
fail() {{ echo "$*" >&2; exit 1; }}
priv=$(mktemp -d /var/tmp/ddms-install.XXXXXXXXXX) || fail "cannot create a private directory under /var/tmp"
# The upload directory is removed too, but only once it proved to be the ssh user's own.
ours=""
trap 'rm -rf -- "$priv"; [ -z "$ours" ] || rm -rf -- "$up"' EXIT
[ ! -L "$priv" ] && [ "$(stat -c %u:%a "$priv")" = "0:700" ] || fail "$priv is not a root-owned private directory"
uploader="${{SUDO_UID:-0}}"
[ -d "$up" ] && [ ! -L "$up" ] || fail "upload directory $up is missing or not a directory"
[ "$(stat -c %u:%a "$up")" = "$uploader:700" ] || fail "upload directory $up is not owned by uid $uploader with mode 0700: refusing it"
ours=1
[ -f "$up/$name" ] && [ ! -L "$up/$name" ] || fail "$up/$name is not a regular file"
# From here on only the private copy is used: whatever happens in the upload directory
# afterwards cannot change what is checked, unpacked, run or installed.
cat -- "$up/$name" > "$priv/$name" || fail "cannot copy $up/$name"
have=$(sha256sum -- "$priv/$name" | cut -d ' ' -f 1)
[ "$have" = "$want" ] || fail "checksum mismatch: the uploaded $name has sha256 $have, the published checksum says $want; nothing was installed"
printf '%s  %s\n' "$want" "$name" > "$priv/$name.sha256"
signed={signed}
if [ -n "$signed" ]; then
  [ -f "$up/$name.minisig" ] && [ ! -L "$up/$name.minisig" ] || fail "$up/$name.minisig is not a regular file"
  cat -- "$up/$name.minisig" > "$priv/$name.minisig" || fail "cannot copy $up/$name.minisig"
fi
key="$root/etc/ddms/release.pub"
if [ -z "$ddms" ] && {{ [ -e "$key" ] || [ -L "$key" ]; }}; then
  [ -n "$signed" ] || fail "$name is not signed (no $name.minisig), and this host pins a release key ($key); nothing was installed"
  command -v minisign >/dev/null 2>&1 || fail "this host pins a release key ($key) but has no ddms release yet, and no minisign to check $name's signature with before running its binary: install minisign (Debian: apt-get install minisign); nothing was installed"
  # -P takes the key line alone, whether or not the file has minisign's comment line; -H
  # refuses legacy signatures, as `ddms release install` does.
  pk=$(grep -v '^untrusted comment:' "$key" | tr -d ' \t\r\n')
  minisign -V -H -q -P "$pk" -m "$priv/$name" -x "$priv/$name.minisig" >/dev/null || fail "$name is not signed by this host's release key ($key); nothing was installed"
fi
if [ -z "$ddms" ]; then
  mkdir "$priv/bootstrap" || exit 1
  tar -xzf "$priv/$name" -C "$priv/bootstrap" --wildcards '*/ddms' || exit 1
  ddms=$(find "$priv/bootstrap" -mindepth 2 -maxdepth 2 -type f -name ddms | head -n 1)
  [ -n "$ddms" ] || fail "$name has no ddms binary"
fi
"$ddms" release install "$priv/$name"
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

    fn host(address: &str, user: Option<&str>) -> Host {
        Host {
            name: "h".into(),
            address: address.into(),
            port: 2222,
            user: user.map(str::to_string),
            key: Some("/k/id".into()),
            ssh_args: vec!["-o".into(), "LogLevel=ERROR".into()],
        }
    }

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn ssh_and_scp_end_their_options_before_the_target() {
        let h = host("10.0.0.1", Some("deploy"));
        let args = strings(&ssh_args(&h, As::Root, &[], "true").unwrap());
        let dashes = args.iter().position(|a| a == "--").unwrap();
        assert_eq!(args[dashes + 1], "deploy@10.0.0.1");
        assert_eq!(args.len(), dashes + 3, "{args:?}");
        assert!(args[dashes + 2].starts_with("sudo -n sh -c '"), "{args:?}");
        assert!(args[..dashes].contains(&"IdentitiesOnly=yes".to_string()));
        assert!(args[..dashes].contains(&"LogLevel=ERROR".to_string()));
        // As the login user: no sudo.
        let args = strings(&ssh_args(&h, As::LoginUser, &[], "true").unwrap());
        assert!(args.last().unwrap().starts_with("sh -c '"), "{args:?}");
        // Root needs no sudo either.
        let args = strings(&ssh_args(&host("h1", Some("root")), As::Root, &[], "true").unwrap());
        assert!(args.last().unwrap().starts_with("sh -c '"), "{args:?}");

        let file = Path::new("/d/ddms-1.tar.gz");
        let args = strings(&scp_args(
            &host("2001:db8::1", Some("deploy")),
            &[file],
            "/tmp/u",
        ));
        let dashes = args.iter().position(|a| a == "--").unwrap();
        assert_eq!(
            &args[dashes + 1..],
            ["/d/ddms-1.tar.gz", "deploy@[2001:db8::1]:/tmp/u/"]
        );
        assert!(args[..dashes].contains(&"-P".to_string()));
        let args = strings(&scp_args(&host("h1", None), &[file], "/tmp/u"));
        assert_eq!(args.last().unwrap(), "h1:/tmp/u/");
    }

    #[test]
    fn forwarded_values_reach_the_remote_shell_unchanged_and_odd_names_are_refused() {
        let nasty = [
            "it's",
            "$(touch /tmp/xtask-pwned) `id`",
            "two words  and\ttab",
            "line one\nline two\n",
            "'; exit 7; '",
            "",
        ];
        let env: Vec<(String, String)> = nasty
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("DDMS_RELEASE_T{i}"), v.to_string()))
            .collect();
        let mut script = env_prelude(&env).unwrap();
        for (key, _) in &env {
            script.push_str(&format!("printf '%s\\0' \"${key}\"\n"));
        }
        // Through the same two shells as on a host: ssh's remote shell runs `sh -c '<script>'`.
        let args = ssh_args(&host("h1", Some("root")), As::Root, &env, &script).unwrap();
        let remote = args.last().unwrap().to_str().unwrap().to_string();
        let out = Command::new("sh").arg("-c").arg(&remote).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .split('\0')
            .map(str::to_string)
            .collect();
        assert_eq!(got[..nasty.len()], nasty.map(String::from));
        assert!(!Path::new("/tmp/xtask-pwned").exists());

        for bad in [
            "DDMS_RELEASE_X;touch /tmp/x;Y",
            "DDMS_RELEASE_lower",
            "DDMS RELEASE",
            "",
            "1X",
        ] {
            let err = env_prelude(&[(bad.to_string(), "v".to_string())]).unwrap_err();
            assert!(
                err.to_string().contains("names may only hold"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn upload_dirs_and_artifact_names_must_be_plain() {
        assert_eq!(
            parse_upload_dir("motd\n/tmp/ddms-upload.Ab3_x-9\n").unwrap(),
            "/tmp/ddms-upload.Ab3_x-9"
        );
        for bad in [
            "",
            "tmp/x",
            "/tmp/a b",
            "/tmp/../etc",
            "/tmp/$(id)",
            "/tmp/x'",
        ] {
            assert!(parse_upload_dir(bad).is_err(), "{bad}");
        }
        assert!(valid_artifact_name("ddms-0.2.0+rc1-x86_64-linux.tar.gz"));
        for bad in ["", "-o.tar.gz", ".hidden", "a b.tar.gz", "a/b", "x$(id)"] {
            assert!(!valid_artifact_name(bad), "{bad}");
        }
    }

    #[test]
    fn the_scripts_are_valid_shell() {
        for script in [
            upload_dir_script(),
            remove_upload_dir_script("/tmp/ddms-upload.abc"),
            install_script(
                "/tmp/ddms-upload.abc",
                "ddms-1.0.0-x86_64-linux.tar.gz",
                &"0".repeat(64),
                true,
            ),
            install_script(
                "/tmp/ddms-upload.abc",
                "ddms-1.0.0-x86_64-linux.tar.gz",
                &"0".repeat(64),
                false,
            ),
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

        // A state file naming a path rather than a release (whoever could write it) picks
        // nothing outside releases/.
        let elsewhere = root.join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::copy(bin.join("ddms"), elsewhere.join("ddms")).unwrap();
        std::fs::write(
            root.join("var/lib/ddms/release-state.json"),
            "{\n  \"last_known_good\": \"../../../elsewhere\"\n}\n",
        )
        .unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("{FIND_DDMS}\nprintf %s \"$ddms\""))
            .env("DDMS_RELEASE_ROOT", format!("{}/", root.display()))
            .env("PATH", "/usr/bin:/bin")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), "");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
