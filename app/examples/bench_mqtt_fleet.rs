//! `cargo xtask bench mqtt-fleet`: thousands of MQTT devices connected to one ddms at once, each
//! publishing one QoS 1 reading per interval, through the embedded broker (the default
//! `mqtt.mode`) into SQLite or PostgreSQL.
//!
//! Each device is registered through the API (`POST /api/devices`, `"protocol": "mqtt"`) and
//! connects with its own credentials (client id = username = device id) — one rumqttc
//! connection per device, all on this process's runtime. Connections open at `--connect-rate`
//! per second; then every device publishes `{"ts", "metrics": {"temperature"}}` to
//! `devices/{id}/telemetry` once per interval, the devices' sends spread evenly over the
//! interval. Like a simple device, each keeps one message in flight: a tick that comes while
//! its previous message still waits for its PUBACK (ddms sends it after the commit) is missed,
//! which shows as a gap in its stored readings.
//!
//! Reported: devices connected over the run (the client's count and ddms'
//! `ddms_mqtt_connections`, lowest and highest while publishing), ddms' resident memory (idle,
//! peak, end), messages sent, acknowledged and stored (per device: stored must equal
//! acknowledged), PUBACK latency, and the cadence — per device the worst gap between its stored
//! readings minus the interval, in intervals; more than one interval anywhere fails the run.
//!
//! Usage: bench_mqtt_fleet --ddms PATH [--devices 10000] [--interval-s 10] [--seconds 60]
//!        [--backend sqlite|postgres] [--connect-rate 500] [--env DDMS_KEY=VALUE]... [--out FILE]

#[path = "common/driver.rs"]
mod driver;
#[path = "common/fleet.rs"]
mod fleet;
#[path = "../tests/support/services.rs"]
mod services;
// `services` takes its ports from its parent: the driver's allocator, so the run has one.
use driver::ports;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use chrono::Utc;
use rumqttc::{AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use services::{Postgres, Provider};

#[derive(Clone, Copy, PartialEq, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

struct Args {
    ddms: String,
    devices: usize,
    interval: Duration,
    seconds: u64,
    backend: Backend,
    connect_rate: u64,
    env: Vec<(String, String)>,
    out: String,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        ddms: String::new(),
        devices: 10_000,
        interval: Duration::from_secs(10),
        seconds: 60,
        backend: Backend::Sqlite,
        connect_rate: 500,
        env: Vec::new(),
        out: "target/bench/mqtt-fleet.json".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--ddms" => args.ddms = value()?,
            "--devices" => args.devices = value()?.parse()?,
            "--interval-s" => args.interval = Duration::from_secs_f64(value()?.parse()?),
            "--seconds" => args.seconds = value()?.parse()?,
            "--backend" => {
                args.backend = match value()?.as_str() {
                    "sqlite" => Backend::Sqlite,
                    "postgres" => Backend::Postgres,
                    other => bail!("--backend must be sqlite or postgres, not {other}"),
                }
            }
            "--connect-rate" => args.connect_rate = value()?.parse()?,
            "--env" => {
                let setting = value()?;
                let (key, val) = setting.split_once('=').context("--env KEY=VALUE")?;
                ensure!(key.starts_with("DDMS_"), "--env takes DDMS_* settings");
                args.env.push((key.into(), val.into()));
            }
            "--out" => args.out = value()?,
            other => bail!("unknown argument {other}"),
        }
    }
    ensure!(!args.ddms.is_empty(), "--ddms PATH is required");
    ensure!(
        args.devices > 0 && args.connect_rate > 0 && !args.interval.is_zero(),
        "--devices, --connect-rate and --interval-s must be positive"
    );
    ensure!(
        args.seconds as f64 >= args.interval.as_secs_f64(),
        "--seconds must cover at least one interval"
    );
    Ok(args)
}

/// Counters of the whole fleet, updated by the connections.
#[derive(Default)]
struct Fleet {
    connected: AtomicI64,
    connects: AtomicU64,
    connect_errors: AtomicU64,
    disconnects: AtomicU64,
    /// PUBACK latencies in microseconds, with the round of their message.
    ack_us: Mutex<Vec<(u64, u64)>>,
}

/// One device as its connection and the scheduler see it.
struct Device {
    id: String,
    client: AsyncClient,
    topic: String,
    /// When the message waiting for its PUBACK was sent.
    in_flight: Mutex<Option<(Instant, u64)>>,
    connected: AtomicBool,
    sent: AtomicU64,
    acked: AtomicU64,
    missed: AtomicU64,
}

/// Drives one device's connection until `stop`: connects (again after a failure, a second
/// later), counts connections and matches each PUBACK to the message in flight.
async fn connection(
    mut eventloop: EventLoop,
    device: Arc<Device>,
    fleet: Arc<Fleet>,
    start: tokio::time::Instant,
    stop: CancellationToken,
) {
    tokio::select! {
        () = stop.cancelled() => return,
        () = tokio::time::sleep_until(start) => {}
    }
    loop {
        let event = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) if ack.code == ConnectReturnCode::Success => {
                device.connected.store(true, Ordering::SeqCst);
                fleet.connected.fetch_add(1, Ordering::SeqCst);
                fleet.connects.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                let sent = device
                    .in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                if let Some((sent, round)) = sent {
                    device.acked.fetch_add(1, Ordering::SeqCst);
                    fleet
                        .ack_us
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((round, sent.elapsed().as_micros() as u64));
                }
            }
            Ok(_) => {}
            Err(e) => {
                if device.connected.swap(false, Ordering::SeqCst) {
                    fleet.connected.fetch_sub(1, Ordering::SeqCst);
                    fleet.disconnects.fetch_add(1, Ordering::Relaxed);
                    eprintln!("bench mqtt-fleet: device {} disconnected: {e}", device.id);
                } else if fleet.connect_errors.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("bench mqtt-fleet: device {} cannot connect: {e}", device.id);
                }
                // Reconnect back-off (rumqttc reconnects at the next poll and resends what
                // was in flight).
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
    let _ = device.client.try_disconnect();
}

/// Sends every device's message of each round at its place in the interval (device i at
/// i/N of it) for `rounds` rounds from `t1`; a device whose previous message is still in flight
/// misses its turn. Returns how late, at worst, the scheduler itself sent.
async fn schedule(
    devices: &[Arc<Device>],
    t1: tokio::time::Instant,
    interval: Duration,
    rounds: u64,
) -> Duration {
    let n = devices.len() as u32;
    let mut worst = Duration::ZERO;
    for round in 0..rounds {
        let base = t1 + interval * round as u32;
        for (i, device) in devices.iter().enumerate() {
            let at = base + interval * i as u32 / n;
            tokio::time::sleep_until(at).await;
            worst = worst.max(tokio::time::Instant::now().duration_since(at));
            let mut in_flight = device.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            if in_flight.is_some() {
                device.missed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let value = 20.0 + (round % 100) as f64 / 10.0;
            let payload = json!({
                "ts": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "metrics": {"temperature": value},
            });
            if device
                .client
                .try_publish(&device.topic, QoS::AtLeastOnce, false, payload.to_string())
                .is_ok()
            {
                *in_flight = Some((Instant::now(), round));
                device.sent.fetch_add(1, Ordering::Relaxed);
            } else {
                device.missed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    worst
}

/// Lowest and highest of a quantity sampled over the run.
#[derive(Debug, Clone, Copy)]
struct Range {
    min: f64,
    max: f64,
}

impl Range {
    fn new() -> Self {
        Range {
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }
    fn add(&mut self, v: f64) {
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }
    fn json(&self) -> Value {
        json!({"min": self.min, "max": self.max})
    }
}

fn percentile_ms(sorted_us: &[u64], q: f64) -> f64 {
    sorted_us
        .get(((sorted_us.len() as f64 - 1.0) * q).round() as usize)
        .map_or(f64::NAN, |us| *us as f64 / 1000.0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let n = args.devices;
    println!(
        "bench mqtt-fleet: {n} devices, one QoS 1 message each every {} s, {} s of publishing, {:?}, embedded broker",
        args.interval.as_secs_f64(),
        args.seconds,
        args.backend
    );
    // This process holds a connection per device, and so does ddms (which inherits the limit).
    let fd_limit = fleet::raise_fd_limit(n as u64 + 1024)?;
    let dir = tempfile::tempdir()?;
    let mut _postgres = None;
    let database_url = match args.backend {
        Backend::Sqlite => format!("sqlite://{}", dir.path().join("ddms.db").display()),
        Backend::Postgres => {
            let postgres = Postgres::start(Provider::Local).await?;
            let url = postgres.create_database().await?;
            _postgres = Some(postgres);
            url
        }
    };
    let broker_port = driver::free_port()?;
    let mut settings: Vec<(String, String)> = vec![
        ("DDMS_DATABASE__URL".into(), database_url),
        ("DDMS_LOG__LEVEL".into(), "warn".into()),
        (
            "DDMS_MQTT__EMBEDDED__LISTEN".into(),
            format!("127.0.0.1:{broker_port}"),
        ),
    ];
    settings.extend(args.env.iter().cloned());
    let driver::Served {
        child: mut ddms,
        base,
        token,
        client,
        ..
    } = driver::serve(
        &args.ddms,
        dir.path(),
        &settings,
        driver::log_file(&args.out, "serve")?.1,
        Duration::from_secs(60),
    )
    .await?;
    let pid = ddms.id().context("ddms pid")?;
    let idle = fleet::memory(pid);

    let started = Instant::now();
    let bodies = (0..n)
        .map(|i| json!({"name": format!("fleet-{i:05}"), "protocol": "mqtt", "group": "fleet"}))
        .collect();
    let created = fleet::create_devices(&client, &base, &token, bodies).await?;
    println!(
        "bench mqtt-fleet: {n} devices created in {:.1} s (file-descriptor limit {fd_limit})",
        started.elapsed().as_secs_f64()
    );

    let fleet_state = Arc::new(Fleet::default());
    let stop = CancellationToken::new();
    let mut devices = Vec::with_capacity(n);
    let mut connections = Vec::with_capacity(n);
    let t0 = tokio::time::Instant::now();
    for (i, created) in created.iter().enumerate() {
        let id = created["id"].as_str().context("device id")?.to_string();
        let username = created["mqtt"]["username"].as_str().context("username")?;
        let password = created["mqtt"]["password"].as_str().context("password")?;
        let mut options = MqttOptions::new(username, "127.0.0.1", broker_port);
        options.set_credentials(username, password);
        options.set_keep_alive(Duration::from_secs(60));
        options.set_inflight(1);
        let (mqtt, eventloop) = AsyncClient::new(options, 4);
        let device = Arc::new(Device {
            topic: format!("devices/{id}/telemetry"),
            id,
            client: mqtt,
            in_flight: Mutex::new(None),
            connected: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            missed: AtomicU64::new(0),
        });
        let start = t0 + Duration::from_secs_f64(i as f64 / args.connect_rate as f64);
        connections.push(tokio::spawn(connection(
            eventloop,
            device.clone(),
            fleet_state.clone(),
            start,
            stop.clone(),
        )));
        devices.push(device);
    }
    // Every device connected (or the ramp plus a minute passed).
    let ramp = Duration::from_secs_f64(n as f64 / args.connect_rate as f64);
    let deadline = Instant::now() + ramp + Duration::from_secs(60);
    while (fleet_state.connected.load(Ordering::SeqCst) as usize) < n {
        ensure!(
            Instant::now() < deadline,
            "only {} of {n} devices connected",
            fleet_state.connected.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connect_s = t0.elapsed().as_secs_f64();
    let text = fleet::scrape(&client, &base).await?;
    let broker_connections = fleet::metric(&text, "ddms_mqtt_connections").unwrap_or(f64::NAN);
    let connected_memory = fleet::memory(pid);
    println!(
        "bench mqtt-fleet: {n} devices connected in {connect_s:.1} s (ddms counts {broker_connections}); ddms RSS {:.0} MiB",
        connected_memory.rss_mb
    );

    // Publishing: `rounds` intervals from t1; sampled every second meanwhile.
    let rounds = (args.seconds as f64 / args.interval.as_secs_f64()).floor() as u64;
    let t1 = tokio::time::Instant::now() + Duration::from_secs(1);
    let t1_utc = Utc::now() + chrono::Duration::seconds(1);
    let sampling = CancellationToken::new();
    let sampler = {
        let (client, base, fleet_state, sampling) = (
            client.clone(),
            base.clone(),
            fleet_state.clone(),
            sampling.clone(),
        );
        tokio::spawn(async move {
            let (mut ours, mut theirs, mut rss) = (Range::new(), Range::new(), Range::new());
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    () = sampling.cancelled() => break,
                    _ = tick.tick() => {}
                }
                ours.add(fleet_state.connected.load(Ordering::SeqCst) as f64);
                if let Ok(text) = fleet::scrape(&client, &base).await {
                    if let Some(v) = fleet::metric(&text, "ddms_mqtt_connections") {
                        theirs.add(v);
                    }
                }
                rss.add(fleet::memory(pid).rss_mb);
            }
            (ours, theirs, rss)
        })
    };
    let scheduler_late = schedule(&devices, t1, args.interval, rounds).await;
    let t2_utc = t1_utc + chrono::Duration::from_std(args.interval * rounds as u32)?;
    // The last messages' PUBACKs.
    let drain_deadline = Instant::now() + Duration::from_secs(120);
    let waiting = |devices: &[Arc<Device>]| {
        devices
            .iter()
            .filter(|d| {
                d.in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_some()
            })
            .count()
    };
    while waiting(&devices) > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sampling.cancel();
    let (ours, theirs, rss) = sampler.await?;
    let unacknowledged = waiting(&devices);
    let end_memory = fleet::memory(pid);
    stop.cancel();
    for connection in connections {
        let _ = connection.await;
    }

    // What was stored, device by device.
    let ids: Vec<String> = devices.iter().map(|d| d.id.clone()).collect();
    let times = fleet::fleet_reading_times(
        &client,
        &base,
        &token,
        &ids,
        "temperature",
        t1_utc - chrono::Duration::seconds(1),
        Utc::now() + chrono::Duration::seconds(1),
    )
    .await?;
    let cadence: Vec<fleet::DeviceCadence> = times
        .iter()
        .map(|t| fleet::device_cadence(t, Some((t1_utc, t2_utc)), args.interval))
        .collect();
    let sent: u64 = devices.iter().map(|d| d.sent.load(Ordering::SeqCst)).sum();
    let acked: u64 = devices.iter().map(|d| d.acked.load(Ordering::SeqCst)).sum();
    let missed: u64 = devices
        .iter()
        .map(|d| d.missed.load(Ordering::SeqCst))
        .sum();
    let stored: usize = cadence.iter().map(|c| c.stored).sum();
    let acked_not_stored = devices
        .iter()
        .zip(&cadence)
        .filter(|(d, c)| (c.stored as u64) < d.acked.load(Ordering::SeqCst))
        .count();
    let acks = std::mem::take(&mut *fleet_state.ack_us.lock().unwrap_or_else(|e| e.into_inner()));
    let mut ack_us: Vec<u64> = acks.iter().map(|(_, us)| *us).collect();
    ack_us.sort_unstable();
    // The first round differs: each device's first reading also records its status change.
    let by_round: Vec<Value> = (0..rounds)
        .map(|round| {
            let mut us: Vec<u64> = acks
                .iter()
                .filter(|(r, _)| *r == round)
                .map(|(_, us)| *us)
                .collect();
            us.sort_unstable();
            json!({"round": round, "p50": percentile_ms(&us, 0.5),
                   "p99": percentile_ms(&us, 0.99), "max": percentile_ms(&us, 1.0)})
        })
        .collect();
    let cadence_summary = fleet::fleet_cadence(&cadence, args.interval);
    let held = cadence_summary["held"].as_bool() == Some(true);
    let complete = acked == sent && acked_not_stored == 0 && unacknowledged == 0;
    let summary = json!({
        "benchmark": "mqtt-fleet",
        "backend": format!("{:?}", args.backend).to_lowercase(),
        "devices": n,
        "interval_s": args.interval.as_secs_f64(),
        "rounds": rounds,
        "ddms_settings": args.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "connect_rate_per_s": args.connect_rate,
        "connect_s": connect_s,
        "connected_while_publishing": {"client": ours.json(), "ddms_mqtt_connections": theirs.json()},
        "connects": fleet_state.connects.load(Ordering::SeqCst),
        "connect_errors": fleet_state.connect_errors.load(Ordering::SeqCst),
        "disconnects": fleet_state.disconnects.load(Ordering::SeqCst),
        "rss_mb": {
            "idle": idle.rss_mb,
            "connected": connected_memory.rss_mb,
            "while_publishing": rss.json(),
            "end": end_memory.rss_mb,
            "peak": end_memory.peak_mb,
        },
        "messages": {
            "sent": sent, "acknowledged": acked, "stored": stored,
            "missed_ticks": missed, "unacknowledged_at_end": unacknowledged,
            "devices_with_acknowledged_not_stored": acked_not_stored,
        },
        "puback_ms": {
            "p50": percentile_ms(&ack_us, 0.5), "p99": percentile_ms(&ack_us, 0.99),
            "max": percentile_ms(&ack_us, 1.0), "by_round": by_round,
        },
        "scheduler_worst_late_ms": scheduler_late.as_secs_f64() * 1000.0,
        "cadence": cadence_summary,
        "load_average": fleet::load_average(),
        "targets": {"rss_mb_peak": "< 500", "cadence.worst_lateness_max_intervals": "<= 1",
                    "stored": "= acknowledged = sent"},
    });
    let _ = ddms.start_kill();
    let _ = ddms.wait().await;
    if let Some(parent) = std::path::Path::new(&args.out).parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&summary)?)?;
    println!(
        "bench mqtt-fleet: connected while publishing {}–{} (ddms {}–{}); RSS idle {:.0}, peak {:.0}, end {:.0} MiB; \
         {sent} sent, {acked} acknowledged, {stored} stored, {missed} ticks missed; PUBACK p99 {:.0} ms; \
         worst device lateness {:.2} intervals (scheduler {:.0} ms late at worst); load {}",
        ours.min,
        ours.max,
        theirs.min,
        theirs.max,
        idle.rss_mb,
        end_memory.peak_mb,
        end_memory.rss_mb,
        percentile_ms(&ack_us, 0.99),
        cadence_summary["worst_lateness_max_intervals"]
            .as_f64()
            .unwrap_or(f64::NAN),
        scheduler_late.as_secs_f64() * 1000.0,
        fleet::load_average(),
    );
    println!("bench mqtt-fleet: wrote {}", args.out);
    ensure!(
        complete,
        "MESSAGES: {sent} sent, {acked} acknowledged, {stored} stored, {unacknowledged} still \
         unacknowledged, {acked_not_stored} devices with acknowledged readings not stored"
    );
    ensure!(
        held,
        "CADENCE SLIPPED: a device's readings came more than one interval late (see cadence)"
    );
    Ok(())
}
