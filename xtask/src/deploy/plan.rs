//! `--dry-run` of `cargo xtask deploy` and `rollback`: what a run would do, host by host —
//! the release each host runs now and the one it would run, the gates its `ddms release`
//! would apply, the batches — read from each host (`ddms release status` and its release
//! options) without changing anything there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::Value;
use xshell::{cmd, Shell};

use super::inventory::{Host, Source};
use super::{per_host, ssh, table, Options};

/// The artifact a deploy would ship.
pub struct Artifact {
    pub path: PathBuf,
    /// The release name the hosts will give it, as far as it can be told here.
    pub release: String,
    pub sha256: String,
    /// What its `.sha256` file says.
    pub published: String,
    /// Its `.minisig`, when there is one.
    pub signature: Option<PathBuf>,
}

pub enum Change {
    Deploy(Artifact),
    /// Each host to its previous known-good release.
    Rollback,
    /// Every host to this installed release.
    RollbackTo(String),
}

/// The gates of `ddms release` (its `DDMS_RELEASE_*` variables), their short names, defaults
/// (those of `ddms release --help`) and units.
const GATES: [(&str, &str, &str, &str); 6] = [
    ("DDMS_RELEASE_READY_TIMEOUT", "ready", "60", "s"),
    ("DDMS_RELEASE_WATCH", "watch", "30", "s"),
    ("DDMS_RELEASE_DRAIN_TIMEOUT", "drain", "40", "s"),
    ("DDMS_RELEASE_MIGRATE_TIMEOUT", "migrate", "600", "s"),
    ("DDMS_RELEASE_LOCK_TTL", "lock", "60", "s"),
    ("DDMS_RELEASE_MAX_5XX_RATIO", "max 5xx ratio", "0.01", ""),
];

/// What one host told us.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Probe {
    /// The `DDMS_RELEASE_*` variables its `ddms release` would see: the host's release.env,
    /// then those forwarded from here.
    pub vars: BTreeMap<String, String>,
    /// `ddms release status`; None on a host without ddms yet.
    pub status: Option<Value>,
    /// Why the host could not be asked.
    pub error: Option<String>,
}

/// The plan for one host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostPlan {
    pub name: String,
    pub address: String,
    pub current: Option<String>,
    pub to: Option<String>,
    pub gates: String,
    /// What the run would do there.
    pub action: String,
    /// What would make the run fail or be refused there.
    pub problem: Option<String>,
}

/// Reads the host's release options and `ddms release status`; changes nothing.
fn probe_script() -> String {
    format!(
        r#"set -u
{}
echo "@@vars"
env | grep '^DDMS_RELEASE_[A-Z0-9_]*=' || true
echo "@@status"
if [ -n "$ddms" ]; then "$ddms" release status; else echo "@@none"; fi
"#,
        ssh::FIND_DDMS
    )
}

/// Parses what [`probe_script`] printed.
pub fn parse_probe(stdout: &str) -> Result<Probe, String> {
    let (_, rest) = stdout
        .split_once("@@vars\n")
        .ok_or("the host printed no release options")?;
    let (vars, status) = rest
        .split_once("@@status\n")
        .ok_or("the host printed no status")?;
    let vars = vars
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let status = if status.trim() == "@@none" {
        None
    } else {
        Some(
            serde_json::from_str::<Value>(status.trim())
                .map_err(|e| format!("`ddms release status` printed no JSON: {e}"))?,
        )
    };
    Ok(Probe {
        vars,
        status,
        error: None,
    })
}

fn probe(host: &Host, env: &[(String, String)]) -> Probe {
    // Unasked, the host's own release.env is unknown; what is forwarded from here still holds.
    let failed = |error: String| Probe {
        vars: env.iter().cloned().collect(),
        status: None,
        error: Some(error),
    };
    match ssh::run(host, env, &probe_script()) {
        Ok(out) if out.ok() => parse_probe(&out.stdout).unwrap_or_else(failed),
        Ok(out) => failed(out.reason()),
        Err(e) => failed(format!("{e:#}")),
    }
}

/// The release the active slot runs.
pub fn live_release(status: &Value) -> Option<String> {
    let slots = status.get("slots")?.as_object()?;
    slots
        .values()
        .find(|s| s.get("active").and_then(Value::as_bool) == Some(true))?
        .get("release")?
        .as_str()
        .map(str::to_string)
}

fn installed(status: &Value) -> Vec<String> {
    status
        .get("releases")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn text(value: &Value, key: &str) -> Option<String> {
    value.get(key)?.as_str().map(str::to_string)
}

/// `ready 60s, watch 30s, …` from the variables a host's `ddms release` would see.
pub fn gates(vars: &BTreeMap<String, String>) -> String {
    GATES
        .iter()
        .map(|(key, name, default, unit)| {
            let value = vars.get(*key).map(String::as_str).unwrap_or(default);
            format!("{name} {value}{unit}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The plan for one host from what it told us.
pub fn plan_host(host: &Host, change: &Change, probe: &Probe) -> HostPlan {
    let mut plan = HostPlan {
        name: host.name.clone(),
        address: host.address.clone(),
        current: None,
        to: None,
        gates: gates(&probe.vars),
        action: String::new(),
        problem: None,
    };
    plan.to = match change {
        Change::Deploy(artifact) => Some(artifact.release.clone()),
        Change::RollbackTo(to) => Some(to.clone()),
        Change::Rollback => None,
    };
    if let Some(error) = &probe.error {
        plan.action = "unknown".into();
        plan.problem = Some(format!("cannot ask the host: {error}"));
        return plan;
    }
    let status = probe.status.clone().unwrap_or(Value::Null);
    plan.current = live_release(&status);
    let installed = installed(&status);
    if let Some(lock) = status.get("lock").filter(|l| !l.is_null()) {
        plan.problem = Some(format!(
            "locked by {} ({}): the run would be refused here",
            text(lock, "actor").unwrap_or_else(|| "?".into()),
            text(lock, "command").unwrap_or_else(|| "?".into())
        ));
    }
    let problem = |plan: &mut HostPlan, why: String| {
        plan.problem.get_or_insert(why);
    };
    match change {
        Change::Deploy(artifact) => {
            plan.to = Some(artifact.release.clone());
            let upload = if installed.contains(&artifact.release) {
                "activate (installed already)"
            } else {
                "upload, install, activate"
            };
            plan.action = if plan.current.as_deref() == Some(artifact.release.as_str()) {
                "none: already live".into()
            } else {
                upload.into()
            };
        }
        Change::Rollback => {
            let lkg = text(&status, "last_known_good");
            let previous = text(&status, "previous_known_good");
            plan.to = match (&lkg, &previous) {
                (Some(good), _) if plan.current.as_ref() != Some(good) => Some(good.clone()),
                (_, Some(previous)) => Some(previous.clone()),
                _ => None,
            };
            match &plan.to {
                Some(_) => plan.action = "rollback".into(),
                None => {
                    plan.action = "none".into();
                    problem(
                        &mut plan,
                        "no earlier known-good release is recorded".into(),
                    );
                }
            }
        }
        Change::RollbackTo(to) => {
            plan.to = Some(to.clone());
            if plan.current.as_deref() == Some(to.as_str()) {
                plan.action = "none: already live".into();
            } else if installed.contains(to) {
                plan.action = "activate".into();
            } else {
                plan.action = "none".into();
                problem(&mut plan, not_installed(to, &installed));
            }
        }
    }
    plan
}

fn not_installed(release: &str, installed: &[String]) -> String {
    let mut installed = installed.to_vec();
    installed.sort();
    format!(
        "{release} is not installed (installed: {})",
        if installed.is_empty() {
            "none".to_string()
        } else {
            installed.join(", ")
        }
    )
}

/// The hosts that lack installed release `to`, each with why (or that cannot be asked).
pub fn hosts_without(hosts: &[Host], env: &[(String, String)], to: &str) -> Vec<String> {
    let probes = per_host(hosts, |host| probe(host, env));
    hosts
        .iter()
        .zip(probes)
        .filter_map(|(host, probe)| {
            let plan = plan_host(host, &Change::RollbackTo(to.to_string()), &probe);
            let blocked = probe.error.is_some()
                || !probe
                    .status
                    .as_ref()
                    .map(installed)
                    .unwrap_or_default()
                    .iter()
                    .any(|r| r == to);
            blocked.then(|| format!("{}: {}", host.name, plan.problem.unwrap_or_default()))
        })
        .collect()
}

/// The whole plan as text, and whether it has no problem.
pub fn render(
    options: &Options,
    source: &Source,
    change: &Change,
    plans: &[HostPlan],
) -> (String, bool) {
    let mut ok = plans.iter().all(|p| p.problem.is_none());
    let command = match change {
        Change::Deploy(_) => "deploy",
        _ => "rollback",
    };
    let source = match source {
        Source::Ansible(path) => format!("Ansible inventory {}", path.display()),
        Source::Terraform(dir) => format!("terraform output of {}", dir.display()),
    };
    let mut out = format!(
        "{command} of `{}`: dry run, nothing was changed\nhosts: {} from {source}\n",
        options.env,
        plans.len()
    );
    match change {
        Change::Deploy(artifact) => {
            out.push_str(&format!(
                "artifact: {} (sha256 {})\nrelease: {}\n",
                artifact.path.display(),
                artifact.sha256,
                artifact.release
            ));
            match &artifact.signature {
                Some(path) => out.push_str(&format!("signature: {}\n", path.display())),
                None => out.push_str(
                    "signature: none (hosts that pin a release key will refuse the artifact)\n",
                ),
            }
            if artifact.published != artifact.sha256 {
                ok = false;
                out.push_str(&format!(
                    "PROBLEM: its .sha256 publishes {}: the deploy would refuse it\n",
                    artifact.published
                ));
            }
        }
        Change::Rollback => out.push_str("to: each host's previous known-good release\n"),
        Change::RollbackTo(to) => out.push_str(&format!("to: {to} on every host\n")),
    }
    let batches: Vec<String> = plans
        .chunks(options.batch)
        .enumerate()
        .map(|(i, batch)| {
            let names: Vec<&str> = batch.iter().map(|p| p.name.as_str()).collect();
            format!("{}) {}", i + 1, names.join(", "))
        })
        .collect();
    out.push_str(&format!(
        "batches of {}: {}\n",
        options.batch,
        batches.join("  ")
    ));
    let uniform = plans.windows(2).all(|w| w[0].gates == w[1].gates);
    if let (true, Some(first)) = (uniform, plans.first()) {
        out.push_str(&format!("gates: {}\n", first.gates));
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = plans
        .iter()
        .map(|p| {
            let mut row = vec![
                p.name.clone(),
                p.address.clone(),
                format!(
                    "{} → {}",
                    p.current.as_deref().unwrap_or("-"),
                    p.to.as_deref().unwrap_or("-")
                ),
                p.action.clone(),
            ];
            if !uniform {
                row.push(p.gates.clone());
            }
            row.push(
                p.problem
                    .as_deref()
                    .map(|e| format!("PROBLEM: {e}"))
                    .unwrap_or_default(),
            );
            row
        })
        .collect();
    let mut headers = vec!["HOST", "ADDRESS", "CURRENT → NEW", "WOULD DO"];
    if !uniform {
        headers.push("GATES");
    }
    headers.push("NOTE");
    out.push_str(&table::render(&headers, &rows));
    (out, ok)
}

/// Asks every host, prints the plan; exit status 0 when nothing stands in the way, else 1.
pub fn run(
    options: &Options,
    source: &Source,
    hosts: &[Host],
    env: &[(String, String)],
    change: Change,
) -> Result<i32> {
    let probes = per_host(hosts, |host| probe(host, env));
    let plans: Vec<HostPlan> = hosts
        .iter()
        .zip(&probes)
        .map(|(host, probe)| plan_host(host, &change, probe))
        .collect();
    let (text, ok) = render(options, source, &change, &plans);
    print!("{text}");
    Ok(if ok { 0 } else { 1 })
}

/// The release name the hosts will give the artifact: its top directory less `ddms-` and
/// `-<arch>-linux` (as `ddms release install` names it). A cargo-dist archive names only its
/// target; the binary's version decides, which `--version` states, if given.
pub fn release_of(sh: &Shell, tarball: &Path, version: Option<&str>) -> String {
    let listing = cmd!(sh, "tar -tzf {tarball}").quiet().read();
    let top = listing
        .ok()
        .and_then(|l| l.lines().next().map(|first| first.to_string()))
        .map(|first| first.split('/').next().unwrap_or_default().to_string())
        .unwrap_or_default();
    release_name(&top, version)
}

pub fn release_name(top: &str, version: Option<&str>) -> String {
    let name = top.strip_prefix("ddms-").unwrap_or(top);
    let parts: Vec<&str> = name.split('-').collect();
    if matches!(parts.as_slice(), [_, "unknown", "linux", "gnu" | "musl"]) {
        return version
            .map(str::to_string)
            .unwrap_or_else(|| "(the binary's version, named at install)".into());
    }
    let suffix = format!("-{}-linux", std::env::consts::ARCH);
    name.strip_suffix(&suffix).unwrap_or(name).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn host(name: &str) -> Host {
        Host {
            name: name.into(),
            address: format!("192.0.2.{}", name.len()),
            port: 22,
            user: None,
            key: None,
            ssh_args: Vec::new(),
        }
    }

    fn status(live: &str, releases: &[&str], lkg: &str, previous: Option<&str>) -> Value {
        json!({
            "slots": {
                "blue": {"release": live, "active": true},
                "green": {"release": previous, "active": false},
            },
            "releases": releases,
            "last_known_good": lkg,
            "previous_known_good": previous,
            "lock": null,
        })
    }

    fn probe(status: Value) -> Probe {
        Probe {
            vars: BTreeMap::new(),
            status: Some(status),
            error: None,
        }
    }

    fn artifact(release: &str, published: &str) -> Change {
        Change::Deploy(Artifact {
            path: "target/dist/ddms-0.2.0-x86_64-linux.tar.gz".into(),
            release: release.into(),
            sha256: "ab".into(),
            published: published.into(),
            signature: None,
        })
    }

    #[test]
    fn the_probe_output_parses_into_vars_and_status() {
        let out = "motd\n@@vars\nDDMS_RELEASE_WATCH=5\nDDMS_RELEASE_ACTOR=ci\n@@status\n{\n  \"slots\": {}\n}\n";
        let p = parse_probe(out).unwrap();
        assert_eq!(p.vars["DDMS_RELEASE_WATCH"], "5");
        assert_eq!(p.status, Some(json!({"slots": {}})));
        assert_eq!(
            parse_probe("@@vars\n@@status\n@@none\n").unwrap().status,
            None
        );
        assert!(parse_probe("@@vars\n@@status\nnot json").is_err());
        assert!(parse_probe("nothing").is_err());
        // The script itself is valid shell.
        let sh = std::process::Command::new("sh")
            .args(["-n", "-c", &probe_script()])
            .status()
            .unwrap();
        assert!(sh.success());
    }

    #[test]
    fn gates_show_the_hosts_values_over_the_defaults() {
        let mut vars = BTreeMap::new();
        vars.insert("DDMS_RELEASE_WATCH".to_string(), "5".to_string());
        assert_eq!(
            gates(&vars),
            "ready 60s, watch 5s, drain 40s, migrate 600s, lock 60s, max 5xx ratio 0.01"
        );
    }

    #[test]
    fn deploy_plan_per_host_current_to_new_and_what_it_would_do() {
        let change = artifact("0.2.0", "ab");
        let fresh = plan_host(
            &host("a"),
            &change,
            &probe(status("0.1.0", &["0.1.0"], "0.1.0", None)),
        );
        assert_eq!(
            (
                fresh.current.as_deref(),
                fresh.to.as_deref(),
                fresh.action.as_str()
            ),
            (Some("0.1.0"), Some("0.2.0"), "upload, install, activate")
        );
        assert_eq!(fresh.problem, None);
        let live = plan_host(
            &host("b"),
            &change,
            &probe(status("0.2.0", &["0.1.0", "0.2.0"], "0.2.0", Some("0.1.0"))),
        );
        assert_eq!(live.action, "none: already live");
        let mut locked = status("0.1.0", &["0.1.0"], "0.1.0", None);
        locked["lock"] = json!({"actor": "alice", "command": "activate 0.3.0"});
        let locked = plan_host(&host("c"), &change, &probe(locked));
        assert_eq!(
            locked.problem.as_deref(),
            Some("locked by alice (activate 0.3.0): the run would be refused here")
        );
        let first = plan_host(&host("d"), &change, &Probe::default());
        assert_eq!((first.current, first.problem), (None, None));
        let down = plan_host(
            &host("e"),
            &change,
            &Probe {
                error: Some("ssh failed: timeout".into()),
                ..Probe::default()
            },
        );
        assert_eq!(
            (
                down.current.as_deref(),
                down.to.as_deref(),
                down.action.as_str()
            ),
            (None, Some("0.2.0"), "unknown")
        );
        assert!(down.problem.unwrap().contains("ssh failed"));
    }

    #[test]
    fn rollback_plans_name_each_hosts_target() {
        // Live is the last known good: back to the one before it.
        let p = plan_host(
            &host("a"),
            &Change::Rollback,
            &probe(status("0.2.0", &["0.1.0", "0.2.0"], "0.2.0", Some("0.1.0"))),
        );
        assert_eq!(
            (p.current.as_deref(), p.to.as_deref()),
            (Some("0.2.0"), Some("0.1.0"))
        );
        // A deploy that never passed its watch: back to the last known good.
        let p = plan_host(
            &host("a"),
            &Change::Rollback,
            &probe(status("0.3.0", &["0.2.0", "0.3.0"], "0.2.0", Some("0.1.0"))),
        );
        assert_eq!(p.to.as_deref(), Some("0.2.0"));
        let p = plan_host(
            &host("a"),
            &Change::Rollback,
            &probe(status("0.1.0", &["0.1.0"], "0.1.0", None)),
        );
        assert_eq!(
            p.problem.as_deref(),
            Some("no earlier known-good release is recorded")
        );

        let to = Change::RollbackTo("0.1.0".into());
        let p = plan_host(
            &host("a"),
            &to,
            &probe(status("0.3.0", &["0.1.0", "0.3.0"], "0.3.0", Some("0.2.0"))),
        );
        assert_eq!((p.action.as_str(), p.problem), ("activate", None));
        let p = plan_host(
            &host("b"),
            &to,
            &probe(status("0.3.0", &["0.2.0", "0.3.0"], "0.3.0", None)),
        );
        assert_eq!(
            p.problem.as_deref(),
            Some("0.1.0 is not installed (installed: 0.2.0, 0.3.0)")
        );
    }

    #[test]
    fn the_rendered_plan_shows_hosts_batches_gates_and_problems() {
        let options = Options {
            env: "staging".into(),
            batch: 2,
            ..Options::default()
        };
        let change = artifact("0.2.0", "cd");
        let plans: Vec<HostPlan> = ["web1", "web2", "web3"]
            .iter()
            .map(|n| {
                plan_host(
                    &host(n),
                    &change,
                    &probe(status("0.1.0", &["0.1.0"], "0.1.0", None)),
                )
            })
            .collect();
        let (text, ok) = render(
            &options,
            &Source::Ansible("inv/hosts.yml".into()),
            &change,
            &plans,
        );
        assert!(!ok, "a checksum mismatch is a problem");
        for line in [
            "deploy of `staging`: dry run, nothing was changed",
            "hosts: 3 from Ansible inventory inv/hosts.yml",
            "release: 0.2.0",
            "PROBLEM: its .sha256 publishes cd: the deploy would refuse it",
            "batches of 2: 1) web1, web2  2) web3",
            "gates: ready 60s, watch 30s, drain 40s, migrate 600s, lock 60s, max 5xx ratio 0.01",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
        let row = text.lines().find(|l| l.starts_with("web3")).unwrap();
        assert!(
            row.contains("0.1.0 → 0.2.0") && row.contains("upload, install, activate"),
            "{row}"
        );
        let (_, ok) = render(
            &options,
            &Source::Ansible("i".into()),
            &artifact("0.2.0", "ab"),
            &plans,
        );
        assert!(ok);
    }

    #[test]
    fn release_names_follow_the_hosts_rule() {
        let arch = std::env::consts::ARCH;
        assert_eq!(
            release_name(&format!("ddms-0.2.0-{arch}-linux"), None),
            "0.2.0"
        );
        assert_eq!(
            release_name("ddms-x86_64-unknown-linux-gnu", Some("0.3.0")),
            "0.3.0"
        );
        assert!(release_name("ddms-x86_64-unknown-linux-gnu", None).contains("named at install"));
    }
}
