//! `bench sse`: `--clients` EventSource-like clients of one instance, a tenth of them probes
//! that time the `reading` events they get.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{fleet, ingested, percentile, Args, Instance};

#[derive(Default)]
struct SseStats {
    /// Each timed event's id and lag, as one probe saw it.
    lags_ms: Mutex<Vec<(u64, f64)>>,
    events: AtomicU64,
    resets: AtomicU64,
    connected: AtomicUsize,
    lost: AtomicUsize,
    failed: AtomicUsize,
}

/// One EventSource-like client: reads its stream until aborted; a probe times the events that
/// arrive between `measure_from` and `stop`.
async fn sse_client(
    addr: std::net::SocketAddr,
    token: String,
    probe: bool,
    measure_from: Instant,
    stop: Instant,
    stats: Arc<SseStats>,
) {
    let Ok(mut socket) = tokio::net::TcpStream::connect(addr).await else {
        stats.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let request = format!(
        "GET /api/stream HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
    );
    if socket.write_all(request.as_bytes()).await.is_err() {
        stats.failed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut buffer = vec![0u8; 64 * 1024];
    let mut pending = String::new();
    let mut ok = false;
    loop {
        // No timer per read (200,000 reads a second at 10,000 clients, on the cores ddms
        // uses too): the task is aborted when the window ends.
        let n = match socket.read(&mut buffer).await {
            Ok(0) | Err(_) => {
                if ok {
                    stats.lost.fetch_add(1, Ordering::Relaxed);
                    stats.connected.fetch_sub(1, Ordering::Relaxed);
                } else {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            Ok(n) => n,
        };
        if !ok {
            if !buffer[..n].starts_with(b"HTTP/1.1 200") {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            ok = true;
            stats.connected.fetch_add(1, Ordering::Relaxed);
        }
        if !probe {
            continue;
        }
        let now = Utc::now();
        let measuring = (measure_from..stop).contains(&Instant::now());
        pending.push_str(&String::from_utf8_lossy(&buffer[..n]));
        while let Some(end) = pending.find("\n\n") {
            let block: String = pending.drain(..end + 2).collect();
            if block.contains("event: reset") || block.contains("event:reset") {
                stats.resets.fetch_add(1, Ordering::Relaxed);
            }
            let id = block
                .lines()
                .find_map(|line| line.strip_prefix("id: "))
                .and_then(|id| id.trim().parse::<u64>().ok());
            if let (Some(id), Some(at)) = (id, block.find("\"oldest_ts\":\"")) {
                let rest = &block[at + 13..];
                if let Some(ts) = rest
                    .split('"')
                    .next()
                    .and_then(|t| t.parse::<DateTime<Utc>>().ok())
                {
                    if measuring {
                        stats.events.fetch_add(1, Ordering::Relaxed);
                        let lag = (now - ts).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0;
                        stats.lags_ms.lock().unwrap().push((id, lag));
                    }
                }
            }
        }
    }
}

/// Splits each timed lag in two: when the event first reached any probe (poll → commit → event
/// log → the fan-out's first write), and how much later this probe got it (the fan-out's
/// spread over the streams). Returns (first arrival per event, spread per delivery).
fn lag_parts(timed: &[(u64, f64)]) -> (Vec<f64>, Vec<f64>) {
    let mut first_by_id = std::collections::HashMap::<u64, f64>::new();
    for &(id, lag) in timed {
        let first = first_by_id.entry(id).or_insert(lag);
        *first = first.min(lag);
    }
    let spread = timed
        .iter()
        .map(|(id, lag)| lag - first_by_id[id])
        .collect();
    (first_by_id.into_values().collect(), spread)
}

pub async fn bench_sse(args: &Args, instance: &Instance) -> Result<Value> {
    let stats = Arc::new(SseStats::default());
    let pid = instance.child.id().context("ddms exited")?;
    let without_streams = fleet::memory(pid);
    let ramp = Duration::from_secs(5 + args.clients as u64 / 500 * 2);
    let measure_from = Instant::now() + ramp;
    let stop = measure_from + Duration::from_secs(args.seconds);
    let mut tasks = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        tasks.push(tokio::spawn(sse_client(
            instance.addr,
            instance.token.clone(),
            i % 10 == 0,
            measure_from,
            stop,
            stats.clone(),
        )));
        if i % 50 == 49 {
            // Connect in waves, as a fleet of dashboards would after a restart, and under the
            // per-credential API rate limit (default 1000/s): every client uses one token.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let client = reqwest::Client::new();
    tokio::time::sleep_until(measure_from.into()).await;
    let connected_at_start = stats.connected.load(Ordering::Relaxed);
    let ingested_before = ingested(&client, &instance.base).await;
    let t0 = Instant::now();
    // Counted just before the window closes: at `stop` every client ends its stream.
    tokio::time::sleep_until((stop - Duration::from_millis(300)).into()).await;
    let connected_at_end = stats.connected.load(Ordering::Relaxed);
    let with_streams = fleet::memory(pid);
    tokio::time::sleep_until(stop.into()).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let ingested_after = ingested(&client, &instance.base).await;
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        let _ = task.await;
    }
    let timed = stats.lags_ms.lock().unwrap().clone();
    let (mut first, mut spread) = lag_parts(&timed);
    first.sort_by(|a, b| a.total_cmp(b));
    spread.sort_by(|a, b| a.total_cmp(b));
    let mut lags: Vec<f64> = timed.iter().map(|&(_, lag)| lag).collect();
    lags.sort_by(|a, b| a.total_cmp(b));
    let probes = args.clients.div_ceil(10);
    Ok(json!({
        "benchmark": "sse",
        "clients": args.clients,
        "connected_at_start": connected_at_start,
        "connected_at_end": connected_at_end,
        "failed_to_connect": stats.failed.load(Ordering::Relaxed),
        "streams_lost": stats.lost.load(Ordering::Relaxed),
        "devices": args.devices,
        "interval_ms": args.interval_ms,
        "seconds": elapsed,
        "readings_ingested_per_s": (ingested_after - ingested_before) / elapsed,
        "probe_clients": probes,
        "events_per_probe_per_s": stats.events.load(Ordering::Relaxed) as f64 / probes as f64 / elapsed,
        "deliveries_per_s_all_clients": stats.events.load(Ordering::Relaxed) as f64 / probes as f64 / elapsed * args.clients as f64,
        "resets": stats.resets.load(Ordering::Relaxed),
        "rss_without_streams_mb": without_streams.rss_mb,
        "rss_with_streams_mb": with_streams.rss_mb,
        "rss_peak_mb": with_streams.peak_mb,
        "memory_per_stream_kib": (with_streams.rss_mb - without_streams.rss_mb) * 1024.0
            / connected_at_end.max(1) as f64,
        "lag_p50_ms": percentile(&lags, 0.5),
        "lag_p99_ms": percentile(&lags, 0.99),
        "lag_max_ms": percentile(&lags, 1.0),
        "lag_samples": lags.len(),
        "first_arrival_p50_ms": percentile(&first, 0.5),
        "first_arrival_p99_ms": percentile(&first, 0.99),
        "spread_p50_ms": percentile(&spread, 0.5),
        "spread_p99_ms": percentile(&spread, 0.99),
        "targets": {"clients": ">= 1000 (goal 5000)", "lag_p99_ms": "< 250"},
    }))
}
