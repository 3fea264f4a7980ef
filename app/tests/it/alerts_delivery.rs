//! Alert notifications reaching an independent receiver the hard ways: readings that arrive over
//! a real Mosquitto through a shared subscription split between two instances on one
//! PostgreSQL; a receiver whose port refuses connections for a minute; and channel input the
//! API must refuse (private and metadata targets, oversized fields) without storing anything.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::Utc;
use ddms::ingest::Sample;
use ddms::store::alerts::DeliveryState;
use ddms::store::Role;
use serde_json::{json, Value};
use tokio::process::Command;
use uuid::Uuid;

use crate::support::alerting::{
    eventually, hot_rule, mqtt_device, webhook_channel, PRIVATE_TARGETS, SECRET,
};
use crate::support::app::{spawn_app, Db, TestApp};
use crate::support::on_each_backend;
use crate::support::services::{Mosquitto, Provider};
use crate::support::webhook::WebhookReceiver as Receiver;

/// The value of one Prometheus sample (`name{labels}` or a bare `name`), 0 when absent.
async fn metric(app: &TestApp, series: &str) -> f64 {
    let text = app.get("/metrics").await.text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// Publishes `payloads` in order as one device would: `mosquitto_pub -q 1 -l`, one message per
/// line, its own client id; `Ok` once the client has exited successfully.
async fn publish(port: u16, device: Uuid, payloads: &[Value]) {
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-i", &format!("device-{}", device.simple())])
        .args(["-t", &format!("devices/{device}/telemetry"), "-l"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_pub is installed");
    let mut lines = String::new();
    for payload in payloads {
        lines.push_str(&payload.to_string());
        lines.push('\n');
    }
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, lines.as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("mosquitto_pub finishes")
        .unwrap();
    assert!(
        output.status.success(),
        "mosquitto_pub: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// How many `temperature` readings of `device` are stored.
async fn stored(app: &TestApp, device: Uuid) -> usize {
    crate::mqtt::readings(app.store.as_ref(), device, "temperature")
        .await
        .len()
}

/// One instance in external-broker mode, subscribed through `$share/…`, on `db`.
async fn shared_instance(db: Db, broker_port: u16, client_id: &str) -> TestApp {
    let app = spawn_app(
        db,
        &format!(
            "{PRIVATE_TARGETS}[mqtt]\nmode = \"external\"\nurl = \"mqtt://127.0.0.1:{broker_port}\"\n\
             client_id = {client_id:?}\nshared_subscription = true\n"
        ),
    )
    .await;
    crate::mqtt::wait_ready(&app.url("/ready")).await;
    app
}

/// Devices publish through Mosquitto; the broker hands each message of the shared subscription
/// to one of two instances (so one device's readings are evaluated by both, interleaved); the
/// rule goes pending → firing → resolved for every device, and the receiver gets each firing
/// and each resolution exactly once, signed.
#[tokio::test]
async fn two_instances_on_a_shared_mqtt_subscription_notify_each_transition_once() {
    const DEVICES: usize = 3;
    let broker = Mosquitto::start(Provider::from_env().await, "")
        .await
        .unwrap();
    let receiver = Receiver::start(SECRET).await;
    let first = shared_instance(Db::Postgres(Provider::Local), broker.port(), "ddms-a").await;
    let admin = first.token(Role::Admin).await;
    let mut devices = Vec::new();
    for i in 0..DEVICES {
        devices.push(mqtt_device(&first, &admin, &format!("boiler-{i}")).await);
    }
    let channel = webhook_channel(&first, &admin, &receiver.url("/ok")).await;
    let response = first
        .post_json(
            "/api/alert-rules",
            Some(&admin),
            &json!({"name": "any boiler hot", "metric": "temperature", "condition": "above",
                    "threshold": 50, "clear_threshold": 45, "for_s": 10,
                    "severity": "critical", "channels": [channel]}),
        )
        .await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    // Started after the rule and devices exist, the second instance loads them at start.
    let second =
        shared_instance(Db::Url(first.database_url.clone()), broker.port(), "ddms-b").await;

    // One reading a second of reading time, ten minutes back (within what MQTT accepts).
    let base = (Utc::now() - chrono::Duration::minutes(10)).timestamp_millis();
    let reading =
        |i: i64, value: f64| json!({"ts": base + i * 1000, "metrics": {"temperature": value}});
    // Above the threshold for 40 s (past `for`): every device's alert fires.
    let hot: Vec<Value> = (0..40).map(|i| reading(i, 55.0)).collect();
    futures::future::join_all(devices.iter().map(|d| publish(broker.port(), *d, &hot))).await;
    eventually(
        "every device's alert firing",
        Duration::from_secs(60),
        || async {
            let open = first.store.list_open_alerts().await.unwrap();
            open.len() == DEVICES
                && open
                    .iter()
                    .all(|a| a.state == ddms::store::alerts::AlertState::Firing)
        },
    )
    .await;
    for device in &devices {
        eventually(
            "the hot readings stored",
            Duration::from_secs(60),
            || async { stored(&first, *device).await == hot.len() },
        )
        .await;
    }
    // Between clear and threshold (still firing), then below clear: resolved.
    let cooling: Vec<Value> = (40..50)
        .map(|i| reading(i, 48.0))
        .chain((50..60).map(|i| reading(i, 44.0)))
        .collect();
    futures::future::join_all(devices.iter().map(|d| publish(broker.port(), *d, &cooling))).await;
    let total = DEVICES * (hot.len() + cooling.len());
    eventually("every alert resolved", Duration::from_secs(60), || async {
        first.store.list_open_alerts().await.unwrap().is_empty()
    })
    .await;
    eventually(
        "both notifications of every device at the receiver",
        Duration::from_secs(60),
        || async {
            receiver.requests().len() >= 2 * DEVICES
                && first.store.outbox_stats().await.unwrap().pending == 0
        },
    )
    .await;
    for device in &devices {
        eventually("every reading stored", Duration::from_secs(60), || async {
            stored(&first, *device).await == hot.len() + cooling.len()
        })
        .await;
    }

    // The broker split the stream: each instance took a share, none twice.
    let mut taken = Vec::new();
    for app in [&first, &second] {
        taken.push(metric(app, "ddms_mqtt_messages_total{outcome=\"accepted\"}").await as usize);
    }
    assert_eq!(taken.iter().sum::<usize>(), total, "{taken:?}");
    assert!(taken.iter().all(|n| *n > 0), "both took a share: {taken:?}");

    // Each alert's history is pending → firing → resolved, once.
    let alerts: Vec<Value> = first
        .get_with_token("/api/alerts", &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(alerts.len(), DEVICES, "{alerts:?}");
    let mut by_alert: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for alert in &alerts {
        let mut transitions: Vec<(i64, String)> = alert["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["seq"].as_i64().unwrap(),
                    t["event"].as_str().unwrap().into(),
                )
            })
            .collect();
        transitions.sort();
        let events: Vec<&str> = transitions.iter().map(|(_, e)| e.as_str()).collect();
        assert_eq!(events, ["pending", "firing", "resolved"], "{alert}");
        by_alert.insert(alert["id"].as_str().unwrap().into(), Vec::new());
    }

    // The receiver's own record: one firing and one resolved per alert, every one signed, no
    // idempotency key twice.
    let received = receiver.requests();
    assert_eq!(received.len(), 2 * DEVICES, "{received:#?}");
    let mut keys = BTreeSet::new();
    let mut notified_devices = BTreeSet::new();
    for r in &received {
        assert_eq!(r["signature_valid"], true, "{r}");
        let body = &r["body"];
        assert_eq!(
            r["headers"]["x-ddms-idempotency-key"],
            body["idempotency_key"]
        );
        assert!(keys.insert(body["idempotency_key"].as_str().unwrap().to_string()));
        notified_devices.insert(body["device_id"].as_str().unwrap().to_string());
        by_alert
            .get_mut(body["alert_id"].as_str().unwrap())
            .unwrap_or_else(|| panic!("a notification of an unknown alert: {r}"))
            .push(body["state"].as_str().unwrap().into());
    }
    for (alert, mut states) in by_alert {
        states.sort();
        assert_eq!(states, ["firing", "resolved"], "alert {alert}");
    }
    assert_eq!(notified_devices.len(), DEVICES);
    second.stop().await;
    first.stop().await;
}

/// The receiver's port refuses connections (process gone) for a minute from the first failed
/// attempt, then it listens again on the same port: the notification arrives exactly once,
/// the outbox drains and its depth gauge returns to 0.
async fn receiver_down_for_a_minute_gets_the_notification_once_when_back(db: Db) {
    const DOWN: Duration = Duration::from_secs(60);
    let mut receiver = Receiver::start(SECRET).await;
    // A short tick, so the outbox gauges follow within a fraction of a second.
    let app = spawn_app(db, &format!("{PRIVATE_TARGETS}evaluation_interval = 0.2\n")).await;
    let admin = app.token(Role::Admin).await;
    let device = mqtt_device(&app, &admin, "boiler-1").await;
    let channel = webhook_channel(&app, &admin, &receiver.url("/ok")).await;
    hot_rule(&app, &admin, device, channel).await;
    receiver.stop().await;
    // 55 held past the rule's 60 s `for` (in reading time): firing.
    let start = Utc::now() - chrono::Duration::minutes(5);
    for secs in [0, 61] {
        app.ingest
            .submit(
                "mqtt",
                vec![Sample {
                    device_id: device,
                    metric: "temperature".into(),
                    unit: None,
                    ts: start + chrono::Duration::seconds(secs),
                    value: 55.0,
                }],
            )
            .await
            .unwrap();
    }
    let pending = || async {
        app.store
            .list_deliveries(Some(DeliveryState::Pending), 10)
            .await
            .unwrap()
    };
    eventually(
        "the first failed attempt",
        Duration::from_secs(60),
        // A claim counts the attempt; its failure is recorded after it.
        || async {
            pending()
                .await
                .first()
                .is_some_and(|d| d.attempts >= 1 && d.last_error.is_some())
        },
    )
    .await;
    let first_failure = Instant::now();
    let failed = pending().await.remove(0);
    let error = failed.last_error.clone().unwrap_or_default();
    assert!(
        error.to_lowercase().contains("connection refused"),
        "{error}"
    );
    eventually(
        "the outbox gauge to show it",
        Duration::from_secs(30),
        || async { metric(&app, "ddms_alert_outbox_depth").await == 1.0 },
    )
    .await;
    // The outage lasts a minute from the first failure (this wait is the scenario, not a
    // synchronisation); ddms keeps retrying meanwhile.
    eventually("a minute of outage", DOWN * 2, || async {
        first_failure.elapsed() >= DOWN
    })
    .await;
    let retried = pending().await;
    assert_eq!(retried.len(), 1, "still pending, not dead: {retried:?}");
    assert!(retried[0].attempts >= 3, "retried while down: {retried:?}");
    assert!(receiver.requests().is_empty());

    receiver.restart().await;
    // The back-off after a minute of failures is at most 64 s (before jitter).
    eventually("the delivery", Duration::from_secs(150), || async {
        pending().await.is_empty()
    })
    .await;
    let delivered = app
        .store
        .list_deliveries(Some(DeliveryState::Delivered), 10)
        .await
        .unwrap();
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert!(delivered[0].attempts > retried[0].attempts);
    let received = receiver.requests();
    assert_eq!(received.len(), 1, "exactly once: {received:#?}");
    assert_eq!(received[0]["signature_valid"], true);
    assert_eq!(received[0]["body"]["state"], "firing");
    assert_eq!(
        received[0]["body"]["idempotency_key"],
        delivered[0].idempotency_key.as_str()
    );
    assert!(app
        .store
        .list_deliveries(Some(DeliveryState::Dead), 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(app.store.outbox_stats().await.unwrap().pending, 0);
    eventually(
        "the outbox gauge back to 0",
        Duration::from_secs(30),
        || async { metric(&app, "ddms_alert_outbox_depth").await == 0.0 },
    )
    .await;
    assert_eq!(
        metric(
            &app,
            "ddms_alert_deliveries_total{kind=\"webhook\",result=\"delivered\"}"
        )
        .await,
        1.0
    );
    app.stop().await;
}

on_each_backend!(local_postgres: receiver_down_for_a_minute_gets_the_notification_once_when_back);

/// Asserts a 422 naming `field`, and returns the error body.
async fn refused(response: reqwest::Response, field: &str, what: &Value) -> Value {
    assert_eq!(response.status(), 422, "{what}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["field"], field, "{what}: {body}");
    body
}

/// Channels that would reach this host, the link-local/metadata range or oversized fields are
/// refused by `POST` and `PUT /api/channels` with 422 naming the field; nothing is stored or
/// changed.
#[tokio::test]
async fn channel_input_to_private_targets_or_oversized_is_refused_and_nothing_is_stored() {
    // Private targets allowed by the server: only the channel's own flag is missing.
    let app = spawn_app(Db::Sqlite, PRIVATE_TARGETS).await;
    let admin = app.token(Role::Admin).await;
    let ok_url = "https://hooks.example.com/ddms";
    let long_header_field = format!("settings.headers.{}\u{2026}", "X".repeat(63));
    let targets = [
        "https://127.0.0.1/hook",
        "https://127.9.9.9:8443/hook",
        "https://localhost/hook",
        "https://LocalHost./hook",
        "https://[::1]/hook",
        "https://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:9/hook",
    ];
    let mut cases: Vec<(Value, &str)> = Vec::new();
    for kind in ["webhook", "discord", "slack"] {
        for url in targets {
            cases.push((
                json!({"name": "hook", "kind": kind, "settings": {"url": url}}),
                "settings.url",
            ));
        }
        // The metadata address stays refused even when the channel allows private targets.
        cases.push((
            json!({"name": "hook", "kind": kind, "allow_private": true,
                   "settings": {"url": "http://169.254.169.254/latest/meta-data/"}}),
            "settings.url",
        ));
        let long_url = format!("https://hooks.example.com/{}", "a".repeat(2048));
        cases.push((
            json!({"name": "hook", "kind": kind, "settings": {"url": long_url}}),
            "settings.url",
        ));
        cases.push((
            json!({"name": "x".repeat(101), "kind": kind,
                   "settings": {"url": "https://hooks.example.com/a"}}),
            "name",
        ));
    }
    let too_many_headers: serde_json::Map<String, Value> =
        (0..21).map(|i| (format!("X-H{i}"), json!("v"))).collect();
    cases.extend([
        (
            json!({"name": "hook", "kind": "webhook",
                   "settings": {"url": ok_url, "headers": {"X-Big": "v".repeat(1025)}}}),
            "settings.headers.X-Big",
        ),
        (
            json!({"name": "hook", "kind": "webhook",
                   "settings": {"url": ok_url, "headers": {"X".repeat(65): "v"}}}),
            // Named by the header, cut to the limit (63 characters and an ellipsis).
            long_header_field.as_str(),
        ),
        (
            json!({"name": "hook", "kind": "webhook",
                   "settings": {"url": ok_url, "headers": too_many_headers}}),
            "settings.headers",
        ),
        (
            json!({"name": "hook", "kind": "webhook", "settings": {"url": ok_url},
                   "secret": "s".repeat(1001)}),
            "secret",
        ),
        (
            json!({"name": "mail", "kind": "email",
                   "settings": {"smtp_host": "smtp.example.com", "from": "ddms@example.com",
                                "to": (0..51).map(|i| format!("u{i}@example.com"))
                                    .collect::<Vec<_>>()}}),
            "settings.to",
        ),
    ]);
    for (body, field) in &cases {
        let response = app.post_json("/api/channels", Some(&admin), body).await;
        refused(response, field, body).await;
    }
    let listed: Vec<Value> = app
        .get_with_token("/api/channels", &admin)
        .await
        .json()
        .await
        .unwrap();
    assert!(listed.is_empty(), "nothing stored: {listed:?}");

    // `PUT` checks the same way and leaves the stored channel as it was.
    let good = json!({"name": "hook", "kind": "webhook", "settings": {"url": ok_url},
                      "secret": SECRET});
    let response = app.post_json("/api/channels", Some(&admin), &good).await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_str().unwrap();
    for (body, field) in &cases {
        let response = app
            .put_json(&format!("/api/channels/{id}"), &admin, body)
            .await;
        refused(response, field, body).await;
    }
    let listed: Vec<Value> = app
        .get_with_token("/api/channels", &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["settings"], json!({"url": ok_url}));
    assert_eq!(listed[0]["name"], "hook");
    assert_eq!(listed[0]["allow_private"], false);
    assert_eq!(listed[0]["has_secret"], true);
    let changes = app
        .store
        .list_audit(100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action.starts_with("channel."))
        .count();
    assert_eq!(changes, 1, "only the good channel's creation is audited");
    app.stop().await;
}
