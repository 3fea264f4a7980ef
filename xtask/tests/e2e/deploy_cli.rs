//! The operator side of `cargo xtask deploy` end to end, on a provisioned fleet (two hosts + a
//! database host, `fleet.rs`): `--dry-run` changes nothing and shows each host's current → new
//! release, `--hosts`/`--limit` deploy a subset, `history` lists the hosts' own records newest
//! first, `rollback --to` moves every host to a chosen installed release (and refuses one that
//! is not installed everywhere, before any host moves). Scenario after scenario, as in
//! `deploy.rs`; they build on each other, so the first failure stops the rest.

use std::process::{Output, Stdio};
use std::time::SystemTime;

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use crate::fleet::{parse_rfc3339, say, Fleet, HOSTS};
use crate::support::release::{release_tarball, Kind};

/// Short gates, as in `deploy.rs`.
const FAST: [(&str, &str); 3] = [
    ("DDMS_RELEASE_WATCH", "3"),
    ("DDMS_RELEASE_READY_TIMEOUT", "30"),
    ("DDMS_RELEASE_DRAIN_TIMEOUT", "15"),
];

#[test]
fn deploy_cli_container_dry_run_hosts_history_rollback_to() -> Result<()> {
    let _exclusive = crate::support::one_cluster_at_a_time();
    let xtask = std::path::PathBuf::from(env!("CARGO_BIN_EXE_xtask"));
    let fleet = Fleet::provision("ddms-e2e-cli", &xtask, "v1")?;
    let v2 = release_tarball(fleet.cluster.dir(), "v2", Kind::Good)?;
    let v2 = v2.tarball.display().to_string();

    say("── dry run: the plan, and nothing changes");
    let out = run_xtask(
        &fleet,
        "deploy",
        &["--artifact", &v2, "--dry-run", "--batch", "2"],
    )?;
    let text = stdout(&out);
    ensure!(
        out.status.success(),
        "dry run exited {:?}:\n{text}{}",
        out.status,
        stderr(&out)
    );
    for host in HOSTS {
        let row = row(&text, host)?;
        ensure!(
            row.contains("v1 → v2") && row.contains("upload, install, activate"),
            "{host}: {row}"
        );
    }
    for line in ["release: v2", "batches of 2: 1) ddms1, ddms2"] {
        ensure!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
    }
    // The forwarded gates over the host's release.env (lock 15 s from the inventory).
    let gates = "gates: ready 30s, watch 3s, drain 15s, migrate 600s, lock 15s, max 5xx ratio ";
    ensure!(
        text.lines().any(|l| l.starts_with(gates)),
        "no `{gates}…` in:\n{text}"
    );
    for host in HOSTS {
        let (live, installed) = live_and_installed(&fleet, host)?;
        ensure!(
            live == "v1" && !installed.contains(&"v2".to_string()),
            "{host} after a dry run: live {live}, installed {installed:?}"
        );
    }

    say("── --hosts: one host, then --limit the other");
    let out = run_xtask(&fleet, "deploy", &["--artifact", &v2, "--hosts", "ddms9"])?;
    ensure!(
        !out.status.success()
            && stderr(&out).contains(
                "--hosts: ddms9 not in group `ddms` of the inventory (it has: ddms1, ddms2)"
            ),
        "an unknown host: {:?} {}",
        out.status,
        stderr(&out)
    );
    let (code, report) = fleet.deploy(&["--artifact", &v2, "--hosts", "ddms1"], &FAST)?;
    ensure!(
        code == 0 && report["result"] == "ok",
        "exit {code}: {report}"
    );
    let names: Vec<&str> = report["hosts"]
        .as_array()
        .context("hosts")?
        .iter()
        .filter_map(|h| h["name"].as_str())
        .collect();
    ensure!(names == ["ddms1"], "report hosts {names:?}");
    ensure!(
        live_and_installed(&fleet, "ddms1")?.0 == "v2",
        "ddms1 not on v2"
    );
    ensure!(
        live_and_installed(&fleet, "ddms2")?.0 == "v1",
        "ddms2 was touched"
    );
    let (code, report) = fleet.deploy(&["--artifact", &v2, "--limit", "ddms2"], &FAST)?;
    ensure!(
        code == 0 && report["result"] == "ok",
        "exit {code}: {report}"
    );
    ensure!(
        live_and_installed(&fleet, "ddms2")?.0 == "v2",
        "ddms2 not on v2"
    );

    say("── history: the hosts' records, newest first");
    let records = history(&fleet)?;
    let first: Vec<(String, String, String)> = records
        .iter()
        .take(2)
        .map(|r| {
            (
                field(r, "inventory_host"),
                field(r, "from_release"),
                field(r, "release"),
            )
        })
        .collect();
    ensure!(
        first
            == [
                ("ddms2".into(), "v1".into(), "v2".into()),
                ("ddms1".into(), "v1".into(), "v2".into())
            ],
        "newest records: {first:?}"
    );
    // The first activation (by the provisioning playbook) is there too, oldest.
    for host in HOSTS {
        ensure!(
            records
                .iter()
                .any(|r| field(r, "inventory_host") == host && field(r, "release") == "v1"),
            "{host}'s provisioning record is missing: {records:?}"
        );
    }
    let out = run_xtask(&fleet, "history", &[])?;
    let table = stdout(&out);
    ensure!(out.status.success(), "history: {}", stderr(&out));
    ensure!(
        table
            .lines()
            .next()
            .is_some_and(|l| l.starts_with("STARTED (UTC)"))
            && table.lines().count() == records.len() + 1
            && table
                .lines()
                .nth(1)
                .is_some_and(|l| l.contains("ddms2") && l.contains("v1 → v2")),
        "history table:\n{table}"
    );

    say("── rollback --to: refused when not installed everywhere, else every host moves");
    let out = run_xtask(&fleet, "rollback", &["--to", "v9"])?;
    ensure!(
        !out.status.success()
            && stderr(&out).contains("ddms1: v9 is not installed (installed: v1, v2)")
            && stderr(&out).contains("nothing was changed"),
        "rollback --to v9: {:?} {}",
        out.status,
        stderr(&out)
    );
    let out = run_xtask(&fleet, "rollback", &["--to", "v1", "--dry-run"])?;
    ensure!(
        out.status.success(),
        "dry run: {}{}",
        stdout(&out),
        stderr(&out)
    );
    for host in HOSTS {
        let row = row(&stdout(&out), host)?;
        ensure!(
            row.contains("v2 → v1") && row.contains("activate"),
            "{host}: {row}"
        );
        ensure!(
            live_and_installed(&fleet, host)?.0 == "v2",
            "{host} moved in a dry run"
        );
    }
    let before = SystemTime::now();
    let out = xtask_env(&fleet, "rollback", &["--to", "v1"], &FAST)?;
    ensure!(
        out.status.success(),
        "rollback --to v1: {:?}\n{}{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    // The summary table: one row per host, where it came from and went.
    let summary = stdout(&out);
    for host in HOSTS {
        let row = row(&summary, host)?;
        let cells: Vec<&str> = row.split_whitespace().take(4).collect();
        ensure!(cells == [host, "ok", "v2", "v1"], "{host}: {row}");
        ensure!(
            live_and_installed(&fleet, host)?.0 == "v1",
            "{host} not on v1"
        );
    }
    let records = history(&fleet)?;
    for record in records.iter().take(2) {
        ensure!(
            field(record, "release") == "v1"
                && field(record, "from_release") == "v2"
                && field(record, "result") == "ok"
                && parse_rfc3339(&field(record, "started_at"))?
                    >= before - std::time::Duration::from_secs(5),
            "newest record: {record}"
        );
    }
    say("PASS deploy CLI: dry run, --hosts/--limit, history, rollback --to");
    Ok(())
}

fn run_xtask(fleet: &Fleet, task: &str, args: &[&str]) -> Result<Output> {
    xtask_env(fleet, task, args, &FAST)
}

fn xtask_env(fleet: &Fleet, task: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Output> {
    let mut cmd = fleet.xtask_command(task, env);
    cmd.args(args).stdin(Stdio::null());
    if task == "rollback" && !args.contains(&"--dry-run") {
        cmd.arg("--report")
            .arg(fleet.cluster.dir().join("rollback-report.json"));
    }
    Ok(cmd.output()?)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The table row of `host`.
fn row(table: &str, host: &str) -> Result<String> {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(host))
        .map(str::to_string)
        .with_context(|| format!("no row for {host} in:\n{table}"))
}

fn field(record: &Value, key: &str) -> String {
    record[key].as_str().unwrap_or_default().to_string()
}

/// `cargo xtask history --json`, checked to be newest first.
fn history(fleet: &Fleet) -> Result<Vec<Value>> {
    let out = run_xtask(fleet, "history", &["--json"])?;
    ensure!(out.status.success(), "history: {}", stderr(&out));
    let records: Vec<Value> = stdout(&out)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let times: Vec<SystemTime> = records
        .iter()
        .map(|r| parse_rfc3339(&field(r, "started_at")))
        .collect::<Result<_>>()?;
    ensure!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "history is not newest first: {records:?}"
    );
    Ok(records)
}

/// The release `host`'s active slot runs and the releases installed there, by `cargo xtask
/// status`.
fn live_and_installed(fleet: &Fleet, host: &str) -> Result<(String, Vec<String>)> {
    let (_, status) = fleet.status()?;
    let entry = status["hosts"]
        .as_array()
        .context("hosts")?
        .iter()
        .find(|h| h["name"] == host)
        .with_context(|| format!("no {host} in {status}"))?;
    let live = entry["status"]["slots"]
        .as_object()
        .context("slots")?
        .values()
        .find(|s| s["active"] == true)
        .map(|s| field(s, "release"))
        .unwrap_or_default();
    let installed = entry["status"]["releases"]
        .as_array()
        .context("releases")?
        .iter()
        .filter_map(|r| r.as_str().map(str::to_string))
        .collect();
    Ok((live, installed))
}
