//! Blue-green deploys with the embedded MQTT broker (`mqtt.mode = "embedded"`): the idle slot
//! binds the broker port next to the active one (SO_REUSEPORT), and when the old slot stops,
//! its devices reconnect to the new one. A device publishing QoS 1 through a deploy and a
//! rollback (paho, an independent client) loses no acknowledged message, and none is stored
//! twice.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::release::{artifacts, insecure_client, ReleaseHost};
use crate::support::services::free_port;

/// `tests/support/mqtt_publish.py` streaming QoS 1 telemetry until SIGTERM; its output lines
/// are collected as they come.
struct Publisher {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Publisher {
    fn start(port: u16, device: &str, password: &str, base_ms: i64, rate: u32) -> Publisher {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/mqtt_publish.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--port", &port.to_string()])
            .args(["--device", device])
            .args(["--client-id", device])
            .args(["--username", device, "--password", password])
            .args(["--count", "1000000"])
            .args(["--rate", &rate.to_string()])
            .args(["--base-ms", &base_ms.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = lines.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Publisher { child, lines }
    }

    fn output(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The last "acked N" printed (every 100 acknowledgements).
    fn acked(&self) -> u64 {
        self.output()
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix("acked ")?.parse().ok())
            .unwrap_or(0)
    }

    fn count(&self, prefix: &str) -> usize {
        self.output()
            .iter()
            .filter(|l| l.starts_with(prefix))
            .count()
    }

    async fn wait_acked(&self, at_least: u64, within: Duration) {
        let deadline = Instant::now() + within;
        while self.acked() < at_least {
            assert!(
                Instant::now() < deadline,
                "the publisher did not reach {at_least} acknowledged messages within {within:?}: {:?}",
                self.output()
            );
            // sleep: the poll interval of this wait with a deadline (it reports the publisher's output)
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM: publish nothing more, wait for every published message to be acknowledged.
    /// Returns how many were published (and so acknowledged, messages 0..N-1).
    async fn finish(mut self) -> u64 {
        let pid = nix::unistd::Pid::from_raw(self.child.id().expect("running") as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = tokio::time::timeout(Duration::from_secs(120), self.child.wait())
            .await
            .expect("the publisher finishes")
            .unwrap();
        // Its reader tasks see the end of both pipes shortly after the exit.
        let deadline = Instant::now() + Duration::from_secs(10);
        let published = loop {
            let found = self
                .output()
                .iter()
                .find_map(|l| l.strip_prefix("published ")?.parse::<u64>().ok());
            match found {
                Some(n) => break n,
                None if Instant::now() < deadline => {
                    // sleep: the poll interval of this wait with a deadline (it reports the publisher's output)
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                None => panic!("no `published N`: {:?}", self.output()),
            }
        };
        assert!(
            status.success(),
            "not every published message was acknowledged ({status}): {:?}",
            self.output()
        );
        published
    }
}

/// A metric's value from a slot's own `/metrics` (summed over its labels).
async fn slot_metric(host: &ReleaseHost, slot: &str, name: &str) -> Option<f64> {
    let url = format!("http://127.0.0.1:{}/metrics", host.port(slot));
    let text = reqwest::get(url).await.ok()?.text().await.ok()?;
    Some(
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

#[tokio::test]
async fn a_deploy_and_a_rollback_with_the_embedded_broker_move_devices_between_slots_and_lose_no_acknowledged_message(
) {
    let artifacts = artifacts();
    let mqtt_port = free_port().unwrap();
    let host = ReleaseHost::start_with_mqtt(&format!(
        "mode = \"embedded\"\n[mqtt.embedded]\nlisten = \"127.0.0.1:{mqtt_port}\"\n"
    ))
    .await
    .unwrap();
    let (v1, v2) = (&artifacts.good[0], &artifacts.good[1]);
    let first = host.deploy(v1).await.json();
    assert_eq!(first["result"], "ok", "{first}");
    let v1_slot = first["to_slot"].as_str().unwrap().to_string();

    let (admin, viewer) = (host.token("admin").await, host.token("viewer").await);
    let client = insecure_client();
    let created: Value = client
        .post(host.public_url("/api/devices"))
        .bearer_auth(&admin)
        .json(&json!({ "name": "through-the-deploy", "protocol": "mqtt" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let device = created["id"].as_str().expect("device created").to_string();
    let password = created["mqtt"]["password"].as_str().unwrap().to_string();

    // Readings an hour ago, 1 ms apart: each message is its own reading.
    let base_ms = Utc::now().timestamp_millis() - 3_600_000;
    let publisher = Publisher::start(mqtt_port, &device, &password, base_ms, 100);
    publisher.wait_acked(100, Duration::from_secs(60)).await;

    assert_eq!(host.install(v2).await.code, 0);
    let run = host.release(&["activate", &v2.release]).await;
    let record = run.json();
    assert_eq!(
        record["result"], "ok",
        "activate with the embedded broker: {record}\n{}",
        run.stderr
    );
    let v2_slot = record["to_slot"].as_str().unwrap().to_string();
    assert_ne!(v2_slot, v1_slot);
    let status = host.status().await;
    assert_eq!(status["slots"][&v1_slot]["running"], false, "{status}");

    // The old slot let the device go when it stopped; it reconnected to the new slot, the only
    // one listening now, and its messages are acknowledged there.
    let after_deploy = publisher.acked();
    publisher
        .wait_acked(after_deploy + 200, Duration::from_secs(60))
        .await;
    let moved = publisher.count("disconnected");
    assert!(
        moved >= 1,
        "the device was never moved: {:?}",
        publisher.output()
    );
    let connections = slot_metric(&host, &v2_slot, "ddms_mqtt_connections").await;
    assert_eq!(connections, Some(1.0), "the new slot serves the device");

    // Rollback: the same hand-over, back to v1's slot.
    let back = host.release(&["rollback"]).await;
    let back_record = back.json();
    assert_eq!(
        back_record["result"], "ok",
        "rollback: {back_record}\n{}",
        back.stderr
    );
    assert_eq!(back_record["to_slot"], v1_slot.as_str());
    let after_rollback = publisher.acked();
    publisher
        .wait_acked(after_rollback + 200, Duration::from_secs(60))
        .await;
    let moved = publisher.count("disconnected");
    assert!(
        moved >= 2,
        "the device stayed behind: {:?}",
        publisher.output()
    );
    let connections = slot_metric(&host, &v1_slot, "ddms_mqtt_connections").await;
    assert_eq!(
        connections,
        Some(1.0),
        "the device is back on slot {v1_slot}"
    );
    let published = publisher.finish().await;

    // Every acknowledged message is stored, each exactly once.
    let from = chrono::DateTime::from_timestamp_millis(base_ms - 1000)
        .unwrap()
        .to_rfc3339();
    let to = chrono::DateTime::from_timestamp_millis(base_ms + published as i64 + 1000)
        .unwrap()
        .to_rfc3339();
    let response = client
        .get(host.public_url(&format!("/api/devices/{device}/readings")))
        .query(&[
            ("metric", "seq"),
            ("from", from.as_str()),
            ("to", to.as_str()),
            ("limit", "100000"),
        ])
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let readings: Vec<Value> = response.json().await.unwrap();
    let mut seqs: Vec<u64> = readings
        .iter()
        .map(|r| r["value"].as_f64().unwrap() as u64)
        .collect();
    seqs.sort_unstable();
    let expected: Vec<u64> = (0..published).collect();
    assert!(
        seqs == expected,
        "{} readings for {published} acknowledged messages; missing {:?}, extra {:?}",
        seqs.len(),
        expected
            .iter()
            .filter(|s| seqs.binary_search(s).is_err())
            .take(20)
            .collect::<Vec<_>>(),
        seqs.windows(2)
            .filter(|w| w[0] == w[1])
            .map(|w| w[0])
            .take(20)
            .collect::<Vec<_>>()
    );
    println!(
        "{published} QoS 1 messages through a deploy and a rollback with the embedded broker (activate {} ms, stop_old {} ms; rollback {} ms), each stored once; the device was disconnected {} time(s)",
        record["duration_ms"],
        run.step_ms("stop_old"),
        back_record["duration_ms"],
        moved
    );
}
