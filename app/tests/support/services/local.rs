//! Services as local processes: a child per server in its own data directory, run as the
//! service's system user when the tests run as root, and the reaper that stops them all.

use super::*;

pub(super) struct LocalProcess {
    pub(super) name: &'static str,
    pub(super) program: PathBuf,
    /// Set per start attempt, since it names the port.
    pub(super) args: Mutex<Vec<OsString>>,
    pub(super) run_as: Option<(u32, u32)>,
    pub(super) stop_signal: Signal,
    /// Temp dir holding everything of this server; removed by the reaper.
    pub(super) dir: PathBuf,
    pub(super) log_file: PathBuf,
    /// Where in the log the current run starts, so errors show only its lines.
    pub(super) log_start: Mutex<u64>,
    /// Read by the reaper to find the server after restarts.
    pub(super) pid_file: PathBuf,
    pub(super) child: Mutex<Option<Child>>,
    pub(super) _reaper: Reaper,
}

impl LocalProcess {
    pub(super) fn new(
        name: &'static str,
        dir_prefix: &str,
        program: PathBuf,
        run_as: Option<(u32, u32)>,
        stop_signal: Signal,
    ) -> Result<LocalProcess> {
        let dir = tempfile::Builder::new()
            .prefix(dir_prefix)
            .tempdir()
            .context("creating a temp dir")?
            .keep();
        let pid_file = dir.join("server.pid");
        let reaper = Reaper::spawn(
            r#"pid=$(cat "$2" 2>/dev/null)
if [ -n "$pid" ]; then
  kill -s "$3" "$pid" 2>/dev/null
  i=0
  while [ "$i" -lt 300 ] && [ -d "/proc/$pid" ] && ! grep -q ') Z' "/proc/$pid/stat" 2>/dev/null; do
    sleep 0.1; i=$((i + 1))
  done
  [ -d "/proc/$pid" ] && kill -s KILL "$pid" 2>/dev/null
fi
case "$1" in */ddms-test-*) rm -rf "$1" ;; esac"#,
            &[
                dir.clone().into(),
                pid_file.clone().into(),
                stop_signal.as_str().trim_start_matches("SIG").into(),
            ],
        );
        let reaper = match reaper {
            Ok(reaper) => reaper,
            Err(err) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(err);
            }
        };
        Ok(LocalProcess {
            name,
            program,
            args: Mutex::new(Vec::new()),
            run_as,
            stop_signal,
            log_file: dir.join(format!("{name}.log")),
            log_start: Mutex::new(0),
            pid_file,
            dir,
            child: Mutex::new(None),
            _reaper: reaper,
        })
    }

    pub(super) fn start(&self) -> Result<()> {
        let mut child = lock(&self.child);
        if child.is_some() {
            bail!("{} is already running", self.name);
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .with_context(|| format!("opening {}", self.log_file.display()))?;
        *lock(&self.log_start) = log.metadata()?.len();
        let mut command = Command::new(&self.program);
        command
            .args(lock(&self.args).iter())
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Out of the test's process group, so a signal aimed at the test run
            // (Ctrl-C, a CI timeout's SIGKILL) leaves the shutdown to the reaper
            // instead of killing the server mid-flight.
            .process_group(0);
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        let spawned = command
            .spawn()
            .with_context(|| format!("spawning {}", self.program.display()))?;
        let pid = spawned.id();
        *child = Some(spawned);
        fs::write(&self.pid_file, pid.to_string())
            .with_context(|| format!("writing {}", self.pid_file.display()))
    }

    /// Signals the server and waits for it to exit; a no-op when it is not running.
    pub(super) async fn stop(&self) -> Result<()> {
        let Some(mut child) = lock(&self.child).take() else {
            return Ok(());
        };
        if child.try_wait()?.is_none() {
            signal(&child, self.stop_signal)?;
            let deadline = Instant::now() + STOP_TIMEOUT;
            while child.try_wait()?.is_none() {
                if Instant::now() >= deadline {
                    child.kill()?;
                    child.wait()?;
                    break;
                }
                // sleep: the poll interval of this wait with a deadline (a process exiting)
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let _ = fs::remove_file(&self.pid_file);
        Ok(())
    }

    pub(super) fn ensure_running(&self) -> Result<()> {
        let mut guard = lock(&self.child);
        let Some(child) = guard.as_mut() else {
            bail!("{} is not running", self.name);
        };
        if let Some(status) = child.try_wait()? {
            guard.take();
            drop(guard);
            bail!(
                "{} exited ({status}); its log:\n{}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    pub(super) fn log_tail(&self) -> String {
        let start = *lock(&self.log_start);
        let mut text = String::new();
        let read = File::open(&self.log_file).and_then(|mut file| {
            file.seek(SeekFrom::Start(start))?;
            file.read_to_string(&mut text)
        });
        if let Err(err) = read {
            return format!("(log unavailable: {err})");
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for LocalProcess {
    fn drop(&mut self) {
        // The reaper (dropped next) signals via the pid file and deletes the
        // dir once the process is gone; reap the child so it leaves no zombie.
        if let Some(mut child) = lock(&self.child).take() {
            let _ = signal(&child, self.stop_signal);
            std::thread::spawn(move || child.wait());
        }
    }
}

pub(super) fn signal(child: &Child, signal: Signal) -> Result<()> {
    let pid = i32::try_from(child.id()).context("pid out of range")?;
    kill(Pid::from_raw(pid), signal).with_context(|| format!("sending {signal} to {pid}"))
}

pub(super) fn running_as_root() -> bool {
    // /proc/self belongs to the effective uid; avoids needing nix's `user` feature.
    fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

/// (uid, gid) of a system account, from /etc/passwd.
pub(super) fn system_user(name: &str) -> Result<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.len() > 3 && fields[0] == name)
        .and_then(|fields| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
        .with_context(|| format!("no user {name:?} in /etc/passwd (needed when running as root)"))
}

// ---------------------------------------------------------------------------
// Reaper

/// A `sh` that runs a cleanup script once its stdin reaches EOF, i.e. when this
/// value is dropped or the test process exits, however it exits.
pub struct Reaper {
    stdin: Option<ChildStdin>,
    child: Option<Child>,
}

impl Reaper {
    pub fn spawn(script: &str, args: &[OsString]) -> Result<Reaper> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("trap '' INT HUP; cat >/dev/null; {script}"))
            .arg("ddms-test-reaper")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Own process group: a Ctrl-C aimed at `cargo test` must not kill the cleanup.
            .process_group(0)
            .spawn()
            .context("spawning the cleanup process (sh)")?;
        Ok(Reaper {
            stdin: child.stdin.take(),
            child: Some(child),
        })
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if let Some(mut child) = self.child.take() {
            std::thread::spawn(move || child.wait());
        }
    }
}
