//! `cargo xtask bench modbus`: many simulated Modbus devices polled by a real `ddms` process.
//!
//! Phase 1 polls every device live; phase 2 makes a fraction of them dead (they accept the
//! connection and never answer, the worst case for a poller). Reported: polls/s, p99 poll
//! latency (from ddms' own histogram), ddms' resident memory, and how late the live devices'
//! polls came in each phase (from the stored reading timestamps) — phase 2 as a ratio of the
//! phase-1 baseline measured in the same run.
//!
//! At fleet scale (`--devices 10000`) it also checks the cadence device by device: the worst
//! lateness of any live device's consecutive polls, in intervals, must stay within one (the
//! run fails otherwise), and it reports ddms' resident memory at its peak and at the end. Each
//! simulated device listens on an address of its own (127.2.x.y); the devices are served by
//! child processes of the driver, 4,000 each (a listener and a connection per device, within
//! a process's descriptor limit), and the driver raises its file-descriptor limit to one per
//! device for ddms, which inherits it.
//!
//! Usage: bench_modbus --ddms PATH [--devices N] [--interval-ms I] [--seconds S]
//!        [--dead-fraction F] [--backend sqlite|postgres] [--out FILE]

#[path = "common/driver.rs"]
mod driver;
#[path = "common/fleet.rs"]
mod fleet;
#[path = "../tests/support/services.rs"]
mod services;
// `services` takes its ports from its parent: the driver's allocator, so the run has one.
use driver::ports;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use chrono::Utc;
use ddms::modbus::register_map::{RegisterKind, RegisterSpec, ValueType};
use ddms::modbus::simulator::{ModbusSimulator, SimulatedRegister, Waveform};
use serde_json::json;

struct Args {
    ddms: String,
    devices: usize,
    interval_ms: u64,
    seconds: u64,
    dead_fraction: f64,
    /// `postgres`: a throwaway local PostgreSQL 15 instead of SQLite.
    postgres: bool,
    out: String,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        ddms: String::new(),
        devices: 2000,
        interval_ms: 1000,
        seconds: 30,
        dead_fraction: 0.1,
        postgres: false,
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
            "--backend" => {
                args.postgres = match value()?.as_str() {
                    "sqlite" => false,
                    "postgres" => true,
                    other => bail!("--backend must be sqlite or postgres, not {other}"),
                }
            }
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

/// Where simulated device `i` listens: an address of its own in 127.2.0.0/16, all on one port,
/// as a plant's devices each have an address and the Modbus port. Neither the listeners nor
/// ddms' connections to them then use the ephemeral port range, which 10,000 of each would
/// nearly exhaust on one address.
fn device_addr(i: usize, port: u16) -> SocketAddr {
    let host = Ipv4Addr::new(127, 2, (i / 250) as u8, (i % 250 + 1) as u8);
    SocketAddr::from((host, port))
}

/// Waits until ddms polls `devices` devices (`ddms_modbus_devices_polled`), at most `within`.
async fn wait_polled(
    client: &reqwest::Client,
    base: &str,
    devices: usize,
    within: Duration,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let text = fleet::scrape(client, base).await?;
        let polled = fleet::metric(&text, "ddms_modbus_devices_polled").unwrap_or(0.0);
        if polled as usize >= devices {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "ddms polls {polled} of {devices} devices after {} s",
            within.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Devices a simulator process serves: each holds a listener and an accepted connection per
/// device, and a process may have only so many descriptors (the hard limit is often 20,000).
const DEVICES_PER_PROCESS: usize = 4000;

/// The simulated devices, served by child processes of this driver (`--simulate`), each
/// serving [`DEVICES_PER_PROCESS`] of them.
struct Simulators {
    children: Vec<(tokio::process::Child, tokio::process::ChildStdin)>,
}

impl Simulators {
    async fn start(devices: usize, port: u16) -> Result<Simulators> {
        use tokio::io::AsyncBufReadExt;
        let exe = std::env::current_exe()?;
        let mut children = Vec::new();
        for first in (0..devices).step_by(DEVICES_PER_PROCESS) {
            let count = DEVICES_PER_PROCESS.min(devices - first);
            let mut child = tokio::process::Command::new(&exe)
                .args(["--simulate", &format!("{first}:{count}:{port}")])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            let stdin = child.stdin.take().context("simulator stdin")?;
            let stdout = child.stdout.take().context("simulator stdout")?;
            let line = tokio::io::BufReader::new(stdout)
                .lines()
                .next_line()
                .await?
                .unwrap_or_default();
            ensure!(line == "ready", "simulator process {first}: {line}");
            children.push((child, stdin));
        }
        Ok(Simulators { children })
    }

    /// Makes devices 0..count accept connections and never answer.
    async fn make_dead(&mut self, count: usize) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        for (_, stdin) in &mut self.children {
            stdin
                .write_all(format!("dead {count}\n").as_bytes())
                .await?;
            stdin.flush().await?;
        }
        Ok(())
    }
}

/// `--simulate FIRST:COUNT:PORT`: serves devices FIRST.. of the fleet until stdin closes;
/// `dead N` on stdin makes the devices below N stop answering.
async fn simulate(spec: &str) -> Result<()> {
    use tokio::io::AsyncBufReadExt;
    let parts: Vec<usize> = spec
        .split(':')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("--simulate FIRST:COUNT:PORT")?;
    let &[first, count, port] = &parts[..] else {
        bail!("--simulate FIRST:COUNT:PORT");
    };
    fleet::raise_fd_limit(2 * count as u64 + 256)?;
    let mut simulators = Vec::with_capacity(count);
    for i in first..first + count {
        simulators.push(ModbusSimulator::bind(device_addr(i, port as u16), registers()).await?);
    }
    println!("ready");
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if let Some(dead) = line.strip_prefix("dead ") {
            let dead: usize = dead.trim().parse()?;
            for (i, simulator) in (first..).zip(&simulators) {
                if i < dead {
                    // Accepts, never answers: every request runs into ddms' timeout.
                    simulator.set_response_delay(Duration::from_secs(3600));
                }
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut raw = std::env::args().skip(1);
    if raw.next().as_deref() == Some("--simulate") {
        return simulate(&raw.next().unwrap_or_default()).await;
    }
    let args = parse_args()?;
    ensure!(
        args.devices <= 250 * 256,
        "at most 64,000 devices (one loopback address each)"
    );
    let dir = tempfile::tempdir()?;
    println!(
        "bench modbus: {} devices every {} ms, {} s per phase, {:.0}% dead in phase 2",
        args.devices,
        args.interval_ms,
        args.seconds,
        args.dead_fraction * 100.0
    );
    // ddms (which inherits the limit) holds a connection per device.
    let fd_limit = fleet::raise_fd_limit(args.devices as u64 + 1024)?;

    let started = Instant::now();
    let device_port = driver::free_port()?;
    let mut simulators = Simulators::start(args.devices, device_port).await?;
    println!(
        "bench modbus: {} simulators up in {:.1} s in {} processes (file-descriptor limit {fd_limit})",
        args.devices,
        started.elapsed().as_secs_f64(),
        simulators.children.len()
    );

    let mut _postgres = None;
    let database_url = if args.postgres {
        let postgres = services::Postgres::start(services::Provider::Local).await?;
        let url = postgres.create_database().await?;
        _postgres = Some(postgres);
        url
    } else {
        format!("sqlite://{}", dir.path().join("ddms.db").display())
    };
    let env = [
        ("DDMS_LOG__LEVEL", "warn"),
        ("DDMS_DATABASE__URL", database_url.as_str()),
        ("DDMS_MQTT__MODE", "off"),
    ]
    .map(|(key, value)| (key.to_string(), value.to_string()));
    let driver::Served {
        mut child,
        base,
        token,
        client,
        ..
    } = driver::serve(
        &args.ddms,
        dir.path(),
        &env,
        driver::log_file(&args.out, "serve")?.1,
        Duration::from_secs(30),
    )
    .await?;
    let pid = child.id().context("ddms pid")?;
    let idle = fleet::memory(pid);

    let specs: Vec<RegisterSpec> = registers().into_iter().map(|r| r.spec).collect();
    let bodies = (0..args.devices)
        .map(|i| {
            let addr = device_addr(i, device_port);
            json!({
                "name": format!("bench-{i:05}"), "protocol": "modbus", "group": "bench",
                "modbus": {"host": addr.ip().to_string(), "port": addr.port(),
                           "unit_id": 1, "poll_interval_ms": args.interval_ms,
                           "registers": specs},
            })
        })
        .collect();
    let created = fleet::create_devices(&client, &base, &token, bodies).await?;
    let ids: Vec<String> = created
        .iter()
        .map(|d| d["id"].as_str().map(str::to_string).context("device id"))
        .collect::<Result<_>>()?;
    println!(
        "bench modbus: {} devices created in {:.1} s",
        ids.len(),
        started.elapsed().as_secs_f64()
    );
    wait_polled(&client, &base, ids.len(), Duration::from_secs(120)).await?;
    // Every poller runs: let them settle into their cadence.
    tokio::time::sleep(Duration::from_millis(3 * args.interval_ms)).await;

    let interval = Duration::from_millis(args.interval_ms);
    let dead_count = ((args.devices as f64) * args.dead_fraction).round() as usize;
    let live_ids = &ids[dead_count..];
    let mut phases = Vec::new();
    for phase in ["all_live", "with_dead"] {
        if phase == "with_dead" {
            simulators.make_dead(dead_count).await?;
            tokio::time::sleep(Duration::from_millis(2 * args.interval_ms)).await;
        }
        let before = scrape(&client, &base).await?;
        let from = Utc::now();
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        let elapsed = t0.elapsed().as_secs_f64();
        let to = Utc::now();
        let after = scrape(&client, &base).await?;
        let memory = fleet::memory(pid);
        let ok = after.polls.get("ok").copied().unwrap_or(0.0)
            - before.polls.get("ok").copied().unwrap_or(0.0);
        let all: f64 = after.polls.values().sum::<f64>() - before.polls.values().sum::<f64>();
        let p99_ms = quantile(&before, &after, 0.99) * 1000.0;
        let times =
            fleet::fleet_reading_times(&client, &base, &token, live_ids, "temperature", from, to)
                .await?;
        let cadence: Vec<fleet::DeviceCadence> = times
            .iter()
            .map(|t| fleet::device_cadence(t, Some((from, to)), interval))
            .collect();
        let worst_ms = cadence
            .iter()
            .map(|c| c.worst_late.as_secs_f64() * 1000.0)
            .fold(0.0_f64, f64::max);
        let result = json!({
            "phase": phase,
            "seconds": elapsed,
            "polls_per_s": all / elapsed,
            "ok_polls_per_s": ok / elapsed,
            "p99_poll_ms": p99_ms,
            "rss_mb": memory.rss_mb,
            "live_devices": live_ids.len(),
            "live_lateness_max_ms": worst_ms,
            "live_cadence": fleet::fleet_cadence(&cadence, interval),
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
    let memory = fleet::memory(pid);
    let held = phases
        .iter()
        .all(|p| p["live_cadence"]["held"].as_bool() == Some(true));
    let summary = json!({
        "benchmark": "modbus",
        "devices": args.devices,
        "interval_ms": args.interval_ms,
        "dead_fraction": args.dead_fraction,
        "backend": if args.postgres { "postgres" } else { "sqlite" },
        "phases": phases,
        "polls_per_s": phases[0]["polls_per_s"],
        "p99_poll_ms": phases[0]["p99_poll_ms"],
        "rss_mb": memory.rss_mb,
        "rss_idle_mb": idle.rss_mb,
        "rss_peak_mb": memory.peak_mb,
        "cadence_held": held,
        "worst_live_lateness_intervals": baseline.max(with_dead) / args.interval_ms as f64,
        "dead_extra_lateness_ms": with_dead - baseline,
        "dead_lateness_in_cycles": (with_dead - baseline) / args.interval_ms as f64,
        "load_average": fleet::load_average(),
        "targets": {
            "polls_per_s": ">= 2000", "p99_poll_ms": "< 20",
            "dead_lateness_in_cycles": "<= 1", "rss_mb": "< 200 (1000 devices), < 500 (10,000)",
            "worst_live_lateness_intervals": "<= 1",
        },
    });
    let _ = child.start_kill();
    let _ = child.wait().await;
    if let Some(parent) = std::path::Path::new(&args.out).parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&summary)?)?;
    println!(
        "bench modbus: {:.0} polls/s, p99 poll {:.2} ms, RSS {:.0} MB at the end (peak {:.0} MB), \
         worst live lateness {:.2} intervals, dead devices add {:.0} ms ({:.2} cycles) to live devices' worst lateness",
        summary["polls_per_s"].as_f64().unwrap_or(f64::NAN),
        summary["p99_poll_ms"].as_f64().unwrap_or(f64::NAN),
        memory.rss_mb,
        memory.peak_mb,
        summary["worst_live_lateness_intervals"]
            .as_f64()
            .unwrap_or(f64::NAN),
        with_dead - baseline,
        summary["dead_lateness_in_cycles"].as_f64().unwrap_or(f64::NAN),
    );
    println!("bench modbus: wrote {}", args.out);
    ensure!(
        held,
        "CADENCE SLIPPED: a live device's polls came more than one interval late (see live_cadence)"
    );
    Ok(())
}
