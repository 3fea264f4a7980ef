//! Alerting end to end against real components: the API, the ingest pipeline, the store (SQLite
//! and a local PostgreSQL), two instances on one database.

mod lifecycle;

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use ddms::ingest::Sample;
use ddms::store::Role;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::alerting::{
    drained, eventually, hot_rule, mqtt_device, webhook_channel, PRIVATE_TARGETS, SECRET,
};
use crate::support::app::{spawn_app, Db, TestApp};
use crate::support::on_each_backend;
use crate::support::services::Provider;
use crate::support::webhook::WebhookReceiver as Receiver;

fn t(secs: i64) -> DateTime<Utc> {
    // Readings carry their own time: `for` counts in reading time, so the test needs no waits.
    Utc.timestamp_opt(1_790_000_000 + secs, 0).unwrap()
}

async fn submit(app: &TestApp, device: Uuid, secs: i64, value: f64) {
    app.ingest
        .submit(
            "mqtt",
            vec![Sample {
                device_id: device,
                metric: "temperature".into(),
                unit: None,
                ts: t(secs),
                value,
            }],
        )
        .await
        .expect("readings stored");
}

/// The `(event, state)` of every queued notification, in order.
async fn notifications(app: &TestApp) -> Vec<String> {
    let mut deliveries = app.store.list_deliveries(None, 1000).await.unwrap();
    deliveries.sort_by_key(|d| (d.created_at, d.idempotency_key.clone()));
    deliveries.into_iter().map(|d| d.event).collect()
}

async fn events(app: &TestApp, token: &str) -> Vec<String> {
    let alerts: Vec<Value> = app
        .get_with_token("/api/alerts", token)
        .await
        .json()
        .await
        .unwrap();
    let mut events: Vec<(String, i64, String)> = alerts
        .iter()
        .flat_map(|a| {
            a["transitions"].as_array().unwrap().iter().map(|tr| {
                (
                    tr["at"].as_str().unwrap().to_string(),
                    tr["seq"].as_i64().unwrap(),
                    tr["event"].as_str().unwrap().to_string(),
                )
            })
        })
        .collect();
    events.sort();
    events.into_iter().map(|(_, _, e)| e).collect()
}

#[tokio::test]
async fn bad_rules_are_refused_naming_the_field_and_nothing_is_stored() {
    let app = spawn_app(Db::Sqlite, "").await;
    let admin = app.token(Role::Admin).await;
    let device = mqtt_device(&app, &admin, "boiler-1").await;
    let base = json!({"name": "hot", "device_id": device, "metric": "temperature",
                      "condition": "above", "threshold": 50});
    let cases: Vec<(Value, &str)> = vec![
        (json!({"condition": "sideways"}), "condition"),
        (json!({"severity": "apocalyptic"}), "severity"),
        (json!({"threshold": null}), "threshold"),
        (json!({"clear_threshold": 60}), "clear_threshold"),
        (
            json!({"condition": "outside", "threshold_high": 40}),
            "threshold_high",
        ),
        (json!({"for_s": -5}), "for_s"),
        (json!({"name": "x".repeat(201)}), "name"),
        (json!({"device_id": Uuid::now_v7()}), "device_id"),
        (json!({"device_id": null, "group": "nowhere"}), "group"),
        (json!({"channels": [Uuid::now_v7()]}), "channels[0]"),
        (
            json!({"channels": (0..21).map(|_| Uuid::now_v7()).collect::<Vec<_>>()}),
            "channels",
        ),
    ];
    for (patch, field) in cases {
        let mut body = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let response = app.post_json("/api/alert-rules", Some(&admin), &body).await;
        assert_eq!(response.status(), 422, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["field"], field, "{body}: {error}");
    }
    // A viewer may read but not write.
    let viewer = app.token(Role::Viewer).await;
    let response = app
        .post_json("/api/alert-rules", Some(&viewer), &base)
        .await;
    assert_eq!(response.status(), 403);
    let rules: Vec<Value> = app
        .get_with_token("/api/alert-rules", &viewer)
        .await
        .json()
        .await
        .unwrap();
    assert!(rules.is_empty(), "{rules:?}");
    // The good one is stored, audited, and readable.
    let response = app.post_json("/api/alert-rules", Some(&admin), &base).await;
    assert_eq!(response.status(), 201);
    let rule: Value = response.json().await.unwrap();
    assert_eq!(rule["clear_threshold"], 50.0);
    let audit = app.store.list_audit(10).await.unwrap();
    assert!(audit.iter().any(|e| e.action == "alert_rule.create"));
    app.stop().await;
}

async fn hysteresis_sequence_notifies_firing_and_resolved_once(db: Db) {
    let receiver = Receiver::start(SECRET).await;
    let app = spawn_app(db, PRIVATE_TARGETS).await;
    let admin = app.token(Role::Admin).await;
    let device = mqtt_device(&app, &admin, "boiler-1").await;
    let channel = webhook_channel(&app, &admin, &receiver.url("/ok")).await;
    hot_rule(&app, &admin, device, channel).await;
    for (secs, value) in [(-10, 40.0), (0, 55.0), (30, 55.0)] {
        submit(&app, device, secs, value).await;
    }
    let open = app.store.list_open_alerts().await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].state, ddms::store::alerts::AlertState::Pending);
    assert!(notifications(&app).await.is_empty());
    for (secs, value) in [(61, 55.0), (70, 48.0), (80, 44.0)] {
        submit(&app, device, secs, value).await;
    }
    assert_eq!(notifications(&app).await, ["firing", "resolved"]);
    assert_eq!(
        events(&app, &admin).await,
        ["pending", "firing", "resolved"]
    );
    // A redelivery of everything (as MQTT would after a crash) changes nothing.
    for (secs, value) in [
        (-10, 40.0),
        (0, 55.0),
        (30, 55.0),
        (61, 55.0),
        (70, 48.0),
        (80, 44.0),
    ] {
        submit(&app, device, secs, value).await;
    }
    assert_eq!(notifications(&app).await, ["firing", "resolved"]);
    let deliveries = app.store.list_deliveries(None, 10).await.unwrap();
    for d in &deliveries {
        assert_eq!(
            d.message["idempotency_key"],
            json!(d.idempotency_key),
            "{d:?}"
        );
        assert_eq!(d.message["severity"], "critical");
        assert_eq!(d.message["device_name"], "boiler-1");
    }
    // The receiver got exactly one firing and one resolved, signed with the channel's key.
    drained(&app).await;
    let received = receiver.requests();
    let states: Vec<&str> = received
        .iter()
        .map(|r| r["body"]["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["firing", "resolved"], "{received:?}");
    for r in &received {
        assert_eq!(r["signature_valid"], true, "{r}");
        assert_eq!(
            r["headers"]["x-ddms-idempotency-key"], r["body"]["idempotency_key"],
            "{r}"
        );
        assert_eq!(r["body"]["metric"], "temperature");
    }
    assert_eq!(received[0]["body"]["value"], 55.0);
    assert_eq!(received[0]["body"]["threshold"], 50.0);
    assert_eq!(received[1]["body"]["value"], 44.0);
    app.stop().await;
}

on_each_backend!(local_postgres: hysteresis_sequence_notifies_firing_and_resolved_once);

#[tokio::test]
async fn two_instances_evaluating_the_same_readings_notify_each_transition_once() {
    let receiver = Receiver::start(SECRET).await;
    let first = spawn_app(Db::Postgres(Provider::Local), PRIVATE_TARGETS).await;
    let admin = first.token(Role::Admin).await;
    let device = mqtt_device(&first, &admin, "boiler-1").await;
    let channel = webhook_channel(&first, &admin, &receiver.url("/ok")).await;
    hot_rule(&first, &admin, device, channel).await;
    // Started after the rule exists, the second instance loads it at start.
    let second = spawn_app(Db::Url(first.database_url.clone()), PRIVATE_TARGETS).await;
    // Both get every reading, concurrently, as a redelivery to another instance would.
    for (secs, value) in [(0, 55.0), (30, 55.0), (61, 55.0), (70, 48.0), (80, 44.0)] {
        tokio::join!(
            submit(&first, device, secs, value),
            submit(&second, device, secs, value)
        );
    }
    assert_eq!(notifications(&first).await, ["firing", "resolved"]);
    assert_eq!(
        events(&first, &admin).await,
        ["pending", "firing", "resolved"]
    );
    // Both instances run an outbox worker; each notification reaches the receiver once.
    drained(&first).await;
    let states: Vec<String> = receiver
        .requests()
        .iter()
        .map(|r| r["body"]["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(states, ["firing", "resolved"]);
    second.stop().await;
    first.stop().await;
}

/// Fires `hot_rule` once: for 0 s is not what the rule says, so feed it past its `for`.
async fn fire(app: &TestApp, device: Uuid) {
    for (secs, value) in [(0, 55.0), (61, 55.0)] {
        submit(app, device, secs, value).await;
    }
}

#[tokio::test]
async fn a_receiver_failing_three_times_still_gets_the_notification_once_more() {
    let receiver = Receiver::start(SECRET).await;
    let app = spawn_app(Db::Sqlite, PRIVATE_TARGETS).await;
    let admin = app.token(Role::Admin).await;
    let device = mqtt_device(&app, &admin, "boiler-1").await;
    let path = "/status/500?times=3";
    let channel = webhook_channel(&app, &admin, &receiver.url(path)).await;
    hot_rule(&app, &admin, device, channel).await;
    fire(&app, device).await;
    drained(&app).await;
    let received = receiver.requests();
    let all = app.store.list_deliveries(None, 10).await.unwrap();
    assert_eq!(received.len(), 4, "{received:?} {all:?}");
    let keys: Vec<&Value> = received
        .iter()
        .map(|r| &r["body"]["idempotency_key"])
        .collect();
    assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
    let delivered = app
        .store
        .list_deliveries(Some(ddms::store::alerts::DeliveryState::Delivered), 10)
        .await
        .unwrap();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].attempts, 4);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("ddms_alert_deliveries_total{kind=\"webhook\",result=\"retry\"} 3"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_refused_notification_is_a_visible_dead_letter() {
    let receiver = Receiver::start(SECRET).await;
    let app = spawn_app(Db::Sqlite, PRIVATE_TARGETS).await;
    let admin = app.token(Role::Admin).await;
    let device = mqtt_device(&app, &admin, "boiler-1").await;
    let channel = webhook_channel(&app, &admin, &receiver.url("/status/404")).await;
    hot_rule(&app, &admin, device, channel).await;
    fire(&app, device).await;
    drained(&app).await;
    let viewer = app.token(Role::Viewer).await;
    let dead: Vec<Value> = app
        .get_with_token("/api/deliveries?state=dead", &viewer)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["event"], "firing");
    assert!(
        dead[0]["last_error"].as_str().unwrap().contains("404"),
        "{dead:?}"
    );
    assert_eq!(receiver.requests().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn acknowledging_and_silencing() {
    let receiver = Receiver::start(SECRET).await;
    let app = spawn_app(Db::Sqlite, PRIVATE_TARGETS).await;
    let admin = app.token(Role::Admin).await;
    let device = mqtt_device(&app, &admin, "boiler-1").await;
    let channel = webhook_channel(&app, &admin, &receiver.url("/ok")).await;
    hot_rule(&app, &admin, device, channel).await;
    for (secs, value) in [(0, 55.0), (61, 55.0)] {
        submit(&app, device, secs, value).await;
    }
    let open = app.store.list_open_alerts().await.unwrap();
    let id = open[0].id;
    let viewer = app.token(Role::Viewer).await;
    let response = app
        .post_json(&format!("/api/alerts/{id}/ack"), Some(&viewer), &json!({}))
        .await;
    assert_eq!(response.status(), 403);
    let response = app
        .post_json(
            &format!("/api/alerts/{id}/ack"),
            Some(&admin),
            &json!({"comment": "on it"}),
        )
        .await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let acked: Value = response.json().await.unwrap();
    assert_eq!(acked["acknowledged_by"], "token:test-admin");
    assert_eq!(acked["ack_comment"], "on it");
    let again = app
        .post_json(&format!("/api/alerts/{id}/ack"), Some(&admin), &json!({}))
        .await;
    assert_eq!(again.status(), 409);
    assert_eq!(notifications(&app).await, ["firing", "acknowledged"]);
    // Under a silence of the device, the resolution is recorded, muted, and not sent.
    let response = app
        .post_json(
            "/api/silences",
            Some(&admin),
            &json!({"device_id": device, "until": Utc::now() + chrono::Duration::hours(1),
                    "comment": "maintenance"}),
        )
        .await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    submit(&app, device, 90, 40.0).await;
    assert_eq!(notifications(&app).await, ["firing", "acknowledged"]);
    let history = app.store.list_transitions(&[id]).await.unwrap();
    let last = history.last().unwrap();
    assert_eq!((last.event.as_str(), last.muted), ("resolved", true));
    let bad = app
        .post_json("/api/silences", Some(&admin), &json!({"until": Utc::now()}))
        .await;
    assert_eq!(bad.status(), 422);
    app.stop().await;
}

/// Deleting a rule, a channel or a silence is for admins: 204, then 404 naming what is gone;
/// each delete is audited once, as the admin's action on its id.
#[tokio::test]
async fn rules_channels_and_silences_are_deleted_once_and_audited() {
    let app = spawn_app(Db::Sqlite, PRIVATE_TARGETS).await;
    let admin = app.token(Role::Admin).await;
    let viewer = app.token(Role::Viewer).await;
    let device = mqtt_device(&app, &admin, "boiler-1").await;
    let channel = webhook_channel(&app, &admin, "http://127.0.0.1:9/ok").await;
    let rule = hot_rule(&app, &admin, device, channel).await;
    let until = Utc::now() + chrono::Duration::hours(1);
    let response = app
        .post_json(
            "/api/silences",
            Some(&admin),
            &json!({"device_id": device, "until": until}),
        )
        .await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let silence: Value = response.json().await.unwrap();
    let silence = silence["id"].as_str().unwrap().to_string();
    for (id, path, noun, action) in [
        (silence, "silences", "silence", "silence.delete"),
        (channel.to_string(), "channels", "channel", "channel.delete"),
        (
            rule.to_string(),
            "alert-rules",
            "alert rule",
            "alert_rule.delete",
        ),
    ] {
        let path = format!("/api/{path}/{id}");
        assert_eq!(app.delete(&path, &viewer).await.status(), 403, "{path}");
        assert_eq!(app.delete(&path, &admin).await.status(), 204, "{path}");
        let again = app.delete(&path, &admin).await;
        assert_eq!(again.status(), 404, "{path}");
        let error: Value = again.json().await.unwrap();
        assert_eq!(error["error"]["code"], "not_found", "{path}");
        assert_eq!(error["error"]["message"], format!("{noun} not found"));
        let audit = app.store.list_audit(10).await.unwrap();
        let entries: Vec<_> = audit.iter().filter(|e| e.action == action).collect();
        assert_eq!(entries.len(), 1, "{action}: {audit:?}");
        assert_eq!(entries[0].target.as_deref(), Some(id.as_str()));
        assert_eq!(entries[0].actor, "token:test-admin");
    }
    app.stop().await;
}

/// A receiver that stays down past `alerts.delivery_expiry` (its minimum, 60 s) leaves a dead
/// letter with the last error; the outbox is empty again.
#[tokio::test]
async fn a_receiver_down_past_the_expiry_leaves_a_dead_letter() {
    let receiver = Receiver::start(SECRET).await;
    let app = spawn_app(
        Db::Sqlite,
        "[alerts]\nallow_private_targets = true\ndelivery_expiry = 60\n",
    )
    .await;
    let admin = app.token(Role::Admin).await;
    let device = mqtt_device(&app, &admin, "boiler-1").await;
    let channel = webhook_channel(&app, &admin, &receiver.url("/status/503")).await;
    hot_rule(&app, &admin, device, channel).await;
    fire(&app, device).await;
    eventually("the dead letter", Duration::from_secs(180), || async {
        !app.store
            .list_deliveries(Some(ddms::store::alerts::DeliveryState::Dead), 10)
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    let viewer = app.token(Role::Viewer).await;
    let dead: Vec<Value> = app
        .get_with_token("/api/deliveries?state=dead", &viewer)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    let error = dead[0]["last_error"].as_str().unwrap();
    assert!(
        error.contains("expired") && error.contains("503"),
        "{error}"
    );
    assert!(receiver.requests().len() >= 2);
    assert_eq!(app.store.outbox_stats().await.unwrap().pending, 0);
    app.stop().await;
}

/// More than `group_threshold` firing notifications of one rule for one channel, due together,
/// go out as one grouped message; all of them are settled by it.
#[tokio::test]
async fn many_alerts_of_one_rule_firing_together_are_sent_as_one_grouped_message() {
    use ddms::alerts::channels::Deliverer;
    use ddms::alerts::metrics::AlertMetrics;
    use ddms::alerts::OutboxWorker;
    use ddms::config::alerts::AlertsConfig;
    use ddms::store::alerts::{Alert, AlertChange, AlertState, NewDelivery};

    let receiver = Receiver::start(SECRET).await;
    // The app only sets up the rule and channel and stops (its own worker must not get there
    // first); the worker under test is driven by hand on the same database.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ddms.db").display());
    let app = spawn_app(Db::Url(url), PRIVATE_TARGETS).await;
    let admin = app.token(Role::Admin).await;
    let channel = webhook_channel(&app, &admin, &receiver.url("/ok")).await;
    let mut devices = Vec::new();
    for i in 0..3 {
        devices.push(mqtt_device(&app, &admin, &format!("boiler-{i}")).await);
    }
    let response = app
        .post_json(
            "/api/alert-rules",
            Some(&admin),
            &json!({"name": "all hot", "metric": "temperature", "condition": "above",
                    "threshold": 50, "channels": [channel]}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let rule: Uuid = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let store = app.store.clone();
    app.stop().await;

    let now = Utc::now();
    for (i, device) in devices.iter().enumerate() {
        let alert = Alert {
            id: Uuid::now_v7(),
            rule_id: rule,
            device_id: Some(*device),
            metric: Some("temperature".into()),
            state: AlertState::Firing,
            value: Some(51.0 + i as f64),
            pending_since: None,
            started_at: Some(now),
            resolved_at: None,
            last_notified_at: Some(now),
            last_eval_ts: Some(now),
            acknowledged_by: None,
            acknowledged_at: None,
            ack_comment: None,
            seq: 1,
            created_at: now,
        };
        let key = format!("{}:1:{channel}", alert.id);
        let message = json!({
            "idempotency_key": key, "alert_id": alert.id, "rule_id": rule, "rule_name": "all hot",
            "state": "firing", "severity": "warning", "device_id": device,
            "device_name": format!("boiler-{i}"), "metric": "temperature", "value": alert.value,
            "threshold": 50.0, "started_at": now, "at": now, "summary": "hot", "link": null,
            "acknowledged_by": null, "comment": null, "grouped": [],
        });
        let change = AlertChange {
            deliveries: vec![NewDelivery {
                channel_id: channel,
                message,
                expires_at: now + chrono::Duration::hours(1),
            }],
            alert,
            expected_seq: None,
            event: "firing".into(),
            from_state: None,
            at: now,
            muted: false,
            actor: None,
        };
        assert!(store.apply_alert_change(&change).await.unwrap());
    }
    let config = AlertsConfig {
        allow_private_targets: true,
        group_threshold: 2,
        ..AlertsConfig::default()
    };
    let worker = OutboxWorker::new(
        store.clone(),
        std::sync::Arc::new(Deliverer::new(&config)),
        config.clone(),
        AlertMetrics::register(&prometheus::Registry::new()),
    );
    assert_eq!(worker.round(Utc::now()).await.unwrap(), 3);
    let received = receiver.requests();
    assert_eq!(received.len(), 1, "{received:?}");
    let body = &received[0]["body"];
    assert_eq!(body["alert_id"], Value::Null);
    assert_eq!(body["grouped"].as_array().unwrap().len(), 3, "{body}");
    assert_eq!(received[0]["signature_valid"], true);
    assert_eq!(store.outbox_stats().await.unwrap().pending, 0);
}
