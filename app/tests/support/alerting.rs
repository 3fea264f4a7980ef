//! Set-up shared by the alerting tests: a device, a signed webhook channel, a threshold rule,
//! and (re-exported) waiting for a condition with a deadline.

use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

use super::app::TestApp;
pub use super::wait::eventually;

/// The webhook channel's HMAC key; the receivers verify signatures with it.
pub const SECRET: &str = "hmac-key-7d1f";
/// The receivers listen on loopback.
pub const PRIVATE_TARGETS: &str = "[alerts]\nallow_private_targets = true\n";

/// Waits until the outbox has nothing pending.
pub async fn drained(app: &TestApp) {
    eventually("the outbox to drain", Duration::from_secs(60), || async {
        app.store.outbox_stats().await.unwrap().pending == 0
    })
    .await;
}

pub async fn mqtt_device(app: &TestApp, token: &str, name: &str) -> Uuid {
    let response = app
        .post_json(
            "/api/devices",
            Some(token),
            &json!({"name": name, "protocol": "mqtt"}),
        )
        .await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let body: Value = response.json().await.unwrap();
    body["id"].as_str().unwrap().parse().unwrap()
}

/// A webhook channel to `url`, signed with [`SECRET`], allowed to reach loopback.
pub async fn webhook_channel(app: &TestApp, token: &str, url: &str) -> Uuid {
    let response = app
        .post_json(
            "/api/channels",
            Some(token),
            &json!({"name": "ops", "kind": "webhook", "settings": {"url": url},
                    "secret": SECRET, "allow_private": true}),
        )
        .await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["has_secret"], true);
    assert!(body.get("secret").is_none());
    body["id"].as_str().unwrap().parse().unwrap()
}

/// `temperature` above 50 (clear below 45) for 60 s on `device`, critical, to `channel`.
pub async fn hot_rule(app: &TestApp, token: &str, device: Uuid, channel: Uuid) -> Uuid {
    let response = app
        .post_json(
            "/api/alert-rules",
            Some(token),
            &json!({"name": "boiler hot", "device_id": device, "metric": "temperature",
                    "condition": "above", "threshold": 50, "clear_threshold": 45,
                    "for_s": 60, "severity": "critical", "channels": [channel]}),
        )
        .await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let body: Value = response.json().await.unwrap();
    body["id"].as_str().unwrap().parse().unwrap()
}
