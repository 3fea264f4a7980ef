//! A reading through the whole path of a provisioned fleet with an external broker: an MQTT
//! device created through the API gets an account on Mosquitto (dynamic security) and
//! credentials, publishes one reading over TLS with `mosquitto_pub`, ddms' ingester takes it
//! from the broker and commits it to PostgreSQL, and the API answers it as the device's latest.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};

use super::wait::{self, Check};
use super::{https, run};

/// Where the device publishes: the broker its credentials name, or another address of it.
pub enum Broker<'a> {
    /// The `host` and `port` the API answered with.
    AsTold,
    /// This address and port instead (a broker behind a load balancer this test has no
    /// stand-in for, reached directly).
    At(&'a str, u16),
}

/// Creates an MQTT device through `api` (`https://<address>`, trusting only `ca`, with an
/// admin `token`), publishes `value` as its `temperature` through `broker` and waits until
/// the API answers it as the latest reading. Returns the device as created (credentials
/// included).
pub fn mqtt_reading_stored(
    ca: &Path,
    api: &str,
    token: &str,
    broker: Broker,
    value: f64,
) -> Result<Value> {
    let (code, device) = https(
        ca,
        "POST",
        &format!("{api}/api/devices"),
        Some(token),
        Some(&json!({ "name": "e2e-sensor", "protocol": "mqtt", "group": "e2e" })),
    )?;
    ensure!(code == 201, "POST /api/devices: {code} {device}");
    let device: Value = serde_json::from_str(&device)?;
    let id = device["id"].as_str().context("device id")?.to_string();
    let mqtt = &device["mqtt"];
    ensure!(mqtt["tls"] == true, "{device:#}");
    let user = mqtt["username"].as_str().context("mqtt username")?;
    let password = mqtt["password"].as_str().context("mqtt password")?;
    let (host, port) = match broker {
        Broker::AsTold => (
            mqtt["host"].as_str().context("mqtt host")?.to_string(),
            mqtt["port"].as_u64().context("mqtt port")?.to_string(),
        ),
        Broker::At(host, port) => (host.to_string(), port.to_string()),
    };
    let payload = json!({ "metrics": { "temperature": value } }).to_string();
    // The account reaches the broker right after the API answers: retry a refused first login.
    wait::until(
        "the device's publish accepted",
        Duration::from_secs(30),
        || {
            let published = run(Command::new("mosquitto_pub")
                .args(["-h", &host, "-p", &port, "--cafile"])
                .arg(ca)
                .args(["-u", user, "-P", password, "-i", user])
                .args(["-q", "1", "-t", &format!("devices/{id}/telemetry")])
                .args(["-m", &payload]));
            Ok(match published {
                Ok(_) => Check::Holds(()),
                Err(e) => Check::Missing(format!("{e:#}")),
            })
        },
    )?;
    wait::until(
        "the reading as the device's latest",
        Duration::from_secs(30),
        || {
            let url = format!("{api}/api/devices/{id}/latest");
            let (code, latest) = https(ca, "GET", &url, Some(token), None)?;
            let latest: Value = serde_json::from_str(&latest).unwrap_or(Value::Null);
            Ok(if code == 200 && latest["temperature"]["value"] == value {
                Check::Holds(())
            } else {
                Check::Missing(format!("latest: {code} {latest}"))
            })
        },
    )?;
    Ok(device)
}
