//! `cargo xtask deploy | rollback | status | history | provision`: the fleet side of a
//! release. Hosts come from the environment's inventory (`inventory.rs`); each host is driven
//! over system OpenSSH (`ssh.rs`) through its own `ddms release` state machine, which does the
//! blue-green work. This module only orders hosts, undoes what a failed run switched, and
//! reports (`report.rs`, `table.rs`); `plan.rs` is the dry run, `history.rs` the fleet's
//! deploy records.

mod artifact;
mod fleet;
pub mod history;
#[cfg(test)]
mod install_test;
pub mod inventory;
mod plan;
mod provision;
pub mod report;
mod rollback;
mod ssh;
mod table;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use xshell::{cmd, Shell};

use artifact::{artifact, artifact_file_name, sha256_file};
use inventory::Host;
pub use provision::provision;
use report::{HostReport, Report, Step};
pub use rollback::rollback;

/// Options shared by the fleet commands.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub env: String,
    pub inventory: Option<PathBuf>,
    /// Only these inventory hosts (`--hosts`/`--limit`); all of group `ddms` when empty.
    pub hosts: Vec<String>,
    pub version: Option<String>,
    pub artifact: Option<PathBuf>,
    pub batch: usize,
    pub report: Option<PathBuf>,
    /// deploy, rollback: print the plan, change nothing.
    pub dry_run: bool,
    /// rollback: this installed release instead of each host's previous known-good one.
    pub to: Option<String>,
    /// provision: pass `-auto-approve` to `terraform apply`.
    pub auto_approve: bool,
    /// provision: extra arguments for ansible-playbook (after `--`).
    pub playbook_args: Vec<String>,
    /// provision: `terraform output -json` from this file instead of running terraform.
    pub from_output: Option<PathBuf>,
    /// provision: where the inventory is written (default ansible/inventories/ENV).
    pub out: Option<PathBuf>,
    /// provision: seconds to wait for ssh and cloud-init on every host, in all.
    pub cloud_init_timeout: u64,
}

/// What the command line cannot say on its own: the environment name is a path part.
pub fn validate(options: &Options) -> Result<()> {
    ensure!(
        !options.env.is_empty()
            && options
                .env
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_')),
        "--env may only hold letters, digits, '-' and '_'"
    );
    ensure!(options.batch >= 1, "--batch must be at least 1");
    for name in &options.hosts {
        ensure!(!name.trim().is_empty(), "--hosts: an empty host name");
    }
    Ok(())
}

/// A release name as `ddms release` accepts it.
pub fn valid_release_name(name: &str) -> bool {
    name.len() <= 128 && !name.contains("..") && ssh::valid_artifact_name(name)
}

fn hosts(sh: &Shell, options: &Options) -> Result<(Vec<Host>, inventory::Source)> {
    let (all, source) = inventory::resolve(
        &crate::project_root(),
        &options.env,
        options.inventory.as_deref(),
        &inventory::ansible_inventory_list,
        |dir| {
            cmd!(sh, "terraform -chdir={dir} output -json")
                .quiet()
                .read()
                .context("terraform output -json")
        },
    )?;
    Ok((select(all, &options.hosts)?, source))
}

/// The inventory's hosts that `wanted` names (all when it is empty), in inventory order. A
/// name the inventory lacks is an error listing those it has: a typo must not shrink a deploy
/// silently.
pub fn select(all: Vec<Host>, wanted: &[String]) -> Result<Vec<Host>> {
    if wanted.is_empty() {
        return Ok(all);
    }
    let unknown: Vec<&str> = wanted
        .iter()
        .map(|w| w.trim())
        .filter(|w| !all.iter().any(|h| h.name == *w))
        .collect();
    ensure!(
        unknown.is_empty(),
        "--hosts: {} not in group `{}` of the inventory (it has: {})",
        unknown.join(", "),
        inventory::GROUP,
        all.iter()
            .map(|h| h.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(all
        .into_iter()
        .filter(|h| wanted.iter().any(|w| w.trim() == h.name))
        .collect())
}

/// Who deploys, for the report and the hosts' records.
fn actor() -> String {
    ["DDMS_RELEASE_ACTOR", "GITHUB_ACTOR", "USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "unknown".into())
}

/// The environment every remote `ddms release` gets: our `DDMS_RELEASE_*` variables (gates,
/// ports, paths: how a test shortens the watch) and the actor. A name that is not
/// `[A-Z0-9_]+` or a value that is not UTF-8 is refused rather than dropped: the operator
/// meant it for the hosts.
fn remote_env(actor: &str) -> Result<Vec<(String, String)>> {
    forwarded_env(std::env::vars_os(), actor)
}

fn forwarded_env(
    vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
    actor: &str,
) -> Result<Vec<(String, String)>> {
    let mut env = Vec::new();
    for (key, value) in vars {
        let key = key.to_string_lossy().into_owned();
        if !key.starts_with("DDMS_RELEASE_") || key == "DDMS_RELEASE_ACTOR" {
            continue;
        }
        ensure!(
            ssh::valid_env_name(&key),
            "cannot forward environment variable `{}` to the hosts: names may only hold A-Z, \
             0-9 and '_'",
            key.escape_debug()
        );
        let value = value
            .into_string()
            .map_err(|_| anyhow::anyhow!("environment variable {key} is not UTF-8"))?;
        env.push((key, value));
    }
    env.sort();
    env.push(("DDMS_RELEASE_ACTOR".into(), actor.into()));
    Ok(env)
}

fn target_dir(sh: &Shell) -> Result<PathBuf> {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => crate::build::target_dir(sh),
    }
}

/// SIGINT, SIGTERM and SIGHUP set this to the signal's number; the run stops after the
/// current batch and rolls back what it switched.
fn watch_signals() -> Result<Arc<AtomicUsize>> {
    let caught = Arc::new(AtomicUsize::new(0));
    for signal in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register_usize(signal, caught.clone(), signal as usize)
            .context("install signal handler")?;
    }
    Ok(caught)
}

fn signal_name(number: usize) -> String {
    match number as i32 {
        signal_hook::consts::SIGINT => "SIGINT".into(),
        signal_hook::consts::SIGTERM => "SIGTERM".into(),
        signal_hook::consts::SIGHUP => "SIGHUP".into(),
        other => format!("signal {other}"),
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("formats")
}

fn file_stamp() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The release name a host's `ddms release install` printed (its JSON line's `release`): the
/// host decides it from the archive's contents (a cargo-dist archive's file name names only
/// the target), so it is never guessed from the file name here.
fn installed_release(stdout: &str) -> Option<String> {
    last_json(stdout)?
        .get("release")?
        .as_str()
        .filter(|r| !r.is_empty())
        .map(str::to_string)
}

/// The run's release: what the hosts' activation records or, failing those, their installs
/// named; `None` when no host got as far as installing it.
fn run_release(reports: &[HostReport]) -> Option<String> {
    let recorded = reports.iter().find_map(|r| {
        r.record
            .as_ref()?
            .get("release")?
            .as_str()
            .map(str::to_string)
    });
    recorded.or_else(|| reports.iter().find_map(|r| r.release.clone()))
}

/// The last line of `stdout` that is a JSON object (a record or status).
fn last_json(stdout: &str) -> Option<serde_json::Value> {
    stdout
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
        .find(serde_json::Value::is_object)
}

fn step(name: &str, outcome: &ssh::Outcome) -> Step {
    Step {
        name: name.into(),
        duration_ms: outcome.duration.as_millis() as u64,
        ok: outcome.ok(),
        detail: (!outcome.ok()).then(|| outcome.reason()),
    }
}

fn failed_step(name: &str, started: Instant, e: &anyhow::Error) -> Step {
    Step {
        name: name.into(),
        duration_ms: started.elapsed().as_millis() as u64,
        ok: false,
        detail: Some(format!("{e:#}")),
    }
}

/// Runs one remote step, recording it; false when it did not succeed.
fn remote_step(
    report: &mut HostReport,
    name: &str,
    f: impl FnOnce() -> Result<ssh::Outcome>,
) -> Option<ssh::Outcome> {
    let started = Instant::now();
    eprintln!("deploy: {}: {name} …", report.name);
    match f() {
        Ok(outcome) => {
            report.steps.push(step(name, &outcome));
            eprintln!(
                "deploy: {}: {name} {} ({:.1} s)",
                report.name,
                if outcome.ok() { "ok" } else { "FAILED" },
                outcome.duration.as_secs_f64()
            );
            Some(outcome)
        }
        Err(e) => {
            report.steps.push(failed_step(name, started, &e));
            report.error = Some(format!("{name}: {e:#}"));
            report.result = report::RunResult::Failed;
            None
        }
    }
}

/// Upload, install and activate on one host. `sha256` is the artifact's digest, checked here
/// against its published checksum: the host checks its private copy against it. `signature`
/// (`<tarball>.minisig`) goes along when there is one; a host that pins a release key checks
/// it, one that does not ignores it.
fn deploy_host(
    host: &Host,
    env: &[(String, String)],
    tarball: &Path,
    signature: Option<&Path>,
    sha256: &str,
) -> HostReport {
    let mut report = HostReport::new(&host.name, &host.address);
    let file_name = artifact_file_name(tarball).unwrap_or_default();
    let mut upload_dir = String::new();
    let upload = remote_step(&mut report, "upload", || {
        let mkdir = ssh::run_as(host, ssh::As::LoginUser, &[], &ssh::upload_dir_script())?;
        if !mkdir.ok() {
            return Ok(mkdir);
        }
        upload_dir = ssh::parse_upload_dir(&mkdir.stdout)?;
        let files: Vec<&Path> = std::iter::once(tarball).chain(signature).collect();
        let mut copy = ssh::upload(host, &files, &upload_dir)?;
        if !copy.ok() {
            // Best effort: a failed upload should not leave a partial artifact behind.
            let _ = ssh::run_as(
                host,
                ssh::As::LoginUser,
                &[],
                &ssh::remove_upload_dir_script(&upload_dir),
            );
        }
        copy.duration += mkdir.duration;
        Ok(copy)
    });
    let Some(upload) = upload else { return report };
    if !upload.ok() {
        report.result = report::RunResult::Aborted;
        report.error = Some(format!("upload: {}", upload.reason()));
        return report;
    }
    let Some(install) = remote_step(&mut report, "install", || {
        ssh::run(
            host,
            env,
            &ssh::install_script(&upload_dir, &file_name, sha256, signature.is_some()),
        )
    }) else {
        return report;
    };
    let release = installed_release(&install.stdout);
    let Some(release) = release.filter(|_| install.ok()) else {
        report.result = report::RunResult::Aborted;
        report.error = Some(format!("install refused: {}", install.reason()));
        return report;
    };
    report.release = Some(release.clone());
    let Some(activate) = remote_step(&mut report, "activate", || {
        ssh::run(host, env, &ssh::activate_script(&release))
    }) else {
        return report;
    };
    report.record = last_json(&activate.stdout);
    report.result = report::host_result(activate.code, report.record.as_ref());
    if report.result != report::RunResult::Ok {
        report.error = Some(
            report
                .record
                .as_ref()
                .and_then(|r| r.get("error"))
                .and_then(|e| e.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| activate.reason()),
        );
    }
    report
}

/// `ddms release rollback` on one host, into `report`.
fn rollback_host(host: &Host, env: &[(String, String)], report: &mut HostReport) -> bool {
    let Some(outcome) = remote_step(report, "rollback", || {
        ssh::run(host, env, &ssh::rollback_script())
    }) else {
        return false;
    };
    let record = last_json(&outcome.stdout);
    let ok = report::host_result(outcome.code, record.as_ref()) == report::RunResult::Ok;
    if !ok {
        report.error = Some(format!(
            "rollback failed: {}",
            record
                .as_ref()
                .and_then(|r| r.get("error"))
                .and_then(|e| e.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| outcome.reason())
        ));
    }
    report.rollback_record = record;
    ok
}

/// `deploy: batch 1/3: web1, web2`
fn progress_batch(command: &str, index: usize, batches: usize, batch: &[Host]) {
    let names: Vec<&str> = batch.iter().map(|h| h.name.as_str()).collect();
    eprintln!(
        "{command}: batch {}/{batches}: {}",
        index + 1,
        names.join(", ")
    );
}

/// `deploy: web1: ok, 0.1.0 → 0.2.0 (41.2 s)` when a host is done.
fn progress_host(command: &str, report: &HostReport) {
    let row = table::host_row(report);
    let ms: u64 = report.steps.iter().map(|s| s.duration_ms).sum();
    eprintln!(
        "{command}: {}: {}, {} → {} ({:.1} s){}",
        report.name,
        row.result,
        row.from,
        row.to,
        ms as f64 / 1000.0,
        report
            .error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    );
}

/// Runs `f` for every host of `batch` at once, in threads; results in host order.
fn per_host<T: Send>(batch: &[Host], f: impl Fn(&Host) -> T + Sync) -> Vec<T> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = batch.iter().map(|host| scope.spawn(|| f(host))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("host thread panicked"))
            .collect()
    })
}

/// `cargo xtask deploy`: returns the exit status (0 ok, 3 refused, 1 otherwise).
pub fn deploy(sh: &Shell, options: &Options) -> Result<i32> {
    let caught = watch_signals()?;
    let started_at = now_rfc3339();
    let started = Instant::now();
    let (hosts, source) = hosts(sh, options)?;
    let (tarball, checksum, signature) = artifact(sh, options)?;
    let digest = sha256_file(&tarball)?;
    let published = std::fs::read_to_string(&checksum)?
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_lowercase();
    let actor = actor();
    let env = remote_env(&actor)?;
    if options.dry_run {
        let artifact = plan::Artifact {
            path: tarball.clone(),
            release: plan::release_of(sh, &tarball, options.version.as_deref()),
            sha256: digest.clone(),
            published: published.clone(),
            signature: signature.clone(),
        };
        return plan::run(
            options,
            &source,
            &hosts,
            &env,
            plan::Change::Deploy(artifact),
        );
    }
    let mut reports: Vec<HostReport> = hosts
        .iter()
        .map(|h| HostReport::new(&h.name, &h.address))
        .collect();
    let mut error = None;
    if signature.is_none() {
        eprintln!(
            "deploy: {} has no .minisig beside it: hosts that pin a release key will refuse it",
            tarball.display()
        );
    }
    eprintln!(
        "deploy: {} to {} host(s) of `{}` in batches of {}",
        tarball.display(),
        hosts.len(),
        options.env,
        options.batch
    );
    if published != digest {
        // Never ship what does not match its published checksum; the hosts would refuse it too.
        error = Some(format!(
            "{} has sha256 {digest}, but {} publishes {published}: refusing to deploy it",
            tarball.display(),
            checksum.display()
        ));
    } else {
        let mut failed = false;
        let batches = hosts.len().div_ceil(options.batch);
        for (index, batch) in hosts.chunks(options.batch).enumerate() {
            if caught.load(Ordering::SeqCst) != 0 {
                break;
            }
            progress_batch("deploy", index, batches, batch);
            let done = per_host(batch, |host| {
                let report = deploy_host(host, &env, &tarball, signature.as_deref(), &digest);
                progress_host("deploy", &report);
                report
            });
            let first = index * options.batch;
            for (offset, report) in done.into_iter().enumerate() {
                failed |= report.result != report::RunResult::Ok;
                reports[first + offset] = report;
            }
            if failed {
                break;
            }
        }
        let interrupted = caught.load(Ordering::SeqCst) != 0;
        if failed || interrupted {
            // Undo what this run switched, newest first.
            let failing: Vec<String> = reports
                .iter()
                .filter(|r| !matches!(r.result, report::RunResult::Ok | report::RunResult::Skipped))
                .map(|r| r.name.clone())
                .collect();
            let why = if interrupted {
                format!(
                    "interrupted by {}",
                    signal_name(caught.load(Ordering::SeqCst))
                )
            } else {
                format!("{} failed", failing.join(", "))
            };
            for (host, report) in hosts.iter().zip(reports.iter_mut()).rev() {
                if !report.switched() {
                    continue;
                }
                eprintln!("deploy: {}: rolling back ({why})", host.name);
                if rollback_host(host, &env, report) {
                    report.result = report::RunResult::RolledBack;
                    report.error = Some(format!("rolled back: {why}"));
                } else {
                    report.result = report::RunResult::Failed;
                }
            }
        }
    }
    let signal = caught.load(Ordering::SeqCst);
    let interrupted_by = (signal != 0).then(|| signal_name(signal));
    let result = if error.is_some() {
        report::RunResult::Aborted
    } else {
        report::overall(&reports, interrupted_by.is_some())
    };
    let error = error.or_else(|| {
        let summary = report::summary(&reports);
        match (&interrupted_by, summary) {
            (Some(signal), Some(s)) => Some(format!("interrupted by {signal}; {s}")),
            (Some(signal), None) => Some(format!("interrupted by {signal}")),
            (None, summary) => summary,
        }
    });
    let release = run_release(&reports);
    let report = Report {
        command: "deploy".into(),
        env: options.env.clone(),
        actor,
        inventory: serde_json::to_value(&source)?,
        release,
        artifact: Some(tarball.display().to_string()),
        artifact_sha256: Some(digest),
        batch: options.batch,
        started_at,
        finished_at: now_rfc3339(),
        duration_ms: started.elapsed().as_millis() as u64,
        result,
        interrupted_by,
        error,
        hosts: reports,
    };
    finish(sh, options, &report)
}

/// Writes the JSON report (`--report`, else `<target>/deploy/<env>-<command>-<time>.json`),
/// prints the summary table, and gives the exit status.
fn finish(sh: &Shell, options: &Options, report: &Report) -> Result<i32> {
    let path = match &options.report {
        Some(path) => path.clone(),
        None => target_dir(sh)?.join("deploy").join(format!(
            "{}-{}-{}.json",
            options.env,
            report.command,
            file_stamp()
        )),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(&path, format!("{json}\n"))
        .with_context(|| format!("write report {}", path.display()))?;
    print!("{}", table::summary(report));
    let result = serde_json::to_value(report.result)?;
    eprintln!(
        "{}: {} — report {}",
        report.command,
        result.as_str().unwrap_or("?"),
        path.display()
    );
    Ok(report::exit_code(report.result))
}

/// Why a host's `ddms release status` is not "exactly one active slot, running and ready".
pub fn status_problem(status: &serde_json::Value) -> Option<String> {
    let Some(slots) = status.get("slots").and_then(|s| s.as_object()) else {
        return Some("no slots in the status".into());
    };
    let active: Vec<(&String, &serde_json::Value)> = slots
        .iter()
        .filter(|(_, s)| s.get("active").and_then(|a| a.as_bool()) == Some(true))
        .collect();
    let [(name, slot)] = active.as_slice() else {
        return Some(format!("{} active slots", active.len()));
    };
    let flag = |key: &str| slot.get(key).and_then(|v| v.as_bool()) == Some(true);
    if !flag("running") {
        return Some(format!("active slot {name} is not running"));
    }
    if !flag("ready") {
        let health = slot.get("health").and_then(|h| h.as_str()).unwrap_or("?");
        return Some(format!("active slot {name} is not ready: {health}"));
    }
    None
}

/// `cargo xtask status`: every host's `ddms release status`; exit 1 unless each host has
/// exactly one active slot that runs and is ready.
pub fn status(sh: &Shell, options: &Options) -> Result<i32> {
    let (hosts, source) = hosts(sh, options)?;
    let results = per_host(&hosts, |host| ssh::run(host, &[], &ssh::status_script()));
    let mut all_ok = true;
    let mut entries = Vec::new();
    for (host, result) in hosts.iter().zip(results) {
        let (status, problem) = match result {
            Ok(out) => match serde_json::from_str::<serde_json::Value>(&out.stdout) {
                Ok(status) if out.ok() => {
                    let problem = status_problem(&status);
                    (Some(status), problem)
                }
                _ => (None, Some(out.reason())),
            },
            Err(e) => (None, Some(format!("{e:#}"))),
        };
        all_ok &= problem.is_none();
        entries.push(serde_json::json!({
            "name": host.name,
            "address": host.address,
            "ok": problem.is_none(),
            "problem": problem,
            "status": status,
        }));
    }
    let out = serde_json::json!({
        "env": options.env,
        "inventory": source,
        "ok": all_ok,
        "hosts": entries,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(if all_ok { 0 } else { 1 })
}

#[cfg(test)]
mod database_role_tests;
#[cfg(test)]
mod tests;
