//! The MQTT broker the ingestion tests stand on: Mosquitto from a container and as a local
//! process, with an independent client (mosquitto_pub / mosquitto_sub) doing a round trip, and
//! persistence across a broker restart.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::support::services::{Mosquitto, Provider};

async fn round_trip(port: u16, topic: &str, payload: &str) -> String {
    let sub = Command::new("mosquitto_sub")
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
        .spawn()
        .expect("mosquitto_sub is installed");
    // Give the subscription time to reach the broker before publishing.
    tokio::time::sleep(Duration::from_millis(300)).await;
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
    let out = sub.wait_with_output().await.unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
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
