//! The hostile clients, each from addresses other than the good clients' (127.0.1.x).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::RngExt;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::server::Device;

/// A loopback address standing for another host (127.0.1.1 – 127.0.1.250).
pub fn hostile_addr(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 1, (i % 250 + 1) as u8))
}

pub async fn connect_from(
    source: IpAddr,
    to: SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(to).await
}

/// Counters of what the hostile clients did and what they got back.
#[derive(Default)]
pub struct Hostile {
    pub slowloris_opened: AtomicU64,
    pub slowloris_closed_by_server: AtomicU64,
    pub slowloris_open_now: AtomicUsize,
    pub invented_requests: AtomicU64,
    pub invented_statuses: Mutex<BTreeMap<String, u64>>,
    pub logins: AtomicU64,
    pub login_statuses: Mutex<BTreeMap<String, u64>>,
    pub mqtt_publishes: AtomicU64,
    pub mqtt_disconnects: AtomicU64,
    pub mqtt_bad_connects: AtomicU64,
    pub streams_opened: AtomicU64,
    pub stream_statuses: Mutex<BTreeMap<String, u64>>,
}

pub fn count(map: &Mutex<BTreeMap<String, u64>>, key: String) {
    *map.lock().unwrap().entry(key).or_default() += 1;
}

/// `n` connections that send a request head one byte every few seconds and never finish it.
pub fn slowloris(
    addr: SocketAddr,
    n: usize,
    stats: Arc<Hostile>,
    stop: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|i| {
            let stats = stats.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let Ok(mut socket) = connect_from(hostile_addr(i), addr).await else {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    };
                    stats.slowloris_opened.fetch_add(1, Ordering::Relaxed);
                    stats.slowloris_open_now.fetch_add(1, Ordering::Relaxed);
                    let head = format!("GET /api/devices HTTP/1.1\r\nHost: soak\r\nX-Slow-{i}: ");
                    let mut closed = socket.write_all(head.as_bytes()).await.is_err();
                    let mut buffer = [0u8; 512];
                    while !closed && !stop.is_cancelled() {
                        tokio::select! {
                            () = stop.cancelled() => break,
                            read = socket.read(&mut buffer) => {
                                // The server answered (408) or closed: either way it let go.
                                if matches!(read, Ok(0) | Err(_)) { closed = true; }
                            }
                            () = tokio::time::sleep(Duration::from_secs(2)) => {
                                closed = socket.write_all(b"a").await.is_err();
                            }
                        }
                    }
                    stats.slowloris_open_now.fetch_sub(1, Ordering::Relaxed);
                    if closed {
                        stats
                            .slowloris_closed_by_server
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect()
}

pub fn random_token(rng: &mut impl RngExt, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~%";
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Sends `request` on a fresh connection from `source`; the status code, or "error".
pub async fn raw_request(source: IpAddr, addr: SocketAddr, request: &[u8]) -> String {
    let attempt = async {
        let mut socket = connect_from(source, addr).await?;
        socket.write_all(request).await?;
        let mut response = Vec::new();
        socket.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    match tokio::time::timeout(Duration::from_secs(30), attempt).await {
        Ok(Ok(response)) => String::from_utf8_lossy(&response)
            .split_whitespace()
            .nth(1)
            .unwrap_or("no answer")
            .to_string(),
        _ => "error".into(),
    }
}

pub async fn invented_requests(
    addr: SocketAddr,
    worker: usize,
    stats: Arc<Hostile>,
    stop: CancellationToken,
) {
    let mut i = worker * 1_000_000;
    while !stop.is_cancelled() {
        let request = {
            let mut rng = rand::rng();
            let method = match i % 4 {
                0 => random_token(&mut rng, 3 + i % 8)
                    .to_uppercase()
                    .replace(['%', '.', '~', '-'], "X"),
                1 => "GET".to_string(),
                2 => "POST".to_string(),
                _ => format!("M{}", rng.random::<u32>()),
            };
            let path = match i % 3 {
                0 => format!("/{}", random_token(&mut rng, 1 + i % 40)),
                1 => format!(
                    "/api/{}/{}",
                    random_token(&mut rng, 8),
                    random_token(&mut rng, 8)
                ),
                _ => format!(
                    "/api/devices/{}?q={}",
                    random_token(&mut rng, 36),
                    random_token(&mut rng, 20)
                ),
            };
            format!("{method} {path} HTTP/1.1\r\nHost: soak\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        };
        let status = raw_request(hostile_addr(i), addr, request.as_bytes()).await;
        stats.invented_requests.fetch_add(1, Ordering::Relaxed);
        count(&stats.invented_statuses, status);
        i += 1;
        // About 100 requests a second over the four workers.
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

pub async fn login_flood(
    addr: SocketAddr,
    worker: usize,
    stats: Arc<Hostile>,
    stop: CancellationToken,
) {
    let mut i = worker;
    while !stop.is_cancelled() {
        let body = {
            let mut rng = rand::rng();
            let username = if i.is_multiple_of(2) {
                "operator".to_string()
            } else {
                format!("user-{}", random_token(&mut rng, 12))
            };
            json!({ "username": username, "password": random_token(&mut rng, 16) }).to_string()
        };
        let request = format!(
            "POST /api/auth/login HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let status = raw_request(hostile_addr(i), addr, request.as_bytes()).await;
        stats.logins.fetch_add(1, Ordering::Relaxed);
        count(&stats.login_statuses, status);
        i += 8;
    }
}

/// The hostile device: malformed, oversized and retained publishes as fast as the broker takes
/// them, and forged readings for the good device's topic (larger `seq` values than the good
/// device ever sends, so any that are stored are found).
pub async fn mqtt_flood(
    port: u16,
    device: Device,
    victim: String,
    stats: Arc<Hostile>,
    stop: CancellationToken,
) {
    let own = format!("devices/{}/telemetry", device.id);
    let heartbeat = format!("devices/{}/heartbeat", device.id);
    let forged = format!("devices/{victim}/telemetry");
    let mut round = 0u64;
    while !stop.is_cancelled() {
        let mut options = MqttOptions::new(device.username.clone(), "127.0.0.1", port);
        options.set_credentials(device.username.clone(), device.password.clone());
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(4 << 20, 4 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let connection = CancellationToken::new();
        let driver = {
            let connection = connection.clone();
            let stats = stats.clone();
            tokio::spawn(async move {
                loop {
                    if eventloop.poll().await.is_err() {
                        stats.mqtt_disconnects.fetch_add(1, Ordering::Relaxed);
                        connection.cancel();
                        return;
                    }
                }
            })
        };
        while !stop.is_cancelled() && !connection.is_cancelled() {
            round += 1;
            let (topic, payload, retain, qos): (&str, Vec<u8>, bool, QoS) = match round % 10 {
                0 => (&own, b"{not json".to_vec(), false, QoS::AtLeastOnce),
                1 => (&own, (0..200).map(|i| (i * 37 % 256) as u8).collect(), false, QoS::AtMostOnce),
                2 => (&own, vec![b'7'; 100 * 1024], false, QoS::AtLeastOnce),
                3 => (&own, json!({"metrics": {"x": 1e308}}).to_string().into_bytes(), false, QoS::AtLeastOnce),
                4 => (&own, json!({"metrics": {"retained": round}}).to_string().into_bytes(), true, QoS::AtLeastOnce),
                5 => (&heartbeat, b"{}".to_vec(), true, QoS::AtMostOnce),
                6 => (&forged, json!({"metrics": {"seq": 1_000_000_000u64 + round}}).to_string().into_bytes(), false, QoS::AtLeastOnce),
                7 => ("ddms/internal/commands", b"{}".to_vec(), false, QoS::AtMostOnce),
                8 => (&own, json!({ "metrics": (0..600).map(|m| (format!("m{m}"), json!(m))).collect::<serde_json::Map<_, _>>() }).to_string().into_bytes(), false, QoS::AtLeastOnce),
                // Above the broker's packet limit: the broker drops the connection.
                _ if round % 200 == 9 => (&own, vec![b'x'; 2 << 20], false, QoS::AtMostOnce),
                _ => (&own, json!({"metrics": {format!("name with spaces {round}"): 1}}).to_string().into_bytes(), false, QoS::AtMostOnce),
            };
            let publish = client.publish(topic, qos, retain, payload);
            match tokio::time::timeout(Duration::from_secs(5), publish).await {
                Ok(Ok(())) => {
                    stats.mqtt_publishes.fetch_add(1, Ordering::Relaxed);
                }
                _ => break,
            }
            // A few hundred a second.
            if round.is_multiple_of(50) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        driver.abort();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Connections with made-up usernames and passwords, each refused by the broker.
pub async fn mqtt_bad_connects(port: u16, stats: Arc<Hostile>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let user = {
            let mut rng = rand::rng();
            format!("intruder-{}", random_token(&mut rng, 10))
        };
        let mut options = MqttOptions::new(user.clone(), "127.0.0.1", port);
        options.set_credentials(user, "guess");
        let (_client, mut eventloop) = AsyncClient::new(options, 10);
        let _ = tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await;
        stats.mqtt_bad_connects.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Streams opened and dropped: some resume from event 1 (a replay beyond the cap), some carry no
/// credentials.
pub async fn stream_churn(
    addr: SocketAddr,
    worker: usize,
    token: String,
    stats: Arc<Hostile>,
    stop: CancellationToken,
) {
    let mut i = worker;
    while !stop.is_cancelled() {
        let auth = if i.is_multiple_of(5) {
            String::new()
        } else {
            format!("Authorization: Bearer {token}\r\n")
        };
        let resume = if i.is_multiple_of(3) {
            "Last-Event-ID: 1\r\n"
        } else {
            ""
        };
        let request = format!(
            "GET /api/stream HTTP/1.1\r\nHost: soak\r\n{auth}{resume}Accept: text/event-stream\r\n\r\n"
        );
        let status = async {
            let mut socket = connect_from(hostile_addr(i), addr).await.ok()?;
            socket.write_all(request.as_bytes()).await.ok()?;
            let mut buffer = vec![0u8; 4096];
            let n = socket.read(&mut buffer).await.ok()?;
            String::from_utf8_lossy(&buffer[..n])
                .split_whitespace()
                .nth(1)
                .map(str::to_string)
        };
        let status = tokio::time::timeout(Duration::from_secs(10), status)
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| "error".into());
        stats.streams_opened.fetch_add(1, Ordering::Relaxed);
        count(&stats.stream_statuses, status);
        i += 8;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
