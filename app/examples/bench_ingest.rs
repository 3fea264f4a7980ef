//! `cargo xtask bench ingest`: MQTT publishers → Mosquitto → ddms → PostgreSQL.
//!
//! Publishers send QoS 1 telemetry at a fixed rate for the measured window; ddms (the release
//! binary, external broker mode) stores it. Reported: sustained readings/s committed, and the
//! publish→commit latency of every reading (taken from the `reading` events ddms publishes on
//! `/api/stream` right after each commit, against the publish time carried in the message).
//! The same run then COPYs as many rows into an identical table of the same database — the
//! fastest way PostgreSQL can take them — and reports ddms as a ratio of that baseline.
//!
//! Usage: bench_ingest --ddms PATH [--seconds S] [--devices N] [--rate MSGS_PER_S]
//!        [--metrics PER_MSG] [--out FILE]

#[path = "../tests/support/services.rs"]
mod services;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{json, Value};
use sqlx::Connection;

use services::{Mosquitto, Postgres, Provider};

struct Args {
    ddms: String,
    seconds: u64,
    devices: usize,
    rate: u64,
    metrics: usize,
    out: String,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        ddms: String::new(),
        seconds: 60,
        devices: 100,
        rate: 5000,
        metrics: 10,
        out: "target/bench/ingest.json".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--ddms" => args.ddms = value()?,
            "--seconds" => args.seconds = value()?.parse()?,
            "--devices" => args.devices = value()?.parse()?,
            "--rate" => args.rate = value()?.parse()?,
            "--metrics" => args.metrics = value()?.parse()?,
            "--out" => args.out = value()?,
            other => bail!("unknown argument {other}"),
        }
    }
    ensure!(!args.ddms.is_empty(), "--ddms PATH is required");
    ensure!(
        args.devices > 0 && args.rate > 0 && args.metrics > 0,
        "sizes must be positive"
    );
    Ok(args)
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

/// One device: publishes `per_second` messages a second until `stop`, each carrying its publish
/// time (strictly increasing, so no two messages of a device share a timestamp).
async fn publisher(
    port: u16,
    device_id: String,
    per_second: f64,
    metrics: usize,
    stop: tokio_util::sync::CancellationToken,
) -> Result<u64> {
    let mut options = MqttOptions::new(format!("bench-{device_id}"), "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_inflight(200);
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    let driver = tokio::spawn(async move {
        loop {
            if eventloop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
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
    // Let the last acknowledgements arrive before the connection goes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = client.disconnect().await;
    driver.abort();
    Ok(sent)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let readings_target = args.rate * args.metrics as u64;
    println!(
        "bench ingest: {} devices, {} msg/s × {} metrics = {} readings/s offered, {} s",
        args.devices, args.rate, args.metrics, readings_target, args.seconds
    );
    let postgres = Postgres::start(Provider::Local).await?;
    let url = postgres.create_database().await?;
    // Sized as ops/mosquitto/mosquitto.conf: a persistent consumer must not lose queued messages.
    let broker = Mosquitto::start(
        Provider::Local,
        "max_inflight_messages 1000\nmax_queued_messages 1000000\nmax_queued_bytes 0\n",
    )
    .await?;

    let dir = tempfile::tempdir()?;
    let env = |cmd: &mut tokio::process::Command| {
        for (key, _) in std::env::vars() {
            if key.starts_with("DDMS_") {
                cmd.env_remove(key);
            }
        }
        cmd.current_dir(dir.path())
            .env("DDMS_DATABASE__URL", &url)
            .env("DDMS_LOG__LEVEL", "warn")
            .env("DDMS_MQTT__MODE", "external")
            .env(
                "DDMS_MQTT__URL",
                format!("mqtt://127.0.0.1:{}", broker.port()),
            )
            .env("DDMS_MQTT__CLIENT_ID", "ddms-bench");
    };
    let mut token_cmd = tokio::process::Command::new(&args.ddms);
    env(&mut token_cmd);
    let out = token_cmd
        .args(["token", "create", "--name", "bench", "--role", "admin"])
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "token create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout)?.trim().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let mut serve = tokio::process::Command::new(&args.ddms);
    env(&mut serve);
    let mut ddms = serve
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while client
        .get(format!("{base}/ready"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
        != 200
    {
        ensure!(Instant::now() < deadline, "ddms did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut device_ids = Vec::new();
    for i in 0..args.devices {
        let body = json!({"name": format!("bench-{i:04}"), "protocol": "mqtt", "group": "bench"});
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
        device_ids.push(created["id"].as_str().context("id")?.to_string());
    }

    // Latency probe: every reading event carries the reading's publish time.
    let latencies = Arc::new(Mutex::new(Vec::<f64>::with_capacity(1 << 22)));
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stream = client
        .get(format!("{base}/api/stream"))
        .bearer_auth(&token)
        .timeout(Duration::from_secs(24 * 3600))
        .send()
        .await?;
    let probe = {
        let latencies = latencies.clone();
        let measuring = measuring.clone();
        tokio::spawn(async move {
            let mut body = stream.bytes_stream();
            let mut buffer = String::new();
            while let Some(Ok(chunk)) = body.next().await {
                let received = Utc::now();
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let block: String = buffer.drain(..end + 2).collect();
                    if !block.contains("event: reading")
                        || !measuring.load(std::sync::atomic::Ordering::Relaxed)
                    {
                        continue;
                    }
                    let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) else {
                        continue;
                    };
                    let Ok(event) = serde_json::from_str::<Value>(data) else {
                        continue;
                    };
                    let mut out = latencies.lock().unwrap();
                    for reading in event["readings"].as_array().into_iter().flatten() {
                        if let Some(ts) = reading["ts"]
                            .as_str()
                            .and_then(|t| t.parse::<DateTime<Utc>>().ok())
                        {
                            out.push(
                                (received - ts).num_microseconds().unwrap_or(0) as f64 / 1000.0,
                            );
                        }
                    }
                }
            }
        })
    };

    let stop = tokio_util::sync::CancellationToken::new();
    let per_device = args.rate as f64 / args.devices as f64;
    let mut publishers = Vec::new();
    for id in &device_ids {
        publishers.push(tokio::spawn(publisher(
            broker.port(),
            id.clone(),
            per_device,
            args.metrics,
            stop.clone(),
        )));
    }
    // Warm up, then measure a steady window.
    tokio::time::sleep(Duration::from_secs(5)).await;
    measuring.store(true, std::sync::atomic::Ordering::Relaxed);
    let before = ingested(&client, &base).await?;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let after = ingested(&client, &base).await?;
    let window = started.elapsed().as_secs_f64();
    measuring.store(false, std::sync::atomic::Ordering::Relaxed);
    stop.cancel();
    let mut sent = 0u64;
    for p in publishers {
        sent += p.await??;
    }
    // Everything sent must end up stored exactly once.
    let expected = sent * args.metrics as u64;
    let mut conn = sqlx::PgConnection::connect(&url).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let stored = loop {
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM readings")
            .fetch_one(&mut conn)
            .await?;
        if stored as u64 >= expected || Instant::now() > deadline {
            break stored as u64;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    probe.abort();
    let rate = (after - before) / window;
    let mut lat = std::mem::take(&mut *latencies.lock().unwrap());
    lat.sort_by(|a, b| a.total_cmp(b));

    // Baseline: COPY the same number of rows into an identical table, same database.
    let rows = ((after - before) as u64).clamp(1, 5_000_000);
    sqlx::query("CREATE TABLE bench_copy (series_id BIGINT NOT NULL, ts TIMESTAMPTZ NOT NULL, value DOUBLE PRECISION NOT NULL, PRIMARY KEY (series_id, ts))")
        .execute(&mut conn)
        .await?;
    let series = (args.devices * args.metrics) as u64;
    let t0 = Utc::now();
    let copy_started = Instant::now();
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
    let copy_rate = rows as f64 / copy_started.elapsed().as_secs_f64();

    let summary = json!({
        "benchmark": "ingest",
        "path": "MQTT publishers → Mosquitto → ddms → PostgreSQL",
        "devices": args.devices,
        "offered_readings_per_s": readings_target,
        "window_s": window,
        "readings_per_s": rate,
        "latency_ms": {
            "p50": percentile(&lat, 0.5), "p99": percentile(&lat, 0.99), "max": percentile(&lat, 1.0),
            "samples": lat.len(),
        },
        "sent_messages": sent,
        "expected_readings": expected,
        "stored_readings": stored,
        "copy_baseline_rows_per_s": copy_rate,
        "ratio_to_copy": rate / copy_rate,
        "targets": { "readings_per_s": ">= 50000 (floor 10000)", "p99_latency_ms": "< 1000" },
    });
    let _ = ddms.start_kill();
    let _ = ddms.wait().await;
    if let Some(parent) = std::path::Path::new(&args.out).parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&summary)?)?;
    println!(
        "bench ingest: {:.0} readings/s sustained (offered {}), p99 publish→commit {:.0} ms, COPY baseline {:.0} rows/s, ddms = {:.2} × COPY; stored {} of {} readings",
        rate, readings_target, percentile(&lat, 0.99), copy_rate, rate / copy_rate, stored, expected
    );
    println!("bench ingest: wrote {}", args.out);
    ensure!(
        stored == expected,
        "stored {stored} readings, expected {expected}"
    );
    Ok(())
}
