//! `cargo xtask bench modbus`: many simulated Modbus devices polled by a real `ddms` process.
//!
//! Phase 1 polls every device live; phase 2 makes a fraction of them dead (they accept the
//! connection and never answer, the worst case for a poller). Reported: polls/s, p99 poll
//! latency (from ddms' own histogram), ddms' resident memory, and how late the live devices'
//! polls came in each phase (from the stored reading timestamps) — phase 2 as a ratio of the
//! phase-1 baseline measured in the same run.
//!
//! Usage: bench_modbus --ddms PATH [--devices N] [--interval-ms I] [--seconds S]
//!        [--dead-fraction F] [--out FILE]

#[path = "common/driver.rs"]
mod driver;
use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use chrono::{DateTime, Utc};
use ddms::modbus::register_map::{RegisterKind, RegisterSpec, ValueType};
use ddms::modbus::simulator::{ModbusSimulator, SimulatedRegister, Waveform};
use serde_json::{json, Value};

struct Args {
    ddms: String,
    devices: usize,
    interval_ms: u64,
    seconds: u64,
    dead_fraction: f64,
    out: String,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        ddms: String::new(),
        devices: 2000,
        interval_ms: 1000,
        seconds: 30,
        dead_fraction: 0.1,
        out: "target/bench/modbus.json".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--ddms" => args.ddms = value()?,
            "--devices" => args.devices = value()?.parse()?,
            "--interval-ms" => args.interval_ms = value()?.parse()?,
            "--seconds" => args.seconds = value()?.parse()?,
            "--dead-fraction" => args.dead_fraction = value()?.parse()?,
            "--out" => args.out = value()?,
            other => bail!("unknown argument {other}"),
        }
    }
    ensure!(!args.ddms.is_empty(), "--ddms PATH is required");
    Ok(args)
}

fn registers() -> Vec<SimulatedRegister> {
    let minute = Duration::from_secs(60);
    let mut temperature =
        RegisterSpec::new("temperature", RegisterKind::Holding, 0, ValueType::F32);
    temperature.unit = Some("°C".into());
    vec![
        SimulatedRegister::new(
            temperature,
            Waveform::Sine {
                mean: 50.0,
                amplitude: 10.0,
                period: minute,
            },
        ),
        SimulatedRegister::new(
            RegisterSpec::new("counter", RegisterKind::Input, 10, ValueType::U32),
            Waveform::Ramp {
                from: 0.0,
                to: 100000.0,
                period: minute,
            },
        ),
    ]
}

/// Samples of the counters and histogram ddms exposes.
#[derive(Debug, Default, Clone)]
struct Scrape {
    polls: HashMap<String, f64>,
    buckets: Vec<(f64, f64)>,
}

async fn scrape(client: &reqwest::Client, base: &str) -> Result<Scrape> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let mut scrape = Scrape::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("ddms_modbus_polls_total{result=\"") {
            let (result, value) = rest.split_once("\"} ").context("polls line")?;
            scrape.polls.insert(result.to_string(), value.parse()?);
        } else if let Some(rest) =
            line.strip_prefix("ddms_modbus_poll_duration_seconds_bucket{le=\"")
        {
            let (le, value) = rest.split_once("\"} ").context("bucket line")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse()?
            };
            scrape.buckets.push((le, value.parse()?));
        }
    }
    Ok(scrape)
}

/// The q-quantile of the observations between two scrapes, interpolated within its bucket the
/// way Prometheus' histogram_quantile does.
fn quantile(before: &Scrape, after: &Scrape, q: f64) -> f64 {
    let deltas: Vec<(f64, f64)> = after
        .buckets
        .iter()
        .zip(&before.buckets)
        .map(|((le, a), (_, b))| (*le, a - b))
        .collect();
    let total = deltas.last().map(|d| d.1).unwrap_or(0.0);
    if total == 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in &deltas {
        if count >= rank {
            if le.is_infinite() {
                return lower.0;
            }
            let in_bucket = count - lower.1;
            let fraction = if in_bucket > 0.0 {
                (rank - lower.1) / in_bucket
            } else {
                1.0
            };
            return lower.0 + (le - lower.0) * fraction;
        }
        lower = (le, count);
    }
    f64::NAN
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// For each device, the largest gap between consecutive poll timestamps in [from, to), minus
/// the interval: how late its polls came.
async fn lateness_ms(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    ids: &[String],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    interval_ms: u64,
) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let url = format!(
            "{base}/api/devices/{id}/readings?metric=temperature&from={}&to={}&limit=100000",
            from.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            to.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        );
        let points: Vec<Value> = client
            .get(url)
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
        let times: Vec<DateTime<Utc>> = points
            .iter()
            .filter_map(|p| p["ts"].as_str()?.parse().ok())
            .collect();
        let worst = times
            .windows(2)
            .map(|w| (w[1] - w[0]).num_milliseconds() as f64 - interval_ms as f64)
            .fold(0.0_f64, f64::max);
        out.push(if times.len() < 2 {
            f64::INFINITY
        } else {
            worst
        });
    }
    Ok(out)
}

fn percentile(values: &[f64], q: f64) -> f64 {
    let mut sorted: Vec<f64> = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let dir = tempfile::tempdir()?;
    println!(
        "bench modbus: {} devices every {} ms, {} s per phase, {:.0}% dead in phase 2",
        args.devices,
        args.interval_ms,
        args.seconds,
        args.dead_fraction * 100.0
    );

    let started = Instant::now();
    let mut simulators = Vec::with_capacity(args.devices);
    for _ in 0..args.devices {
        simulators.push(ModbusSimulator::start(registers()).await?);
    }
    println!(
        "bench modbus: {} simulators up in {:.1} s",
        simulators.len(),
        started.elapsed().as_secs_f64()
    );

    let ddms_env = |cmd: &mut tokio::process::Command| {
        cmd.env("DDMS_LOG__LEVEL", "warn")
            .env("DDMS_MQTT__MODE", "off");
    };
    let mut token_cmd = driver::ddms_command(&args.ddms, dir.path());
    ddms_env(&mut token_cmd);
    let token = driver::create_token(token_cmd, "bench", "admin").await?;

    let port = driver::free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let mut serve = driver::ddms_command(&args.ddms, dir.path());
    ddms_env(&mut serve);
    let mut child = serve
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().context("ddms pid")?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    driver::wait_ready(&client, &base, Duration::from_secs(30)).await?;

    let mut ids = Vec::with_capacity(args.devices);
    let specs: Vec<RegisterSpec> = registers().into_iter().map(|r| r.spec).collect();
    for (i, simulator) in simulators.iter().enumerate() {
        let body = json!({
            "name": format!("bench-{i:05}"), "protocol": "modbus", "group": "bench",
            "modbus": {"host": "127.0.0.1", "port": simulator.port(), "unit_id": 1,
                       "poll_interval_ms": args.interval_ms, "registers": specs},
        });
        let response = client
            .post(format!("{base}/api/devices"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await?;
        ensure!(
            response.status() == 201,
            "create device: {}",
            response.text().await?
        );
        let created: Value = response.json().await?;
        ids.push(created["id"].as_str().context("device id")?.to_string());
    }
    // Let every poller start and settle.
    tokio::time::sleep(Duration::from_millis(3 * args.interval_ms + 1000)).await;

    let dead_count = ((args.devices as f64) * args.dead_fraction).round() as usize;
    let live_ids = &ids[dead_count..];
    let mut phases = Vec::new();
    for phase in ["all_live", "with_dead"] {
        if phase == "with_dead" {
            for simulator in &simulators[..dead_count] {
                // Accepts, never answers: every request of these devices runs into the timeout.
                simulator.set_response_delay(Duration::from_secs(3600));
            }
            tokio::time::sleep(Duration::from_millis(2 * args.interval_ms)).await;
        }
        let before = scrape(&client, &base).await?;
        let from = Utc::now();
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        let elapsed = t0.elapsed().as_secs_f64();
        let to = Utc::now();
        let after = scrape(&client, &base).await?;
        let rss = rss_mb(pid);
        let ok = after.polls.get("ok").copied().unwrap_or(0.0)
            - before.polls.get("ok").copied().unwrap_or(0.0);
        let all: f64 = after.polls.values().sum::<f64>() - before.polls.values().sum::<f64>();
        let p99_ms = quantile(&before, &after, 0.99) * 1000.0;
        let late =
            lateness_ms(&client, &base, &token, live_ids, from, to, args.interval_ms).await?;
        let result = json!({
            "phase": phase,
            "seconds": elapsed,
            "polls_per_s": all / elapsed,
            "ok_polls_per_s": ok / elapsed,
            "p99_poll_ms": p99_ms,
            "rss_mb": rss,
            "live_devices": live_ids.len(),
            "live_lateness_p50_ms": percentile(&late, 0.5),
            "live_lateness_p99_ms": percentile(&late, 0.99),
            "live_lateness_max_ms": percentile(&late, 1.0),
        });
        println!("bench modbus: {phase}: {result}");
        phases.push(result);
    }
    let baseline = phases[0]["live_lateness_max_ms"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let with_dead = phases[1]["live_lateness_max_ms"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let summary = json!({
        "benchmark": "modbus",
        "devices": args.devices,
        "interval_ms": args.interval_ms,
        "dead_fraction": args.dead_fraction,
        "phases": phases,
        "polls_per_s": phases[0]["polls_per_s"],
        "p99_poll_ms": phases[0]["p99_poll_ms"],
        "rss_mb": phases[1]["rss_mb"],
        "dead_extra_lateness_ms": with_dead - baseline,
        "dead_lateness_in_cycles": (with_dead - baseline) / args.interval_ms as f64,
        "targets": {
            "polls_per_s": ">= 2000", "p99_poll_ms": "< 20",
            "dead_lateness_in_cycles": "<= 1", "rss_mb": "< 200 (1000 devices)",
        },
    });
    let _ = child.start_kill();
    let _ = child.wait().await;
    if let Some(parent) = std::path::Path::new(&args.out).parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&summary)?)?;
    println!(
        "bench modbus: {:.0} polls/s, p99 poll {:.2} ms, RSS {:.0} MB, dead devices add {:.0} ms ({:.2} cycles) to live devices' worst lateness",
        summary["polls_per_s"].as_f64().unwrap_or(f64::NAN),
        summary["p99_poll_ms"].as_f64().unwrap_or(f64::NAN),
        summary["rss_mb"].as_f64().unwrap_or(f64::NAN),
        with_dead - baseline,
        summary["dead_lateness_in_cycles"].as_f64().unwrap_or(f64::NAN),
    );
    println!("bench modbus: wrote {}", args.out);
    Ok(())
}
