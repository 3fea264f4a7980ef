//! Acknowledged means stored, with the embedded broker (the default mode): the real binary is
//! SIGKILLed while a device streams QoS 1 messages through it, started again, and the device
//! resends what was not acknowledged, as a QoS 1 client does. Every acknowledged message is
//! stored, each exactly once. (The same for an external broker: `mqtt.rs`.)

use std::time::Duration;

use secrecy::SecretString;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::mqtt::{assert_exactly_once, base_ms, readings, wait_for_rows, wait_ready, Publisher};
use crate::support::app::DdmsProcess;

const STREAM: usize = 10_000;
const PROVISIONING_TOKEN: &str = "durability-test-provisioning-token";

#[tokio::test]
async fn acknowledged_messages_survive_a_sigkill_of_ddms_with_the_embedded_broker() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ddms.db").display());
    let store = ddms::store::connect(&SecretString::from(url.clone()), 4, Duration::from_secs(5))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    // The same broker port after the restart: the device reconnects to where it was.
    let mqtt_port = crate::support::services::free_port().unwrap();
    let listen = format!("127.0.0.1:{mqtt_port}");
    let env = [
        ("DDMS_DATABASE__URL", url.as_str()),
        ("DDMS_MQTT__MODE", "embedded"),
        ("DDMS_MQTT__EMBEDDED__LISTEN", listen.as_str()),
        ("DDMS_PROVISIONING__TOKEN", PROVISIONING_TOKEN),
    ];
    let mut ddms = DdmsProcess::serve(dir.path(), &env).await.unwrap();
    wait_ready(&ddms.url("/ready")).await;
    let registered: Value = reqwest::Client::new()
        .post(ddms.url("/api/devices/register"))
        .header("X-Provisioning-Token", PROVISIONING_TOKEN)
        .json(&json!({ "name": "meter-embedded" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let device: Uuid = registered["device_id"].as_str().unwrap().parse().unwrap();
    let username = registered["mqtt"]["username"].as_str().unwrap().to_string();
    let password = registered["mqtt"]["password"].as_str().unwrap().to_string();

    let base = base_ms();
    let publisher = Publisher::start_as(
        mqtt_port,
        device,
        STREAM,
        2500,
        base,
        Some((&username, &password)),
    );
    publisher.wait_acked(3000).await;
    ddms.child.start_kill().unwrap();
    ddms.wait_exit(Duration::from_secs(30)).await;
    // Read after the kill: every acknowledgement the device holds was sent by then.
    let acked_at_kill = publisher.acked();
    let stored_at_kill = readings(store.as_ref(), device, "seq").await;
    assert!(
        stored_at_kill.len() >= acked_at_kill,
        "{acked_at_kill} acknowledged but only {} stored when ddms was killed",
        stored_at_kill.len()
    );
    assert!(stored_at_kill.len() < STREAM, "the kill was mid-stream");

    let _ddms = DdmsProcess::serve(dir.path(), &env).await.unwrap();
    publisher.finish().await;
    wait_for_rows(store.as_ref(), device, STREAM, Duration::from_secs(120)).await;
    let points = readings(store.as_ref(), device, "seq").await;
    println!(
        "embedded broker, SIGKILL: {acked_at_kill} acknowledged and {} stored at the kill; final rows {}",
        stored_at_kill.len(),
        points.len()
    );
    assert_exactly_once(&points, STREAM, base);
}
