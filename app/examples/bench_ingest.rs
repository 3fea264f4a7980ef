//! `cargo xtask bench ingest`: MQTT publishers → broker → ddms → database, on either of the two
//! shapes ddms runs in:
//!
//! * `--backend postgres` (default): Mosquitto (external broker mode) and PostgreSQL;
//! * `--backend sqlite`: ddms' embedded broker and SQLite — nothing else installed. Devices
//!   register themselves (`POST /api/devices/register`) and publish with their own credentials.
//!
//! Publishers send QoS 1 telemetry at a fixed rate for the measured window; ddms (the release
//! binary) stores it. Reported: sustained readings/s committed, and the publish→commit latency
//! (from the `reading` events ddms streams on `/api/stream` after each commit: per device and
//! batch, the oldest publish time in the batch — the worst case — against the time the event
//! arrives). The same run then loads as many rows into an identical table of the same database
//! the fastest way the database takes them (PostgreSQL: COPY; SQLite: one transaction of
//! prepared inserts) and reports ddms as a ratio of that baseline.
//!
//! With `--rules N`, the run measures one window without alert rules and one with N enabled
//! threshold rules over the benchmark's series (`--rounds R`: R such pairs, alternating their
//! order) and reports the ratio of sustained readings/s (see `bench_ingest/alert_rules.rs`).
//!
//! With `--peer DIR`, ddms runs side by side with the peer ingester of the team's benchmark
//! peer set instead (see `bench_ingest/peer.rs`).
//!
//! Usage: bench_ingest --ddms PATH [--backend postgres|sqlite] [--seconds S] [--devices N]
//!        [--rate MSGS_PER_S] [--metrics PER_MSG] [--rules N [--rounds R]] [--out FILE]
//!        bench_ingest --ddms PATH --peer DIR [--rounds 2] [--procs 2] [--seconds 20]
//!        [--devices 100] [--metrics 10] [--backlog-seconds 5] [--env DDMS_KEY=VALUE]...
//!        [--out FILE]

#[path = "bench_ingest/alert_rules.rs"]
mod alert_rules;
#[path = "bench_ingest/ddms_run.rs"]
mod ddms_run;
#[path = "bench_ingest/drain.rs"]
mod drain;
#[path = "common/driver.rs"]
mod driver;
#[path = "bench_ingest/peer.rs"]
mod peer;
#[path = "../tests/support/services.rs"]
mod services;
// `services` takes its ports from its parent: the driver's allocator, so the run has one.
use driver::ports;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{json, Value};
use sqlx::Connection;

use services::{Mosquitto, Postgres, Provider};

#[derive(Clone, Copy, PartialEq)]
enum Backend {
    Postgres,
    Sqlite,
}

struct Args {
    ddms: String,
    backend: Backend,
    seconds: u64,
    devices: usize,
    rate: u64,
    metrics: usize,
    rules: usize,
    rounds: usize,
    out: String,
    /// `--peer`: the side-by-side run (`peer.rs`); `--seconds` defaults to 20 there.
    peer: Option<peer::PeerArgs>,
    seconds_given: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        ddms: String::new(),
        backend: Backend::Postgres,
        seconds: 60,
        devices: 100,
        rate: 5000,
        metrics: 10,
        rules: 0,
        rounds: 1,
        out: "target/bench/ingest.json".into(),
        peer: None,
        seconds_given: false,
    };
    let mut peer = peer::PeerArgs {
        dir: Default::default(),
        rounds: 2,
        procs: 2,
        devices: 0,
        metrics: 0,
        seconds: 20,
        backlog_seconds: 5.0,
        env: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--ddms" => args.ddms = value()?,
            "--backend" => {
                args.backend = match value()?.as_str() {
                    "postgres" => Backend::Postgres,
                    "sqlite" => Backend::Sqlite,
                    other => bail!("--backend must be postgres or sqlite, not {other}"),
                }
            }
            "--seconds" => {
                args.seconds = value()?.parse()?;
                args.seconds_given = true;
            }
            "--peer" => peer.dir = value()?.into(),
            // Rounds of the side-by-side run, or of the with/without-rules windows.
            "--rounds" => {
                args.rounds = value()?.parse()?;
                peer.rounds = args.rounds;
            }
            "--procs" => peer.procs = value()?.parse()?,
            "--backlog-seconds" => peer.backlog_seconds = value()?.parse()?,
            "--env" => {
                let setting = value()?;
                let (key, val) = setting.split_once('=').context("--env KEY=VALUE")?;
                ensure!(key.starts_with("DDMS_"), "--env takes DDMS_* settings");
                peer.env.push((key.into(), val.into()));
            }
            "--devices" => args.devices = value()?.parse()?,
            "--rate" => args.rate = value()?.parse()?,
            "--metrics" => args.metrics = value()?.parse()?,
            "--rules" => args.rules = value()?.parse()?,
            "--out" => args.out = value()?,
            other => bail!("unknown argument {other}"),
        }
    }
    ensure!(!args.ddms.is_empty(), "--ddms PATH is required");
    ensure!(
        args.devices > 0 && args.rate > 0 && args.metrics > 0,
        "sizes must be positive"
    );
    if !peer.dir.as_os_str().is_empty() {
        peer.devices = args.devices;
        peer.metrics = args.metrics;
        if args.seconds_given {
            peer.seconds = args.seconds;
        }
        args.peer = Some(peer);
    }
    Ok(args)
}

/// Times the `reading` events of the SSE `stream` that `keep` accepts (given the event's text):
/// arrival minus the batch's oldest publish time (`oldest_ts`), in ms, pushed to `latencies`.
fn reading_latencies(
    stream: reqwest::Response,
    latencies: Arc<Mutex<Vec<f64>>>,
    keep: impl Fn(&str) -> bool + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut body = stream.bytes_stream();
        let mut buffer = String::new();
        while let Some(Ok(chunk)) = body.next().await {
            let received = Utc::now();
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                if !block.contains("event: reading") || !keep(&block) {
                    continue;
                }
                let oldest = block
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .and_then(|d| serde_json::from_str::<Value>(d).ok())
                    .and_then(|event| event["oldest_ts"].as_str()?.parse::<DateTime<Utc>>().ok());
                if let Some(ts) = oldest {
                    latencies
                        .lock()
                        .unwrap()
                        .push((received - ts).num_microseconds().unwrap_or(0) as f64 / 1e3);
                }
            }
        }
    })
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

async fn ingested(client: &reqwest::Client, base: &str) -> Result<f64> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("ddms_readings_ingested_total{protocol=\"mqtt\"} "))
        .map(|v| v.parse().unwrap_or(0.0))
        .unwrap_or(0.0))
}

struct Device {
    id: String,
    /// MQTT username and password (embedded broker); none on the open test Mosquitto.
    credentials: Option<(String, String)>,
}

/// One device: publishes `per_second` messages a second until `stop`, each carrying its publish
/// time (strictly increasing, so no two messages of a device share a timestamp).
async fn publisher(
    port: u16,
    device: Device,
    per_second: f64,
    metrics: usize,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(u64, u64)> {
    let Device {
        id: device_id,
        credentials,
    } = device;
    // The embedded broker wants the client id to be the username.
    let client_id = credentials
        .as_ref()
        .map_or_else(|| format!("bench-{device_id}"), |(user, _)| user.clone());
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    if let Some((user, password)) = credentials {
        options.set_credentials(user, password);
    }
    options.set_keep_alive(Duration::from_secs(30));
    options.set_inflight(200);
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let driver = {
        let acked = acked.clone();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                        acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        })
    };
    let topic = format!("devices/{device_id}/telemetry");
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut last = DateTime::<Utc>::MIN_UTC;
    let mut sent = 0u64;
    while !stop.is_cancelled() {
        tick.tick().await;
        let mut now = Utc::now();
        if now <= last {
            now = last + chrono::Duration::microseconds(1);
        }
        last = now;
        let values: serde_json::Map<String, Value> = (0..metrics)
            .map(|m| (format!("m{m}"), json!((sent as f64) + m as f64 / 10.0)))
            .collect();
        let payload = json!({
            "ts": now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "metrics": values,
        });
        client
            .publish(&topic, QoS::AtLeastOnce, false, payload.to_string())
            .await?;
        sent += 1;
    }
    // Every message queued must be acknowledged before the connection goes (with the embedded
    // broker a PUBACK means "committed", so a backlog drains here).
    let deadline = Instant::now() + Duration::from_secs(300);
    while acked.load(std::sync::atomic::Ordering::Relaxed) < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = client.disconnect().await;
    driver.abort();
    Ok((sent, acked.load(std::sync::atomic::Ordering::Relaxed)))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let mut args = parse_args()?;
    if let Some(peer) = args.peer.take() {
        return peer::run(&args.ddms, peer, &args.out).await;
    }
    let readings_target = args.rate * args.metrics as u64;
    let path = match args.backend {
        Backend::Postgres => "MQTT publishers → Mosquitto → ddms → PostgreSQL",
        Backend::Sqlite => "MQTT publishers → ddms (embedded broker) → SQLite",
    };
    println!(
        "bench ingest ({path}): {} devices, {} msg/s × {} metrics = {} readings/s offered, {} s",
        args.devices, args.rate, args.metrics, readings_target, args.seconds
    );
    let dir = tempfile::tempdir()?;
    // Kept alive for the whole run.
    let mut _services: Vec<Box<dyn std::any::Any>> = Vec::new();
    let provisioning_token = uuid::Uuid::new_v4().simple().to_string();
    let (database_url, broker_port, extra_env): (String, u16, Vec<(&str, String)>) =
        match args.backend {
            Backend::Postgres => {
                let postgres = Postgres::start(Provider::Local).await?;
                let url = postgres.create_database().await?;
                // Sized as ops/mosquitto/mosquitto.conf: a persistent consumer must not lose
                // queued messages.
                let broker = Mosquitto::start(
                    Provider::Local,
                    "max_inflight_messages 1000\nmax_queued_messages 1000000\nmax_queued_bytes 0\n",
                )
                .await?;
                let port = broker.port();
                _services.push(Box::new(postgres));
                _services.push(Box::new(broker));
                (
                    url,
                    port,
                    vec![
                        ("DDMS_MQTT__MODE", "external".into()),
                        ("DDMS_MQTT__URL", format!("mqtt://127.0.0.1:{port}")),
                        ("DDMS_MQTT__CLIENT_ID", "ddms-bench".into()),
                    ],
                )
            }
            Backend::Sqlite => {
                let port = driver::free_port()?;
                (
                    format!("sqlite://{}", dir.path().join("ddms.db").display()),
                    port,
                    vec![
                        ("DDMS_MQTT__MODE", "embedded".into()),
                        ("DDMS_MQTT__EMBEDDED__LISTEN", format!("127.0.0.1:{port}")),
                        ("DDMS_PROVISIONING__TOKEN", provisioning_token.clone()),
                    ],
                )
            }
        };
    let mut env = vec![
        ("DDMS_DATABASE__URL".to_string(), database_url.clone()),
        ("DDMS_LOG__LEVEL".to_string(), "warn".to_string()),
    ];
    env.extend(
        extra_env
            .into_iter()
            .map(|(key, value)| (key.to_string(), value)),
    );
    let driver::Served {
        child: mut ddms,
        base,
        token,
        client,
        ..
    } = driver::serve(
        &args.ddms,
        dir.path(),
        &env,
        driver::log_file(&args.out, "serve")?.1,
        Duration::from_secs(60),
    )
    .await?;
    let mut devices = Vec::new();
    for i in 0..args.devices {
        let name = format!("bench-{i:04}");
        devices.push(match args.backend {
            Backend::Postgres => {
                let body = json!({"name": name, "protocol": "mqtt", "group": "bench"});
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
                Device {
                    id: created["id"].as_str().context("id")?.to_string(),
                    credentials: None,
                }
            }
            Backend::Sqlite => {
                // Self-registration is rate-limited per client address: spread the devices
                // over loopback addresses as a fleet would come from many hosts.
                let source =
                    std::net::Ipv4Addr::new(127, 1, (i / 8 / 250) as u8, (i / 8 % 250 + 1) as u8);
                let registrar = reqwest::Client::builder()
                    .local_address(std::net::IpAddr::V4(source))
                    .build()?;
                let response = registrar
                    .post(format!("{base}/api/devices/register"))
                    .header("x-provisioning-token", &provisioning_token)
                    .json(&json!({"name": name, "group": "bench"}))
                    .send()
                    .await?;
                ensure!(
                    response.status() == 201,
                    "register device: {}",
                    response.text().await?
                );
                let registered: Value = response.json().await?;
                Device {
                    id: registered["device_id"]
                        .as_str()
                        .context("device_id")?
                        .to_string(),
                    credentials: Some((
                        registered["mqtt"]["username"]
                            .as_str()
                            .context("username")?
                            .to_string(),
                        registered["mqtt"]["password"]
                            .as_str()
                            .context("password")?
                            .to_string(),
                    )),
                }
            }
        });
    }

    // Latency probe: per device and batch, the oldest publish time the batch holds.
    let latencies = Arc::new(Mutex::new(Vec::<f64>::with_capacity(1 << 22)));
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stream = client
        .get(format!("{base}/api/stream"))
        .bearer_auth(&token)
        .timeout(Duration::from_secs(24 * 3600))
        .send()
        .await?;
    let probe = {
        let measuring = measuring.clone();
        reading_latencies(stream, latencies.clone(), move |_| {
            measuring.load(std::sync::atomic::Ordering::Relaxed)
        })
    };

    let device_ids: Vec<String> = devices.iter().map(|d| d.id.clone()).collect();
    let stop = tokio_util::sync::CancellationToken::new();
    let per_device = args.rate as f64 / args.devices as f64;
    let mut publishers = Vec::new();
    for device in devices {
        publishers.push(tokio::spawn(publisher(
            broker_port,
            device,
            per_device,
            args.metrics,
            stop.clone(),
        )));
    }
    // Warm up, then measure a steady window (with --rules, one per side and round).
    let plan = if args.rules == 0 {
        vec![false]
    } else {
        alert_rules::plan(args.rounds)
    };
    let mut windows = Vec::new();
    // The headline figures (readings/s, latency, the baseline's size) are the first window's,
    // which has no rules.
    let mut lat = Vec::new();
    let mut rule_ids = Vec::new();
    for with_rules in plan {
        if with_rules && rule_ids.is_empty() {
            rule_ids = alert_rules::create(
                &client,
                &base,
                &token,
                &device_ids,
                args.metrics,
                args.rules,
            )
            .await?;
        } else if !with_rules && !rule_ids.is_empty() {
            alert_rules::delete(&client, &base, &token, std::mem::take(&mut rule_ids)).await?;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        latencies.lock().unwrap().clear();
        measuring.store(true, std::sync::atomic::Ordering::Relaxed);
        let cpu_before = alert_rules::cpu_seconds(ddms.id());
        let before = ingested(&client, &base).await?;
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        let after = ingested(&client, &base).await?;
        let window = started.elapsed();
        measuring.store(false, std::sync::atomic::Ordering::Relaxed);
        let mut window_lat = std::mem::take(&mut *latencies.lock().unwrap());
        window_lat.sort_by(|a, b| a.total_cmp(b));
        windows.push(alert_rules::Window {
            with_rules,
            window,
            readings: after - before,
            p99_ms: percentile(&window_lat, 0.99),
            ddms_cpu_s: alert_rules::cpu_seconds(ddms.id()) - cpu_before,
        });
        if windows.len() == 1 {
            lat = window_lat;
        }
    }
    stop.cancel();
    let (readings, window) = (windows[0].readings, windows[0].window.as_secs_f64());
    let (mut sent, mut acked) = (0u64, 0u64);
    for p in publishers {
        let (s, a) = p.await??;
        sent += s;
        acked += a;
    }
    ensure!(
        acked == sent,
        "only {acked} of {sent} messages were acknowledged within 5 min"
    );
    // Every acknowledged message must end up stored exactly once.
    let expected = acked * args.metrics as u64;
    let rows = (readings as u64).clamp(1, 5_000_000);
    let series = (args.devices * args.metrics) as u64;
    let (stored, copy_rate, baseline) = match args.backend {
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&database_url).await?;
            let count = || {
                let pool = pool.clone();
                async move {
                    sqlx::query_scalar("SELECT count(*) FROM readings")
                        .fetch_one(&pool)
                        .await
                }
            };
            let stored = wait_for_count(count, expected).await?;
            let mut conn = sqlx::PgConnection::connect(&database_url).await?;
            (
                stored,
                copy_baseline(&mut conn, rows, series).await?,
                "COPY",
            )
        }
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&database_url).await?;
            let count = || {
                let pool = pool.clone();
                async move {
                    sqlx::query_scalar("SELECT count(*) FROM readings")
                        .fetch_one(&pool)
                        .await
                }
            };
            let stored = wait_for_count(count, expected).await?;
            let baseline_url = format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("baseline.db").display()
            );
            let mut baseline = sqlx::SqliteConnection::connect(&baseline_url).await?;
            (
                stored,
                sqlite_baseline(&mut baseline, rows, series).await?,
                "one transaction of prepared inserts",
            )
        }
    };
    probe.abort();
    let rate = readings / window;

    let targets = match args.backend {
        Backend::Postgres => {
            json!({ "readings_per_s": ">= 50000 (floor 10000)", "p99_latency_ms": "< 1000" })
        }
        Backend::Sqlite => json!({ "readings_per_s": ">= 20000", "p99_latency_ms": "< 1000" }),
    };
    let mut summary = json!({
        "benchmark": "ingest",
        "path": path,
        "devices": args.devices,
        "offered_readings_per_s": readings_target,
        "window_s": window,
        "readings_per_s": rate,
        "latency_ms": {
            "what": "per device and batch: oldest publish time in the batch → its event on /api/stream",
            "p50": percentile(&lat, 0.5), "p99": percentile(&lat, 0.99), "max": percentile(&lat, 1.0),
            "samples": lat.len(),
        },
        "sent_messages": sent,
        "expected_readings": expected,
        "stored_readings": stored,
        "baseline": baseline,
        "copy_baseline_rows_per_s": copy_rate,
        "ratio_to_copy": rate / copy_rate,
        "targets": targets,
    });
    if args.rules > 0 {
        let (section, line) = alert_rules::summary(args.rules, &windows);
        summary["alert_rules"] = section;
        println!("{line}");
    }
    let _ = ddms.start_kill();
    let _ = ddms.wait().await;
    if let Some(parent) = std::path::Path::new(&args.out).parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&summary)?)?;
    println!(
        "bench ingest: {:.0} readings/s sustained (offered {}), p99 publish→commit {:.0} ms, baseline ({baseline}) {:.0} rows/s, ddms = {:.2} × baseline; stored {} of {} readings",
        rate, readings_target, percentile(&lat, 0.99), copy_rate, rate / copy_rate, stored, expected
    );
    println!("bench ingest: wrote {}", args.out);
    ensure!(
        stored == expected,
        "stored {stored} readings, expected {expected}"
    );
    Ok(())
}

/// Waits (up to 5 min) until `count` reaches `expected`; returns the last count.
async fn wait_for_count<F, Fut>(mut count: F, expected: u64) -> Result<u64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<i64, sqlx::Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let stored = count().await? as u64;
        if stored >= expected || Instant::now() > deadline {
            return Ok(stored);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// PostgreSQL's fastest load: COPY the same number of rows into an identical table.
async fn copy_baseline(conn: &mut sqlx::PgConnection, rows: u64, series: u64) -> Result<f64> {
    sqlx::query("CREATE TABLE bench_copy (series_id BIGINT NOT NULL, ts TIMESTAMPTZ NOT NULL, value DOUBLE PRECISION NOT NULL, PRIMARY KEY (series_id, ts))")
        .execute(&mut *conn)
        .await?;
    let t0 = Utc::now();
    let started = Instant::now();
    let mut copy = conn
        .copy_in_raw("COPY bench_copy FROM STDIN (FORMAT csv)")
        .await?;
    let mut chunk = String::with_capacity(1 << 20);
    for i in 0..rows {
        let ts = t0 + chrono::Duration::microseconds((i / series) as i64);
        chunk.push_str(&format!(
            "{},{},{}\n",
            i % series,
            ts.to_rfc3339(),
            i as f64
        ));
        if chunk.len() > (1 << 20) - 200 {
            copy.send(chunk.as_bytes()).await?;
            chunk.clear();
        }
    }
    copy.send(chunk.as_bytes()).await?;
    copy.finish().await?;
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

/// SQLite's fastest load: one transaction of one prepared insert into an identical table
/// (WAL, as ddms runs it).
async fn sqlite_baseline(conn: &mut sqlx::SqliteConnection, rows: u64, series: u64) -> Result<f64> {
    sqlx::query("PRAGMA journal_mode = WAL")
        .execute(&mut *conn)
        .await?;
    sqlx::query("CREATE TABLE readings_baseline (series_id INTEGER NOT NULL, ts INTEGER NOT NULL, value REAL NOT NULL, PRIMARY KEY (series_id, ts)) WITHOUT ROWID")
        .execute(&mut *conn)
        .await?;
    let t0 = Utc::now().timestamp_micros();
    let started = Instant::now();
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    for i in 0..rows {
        sqlx::query("INSERT INTO readings_baseline (series_id, ts, value) VALUES (?, ?, ?)")
            .bind((i % series) as i64)
            .bind(t0 + (i / series) as i64)
            .bind(i as f64)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}
