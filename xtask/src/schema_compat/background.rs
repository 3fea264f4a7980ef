//! The previous release's build, started when `cargo xtask test` starts and waited for at its
//! last step. A cold build of the previous release is the longest build of a CI run (11
//! minutes on 2 cores), while the end-to-end scenarios leave much of the CPU idle (they wait for
//! containers, ssh, a deadline): built at the lowest CPU priority (`nice -n 19`) beside the
//! other steps, it takes mostly the time they leave unused.
//!
//! It runs as `xtask schema-compat --build-only` in a process group of its own, its output in
//! `<target>/schema-compat/background-build.log`. When `test` stops early (a step failed), the
//! group is stopped with it. A Ctrl-C reaches only the terminal's group: the build then runs to
//! its end, which leaves a finished build for the next run. Whatever happens to it, the
//! schema N-1 step calls the same build in the foreground, which builds nothing after a
//! successful background build and shows the errors of a failed one.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::Context;
use xshell::Shell;

pub struct BackgroundBuild {
    child: Option<Child>,
    log: PathBuf,
    started: Instant,
}

impl BackgroundBuild {
    /// Starts the build. When it cannot start, says so and carries on: the foreground step
    /// builds instead.
    pub fn start(sh: &Shell) -> BackgroundBuild {
        let spawned = super::work_dir(sh).and_then(|work| {
            sh.create_dir(&work)?;
            let mut build = Command::new("nice");
            build
                .args(["-n", "19"])
                .arg(std::env::current_exe()?)
                .args(["schema-compat", "--build-only"])
                .current_dir(sh.current_dir());
            BackgroundBuild::spawn(build, work.join("background-build.log"))
        });
        spawned.unwrap_or_else(|error| {
            eprintln!(
                "xtask: WARNING: no background build of the previous release ({error:#}); the \
                 schema N-1 step builds it"
            );
            BackgroundBuild {
                child: None,
                log: PathBuf::new(),
                started: Instant::now(),
            }
        })
    }

    /// Starts `command` in a process group of its own, its output to `log`.
    fn spawn(mut command: Command, log: PathBuf) -> anyhow::Result<BackgroundBuild> {
        let output = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {command:?}"))?;
        println!(
            "xtask: building the previous release in the background, at the lowest CPU priority \
             (log: {})",
            log.display()
        );
        Ok(BackgroundBuild {
            child: Some(child),
            log,
            started: Instant::now(),
        })
    }

    /// Waits for the build to end and says how it went. A failed build is reported, not
    /// returned: the schema N-1 step builds again in the foreground, where its errors show.
    pub fn finish(mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // Already ended (the usual case): how long it ran is not known, only that the step
        // did not wait.
        let (outcome, waited) = match child.try_wait() {
            Ok(Some(status)) => (Ok(status), None),
            _ => {
                let waiting = Instant::now();
                (child.wait(), Some(waiting.elapsed()))
            }
        };
        match outcome {
            Ok(status) if status.success() => match waited {
                None => println!(
                    "xtask: the previous release's background build had ended before this step"
                ),
                Some(waited) => println!(
                    "xtask: the previous release's background build ended {:.0} s after it \
                     started (this step waited {:.0} s for it)",
                    self.started.elapsed().as_secs_f64(),
                    waited.as_secs_f64()
                ),
            },
            outcome => {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                eprintln!(
                    "xtask: WARNING: the previous release's background build failed ({outcome:?}); \
                     building it here. The end of {}:\n{}",
                    self.log.display(),
                    crate::last_lines(&log, 20)
                );
            }
        }
    }
}

impl Drop for BackgroundBuild {
    /// `test` stopped before its last step: the build and the compilers under it stop too.
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            // The group's id is the child's pid (process_group(0)).
            let group = format!("-{}", child.id());
            let _ = Command::new("kill")
                .args(["-TERM", "--", &group])
                .stderr(Stdio::null())
                .status();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: &str) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ")
    }

    #[test]
    fn a_dropped_build_stops_with_every_process_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("grandchild.pid");
        let mut command = Command::new("sh");
        // A grandchild, as cargo's compilers are: it must stop too.
        command.arg("-c").arg(format!(
            "sleep 600 & echo $! > {}; wait",
            pid_file.display()
        ));
        let build = BackgroundBuild::spawn(command, dir.path().join("log")).unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        let grandchild = loop {
            match std::fs::read_to_string(&pid_file) {
                Ok(pid) if pid.ends_with('\n') => break pid.trim().to_string(),
                _ if Instant::now() < deadline => {
                    // sleep: the poll interval of this wait with a deadline (the pid file)
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                _ => panic!("the command did not start its grandchild"),
            }
        };
        assert!(alive(&grandchild));
        drop(build);
        // `sleep` is not our child: once killed, init reaps it, so it goes from /proc.
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        while alive(&grandchild) {
            assert!(
                Instant::now() < deadline,
                "the grandchild {grandchild} outlived the dropped build"
            );
            // sleep: the poll interval of this wait with a deadline (the grandchild gone)
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    #[test]
    fn a_finished_build_is_waited_for_and_a_failed_one_only_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new("sh");
        command.args(["-c", "echo building; exit 3"]);
        let log = dir.path().join("log");
        BackgroundBuild::spawn(command, log.clone())
            .unwrap()
            .finish();
        assert_eq!(std::fs::read_to_string(log).unwrap(), "building\n");
    }
}
