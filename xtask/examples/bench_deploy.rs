//! `cargo xtask bench deploy [--switches N] [--rate R]`: blue-green switches under load on the
//! end-to-end fleet (two hosts and a database host in Docker, provisioned by `site.yml`).
//! Alternates two releases with `cargo xtask deploy` while API reads go through nginx at R
//! requests/s in all, until at least N switches and 100,000 requests are done; reports switch
//! time (ready → traffic moved, from the hosts' records), per-host deploy time and failed
//! requests, and writes them as JSON.
//!
//! `--load-only S`: no deploys, only the load for S seconds, with where the CPU went (each
//! container and this load generator): to find what caps the served rate.
//!
//! An example of the xtask crate so the test harness (`tests/e2e/`) and its dev-dependencies
//! are shared without becoming dependencies of everyday xtask tasks.

#[path = "../tests/e2e/fleet.rs"]
mod fleet;
#[path = "../tests/e2e/support/mod.rs"]
mod support;
#[path = "../tests/e2e/traffic.rs"]
mod traffic;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use fleet::{say, Fleet, HOSTS};
use support::release::{release_tarball, Kind};

struct Options {
    switches: usize,
    rate: f64,
    min_requests: u64,
    load_only: Option<u64>,
    xtask: PathBuf,
    out: PathBuf,
}

fn parse() -> Result<Options> {
    let mut options = Options {
        switches: 20,
        rate: 500.0,
        min_requests: 100_000,
        load_only: None,
        xtask: PathBuf::new(),
        out: PathBuf::from("deploy.json"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--switches" => options.switches = value()?.parse()?,
            "--rate" => options.rate = value()?.parse()?,
            "--min-requests" => options.min_requests = value()?.parse()?,
            "--load-only" => options.load_only = Some(value()?.parse()?),
            "--xtask" => options.xtask = value()?.into(),
            "--out" => options.out = value()?.into(),
            other => bail!("unknown argument `{other}`"),
        }
    }
    ensure!(
        options.switches >= 1 && options.rate > 0.0,
        "nothing to measure"
    );
    ensure!(
        options.xtask.is_file(),
        "--xtask must name the xtask binary"
    );
    Ok(options)
}

/// min / median / p95 / max of `values` (milliseconds).
fn summary(values: &[u64]) -> Value {
    let mut v = values.to_vec();
    v.sort_unstable();
    if v.is_empty() {
        return json!(null);
    }
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    json!({"n": v.len(), "min": v[0], "median": at(0.5), "p95": at(0.95), "max": v[v.len() - 1]})
}

fn step_ms(record: &Value, names: &[&str]) -> u64 {
    record["steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .filter(|s| names.iter().any(|n| s["name"] == *n))
                .filter_map(|s| s["duration_ms"].as_u64())
                .sum()
        })
        .unwrap_or(0)
}

fn main() -> Result<()> {
    let options = parse()?;
    let fleet = Fleet::provision("ddms-bench-deploy", &options.xtask, "bench-a")?;
    let a = fleet.first.tarball.display().to_string();
    let b = release_tarball(fleet.cluster.dir(), "bench-b", Kind::Good)?
        .tarball
        .display()
        .to_string();
    let per_host = options.rate / fleet.targets.len() as f64;
    let traffic =
        traffic::Traffic::start(&fleet.targets, &fleet.ca_pem, &fleet.token, per_host, 0)?;
    if let Some(seconds) = options.load_only {
        return load_only(&fleet, traffic, &options, seconds);
    }
    let env = [
        ("DDMS_RELEASE_WATCH", "2"),
        ("DDMS_RELEASE_DRAIN_TIMEOUT", "15"),
    ];
    let started = Instant::now();
    let mut switch_ms = Vec::new();
    let mut host_deploy_ms = Vec::new();
    let mut runs = Vec::new();
    let mut problems = Vec::new();
    let mut i = 0;
    while i < options.switches || traffic.stats().sent < options.min_requests {
        let artifact = if i % 2 == 0 { &b } else { &a };
        let t = Instant::now();
        let (code, report) = fleet.deploy(&["--artifact", artifact], &env)?;
        let mut hosts = Vec::new();
        for host in HOSTS {
            let entry = fleet::host_record(&report, host)?;
            let record = &entry["record"];
            // Ready → traffic moved: the version check, the nginx switch and the route check.
            let switch = step_ms(record, &["version", "switch", "route"]);
            let deploy: u64 = entry["steps"]
                .as_array()
                .map(|s| s.iter().filter_map(|s| s["duration_ms"].as_u64()).sum())
                .unwrap_or(0);
            // Only hosts whose traffic moved count (not skipped, unchanged or aborted ones).
            let switched = record["steps"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["name"] == "switch"));
            if switched {
                switch_ms.push(switch);
                if entry["result"] == "ok" {
                    host_deploy_ms.push(deploy);
                }
            }
            hosts.push(
                json!({"host": host, "switch_ms": switch, "deploy_ms": deploy,
                              "ready_ms": step_ms(record, &["ready"]), "result": entry["result"]}),
            );
        }
        let stats = traffic.stats();
        say(format!(
            "switch {}: exit {code} in {:.1} s; {hosts:?}; requests so far {} ({} failed)",
            i + 1,
            t.elapsed().as_secs_f64(),
            stats.sent,
            stats.failed
        ));
        if code != 0 {
            problems.push(format!("switch {}: {}", i + 1, report["error"]));
        }
        runs.push(json!({"release": report["release"], "exit": code, "seconds": t.elapsed().as_secs_f64(), "hosts": hosts}));
        i += 1;
    }
    std::thread::sleep(Duration::from_secs(2));
    let (stats, _) = traffic.stop();
    let diagnostics: Vec<String> = if stats.failed > 0 {
        HOSTS.iter().map(|h| fleet.diagnostics(h)).collect()
    } else {
        Vec::new()
    };
    for d in &diagnostics {
        say(d);
    }
    let result = json!({
        "switches": i,
        "rate_offered": options.rate,
        "rate_achieved": stats.ok as f64 / stats.elapsed.as_secs_f64(),
        "seconds": started.elapsed().as_secs_f64(),
        "requests": {"sent": stats.sent, "ok": stats.ok, "failed": stats.failed,
                     "failed_by_kind": stats.by_kind, "first_failures": stats.samples},
        "latency_ms": {"p50": stats.latency_quantile(0.5), "p99": stats.latency_quantile(0.99),
                       "max": stats.latency_quantile(1.0)},
        "switch_ms": summary(&switch_ms),
        "host_deploy_ms": summary(&host_deploy_ms),
        "deploy_problems": problems,
        "diagnostics": diagnostics,
        "runs": runs,
    });
    println!(
        "\nbench deploy: {} switches on {} hosts at {:.0} requests/s offered",
        i,
        HOSTS.len(),
        options.rate
    );
    println!(
        "  switch time (ready → traffic moved), ms: {}",
        result["switch_ms"]
    );
    println!(
        "  per-host deploy time (upload + install + activate), ms: {}",
        result["host_deploy_ms"]
    );
    println!(
        "  requests: {} sent, {} ok, {} failed {:?}",
        stats.sent, stats.ok, stats.failed, stats.by_kind
    );
    if let Some(dir) = options.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&options.out, serde_json::to_string_pretty(&result)?)?;
    println!("  JSON: {}", options.out.display());
    Ok(())
}

/// CPU seconds this process has used (user + system), from /proc.
fn own_cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').context("/proc/self/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

/// Load without deploys: the served rate per host and where the CPU went.
fn load_only(
    fleet: &Fleet,
    traffic: traffic::Traffic,
    options: &Options,
    seconds: u64,
) -> Result<()> {
    let cpu_before = own_cpu_seconds()?;
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds / 2));
    let containers: Vec<String> = fleet
        .cluster
        .hosts()
        .iter()
        .map(|h| h.container.clone())
        .collect();
    let docker_stats = std::process::Command::new("docker")
        .args(["stats", "--no-stream", "--format", "{{.Name}} {{.CPUPerc}}"])
        .args(&containers)
        .output()?;
    let docker_stats = String::from_utf8_lossy(&docker_stats.stdout).to_string();
    std::thread::sleep(Duration::from_secs(seconds - seconds / 2));
    let (stats, _) = traffic.stop();
    let generator_cpu = (own_cpu_seconds()? - cpu_before) / started.elapsed().as_secs_f64();
    let rates = stats.rate_per_host();
    let result = json!({
        "load_only_seconds": seconds,
        "rate_offered": options.rate,
        "served_per_host": rates,
        "requests": {"sent": stats.sent, "ok": stats.ok, "failed": stats.failed,
                     "failed_by_kind": stats.by_kind, "first_failures": stats.samples,
                     "resent_after_keepalive_close": stats.resent_after_keepalive_close},
        "latency_ms": {"p50": stats.latency_quantile(0.5), "p99": stats.latency_quantile(0.99),
                       "max": stats.latency_quantile(1.0)},
        "max_in_flight_per_host": stats.max_in_flight,
        "generator_cpu_cores": generator_cpu,
        "container_cpu": docker_stats.lines().collect::<Vec<_>>(),
    });
    println!(
        "\nbench deploy --load-only {seconds}: {:.0} requests/s offered",
        options.rate
    );
    println!("  served per host: {rates:.0?}");
    println!(
        "  requests: {} sent, {} ok, {} failed {:?}",
        stats.sent, stats.ok, stats.failed, stats.by_kind
    );
    println!(
        "  latency ms: p50 {:?}, p99 {:?}, max {:?}; at most {} in flight to a host",
        stats.latency_quantile(0.5),
        stats.latency_quantile(0.99),
        stats.latency_quantile(1.0),
        stats.max_in_flight
    );
    println!("  load generator CPU: {generator_cpu:.2} cores");
    println!(
        "  containers (docker stats):\n    {}",
        docker_stats.trim().replace('\n', "\n    ")
    );
    if let Some(dir) = options.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&options.out, serde_json::to_string_pretty(&result)?)?;
    println!("  JSON: {}", options.out.display());
    Ok(())
}
