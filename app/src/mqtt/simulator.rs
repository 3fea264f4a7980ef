//! A simulated MQTT device, for `ddms serve --demo`, tests and benchmarks: it registers itself
//! through `POST /api/devices/register` with the provisioning token — exactly as a real device
//! would — then connects with the credentials it was given and publishes telemetry (QoS 1) and
//! heartbeats until stopped.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::modbus::simulator::Waveform;

/// What the device was given at registration.
#[derive(Debug, Clone)]
pub struct Registration {
    pub device_id: String,
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: String,
}

/// Registers a device named `name` with the ddms at `base_url` (e.g. `http://127.0.0.1:8080`).
pub async fn register(
    base_url: &str,
    provisioning_token: &str,
    name: &str,
    group: Option<&str>,
) -> anyhow::Result<Registration> {
    let response = reqwest::Client::new()
        .post(format!("{base_url}/api/devices/register"))
        .header("x-provisioning-token", provisioning_token)
        .json(&json!({ "name": name, "group": group }))
        .send()
        .await
        .context("cannot reach ddms to register")?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    ensure!(
        status.as_u16() == 201,
        "registration of {name} refused ({status}): {body}"
    );
    let text = |v: &serde_json::Value| {
        v.as_str()
            .map(String::from)
            .context("malformed registration answer")
    };
    Ok(Registration {
        device_id: text(&body["device_id"])?,
        host: text(&body["mqtt"]["host"])?,
        port: body["mqtt"]["port"].as_u64().context("no port")? as u16,
        username: text(&body["mqtt"]["username"])?,
        password: text(&body["mqtt"]["password"])?,
    })
}

pub struct SimulatedMetric {
    pub name: String,
    pub waveform: Waveform,
}

/// Publishes `metrics` every `interval` and a heartbeat every `heartbeat` until `stop`; returns
/// how many telemetry messages the broker acknowledged.
pub async fn run(
    registration: Registration,
    metrics: Vec<SimulatedMetric>,
    interval: Duration,
    heartbeat: Duration,
    stop: CancellationToken,
) -> anyhow::Result<u64> {
    let mut options = MqttOptions::new(
        &registration.device_id,
        &registration.host,
        registration.port,
    );
    options.set_credentials(&registration.username, &registration.password);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    let started = Instant::now();
    let telemetry = format!("devices/{}/telemetry", registration.device_id);
    let heartbeat_topic = format!("devices/{}/heartbeat", registration.device_id);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut beat = tokio::time::interval(heartbeat);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut acknowledged = 0u64;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {
                let values: serde_json::Map<String, serde_json::Value> = metrics
                    .iter()
                    .map(|m| (m.name.clone(), json!(m.waveform.value_at(started.elapsed()))))
                    .collect();
                let payload = json!({ "ts": chrono::Utc::now(), "metrics": values });
                client.publish(&telemetry, QoS::AtLeastOnce, false, payload.to_string()).await?;
            }
            _ = beat.tick() => {
                let payload = json!({ "uptime_s": started.elapsed().as_secs() });
                client.publish(&heartbeat_topic, QoS::AtLeastOnce, false, payload.to_string()).await?;
            }
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::PubAck(_))) => acknowledged += 1,
                Ok(_) => {}
                Err(e) => {
                    // The broker is away (restarting, not yet listening): try again shortly.
                    tracing::debug!(device.id = %registration.device_id, error = %e, "simulated device disconnected");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            },
        }
    }
    let _ = client.disconnect().await;
    Ok(acknowledged)
}
