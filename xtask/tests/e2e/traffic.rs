//! Traffic for the deploy scenarios and `cargo xtask bench deploy`: a load generator of API
//! reads through each host's nginx (HTTPS, the cluster's test CA), SSE clients that reconnect
//! with `Last-Event-ID` as a browser's EventSource does, the reference replay they are judged
//! against, and a tiny Modbus TCP device that keeps readings (hence events) flowing.

// The bench driver uses only part of this.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};

/// One nginx front door.
#[derive(Debug, Clone)]
pub struct Target {
    /// The inventory host name.
    pub host: String,
    /// `https://<address>` (no trailing slash).
    pub base: String,
}

/// An HTTPS client that trusts only `ca_pem` and sends `token`.
pub fn client(ca_pem: &[u8], token: &str, timeout: Option<Duration>) -> Result<reqwest::Client> {
    client_with(ca_pem, token, timeout, None)
}

/// [`client`] keeping at most `idle` idle connections per host (reqwest's default: no limit).
fn client_with(
    ca_pem: &[u8],
    token: &str,
    timeout: Option<Duration>,
    idle: Option<usize>,
) -> Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse()?,
    );
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem)?)
        .default_headers(headers)
        .connect_timeout(Duration::from_secs(5));
    if let Some(timeout) = timeout {
        builder = builder.timeout(timeout);
    }
    if let Some(idle) = idle {
        builder = builder.pool_max_idle_per_host(idle);
    }
    Ok(builder.build()?)
}

/// What the load generator saw.
#[derive(Debug, Default, Clone)]
pub struct LoadStats {
    pub sent: u64,
    pub ok: u64,
    /// Requests sent again, once, because the server closed a kept-alive connection before
    /// answering (what browsers and most HTTP clients do for an idempotent request; nginx
    /// closes idle keep-alive connections when it reloads). Counted, not hidden.
    pub resent_after_keepalive_close: u64,
    pub failed: u64,
    /// Failures by kind (`status 502`, `connect`, `reset/closed`, …).
    pub by_kind: BTreeMap<String, u64>,
    /// The first failures in full, with when they happened.
    pub samples: Vec<String>,
    /// Requests answered per host.
    pub per_host: BTreeMap<String, u64>,
    /// Milliseconds from send to the end of the body, of every answered request.
    pub latency_ms: Vec<u32>,
    /// The most requests in flight at once (to one host).
    pub max_in_flight: usize,
    pub elapsed: Duration,
}

impl LoadStats {
    /// Requests per second per host over the run.
    pub fn rate_per_host(&self) -> BTreeMap<String, f64> {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        self.per_host
            .iter()
            .map(|(h, n)| (h.clone(), *n as f64 / secs))
            .collect()
    }

    /// The `q` quantile (0..=1) of the answered requests' latency, in milliseconds.
    pub fn latency_quantile(&self, q: f64) -> Option<u32> {
        let mut sorted = self.latency_ms.clone();
        sorted.sort_unstable();
        let last = sorted.len().checked_sub(1)?;
        Some(sorted[(last as f64 * q.clamp(0.0, 1.0)).round() as usize])
    }
}

/// One SSE client's history.
#[derive(Debug, Default, Clone)]
pub struct SseLog {
    pub host: String,
    /// Event ids in the order received.
    pub ids: Vec<u64>,
    /// When each stream was established (response headers received).
    pub connects: Vec<SystemTime>,
    /// How many of `ids` had arrived when each stream of `connects` was established: the
    /// events a stream carried are those received after it.
    pub ids_at_connect: Vec<usize>,
    /// When and how each stream ended.
    pub ends: Vec<(SystemTime, String)>,
    /// `id:` values that were not integers, or that did not increase.
    pub bad_ids: Vec<String>,
}

/// Load generator and SSE clients running on their own runtime until [`Traffic::stop`].
pub struct Traffic {
    runtime: tokio::runtime::Runtime,
    /// The SSE clients' own runtime: a load generator lagging on a busy machine must not delay
    /// when they notice a stream's end (that is what the scenarios time).
    sse_runtime: tokio::runtime::Runtime,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<LoadStats>>,
    sse: Vec<Arc<Mutex<SseLog>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

/// Path the load generator reads: an authenticated API read that touches the database.
pub const LOAD_PATH: &str = "/api/devices";

impl Traffic {
    /// `rate` API reads per second to each target, and `sse_clients` streams spread over the
    /// targets in turn.
    pub fn start(
        targets: &[Target],
        ca_pem: &[u8],
        token: &str,
        rate: f64,
        sse_clients: usize,
    ) -> Result<Traffic> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let sse_runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(LoadStats::default()));
        let api = {
            let _guard = runtime.enter();
            client(ca_pem, token, Some(Duration::from_secs(10)))?
        };
        // Keeps no idle connection: every request on it opens a new one.
        let fresh = {
            let _guard = runtime.enter();
            client_with(ca_pem, token, Some(Duration::from_secs(10)), Some(0))?
        };
        let stream_client = {
            let _guard = sse_runtime.enter();
            client(ca_pem, token, None)?
        };
        let mut tasks = Vec::new();
        if rate > 0.0 {
            for target in targets {
                tasks.push(runtime.spawn(load_loop(
                    api.clone(),
                    fresh.clone(),
                    target.clone(),
                    rate,
                    stop.clone(),
                    stats.clone(),
                )));
            }
        }
        let mut sse = Vec::new();
        for i in 0..sse_clients {
            let target = targets[i % targets.len()].clone();
            let log = Arc::new(Mutex::new(SseLog {
                host: target.host.clone(),
                ..SseLog::default()
            }));
            sse.push(log.clone());
            tasks.push(sse_runtime.spawn(sse_loop(
                stream_client.clone(),
                target,
                stop.clone(),
                log,
            )));
        }
        Ok(Traffic {
            runtime,
            sse_runtime,
            stop,
            stats,
            sse,
            tasks,
            started: Instant::now(),
        })
    }

    /// The load statistics so far.
    pub fn stats(&self) -> LoadStats {
        let mut stats = self.stats.lock().unwrap().clone();
        stats.elapsed = self.started.elapsed();
        stats
    }

    /// The SSE clients' logs so far.
    pub fn sse(&self) -> Vec<SseLog> {
        self.sse.iter().map(|l| l.lock().unwrap().clone()).collect()
    }

    /// Stops everything (in-flight requests finish) and returns the final figures.
    pub fn stop(self) -> (LoadStats, Vec<SseLog>) {
        self.stop.store(true, Ordering::SeqCst);
        let elapsed = self.started.elapsed();
        let tasks = self.tasks;
        self.runtime.block_on(async move {
            for task in tasks {
                let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
            }
        });
        let mut stats = self.stats.lock().unwrap().clone();
        stats.elapsed = elapsed;
        let sse = self.sse.iter().map(|l| l.lock().unwrap().clone()).collect();
        self.runtime.shutdown_timeout(Duration::from_secs(1));
        self.sse_runtime.shutdown_timeout(Duration::from_secs(1));
        (stats, sse)
    }
}

fn failure_kind(e: &reqwest::Error) -> String {
    let mut chain = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    let lower = chain.to_lowercase();
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else if lower.contains("reset") || lower.contains("closed") || lower.contains("eof") {
        "reset/closed".into()
    } else {
        format!("error: {chain}")
    }
}

/// Requests in flight to one host at most; past it the generator waits (and lags its offer).
const MAX_IN_FLIGHT: usize = 512;

async fn load_loop(
    client: reqwest::Client,
    fresh: reqwest::Client,
    target: Target,
    rate: f64,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<LoadStats>>,
) {
    let url = format!("{}{LOAD_PATH}", target.base);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    // A late tick is sent at once: the offered rate is kept, not the spacing.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut requests = tokio::task::JoinSet::new();
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let busy = MAX_IN_FLIGHT - in_flight.available_permits();
        let client = client.clone();
        let fresh = fresh.clone();
        let url = url.clone();
        let stats = stats.clone();
        let host = target.host.clone();
        {
            let mut stats = stats.lock().unwrap();
            stats.sent += 1;
            stats.max_in_flight = stats.max_in_flight.max(busy);
        }
        requests.spawn(async move {
            let _permit = permit;
            let sent = Instant::now();
            let mut result = client.get(&url).send().await;
            if result.as_ref().is_err_and(closed_before_answer) {
                // Once, on a new connection: after nginx reloads, the other pooled connections
                // to its old workers are about to close too.
                stats.lock().unwrap().resent_after_keepalive_close += 1;
                result = fresh.get(&url).send().await;
            }
            let outcome = match result {
                Ok(response) if response.status().is_success() => {
                    // Read the body: a reset mid-body is a failure too.
                    match response.bytes().await {
                        Ok(_) => Ok(()),
                        Err(e) => Err((failure_kind(&e), e.to_string())),
                    }
                }
                Ok(response) => {
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    Err((format!("status {}", status.as_u16()), body))
                }
                Err(e) => Err((failure_kind(&e), format!("{e:?}"))),
            };
            let mut stats = stats.lock().unwrap();
            match outcome {
                Ok(()) => {
                    stats.ok += 1;
                    stats
                        .latency_ms
                        .push(sent.elapsed().as_millis().min(u128::from(u32::MAX)) as u32);
                    *stats.per_host.entry(host).or_default() += 1;
                }
                Err((kind, detail)) => {
                    stats.failed += 1;
                    *stats.by_kind.entry(kind.clone()).or_default() += 1;
                    if stats.samples.len() < 20 {
                        let now = humantime(SystemTime::now());
                        stats
                            .samples
                            .push(format!("{now} {host}: {kind}: {detail}"));
                    }
                }
            }
        });
        // Reap finished requests so the set stays small.
        while requests.try_join_next().is_some() {}
    }
    while requests.join_next().await.is_some() {}
}

/// The server closed the connection before any byte of an answer (hyper's "connection closed
/// before message completed"): on a kept-alive connection, the request was not processed.
fn closed_before_answer(e: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(hyper) = s.downcast_ref::<hyper::Error>() {
            return hyper.is_incomplete_message();
        }
        source = s.source();
    }
    false
}

/// Seconds since the epoch with milliseconds, for failure messages.
pub fn humantime(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

/// Like a browser's EventSource: connect, read events, and when the stream ends wait the
/// server's `retry:` (else 1 s) and reconnect with `Last-Event-ID`.
async fn sse_loop(
    client: reqwest::Client,
    target: Target,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<SseLog>>,
) {
    let url = format!("{}/api/stream", target.base);
    let mut retry = Duration::from_millis(1000);
    let mut last_id: Option<u64> = None;
    while !stop.load(Ordering::SeqCst) {
        let mut request = client.get(&url).header("Accept", "text/event-stream");
        if let Some(id) = last_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let ended = match request.send().await {
            Ok(response) if response.status().is_success() => {
                {
                    let mut log = log.lock().unwrap();
                    let received = log.ids.len();
                    log.ids_at_connect.push(received);
                    log.connects.push(SystemTime::now());
                }
                read_events(response, &stop, &log, &mut last_id, &mut retry).await
            }
            Ok(response) => format!("status {}", response.status()),
            Err(e) => format!("connect: {}", failure_kind(&e)),
        };
        log.lock().unwrap().ends.push((SystemTime::now(), ended));
        if stop.load(Ordering::SeqCst) {
            break;
        }
        // sleep: the traffic generator's pace between reconnects
        tokio::time::sleep(retry).await;
    }
}

async fn read_events(
    mut response: reqwest::Response,
    stop: &AtomicBool,
    log: &Mutex<SseLog>,
    last_id: &mut Option<u64>,
    retry: &mut Duration,
) -> String {
    let mut buffer = String::new();
    let mut event_id: Option<String> = None;
    loop {
        if stop.load(Ordering::SeqCst) {
            return "stopped".into();
        }
        let chunk = tokio::time::timeout(Duration::from_millis(500), response.chunk()).await;
        let chunk = match chunk {
            Err(_) => continue,
            Ok(Ok(Some(chunk))) => chunk,
            Ok(Ok(None)) => return "end of stream".into(),
            Ok(Err(e)) => return format!("read: {}", failure_kind(&e)),
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(newline) = buffer.find('\n') {
            let line: String = buffer.drain(..=newline).collect();
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                // Dispatch: an event with an id moves the client's last id.
                if let Some(id) = event_id.take() {
                    let mut log = log.lock().unwrap();
                    match id.parse::<u64>() {
                        Ok(n) if last_id.is_none_or(|last| n > last) => {
                            log.ids.push(n);
                            *last_id = Some(n);
                        }
                        _ => log.bad_ids.push(id),
                    }
                }
            } else if let Some(value) = field(line, "id") {
                event_id = Some(value.to_string());
            } else if let Some(value) = field(line, "retry") {
                if let Ok(ms) = value.parse::<u64>() {
                    *retry = Duration::from_millis(ms);
                }
            }
        }
    }
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(name)?.strip_prefix(':')?;
    Some(rest.strip_prefix(' ').unwrap_or(rest))
}

/// The reference: a fresh client that resumes after `after`, reading until it has seen an id
/// of at least `until` (or `timeout` passes). Returns the ids in order.
pub fn replay(
    ca_pem: &[u8],
    token: &str,
    target: &Target,
    after: u64,
    until: u64,
    timeout: Duration,
) -> Result<Vec<u64>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = client(ca_pem, token, None)?;
        let mut response = client
            .get(format!("{}/api/stream", target.base))
            .header("Accept", "text/event-stream")
            .header("Last-Event-ID", after.to_string())
            .send()
            .await?
            .error_for_status()?;
        let deadline = Instant::now() + timeout;
        let mut ids = Vec::new();
        let mut buffer = String::new();
        while ids.last().is_none_or(|last| *last < until) {
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = match tokio::time::timeout(left, response.chunk()).await {
                Err(_) => break,
                Ok(chunk) => chunk?,
            };
            let Some(chunk) = chunk else { break };
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(newline) = buffer.find('\n') {
                let line: String = buffer.drain(..=newline).collect();
                if let Some(id) = field(line.trim_end(), "id") {
                    ids.push(id.parse().with_context(|| format!("id `{id}`"))?);
                }
            }
        }
        Ok(ids)
    })
}

/// A Modbus TCP device with one holding register that counts its reads: the poller's readings
/// give a steady flow of `reading` events. Only function 3 is served; anything else gets
/// exception 1 (illegal function).
pub struct ModbusDevice {
    pub port: u16,
    reads: Arc<AtomicU64>,
}

impl ModbusDevice {
    /// Listens on every interface (the hosts reach it at their network's gateway).
    pub fn start() -> Result<ModbusDevice> {
        let listener = TcpListener::bind("0.0.0.0:0")?;
        let port = listener.local_addr()?.port();
        let reads = Arc::new(AtomicU64::new(0));
        let counter = reads.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let _ = serve_modbus(stream, &counter);
                });
            }
        });
        Ok(ModbusDevice { port, reads })
    }

    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }
}

fn serve_modbus(mut stream: TcpStream, counter: &AtomicU64) -> std::io::Result<()> {
    loop {
        let mut header = [0u8; 7];
        stream.read_exact(&mut header)?;
        let length = u16::from_be_bytes([header[4], header[5]]) as usize;
        let mut pdu = vec![0u8; length.saturating_sub(1)];
        stream.read_exact(&mut pdu)?;
        let reply: Vec<u8> = match pdu.as_slice() {
            [3, _, _, q_hi, q_lo] => {
                let quantity = u16::from_be_bytes([*q_hi, *q_lo]);
                let value = (counter.fetch_add(1, Ordering::SeqCst) % 60000) as u16;
                let mut reply = vec![3, (quantity * 2) as u8];
                for _ in 0..quantity {
                    reply.extend_from_slice(&value.to_be_bytes());
                }
                reply
            }
            [function, ..] => vec![function | 0x80, 1],
            [] => return Ok(()),
        };
        let mut frame = Vec::with_capacity(7 + reply.len());
        frame.extend_from_slice(&header[..4]);
        frame.extend_from_slice(&((reply.len() + 1) as u16).to_be_bytes());
        frame.push(header[6]);
        frame.extend_from_slice(&reply);
        stream.write_all(&frame)?;
    }
}

/// The device definition ddms polls: the counter at `host:port`, every `interval_ms`.
pub fn modbus_device_json(host: &str, port: u16, interval_ms: u64) -> serde_json::Value {
    serde_json::json!({
        "name": "e2e-counter",
        "protocol": "modbus",
        "group": "e2e",
        "modbus": {
            "host": host, "port": port, "unit_id": 1, "poll_interval_ms": interval_ms,
            "registers": [{"metric": "reads", "kind": "holding", "address": 0, "type": "u16",
                           "word_order": "big", "scale": 1.0, "offset": 0.0, "unit": "n"}]
        }
    })
}
