//! `cargo xtask bench sse` and `cargo xtask bench api`: the dashboard's side of one `ddms`
//! instance (release binary, SQLite, nothing else installed) while it ingests.
//!
//! Ingest load in both: `--devices` simulated Modbus devices (ddms' own simulator, in this
//! process) with two registers each (plus `--extra-registers`), polled every `--interval-ms`.
//!
//! * `sse`: `--clients` concurrent `/api/stream` clients (plain TCP, HTTP/1.1, like browsers'
//!   EventSource) held open for `--seconds`. Every tenth client parses its events; event lag =
//!   arrival time − the poll time the `reading` event carries (`oldest_ts`), i.e. device poll →
//!   commit → event log → fan-out → socket. Reported: p50/p99/max lag, events per probe, resets
//!   (a client too slow for the broadcast buffer) and clients that lost their stream.
//! * `api`: `--rate` requests/s of mixed reads (device list, one device, latest values, history
//!   raw 1 h, 1-minute rollups over 24 h, 1-hour rollups over 7 d and 30 d, open notifications)
//!   sent open-loop for `--seconds` — each request leaves at its scheduled time, whether or not
//!   earlier ones have answered, and its latency counts from that time (no coordinated
//!   omission). `--history-devices` devices get 30 days of one-per-minute readings first
//!   (through the store, which maintains the rollups as ddms does), so history queries read
//!   real amounts of data.
//!
//! Usage: bench_web sse|api --ddms PATH [--devices N] [--interval-ms I] [--seconds S]
//!        [--clients N] [--rate R] [--history-devices N] [--extra-registers N] [--out FILE]

#[path = "common/driver.rs"]
mod driver;
#[path = "bench_web/sse.rs"]
mod sse;
// For `fleet::memory` and `fleet::raise_fd_limit`.
#[path = "common/fleet.rs"]
#[allow(dead_code)]
mod fleet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use chrono::Utc;
use ddms::modbus::register_map::{RegisterKind, RegisterSpec, ValueType};
use ddms::modbus::simulator::{ModbusSimulator, SimulatedRegister, Waveform};
use serde_json::{json, Value};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Sse,
    Api,
}

struct Args {
    mode: Mode,
    ddms: String,
    devices: usize,
    interval_ms: u64,
    seconds: u64,
    clients: usize,
    rate: u64,
    history_devices: usize,
    extra_registers: usize,
    out: String,
}

fn parse_args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let mode = match it.next().as_deref() {
        Some("sse") => Mode::Sse,
        Some("api") => Mode::Api,
        other => bail!("first argument must be sse or api, not {other:?}"),
    };
    let mut args = Args {
        mode,
        ddms: String::new(),
        devices: 100,
        interval_ms: 1000,
        seconds: 30,
        clients: 1000,
        rate: 500,
        history_devices: 20,
        extra_registers: 0,
        out: String::new(),
    };
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--ddms" => args.ddms = value()?,
            "--devices" => args.devices = value()?.parse()?,
            "--interval-ms" => args.interval_ms = value()?.parse()?,
            "--seconds" => args.seconds = value()?.parse()?,
            "--clients" => args.clients = value()?.parse()?,
            "--rate" => args.rate = value()?.parse()?,
            "--history-devices" => args.history_devices = value()?.parse()?,
            "--extra-registers" => args.extra_registers = value()?.parse()?,
            "--out" => args.out = value()?,
            other => bail!("unknown argument {other}"),
        }
    }
    ensure!(!args.ddms.is_empty(), "--ddms PATH is required");
    ensure!(
        args.devices > 0 && args.rate > 0 && args.clients > 0,
        "sizes must be positive"
    );
    if args.out.is_empty() {
        args.out = format!(
            "target/bench/{}.json",
            if mode == Mode::Sse { "sse" } else { "api" }
        );
    }
    Ok(args)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

/// `temperature` and `pressure`, then `extra` more holding registers (`r2`, `r3`, …; two
/// words each, one read with the temperature's) for a heavier ingest from the same devices.
fn registers(extra: usize) -> Vec<SimulatedRegister> {
    let mut temperature =
        RegisterSpec::new("temperature", RegisterKind::Holding, 0, ValueType::F32);
    temperature.unit = Some("°C".into());
    vec![
        SimulatedRegister::new(
            temperature,
            Waveform::Sine {
                mean: 50.0,
                amplitude: 10.0,
                period: Duration::from_secs(60),
            },
        ),
        SimulatedRegister::new(
            RegisterSpec::new("pressure", RegisterKind::Input, 10, ValueType::U16),
            Waveform::Ramp {
                from: 100.0,
                to: 400.0,
                period: Duration::from_secs(90),
            },
        ),
    ]
    .into_iter()
    .chain((0..extra).map(|i| {
        SimulatedRegister::new(
            RegisterSpec::new(
                format!("r{}", i + 2),
                RegisterKind::Holding,
                2 + 2 * i as u16,
                ValueType::F32,
            ),
            Waveform::Sine {
                mean: i as f64,
                amplitude: 1.0,
                period: Duration::from_secs(30),
            },
        )
    }))
    .collect()
}

struct Instance {
    child: tokio::process::Child,
    base: String,
    addr: std::net::SocketAddr,
    token: String,
    database_url: String,
    _dir: tempfile::TempDir,
}

async fn start_ddms(ddms: &str, out: &str) -> Result<Instance> {
    let dir = tempfile::tempdir()?;
    let database_url = format!("sqlite://{}", dir.path().join("ddms.db").display());
    let env = [
        ("DDMS_LOG__LEVEL", "warn"),
        ("DDMS_MQTT__MODE", "off"),
        ("DDMS_DATABASE__URL", database_url.as_str()),
    ]
    .map(|(key, value)| (key.to_string(), value.to_string()));
    let driver::Served {
        child,
        base,
        addr,
        token,
        ..
    } = driver::serve(
        ddms,
        dir.path(),
        &env,
        driver::log_file(out, "serve")?.1,
        Duration::from_secs(30),
    )
    .await?;
    Ok(Instance {
        child,
        base,
        addr,
        token,
        database_url,
        _dir: dir,
    })
}

/// The simulated devices, served from a runtime of their own: devices are machines of their
/// own, so a device's answer must not queue behind the thousands of stream clients this
/// process also runs (readings carry the time their poll started, so that wait would count
/// as event lag).
struct Devices {
    simulators: Vec<ModbusSimulator>,
    runtime: tokio::runtime::Runtime,
}

impl Devices {
    fn stop(self) {
        drop(self.simulators);
        self.runtime.shutdown_background();
    }
}

/// Starts the simulators and creates one polled device for each; returns the device ids.
async fn ingest_load(
    instance: &Instance,
    devices: usize,
    extra_registers: usize,
    interval_ms: u64,
) -> Result<(Devices, Vec<String>)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("devices")
        .enable_all()
        .build()?;
    let client = reqwest::Client::new();
    let specs: Vec<RegisterSpec> = registers(extra_registers)
        .into_iter()
        .map(|r| r.spec)
        .collect();
    let mut simulators = Vec::with_capacity(devices);
    let mut ids = Vec::with_capacity(devices);
    for i in 0..devices {
        let simulator = runtime
            .spawn(ModbusSimulator::start(registers(extra_registers)))
            .await??;
        let body = json!({
            "name": format!("bench-{i:05}"), "protocol": "modbus", "group": format!("line-{}", i % 5),
            "modbus": {"host": "127.0.0.1", "port": simulator.port(), "unit_id": 1,
                       "poll_interval_ms": interval_ms, "registers": specs},
        });
        let response = client
            .post(format!("{}/api/devices", instance.base))
            .bearer_auth(&instance.token)
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
        simulators.push(simulator);
    }
    Ok((
        Devices {
            simulators,
            runtime,
        },
        ids,
    ))
}

/// Waits until ddms stores at least 90 % of the `expected` readings/s over two seconds: the
/// figures are taken while ingest runs at its rate, not while thousands of devices are still
/// making their first connection (each a status change of its own).
async fn steady_ingest(instance: &Instance, expected: f64, when: &str) -> Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    let started = Instant::now();
    loop {
        let before = ingested(&client, &instance.base).await;
        let t0 = Instant::now();
        // sleep: the window over which the rate is measured
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rate = (ingested(&client, &instance.base).await - before) / t0.elapsed().as_secs_f64();
        if rate >= 0.9 * expected {
            println!(
                "bench: ingest steady {when}: {rate:.0} readings/s (after {:.1} s)",
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "ingest did not reach 90 % of {expected:.0} readings/s {when} within 180 s (last {rate:.0}/s)"
        );
    }
}

async fn ingested(client: &reqwest::Client, base: &str) -> f64 {
    let Ok(response) = client.get(format!("{base}/metrics")).send().await else {
        return f64::NAN;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter_map(|l| l.strip_prefix("ddms_readings_ingested_total{protocol=\"modbus\"} "))
        .filter_map(|v| v.parse::<f64>().ok())
        .sum()
}

/// 30 days of one reading a minute per metric for the first `n` devices, written through the
/// store (which keeps the rollups, as ddms' writer does) beside the running instance.
async fn seed_history(instance: &Instance, ids: &[String], n: usize) -> Result<()> {
    let store = ddms::store::connect(
        &instance.database_url.clone().into(),
        2,
        Duration::from_secs(30),
    )
    .await?;
    let now = Utc::now();
    for id in ids.iter().take(n) {
        let device: uuid::Uuid = id.parse()?;
        for metric in ["temperature", "pressure"] {
            let series = store.ensure_series(device, metric, None).await?;
            let readings: Vec<ddms::store::Reading> = (1..=30 * 1440)
                .map(|m| ddms::store::Reading {
                    series,
                    ts: now - chrono::Duration::minutes(m) - chrono::Duration::seconds(30),
                    value: 50.0 + 10.0 * (m as f64 / 60.0).sin(),
                })
                .collect();
            for chunk in readings.chunks(5000) {
                store.insert_readings(chunk).await?;
            }
        }
    }
    Ok(())
}

async fn bench_api(args: &Args, instance: &Instance, ids: &[String]) -> Result<Value> {
    let started = Instant::now();
    seed_history(instance, ids, args.history_devices.min(ids.len())).await?;
    println!(
        "bench api: seeded 30 days of history for {} devices in {:.1} s",
        args.history_devices.min(ids.len()),
        started.elapsed().as_secs_f64()
    );
    let expected = args.devices as f64 * registers(args.extra_registers).len() as f64 * 1000.0
        / args.interval_ms as f64;
    steady_ingest(instance, expected, "after the history was seeded").await?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(256)
        .build()?;
    let history: Vec<String> = ids
        .iter()
        .take(args.history_devices.max(1))
        .cloned()
        .collect();
    let total = args.rate * args.seconds;
    let latencies: Arc<Mutex<Vec<(usize, f64, u16)>>> =
        Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let kinds = [
        "devices",
        "device",
        "latest",
        "latest",
        "raw_1h",
        "rollup_1m_24h",
        "rollup_1h_7d",
        "rollup_1h_30d",
        "notifications",
        "device",
    ];
    let ingested_before = ingested(&client, &instance.base).await;
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let at = t0 + Duration::from_secs_f64(i as f64 / args.rate as f64);
        tokio::time::sleep_until(at.into()).await;
        let kind = i as usize % kinds.len();
        let id = &ids[i as usize % ids.len()];
        let hid = &history[i as usize % history.len()];
        let now = Utc::now();
        let range = |hours: i64| {
            format!(
                "from={}&to={}",
                (now - chrono::Duration::hours(hours))
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )
        };
        let path = match kinds[kind] {
            "devices" => "/api/devices".to_string(),
            "device" => format!("/api/devices/{id}"),
            "latest" => format!("/api/devices/{id}/latest"),
            "raw_1h" => format!(
                "/api/devices/{hid}/readings?metric=temperature&step=raw&{}",
                range(1)
            ),
            "rollup_1m_24h" => format!(
                "/api/devices/{hid}/readings?metric=temperature&step=1m&{}",
                range(24)
            ),
            "rollup_1h_7d" => format!(
                "/api/devices/{hid}/readings?metric=pressure&step=1h&{}",
                range(24 * 7)
            ),
            "rollup_1h_30d" => format!(
                "/api/devices/{hid}/readings?metric=temperature&step=1h&{}",
                range(24 * 30)
            ),
            _ => "/api/notifications/connection-failures".to_string(),
        };
        let url = format!("{}{path}", instance.base);
        let client = client.clone();
        let token = instance.token.clone();
        let latencies = latencies.clone();
        tasks.push(tokio::spawn(async move {
            let status = match client.get(url).bearer_auth(token).send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let _ = response.bytes().await;
                    status
                }
                Err(_) => 0,
            };
            // From the scheduled start, not from when the request got going.
            let ms = at.elapsed().as_secs_f64() * 1000.0;
            latencies.lock().unwrap().push((kind, ms, status));
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let ingested_after = ingested(&client, &instance.base).await;
    let samples = latencies.lock().unwrap().clone();
    let mut all: Vec<f64> = samples.iter().map(|s| s.1).collect();
    all.sort_by(|a, b| a.total_cmp(b));
    let errors = samples.iter().filter(|s| s.2 != 200).count();
    let mut per_kind = serde_json::Map::new();
    for (k, name) in kinds.iter().enumerate() {
        if per_kind.contains_key(*name) {
            continue;
        }
        let mut v: Vec<f64> = samples
            .iter()
            .filter(|s| kinds[s.0] == *name)
            .map(|s| s.1)
            .collect();
        v.sort_by(|a, b| a.total_cmp(b));
        let _ = k;
        per_kind.insert(
            name.to_string(),
            json!({"n": v.len(), "p50_ms": percentile(&v, 0.5), "p99_ms": percentile(&v, 0.99)}),
        );
    }
    Ok(json!({
        "benchmark": "api",
        "rate_offered": args.rate,
        "requests": samples.len(),
        "served_per_s": samples.len() as f64 / elapsed,
        "errors": errors,
        "devices": args.devices,
        "history_devices": args.history_devices,
        "readings_ingested_per_s": (ingested_after - ingested_before) / elapsed,
        "p50_ms": percentile(&all, 0.5),
        "p99_ms": percentile(&all, 0.99),
        "max_ms": percentile(&all, 1.0),
        "by_kind": per_kind,
        "targets": {"rate": ">= 500 requests/s", "p99_ms": "< 25"},
    }))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    // One socket per client here, and as many in the ddms child, which inherits the limit.
    fleet::raise_fd_limit(args.clients as u64 + 4096)?;
    let name = if args.mode == Mode::Sse { "sse" } else { "api" };
    let mut instance = start_ddms(&args.ddms, &args.out).await?;
    let (devices, ids) = ingest_load(
        &instance,
        args.devices,
        args.extra_registers,
        args.interval_ms,
    )
    .await?;
    println!(
        "bench {name}: {} Modbus devices polled every {} ms",
        args.devices, args.interval_ms
    );
    let expected = args.devices as f64 * registers(args.extra_registers).len() as f64 * 1000.0
        / args.interval_ms as f64;
    steady_ingest(&instance, expected, "after the devices were created").await?;
    let summary = match args.mode {
        Mode::Sse => sse::bench_sse(&args, &instance).await?,
        Mode::Api => bench_api(&args, &instance, &ids).await?,
    };
    let _ = instance.child.start_kill();
    let _ = instance.child.wait().await;
    devices.stop();
    if let Some(parent) = std::path::Path::new(&args.out).parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&summary)?)?;
    println!("bench {name}: {summary}");
    match args.mode {
        Mode::Sse => println!(
            "bench sse: {} clients ({} still connected at the end, {} lost), {:.0} readings/s ingested, event lag p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (first arrival p99 {:.1} ms, spread over the streams p99 {:.1} ms), {} resets; RSS {:.0} MiB with the streams ({:.1} KiB a stream)",
            args.clients,
            summary["connected_at_end"],
            summary["streams_lost"],
            summary["readings_ingested_per_s"].as_f64().unwrap_or(f64::NAN),
            summary["lag_p50_ms"].as_f64().unwrap_or(f64::NAN),
            summary["lag_p99_ms"].as_f64().unwrap_or(f64::NAN),
            summary["lag_max_ms"].as_f64().unwrap_or(f64::NAN),
            summary["first_arrival_p99_ms"].as_f64().unwrap_or(f64::NAN),
            summary["spread_p99_ms"].as_f64().unwrap_or(f64::NAN),
            summary["resets"],
            summary["rss_with_streams_mb"].as_f64().unwrap_or(f64::NAN),
            summary["memory_per_stream_kib"].as_f64().unwrap_or(f64::NAN),
        ),
        Mode::Api => println!(
            "bench api: {:.0} requests/s served of {} offered, {} errors, {:.0} readings/s ingested, latency p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
            summary["served_per_s"].as_f64().unwrap_or(f64::NAN),
            args.rate,
            summary["errors"],
            summary["readings_ingested_per_s"].as_f64().unwrap_or(f64::NAN),
            summary["p50_ms"].as_f64().unwrap_or(f64::NAN),
            summary["p99_ms"].as_f64().unwrap_or(f64::NAN),
            summary["max_ms"].as_f64().unwrap_or(f64::NAN),
        ),
    }
    println!("bench {name}: wrote {}", args.out);
    Ok(())
}
