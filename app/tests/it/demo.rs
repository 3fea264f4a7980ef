//! README command 1 with `--demo`: simulated devices produce live data on embedded defaults, and
//! the printed URL carries a working viewer token.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::support::app::DdmsProcess;

async fn demo_token(ddms: &DdmsProcess) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = ddms
            .stderr
            .lock()
            .unwrap()
            .iter()
            .find_map(|line| line.split("/#token=").nth(1).map(|t| t.trim().to_string()));
        if let Some(token) = found {
            return token;
        }
        assert!(Instant::now() < deadline, "no demo URL printed");
        // sleep: the poll interval of this wait with a deadline (the demo URL in the log)
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn serve_demo_shows_live_readings_from_simulated_devices() {
    demo_runs(&[], 3).await;
}

/// README command 1 as shipped: the embedded broker is on, so two simulated MQTT devices
/// register themselves (provisioning token made up for the run), get credentials and publish.
#[tokio::test]
async fn serve_demo_with_the_embedded_broker_adds_self_registering_mqtt_devices() {
    let port = crate::support::services::free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    demo_runs(
        &[
            ("DDMS_MQTT__MODE", "embedded"),
            ("DDMS_MQTT__EMBEDDED__LISTEN", &listen),
        ],
        5,
    )
    .await;
}

/// Two runs on one data directory: the demo devices exist once, each reports values, and the
/// printed token is a viewer's.
async fn demo_runs(env: &[(&str, &str)], expected_devices: usize) {
    let dir = tempfile::tempdir().unwrap();
    for run in 0..2 {
        let mut ddms = DdmsProcess::serve_with_args(dir.path(), &["serve", "--demo"], env)
            .await
            .unwrap();
        let token = demo_token(&ddms).await;
        let client = reqwest::Client::new();
        // The MQTT devices register themselves once the service answers: give them a moment.
        let registered = Instant::now() + Duration::from_secs(15);
        let devices = loop {
            let devices: Value = client
                .get(ddms.url("/api/devices"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let devices = devices.as_array().unwrap().clone();
            if devices.len() >= expected_devices || Instant::now() > registered {
                break devices;
            }
            // sleep: the poll interval of this wait with a deadline (the count is then checked exactly)
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(
            devices.len(),
            expected_devices,
            "run {run}: the demo devices exist once: {devices:?}"
        );
        assert!(devices.iter().all(|d| d["group"] == "demo"));
        // Every demo device reports values within a few poll intervals.
        let deadline = Instant::now() + Duration::from_secs(20);
        for device in &devices {
            let id = device["id"].as_str().unwrap();
            loop {
                let latest: Value = client
                    .get(ddms.url(&format!("/api/devices/{id}/latest")))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                if latest.as_object().is_some_and(|m| !m.is_empty()) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "no readings from {}",
                    device["name"]
                );
                // sleep: the poll interval of this wait with a deadline (it names the device)
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        // The token is a viewer's: it reads but cannot change anything.
        let write = client
            .delete(ddms.url(&format!(
                "/api/devices/{}",
                devices[0]["id"].as_str().unwrap()
            )))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(write.status(), 403);
        ddms.signal(Signal::SIGTERM);
        assert!(ddms.wait_exit(Duration::from_secs(30)).await.success());
        let logs = ddms.logs.lock().unwrap().join("\n");
        assert!(!logs.contains(&token), "the token stays out of the log");
    }
}
