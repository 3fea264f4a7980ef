//! The well-behaved clients: a device publishing QoS 1 telemetry and a dashboard.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::server::Device;
use crate::Phase;

const GOOD_RATE_PER_S: f64 = 20.0;
const DASHBOARD_EVERY: Duration = Duration::from_millis(250);
/// The dashboard's chart shows the device's readings of the last this many seconds.
const DASHBOARD_WINDOW_S: i64 = 30;

/// The phase the run is in; `None` during the warm-up and the final drain (not measured).
#[derive(Default)]
pub struct Clock(Mutex<Option<Phase>>);

impl Clock {
    pub fn set(&self, phase: Option<Phase>) {
        *self.0.lock().unwrap() = phase;
    }
    pub fn get(&self) -> Option<Phase> {
        *self.0.lock().unwrap()
    }
}

#[derive(Default)]
pub struct Dashboard {
    pub latencies_ms: Mutex<Vec<(Phase, f64)>>,
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    pub failure_samples: Mutex<Vec<String>>,
    pub stream_events: AtomicU64,
    pub stream_lost: AtomicU64,
}

impl Dashboard {
    pub fn fail(&self, what: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut samples = self.failure_samples.lock().unwrap();
        if samples.len() < 10 {
            samples.push(what);
        }
    }
}

/// What the good device sent and which of its messages the broker acknowledged.
pub struct DeviceRun {
    pub sent: u64,
    /// The `seq` of every message whose PUBACK arrived.
    pub acked: BTreeSet<u64>,
    pub connection_errors: u64,
}

/// The good device: QoS 1 `seq` readings until `stop`, then waits for every acknowledgement.
pub async fn good_device(port: u16, device: Device, stop: CancellationToken) -> Result<DeviceRun> {
    let mut options = MqttOptions::new(device.username.clone(), "127.0.0.1", port);
    options.set_credentials(device.username, device.password);
    options.set_keep_alive(Duration::from_secs(30));
    // A reconnect resumes the session, so unacknowledged messages are sent again.
    options.set_clean_session(false);
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let errors = Arc::new(AtomicU64::new(0));
    // The seqs handed to the client, in order: the event loop sends publishes in the order they
    // were queued, so the n-th outgoing publish carries the n-th seq.
    let queued = Arc::new(Mutex::new(std::collections::VecDeque::new()));
    let driver = {
        let acked = acked.clone();
        let errors = errors.clone();
        let queued = queued.clone();
        tokio::spawn(async move {
            // A PUBACK counts only for a publish that is waiting for one: a duplicated or
            // unexpected PUBACK must not pass for the acknowledgement of another message.
            let mut waiting = std::collections::HashMap::new();
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => {
                        // A resend after a reconnect reuses its packet id and takes no new seq.
                        if let std::collections::hash_map::Entry::Vacant(entry) =
                            waiting.entry(pkid)
                        {
                            if let Some(seq) = queued.lock().unwrap().pop_front() {
                                entry.insert(seq);
                            }
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(ack))) => {
                        if let Some(seq) = waiting.remove(&ack.pkid) {
                            acked.lock().unwrap().insert(seq);
                        } else {
                            eprintln!(
                                "soak: PUBACK for packet id {} that was not waiting",
                                ack.pkid
                            );
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        })
    };
    let topic = format!("devices/{}/telemetry", device.id);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / GOOD_RATE_PER_S));
    let mut last = DateTime::<Utc>::MIN_UTC;
    let mut sent = 0u64;
    while !stop.is_cancelled() {
        tick.tick().await;
        let mut now = Utc::now();
        if now <= last {
            now = last + chrono::Duration::microseconds(1);
        }
        last = now;
        let payload = json!({
            "ts": now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "metrics": { "seq": sent },
        });
        queued.lock().unwrap().push_back(sent);
        client
            .publish(&topic, QoS::AtLeastOnce, false, payload.to_string())
            .await?;
        sent += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while (acked.lock().unwrap().len() as u64) < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = client.disconnect().await;
    driver.abort();
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    Ok(DeviceRun {
        sent,
        acked,
        connection_errors: errors.load(Ordering::Relaxed),
    })
}

/// The device's stored `seq` values, through the API (raw readings, the whole run).
pub async fn stored_values(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    device: &str,
) -> Result<BTreeSet<u64>> {
    let to = Utc::now() + chrono::Duration::minutes(1);
    let from = to - chrono::Duration::hours(2);
    let response = client
        .get(format!("{base}/api/devices/{device}/readings"))
        .bearer_auth(token)
        .query(&[
            ("metric", "seq".to_string()),
            ("from", from.to_rfc3339()),
            ("to", to.to_rfc3339()),
            ("limit", "100000".into()),
        ])
        .send()
        .await?;
    ensure!(
        response.status() == 200,
        "readings: {}",
        response.text().await?
    );
    let points: Vec<Value> = response.json().await?;
    Ok(points
        .iter()
        .filter_map(|p| p["value"].as_f64())
        .map(|v| v as u64)
        .collect())
}

pub async fn dashboard_requests(
    base: String,
    token: String,
    device: String,
    clock: Arc<Clock>,
    stats: Arc<Dashboard>,
    stop: CancellationToken,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let mut tick = tokio::time::interval(DASHBOARD_EVERY);
    let mut i = 0usize;
    while !stop.is_cancelled() {
        tick.tick().await;
        // A fixed window, as a live chart asks for: the same work at the end of the run as at
        // its start, so memory and latency before and after the hostile phase compare like
        // for like (the whole run's readings would make each answer larger than the last).
        let window_start = (Utc::now() - chrono::Duration::seconds(DASHBOARD_WINDOW_S))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let paths = [
            "/api/devices".to_string(),
            format!("/api/devices/{device}/latest"),
            format!("/api/devices/{device}/readings?metric=seq&from={window_start}"),
        ];
        let path = &paths[i % paths.len()];
        i += 1;
        let phase = clock.get();
        let started = Instant::now();
        let result = client
            .get(format!("{base}{path}"))
            .bearer_auth(&token)
            .send()
            .await;
        let outcome = match result {
            Ok(response) if response.status() == 200 => response
                .bytes()
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Ok(response) => Err(format!("{path}: {}", response.status())),
            Err(e) => Err(format!("{path}: {e}")),
        };
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        stats.requests.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(()) => {
                if let Some(phase) = phase {
                    stats.latencies_ms.lock().unwrap().push((phase, ms));
                }
            }
            Err(e) => stats.fail(e),
        }
    }
}

/// One live stream for the whole run; it ending before `stop` is a failure.
pub async fn dashboard_stream(
    base: String,
    token: String,
    stats: Arc<Dashboard>,
    stop: CancellationToken,
) {
    let client = reqwest::Client::new();
    while !stop.is_cancelled() {
        let response = match client
            .get(format!("{base}/api/stream"))
            .bearer_auth(&token)
            .send()
            .await
        {
            Ok(r) if r.status() == 200 => r,
            Ok(r) => {
                stats.fail(format!("/api/stream: {}", r.status()));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => {
                stats.fail(format!("/api/stream: {e}"));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut body = response.bytes_stream();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                chunk = body.next() => match chunk {
                    Some(Ok(bytes)) => {
                        let text = String::from_utf8_lossy(&bytes);
                        stats.stream_events.fetch_add(text.matches("event: reading").count() as u64, Ordering::Relaxed);
                    }
                    _ => {
                        stats.stream_lost.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }
    }
}
