//! `ansible-playbook` runs against a cluster's inventory, with the PLAY RECAP parsed per host.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::project_root;

/// The playbooks and roles: `<repo>/ansible`.
pub fn ansible_dir() -> PathBuf {
    project_root().join("ansible")
}

/// One host's line of the PLAY RECAP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recap {
    pub ok: u32,
    pub changed: u32,
    pub unreachable: u32,
    pub failed: u32,
    pub skipped: u32,
    pub rescued: u32,
    pub ignored: u32,
}

/// What one `ansible-playbook` run did.
#[derive(Debug)]
pub struct PlaybookRun {
    /// Exit status (-1 when killed by a signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// PLAY RECAP, by inventory host name.
    pub recap: BTreeMap<String, Recap>,
}

impl PlaybookRun {
    /// Whether every host in the recap has failed=0 and unreachable=0 (and there is a recap).
    pub fn all_ok(&self) -> bool {
        !self.recap.is_empty()
            && self
                .recap
                .values()
                .all(|r| r.failed == 0 && r.unreachable == 0)
    }

    /// Each host whose recap counts changed tasks, with the count.
    pub fn changed_hosts(&self) -> Vec<(&String, u32)> {
        self.recap
            .iter()
            .filter(|(_, r)| r.changed > 0)
            .map(|(host, r)| (host, r.changed))
            .collect()
    }

    /// The tasks that reported `changed`, as ansible printed them (`changed: [ddms1]` lines
    /// with the task header before them), for failure messages.
    pub fn changed_tasks(&self) -> Vec<String> {
        let mut task = String::new();
        let mut changed = Vec::new();
        for line in self.stdout.lines() {
            if line.starts_with("TASK [") || line.starts_with("RUNNING HANDLER [") {
                task = line.trim_end_matches(['*', ' ']).to_string();
            } else if line.starts_with("changed: [") {
                changed.push(format!("{task} {line}"));
            }
        }
        changed
    }
}

/// Runs `ansible-playbook <ansible_dir>/<playbook> -i <inventory> -e @<extra vars>` (the extra
/// vars as a JSON file next to the inventory) and parses the recap. Never fails because the
/// playbook failed: look at `code` and `recap`.
pub fn ansible_playbook(
    playbook: &str,
    inventory: &Path,
    extra_vars: &Value,
    extra_args: &[&str],
) -> Result<PlaybookRun> {
    let dir = ansible_dir();
    let vars_file = inventory.with_file_name(format!(
        "extra-vars-{}.json",
        playbook.trim_end_matches(".yml")
    ));
    std::fs::write(&vars_file, serde_json::to_vec_pretty(extra_vars)?)?;
    let output = Command::new("ansible-playbook")
        .arg(dir.join(playbook))
        .arg("-i")
        .arg(inventory)
        .arg("-e")
        .arg(format!("@{}", vars_file.display()))
        .args(extra_args)
        .current_dir(&dir)
        .env("ANSIBLE_CONFIG", dir.join("ansible.cfg"))
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_FORCE_COLOR", "0")
        .env("ANSIBLE_HOST_KEY_CHECKING", "False")
        .env("ANSIBLE_RETRY_FILES_ENABLED", "False")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .output()
        .context("cannot run ansible-playbook (pip install ansible-core; `cargo xtask setup` installs it)")?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let recap = parse_recap(&stdout)?;
    Ok(PlaybookRun {
        code: output.status.code().unwrap_or(-1),
        stdout,
        stderr,
        recap,
    })
}

/// The per-host counters after `PLAY RECAP` (`ddms1 : ok=12 changed=3 unreachable=0 …`).
pub fn parse_recap(stdout: &str) -> Result<BTreeMap<String, Recap>> {
    let mut recap = BTreeMap::new();
    let Some((_, tail)) = stdout.rsplit_once("PLAY RECAP") else {
        return Ok(recap);
    };
    for line in tail.lines().skip(1) {
        let Some((host, counters)) = line.split_once(" : ") else {
            continue;
        };
        let mut r = Recap::default();
        for pair in counters.split_whitespace() {
            let Some((key, value)) = pair.split_once('=') else {
                bail!("unexpected PLAY RECAP entry `{pair}` in `{line}`");
            };
            let value: u32 = value
                .parse()
                .with_context(|| format!("PLAY RECAP `{line}`"))?;
            match key {
                "ok" => r.ok = value,
                "changed" => r.changed = value,
                "unreachable" => r.unreachable = value,
                "failed" => r.failed = value,
                "skipped" => r.skipped = value,
                "rescued" => r.rescued = value,
                "ignored" => r.ignored = value,
                _ => {}
            }
        }
        recap.insert(host.trim().to_string(), r);
    }
    Ok(recap)
}

#[test]
fn play_recap_is_parsed_per_host() {
    let out = "PLAY [x] ****\n\nPLAY RECAP *********************************************\n\
               db                         : ok=9    changed=0    unreachable=0    failed=0    skipped=2    rescued=0    ignored=0\n\
               ddms1                      : ok=20   changed=3    unreachable=1    failed=2    skipped=0    rescued=1    ignored=4\n\n";
    let recap = parse_recap(out).unwrap();
    assert_eq!(recap.len(), 2);
    assert_eq!(
        recap["ddms1"],
        Recap {
            ok: 20,
            changed: 3,
            unreachable: 1,
            failed: 2,
            skipped: 0,
            rescued: 1,
            ignored: 4
        }
    );
    assert_eq!(recap["db"].skipped, 2);
    assert!(parse_recap("no recap").unwrap().is_empty());
}
