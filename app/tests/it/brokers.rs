//! The MQTT broker the ingestion tests stand on: Mosquitto from a container and as a local
//! process, with an independent client (mosquitto_pub / mosquitto_sub) doing a round trip, and
//! persistence across a broker restart.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};

use crate::support::services::{Mosquitto, Provider};

async fn round_trip(port: u16, topic: &str, payload: &str) -> String {
    // -d: mosquitto_sub says when the broker has acknowledged the subscription (SUBACK); its
    // debug lines start with "Client " or "Subscribed", the message is the other line.
    let mut sub = Command::new("stdbuf")
        .args(["-oL", "mosquitto_sub", "-d"])
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            topic,
            "-q",
            "1",
            "-C",
            "1",
            "-W",
            "10",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub is installed");
    let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    // The subscription reaches the broker before the message is published.
    while !seen.iter().any(|l: &String| l.contains("received SUBACK")) {
        let line = next_line(&mut lines).await;
        seen.push(line.unwrap_or_else(|| panic!("no SUBACK from mosquitto_sub: {seen:?}")));
    }
    let status = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            topic,
            "-q",
            "1",
            "-m",
            payload,
        ])
        .status()
        .await
        .expect("mosquitto_pub is installed");
    assert!(status.success());
    let message = loop {
        let line = next_line(&mut lines).await;
        let line = line.unwrap_or_else(|| panic!("no message for mosquitto_sub: {seen:?}"));
        if !line.starts_with("Client ") && !line.starts_with("Subscribed") {
            break line;
        }
        seen.push(line);
    };
    let _ = sub.wait().await;
    message.trim().to_string()
}

async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> Option<String> {
    tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .ok()?
        .ok()?
}

async fn broker_round_trips_and_survives_restart(provider: Provider) {
    let broker = Mosquitto::start(provider, "").await.unwrap();
    assert_eq!(broker.provider(), provider);
    let got = round_trip(broker.port(), "devices/d1/telemetry", r#"{"t":1}"#).await;
    assert_eq!(got, r#"{"t":1}"#);
    broker.stop().await.unwrap();
    let refused = tokio::net::TcpStream::connect(("127.0.0.1", broker.port())).await;
    assert!(
        refused.is_err(),
        "a stopped broker still accepts connections"
    );
    broker.restart().await.unwrap();
    let got = round_trip(broker.port(), "devices/d1/telemetry", r#"{"t":2}"#).await;
    assert_eq!(got, r#"{"t":2}"#);
}

#[tokio::test]
async fn mosquitto_in_a_container_round_trips_and_restarts() {
    broker_round_trips_and_survives_restart(Provider::Docker).await;
}

#[tokio::test]
async fn mosquitto_as_a_local_process_round_trips_and_restarts() {
    broker_round_trips_and_survives_restart(Provider::Local).await;
}
