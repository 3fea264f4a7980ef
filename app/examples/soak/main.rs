//! `cargo xtask soak`: hostile clients against one release ddms (SQLite, the embedded broker,
//! loopback only) while a well-behaved device and a dashboard run beside them.
//!
//! Phases: warm-up (10 s), baseline (`--baseline` s, good clients only), hostile
//! (`--seconds` s), settle (`--settle` s, good clients only again), then the good device drains
//! and its readings are counted in the database through the API.
//!
//! Good clients (from 127.0.0.1):
//! * a device registered through `POST /api/devices/register` publishing QoS 1 telemetry
//!   (`{"ts", "metrics": {"seq": n}}`, 20 a second), counting PUBACKs;
//! * a dashboard: every 250 ms the device list, the device's latest values and its readings of
//!   the last 30 s (a live chart's fixed window, so the work is the same before and after the
//!   hostile phase; latency and failures counted per phase), plus one `/api/stream` held open.
//!
//! Hostile clients (from 127.0.1.x, as other hosts would be):
//! * slowloris: `--slowloris` connections that never finish their request head, reopened when
//!   the server closes them;
//! * invented methods and paths, one request per connection;
//! * login floods: wrong passwords for a real user and for made-up ones, from 250 addresses;
//! * MQTT: a registered device flooding malformed, oversized (above the payload limit and above
//!   the broker's packet limit) and retained messages, and publishing into the good device's
//!   topic; connections with made-up credentials;
//! * live-stream churn: streams opened and dropped at once, some resuming from event 1
//!   (`Last-Event-ID`), some without credentials.
//!
//! Bounds (exit code 1 when one breaks): no acknowledged reading of the good device missing from
//! the database; no failed request or lost stream of the dashboard; nothing stored from the
//! hostile device's forged publishes; the server's RSS after the settle period within 20 % of
//! its RSS before the hostile phase; the number of metric series not growing in the second half
//! of the hostile phase (new values of outsider-chosen input must not make new series). The
//! dashboard's latency is reported against the baseline phase of the same run.
//!
//! Usage: soak --ddms PATH [--seconds S] [--baseline S] [--settle S] [--slowloris N]
//!        [--only ATTACK[,ATTACK...]] [--setting KEY=VALUE]... [--out FILE]
//!
//! `--only` runs a subset of the hostile clients (`slowloris`, `invented`, `logins`, `mqtt`,
//! `streams`), to find out which one a broken bound comes from; `--setting` changes one ddms
//! setting (`database.max_connections=4` becomes `DDMS_DATABASE__MAX_CONNECTIONS=4`).

// The soak starts ddms its own way (a viewer token, a user, a log file): not `driver::serve`.
#[allow(dead_code)]
#[path = "../common/driver.rs"]
mod driver;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::json;
use tokio_util::sync::CancellationToken;

mod good;
mod hostile;
mod memory;
mod server;

use good::{dashboard_requests, dashboard_stream, good_device, stored_values, Clock, Dashboard};
use hostile::{
    hostile_addr, invented_requests, login_flood, mqtt_bad_connects, mqtt_flood, slowloris,
    stream_churn, Hostile,
};
use memory::MemorySnapshot;
use server::{register, Server};

/// RSS after the settle period, relative to RSS before the hostile phase.
const RSS_BOUND: f64 = 1.20;
/// Series the second half of the hostile phase may add (none are expected).
const SERIES_GROWTH_BOUND: i64 = 0;

struct Args {
    ddms: String,
    seconds: u64,
    baseline: u64,
    settle: u64,
    slowloris: usize,
    only: Option<Vec<String>>,
    settings: Vec<(String, String)>,
    out: String,
}

const ATTACKS: [&str; 5] = ["slowloris", "invented", "logins", "mqtt", "streams"];

impl Args {
    fn runs(&self, attack: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|a| a == attack))
    }
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        ddms: String::new(),
        seconds: 180,
        baseline: 30,
        settle: 60,
        slowloris: 300,
        only: None,
        settings: Vec::new(),
        out: "target/bench/soak.json".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--ddms" => args.ddms = value()?,
            "--seconds" => args.seconds = value()?.parse()?,
            "--baseline" => args.baseline = value()?.parse()?,
            "--settle" => args.settle = value()?.parse()?,
            "--slowloris" => args.slowloris = value()?.parse()?,
            "--only" => {
                let only: Vec<String> = value()?.split(',').map(str::to_string).collect();
                if let Some(unknown) = only.iter().find(|a| !ATTACKS.contains(&a.as_str())) {
                    bail!(
                        "--only: unknown attack {unknown} (known: {})",
                        ATTACKS.join(", ")
                    );
                }
                args.only = Some(only);
            }
            "--setting" => {
                let setting = value()?;
                let (key, value) = setting
                    .split_once('=')
                    .context("--setting needs KEY=VALUE")?;
                let variable = format!("DDMS_{}", key.replace('.', "__").to_uppercase());
                args.settings.push((variable, value.to_string()));
            }
            "--out" => args.out = value()?,
            other => bail!("unknown argument {other}"),
        }
    }
    ensure!(!args.ddms.is_empty(), "--ddms PATH is required");
    ensure!(
        args.seconds >= 10 && args.baseline >= 5 && args.settle >= 5,
        "--seconds at least 10, --baseline and --settle at least 5"
    );
    Ok(args)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/<pid>/status")
}

/// (lines, series) of `/metrics`: every line, and the lines that are samples.
async fn metrics_size(client: &reqwest::Client, base: &str) -> Result<(usize, usize)> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let lines = text.lines().count();
    let series = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .count();
    Ok((lines, series))
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Phase {
    Baseline,
    Hostile,
    Settle,
}

impl Phase {
    pub const ALL: [Phase; 3] = [Phase::Baseline, Phase::Hostile, Phase::Settle];
    pub fn name(self) -> &'static str {
        match self {
            Phase::Baseline => "baseline",
            Phase::Hostile => "hostile",
            Phase::Settle => "settle",
        }
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = parse_args()?;
    raise_fd_limit(args.slowloris as u64 * 2 + 4096);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "soak: release ddms on loopback (SQLite, embedded broker); baseline {} s, hostile {} s, \
         settle {} s; machine load {}",
        args.baseline,
        args.seconds,
        args.settle,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let server = Server::start(&args.ddms, &args.settings).await?;
    let result = soak(&args, &server).await;
    let stopped = server.stop().await;
    if result.is_err() || stopped.is_err() {
        server.print_log_tail();
    }
    let passed = result?;
    stopped?;
    if !passed {
        std::process::exit(1);
    }
    Ok(())
}

async fn soak(args: &Args, server: &Server) -> Result<bool> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let base = server.base.clone();
    let good = register(&client, &base, &server.provisioning, "good-device", None).await?;
    let bad = register(
        &client,
        &base,
        &server.provisioning,
        "hostile-device",
        Some(hostile_addr(0)),
    )
    .await?;

    let clock = Arc::new(Clock::default());
    let stop_good = CancellationToken::new();
    let device = tokio::spawn(good_device(
        server.broker_port,
        good.clone(),
        stop_good.clone(),
    ));
    let dashboard = Arc::new(Dashboard::default());
    let dashboard_tasks = vec![
        tokio::spawn(dashboard_requests(
            base.clone(),
            server.viewer.clone(),
            good.id.clone(),
            clock.clone(),
            dashboard.clone(),
            stop_good.clone(),
        )),
        tokio::spawn(dashboard_stream(
            base.clone(),
            server.viewer.clone(),
            dashboard.clone(),
            stop_good.clone(),
        )),
    ];

    tokio::time::sleep(Duration::from_secs(10)).await;
    clock.set(Some(Phase::Baseline));
    tokio::time::sleep(Duration::from_secs(args.baseline)).await;
    let rss_before = rss_kib(server.pid)?;
    let memory_before = MemorySnapshot::take(server.pid, &client, &base).await?;
    let (lines_before, series_before) = metrics_size(&client, &base).await?;
    println!(
        "soak: before the hostile phase: RSS {} MiB, /metrics {lines_before} lines",
        rss_before / 1024
    );

    clock.set(Some(Phase::Hostile));
    let hostile = Arc::new(Hostile::default());
    let stop_hostile = CancellationToken::new();
    let mut tasks = Vec::new();
    if args.runs("slowloris") {
        tasks.extend(slowloris(
            server.addr,
            args.slowloris,
            hostile.clone(),
            stop_hostile.clone(),
        ));
    }
    for i in (0..4).filter(|_| args.runs("invented")) {
        tasks.push(tokio::spawn(invented_requests(
            server.addr,
            i,
            hostile.clone(),
            stop_hostile.clone(),
        )));
    }
    for i in (0..8).filter(|_| args.runs("logins")) {
        tasks.push(tokio::spawn(login_flood(
            server.addr,
            i,
            hostile.clone(),
            stop_hostile.clone(),
        )));
    }
    if args.runs("mqtt") {
        tasks.push(tokio::spawn(mqtt_flood(
            server.broker_port,
            bad.clone(),
            good.id.clone(),
            hostile.clone(),
            stop_hostile.clone(),
        )));
        tasks.push(tokio::spawn(mqtt_bad_connects(
            server.broker_port,
            hostile.clone(),
            stop_hostile.clone(),
        )));
    }
    for i in (0..8).filter(|_| args.runs("streams")) {
        tasks.push(tokio::spawn(stream_churn(
            server.addr,
            i,
            server.viewer.clone(),
            hostile.clone(),
            stop_hostile.clone(),
        )));
    }
    let started = Instant::now();
    let mut rss_peak = rss_before;
    let mut series_mid = None;
    let mut lines_mid = 0;
    while started.elapsed() < Duration::from_secs(args.seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_peak = rss_peak.max(rss_kib(server.pid)?);
        if series_mid.is_none() && started.elapsed() >= Duration::from_secs(args.seconds / 2) {
            let (lines, series) = metrics_size(&client, &base).await?;
            series_mid = Some(series);
            lines_mid = lines;
        }
    }
    let (lines_end, series_end) = metrics_size(&client, &base).await?;
    stop_hostile.cancel();
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    }

    clock.set(Some(Phase::Settle));
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let rss_after = rss_kib(server.pid)?;
    let memory_after = MemorySnapshot::take(server.pid, &client, &base).await?;
    let (lines_after, _) = metrics_size(&client, &base).await?;
    clock.set(None);

    stop_good.cancel();
    let run = device.await??;
    let (sent, mqtt_errors) = (run.sent, run.connection_errors);
    let acked = run.acked.len() as u64;
    for task in dashboard_tasks {
        task.await?;
    }
    let stored = stored_values(&client, &base, &server.viewer, &good.id).await?;
    let good_stored = stored.iter().filter(|&&v| v < sent).count() as u64;
    let forged = stored.iter().filter(|&&v| v >= sent).count() as u64;
    // Each acknowledged seq is looked up: a count difference could hide a loss behind a
    // reading stored without its acknowledgement.
    let lost_seqs: Vec<u64> = run
        .acked
        .iter()
        .copied()
        .filter(|seq| !stored.contains(seq))
        .collect();
    let lost = lost_seqs.len() as u64;
    if good_stored < sent {
        let missing: Vec<u64> = (0..sent).filter(|v| !stored.contains(v)).take(20).collect();
        eprintln!("soak: sequence numbers of the good device not stored (first 20): {missing:?}");
    }
    if !lost_seqs.is_empty() {
        // What the server did with them is in its database and log: keep both.
        let kept = server.keep_data_dir();
        eprintln!(
            "soak: acknowledged but not stored (first 50): {:?}; the server's data directory \
             (database and log) is kept at {}",
            &lost_seqs[..lost_seqs.len().min(50)],
            kept.display()
        );
    }

    // The report.
    let latencies = dashboard.latencies_ms.lock().unwrap().clone();
    let phase_stats = |phase: Phase| {
        let mut v: Vec<f64> = latencies
            .iter()
            .filter(|(p, _)| *p == phase)
            .map(|(_, ms)| *ms)
            .collect();
        v.sort_by(f64::total_cmp);
        (
            v.len(),
            percentile(&v, 0.5),
            percentile(&v, 0.99),
            v.last().copied().unwrap_or(f64::NAN),
        )
    };
    let (_, _, baseline_p99, _) = phase_stats(Phase::Baseline);
    let (_, _, hostile_p99, _) = phase_stats(Phase::Hostile);
    let failures = dashboard.failures.load(Ordering::Relaxed);
    let stream_lost = dashboard.stream_lost.load(Ordering::Relaxed);
    let rss_ratio = rss_after as f64 / rss_before as f64;
    let series_growth = series_end as i64 - series_mid.unwrap_or(series_end) as i64;

    println!("\n{:<44} {:>14}", "good clients", "");
    for phase in Phase::ALL {
        let (n, p50, p99, max) = phase_stats(phase);
        println!(
            "  dashboard requests, {:<9} {:>6} p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms",
            phase.name(),
            n,
            p50,
            p99,
            max
        );
    }
    println!(
        "  dashboard p99 hostile / baseline         {:>8.2}",
        hostile_p99 / baseline_p99
    );
    println!("  dashboard failed requests                {failures:>8}");
    println!(
        "  dashboard stream: events / lost          {:>8} / {stream_lost}",
        dashboard.stream_events.load(Ordering::Relaxed)
    );
    println!("  device QoS 1 sent / acked / stored       {sent:>8} / {acked} / {good_stored}");
    println!("  acknowledged readings lost               {lost:>8}");
    println!("  device connection errors                 {mqtt_errors:>8}");
    println!("hostile clients");
    println!(
        "  slowloris opened / closed by the server  {:>8} / {}",
        hostile.slowloris_opened.load(Ordering::Relaxed),
        hostile.slowloris_closed_by_server.load(Ordering::Relaxed)
    );
    println!(
        "  invented requests                        {:>8}  {:?}",
        hostile.invented_requests.load(Ordering::Relaxed),
        hostile.invented_statuses.lock().unwrap()
    );
    println!(
        "  failed logins                            {:>8}  {:?}",
        hostile.logins.load(Ordering::Relaxed),
        hostile.login_statuses.lock().unwrap()
    );
    println!(
        "  MQTT hostile publishes / disconnects     {:>8} / {}",
        hostile.mqtt_publishes.load(Ordering::Relaxed),
        hostile.mqtt_disconnects.load(Ordering::Relaxed)
    );
    println!(
        "  MQTT connects with made-up credentials   {:>8}",
        hostile.mqtt_bad_connects.load(Ordering::Relaxed)
    );
    println!(
        "  streams opened and dropped               {:>8}  {:?}",
        hostile.streams_opened.load(Ordering::Relaxed),
        hostile.stream_statuses.lock().unwrap()
    );
    println!("  forged readings stored                   {forged:>8}");
    println!("server");
    println!(
        "  RSS before / peak / after (MiB)          {:>8.1} / {:.1} / {:.1}  (after/before {:.2}, bound {RSS_BOUND})",
        rss_before as f64 / 1024.0,
        rss_peak as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        rss_ratio
    );
    let memory_lines = memory_before.attribution(&memory_after);
    for line in &memory_lines {
        println!("    {line}");
    }
    println!(
        "  /metrics lines before / mid / end / after {lines_before:>7} / {lines_mid} / {lines_end} / {lines_after}"
    );
    println!(
        "  metric series before / mid / end         {:>8} / {} / {series_end}  (second-half growth {series_growth}, bound {SERIES_GROWTH_BOUND})",
        series_before,
        series_mid.unwrap_or(0)
    );

    let mut broken = Vec::new();
    if lost > 0 {
        broken.push(format!("{lost} acknowledged readings are not stored"));
    }
    if acked < sent {
        broken.push(format!("{} readings were never acknowledged", sent - acked));
    }
    if failures > 0 {
        broken.push(format!(
            "{failures} dashboard requests failed: {:?}",
            dashboard.failure_samples.lock().unwrap()
        ));
    }
    if stream_lost > 0 {
        broken.push(format!("the dashboard's stream ended {stream_lost} times"));
    }
    if forged > 0 {
        broken.push(format!(
            "{forged} readings forged by the hostile device were stored"
        ));
    }
    if rss_ratio > RSS_BOUND {
        broken.push(format!(
            "RSS after the settle period is {rss_ratio:.2} × the RSS before (bound {RSS_BOUND})"
        ));
    }
    if series_growth > SERIES_GROWTH_BOUND {
        broken.push(format!(
            "{series_growth} metric series appeared in the second half of the hostile phase"
        ));
    }
    let report = json!({
        "seconds": { "baseline": args.baseline, "hostile": args.seconds, "settle": args.settle },
        "settings": args.settings.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "attacks": ATTACKS.iter().filter(|a| args.runs(a)).collect::<Vec<_>>(),
        "machine_load": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "dashboard": {
            "phases": Phase::ALL.iter().map(|&p| {
                let (n, p50, p99, max) = phase_stats(p);
                json!({ "phase": p.name(), "requests": n, "p50_ms": p50, "p99_ms": p99, "max_ms": max })
            }).collect::<Vec<_>>(),
            "p99_hostile_over_baseline": hostile_p99 / baseline_p99,
            "failed_requests": failures,
            "stream_events": dashboard.stream_events.load(Ordering::Relaxed),
            "stream_lost": stream_lost,
        },
        "device": { "sent": sent, "acked": acked, "stored": good_stored, "lost_acknowledged": lost,
                    "connection_errors": mqtt_errors },
        "hostile": {
            "slowloris_connections": args.slowloris,
            "slowloris_opened": hostile.slowloris_opened.load(Ordering::Relaxed),
            "slowloris_closed_by_server": hostile.slowloris_closed_by_server.load(Ordering::Relaxed),
            "invented_requests": hostile.invented_requests.load(Ordering::Relaxed),
            "invented_statuses": *hostile.invented_statuses.lock().unwrap(),
            "failed_logins": hostile.logins.load(Ordering::Relaxed),
            "login_statuses": *hostile.login_statuses.lock().unwrap(),
            "mqtt_publishes": hostile.mqtt_publishes.load(Ordering::Relaxed),
            "mqtt_disconnects": hostile.mqtt_disconnects.load(Ordering::Relaxed),
            "mqtt_bad_connects": hostile.mqtt_bad_connects.load(Ordering::Relaxed),
            "streams_opened": hostile.streams_opened.load(Ordering::Relaxed),
            "stream_statuses": *hostile.stream_statuses.lock().unwrap(),
            "forged_readings_stored": forged,
        },
        "server": {
            "rss_kib": { "before": rss_before, "peak": rss_peak, "after": rss_after },
            "rss_after_over_before": rss_ratio,
            "memory_attribution": memory_lines,
            "rss_bound": RSS_BOUND,
            "metrics_lines": { "before": lines_before, "mid": lines_mid, "end": lines_end, "after": lines_after },
            "metric_series": { "before": series_before, "mid": series_mid, "end": series_end },
            "series_growth_second_half": series_growth,
        },
        "broken": broken,
    });
    if let Some(dir) = std::path::Path::new(&args.out).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)?)?;
    println!("\nsoak: JSON in {}", args.out);
    if broken.is_empty() {
        println!("soak: every bound held");
        Ok(true)
    } else {
        for b in &broken {
            println!("soak: BOUND BROKEN: {b}");
        }
        Ok(false)
    }
}

fn raise_fd_limit(needed: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let want = needed.max(soft).min(hard);
        let _ = setrlimit(Resource::RLIMIT_NOFILE, want, hard);
    }
}
