//! Alerting end to end against real components: the API, the ingest pipeline, the store (SQLite
//! and a local PostgreSQL), two instances on one database.

use chrono::{DateTime, TimeZone, Utc};
use ddms::ingest::Sample;
use ddms::store::Role;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::app::{spawn_app, Db, TestApp};
use crate::support::services::Provider;

fn t(secs: i64) -> DateTime<Utc> {
    // Readings carry their own time: `for` counts in reading time, so the test needs no waits.
    Utc.timestamp_opt(1_790_000_000 + secs, 0).unwrap()
}

async fn mqtt_device(app: &TestApp, token: &str, name: &str) -> Uuid {
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

async fn webhook_channel(app: &TestApp, token: &str, url: &str) -> Uuid {
    let response = app
        .post_json(
            "/api/channels",
            Some(token),
            &json!({"name": "ops", "kind": "webhook", "settings": {"url": url},
                    "secret": "hmac-key", "allow_private": true}),
        )
        .await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["has_secret"], true);
    assert!(body.get("secret").is_none());
    body["id"].as_str().unwrap().parse().unwrap()
}

async fn hot_rule(app: &TestApp, token: &str, device: Uuid, channel: Uuid) -> Uuid {
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
    let app = spawn_app(db, "").await;
    let admin = app.token(Role::Admin).await;
    let device = mqtt_device(&app, &admin, "boiler-1").await;
    let channel = webhook_channel(&app, &admin, "http://127.0.0.1:9/hook").await;
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
    app.stop().await;
}

#[tokio::test]
async fn hysteresis_sequence_notifies_firing_and_resolved_once_on_sqlite() {
    hysteresis_sequence_notifies_firing_and_resolved_once(Db::Sqlite).await;
}

#[tokio::test]
async fn hysteresis_sequence_notifies_firing_and_resolved_once_on_postgres_local_process() {
    hysteresis_sequence_notifies_firing_and_resolved_once(Db::Postgres(Provider::Local)).await;
}

#[tokio::test]
async fn two_instances_evaluating_the_same_readings_notify_each_transition_once() {
    let first = spawn_app(Db::Postgres(Provider::Local), "").await;
    let admin = first.token(Role::Admin).await;
    let device = mqtt_device(&first, &admin, "boiler-1").await;
    let channel = webhook_channel(&first, &admin, "http://127.0.0.1:9/hook").await;
    hot_rule(&first, &admin, device, channel).await;
    // Started after the rule exists, the second instance loads it at start.
    let second = spawn_app(Db::Url(first.database_url.clone()), "").await;
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
    second.stop().await;
    first.stop().await;
}

#[tokio::test]
async fn acknowledging_and_silencing() {
    let app = spawn_app(Db::Sqlite, "").await;
    let admin = app.token(Role::Admin).await;
    let device = mqtt_device(&app, &admin, "boiler-1").await;
    let channel = webhook_channel(&app, &admin, "http://127.0.0.1:9/hook").await;
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
