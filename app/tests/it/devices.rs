//! Devices over the API: CRUD with register-map validation, latest values and raw readings,
//! self-registration, connection-failure notifications, and the live event stream.

mod stream;

use std::time::Duration;

use chrono::{TimeZone, Utc};
use ddms::ingest::Sample;
use ddms::store::{Role, Status};
use futures::StreamExt;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::app::{spawn_app, Db, TestApp};
use crate::support::services::Provider;

/// Disabled: nothing listens on its port, and these tests drive its status themselves.
fn boiler() -> Value {
    json!({"name": "boiler-1", "protocol": "modbus", "group": "plant-a", "enabled": false,
           "modbus": {"host": "127.0.0.1", "port": 1502, "unit_id": 1, "poll_interval_ms": 1000,
             "registers": [{"metric": "temperature", "kind": "holding", "address": 0, "type": "f32",
                            "word_order": "big", "scale": 1.0, "offset": 0.0, "unit": "°C"}]}})
}

async fn create(app: &TestApp, token: &str, body: &Value) -> Value {
    let response = app.post_json("/api/devices", Some(token), body).await;
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

#[tokio::test]
async fn devices_are_created_read_updated_and_deleted_by_admins() {
    let app = spawn_app(Db::Sqlite, "").await;
    let admin = app.token(Role::Admin).await;
    let viewer = app.token(Role::Viewer).await;

    assert_eq!(
        app.post_json("/api/devices", Some(&viewer), &boiler())
            .await
            .status(),
        403
    );
    let device = create(&app, &admin, &boiler()).await;
    assert_eq!(device["name"], "boiler-1");
    assert_eq!(device["group"], "plant-a");
    assert_eq!(device["status"]["status"], "unknown");
    assert_eq!(
        device["modbus"]["registers"][0]["byte_swap"], false,
        "defaults are filled in"
    );
    let id = device["id"].as_str().unwrap();

    let duplicate = app.post_json("/api/devices", Some(&admin), &boiler()).await;
    assert_eq!(duplicate.status(), 409);

    let listed: Value = app
        .get_with_token("/api/devices", &viewer)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let got: Value = app
        .get_with_token(&format!("/api/devices/{id}"), &viewer)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["id"], device["id"]);
    assert_eq!(
        listed[0], got,
        "a listed device has the shape of a fetched one"
    );
    let keys: Vec<&str> = got
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "created_at",
            "enabled",
            "group",
            "id",
            "modbus",
            "name",
            "protocol",
            "status",
            "updated_at"
        ]
    );

    let mut changed = boiler();
    changed["name"] = json!("boiler-1b");
    changed["modbus"]["poll_interval_ms"] = json!(2000);
    let updated = app
        .put_json(&format!("/api/devices/{id}"), &admin, &changed)
        .await;
    assert_eq!(updated.status(), 200);
    let updated: Value = updated.json().await.unwrap();
    assert_eq!(updated["name"], "boiler-1b");
    assert_eq!(updated["modbus"]["poll_interval_ms"], 2000);
    let mut mqtt = changed.clone();
    mqtt["protocol"] = json!("mqtt");
    mqtt.as_object_mut().unwrap().remove("modbus");
    let protocol_change = app
        .put_json(&format!("/api/devices/{id}"), &admin, &mqtt)
        .await;
    assert_eq!(protocol_change.status(), 422);

    assert_eq!(
        app.delete(&format!("/api/devices/{id}"), &viewer)
            .await
            .status(),
        403
    );
    assert_eq!(
        app.delete(&format!("/api/devices/{id}"), &admin)
            .await
            .status(),
        204
    );
    assert_eq!(
        app.get_with_token(&format!("/api/devices/{id}"), &viewer)
            .await
            .status(),
        404
    );
    assert_eq!(
        app.delete(&format!("/api/devices/{id}"), &admin)
            .await
            .status(),
        404
    );
    assert_eq!(
        app.get_with_token("/api/devices/not-a-uuid", &viewer)
            .await
            .status(),
        400
    );

    let actions: Vec<String> = app
        .store
        .list_audit(10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(actions, ["device.delete", "device.update", "device.create"]);
    app.stop().await;
}

#[tokio::test]
async fn a_bad_register_map_is_refused_with_422_naming_every_field() {
    let app = spawn_app(Db::Sqlite, "").await;
    let admin = app.token(Role::Admin).await;
    let mut bad = boiler();
    bad["modbus"]["registers"][0]["type"] = json!("f16");
    bad["modbus"]["registers"][0]["address"] = json!(70000);
    let response = app.post_json("/api/devices", Some(&admin), &bad).await;
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "validation_failed");
    let fields: Vec<&str> = body["error"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert!(fields.contains(&"modbus.registers[0].type"), "{body}");
    assert!(fields.contains(&"modbus.registers[0].address"), "{body}");
    assert!(body["error"]["field"]
        .as_str()
        .unwrap()
        .starts_with("modbus.registers[0]"));

    let mut no_map = boiler();
    no_map.as_object_mut().unwrap().remove("modbus");
    let body: Value = app
        .post_json("/api/devices", Some(&admin), &no_map)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["error"]["field"], "modbus");
    let body: Value = app
        .post_json(
            "/api/devices",
            Some(&admin),
            &json!({"name": "", "protocol": "mqtt"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["error"]["field"], "name");
    assert!(
        app.store.list_devices().await.unwrap().is_empty(),
        "nothing was created"
    );
    app.stop().await;
}

#[tokio::test]
async fn latest_and_raw_readings_come_back_oldest_first() {
    let app = spawn_app(Db::Sqlite, "").await;
    let admin = app.token(Role::Admin).await;
    let device = create(&app, &admin, &boiler()).await;
    let id: Uuid = device["id"].as_str().unwrap().parse().unwrap();
    let t0 = Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap();
    let samples: Vec<Sample> = [2, 0, 1]
        .iter()
        .map(|&i| Sample {
            device_id: id,
            metric: "temperature".into(),
            unit: Some("°C".into()),
            ts: t0 + chrono::Duration::seconds(i),
            value: 20.0 + i as f64,
        })
        .collect();
    app.ingest.submit("api", samples.clone()).await.unwrap();
    // Submitting the same readings again stores nothing new.
    app.ingest.submit("api", samples).await.unwrap();

    let latest: Value = app
        .get_with_token(&format!("/api/devices/{id}/latest"), &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(latest["temperature"]["value"], 22.0);
    assert_eq!(latest["temperature"]["ts"], "2026-11-22T10:00:02Z");
    let url = format!(
        "/api/devices/{id}/readings?metric=temperature&from=2026-11-22T09:00:00Z&to=2026-11-22T11:00:00Z&step=raw"
    );
    let points: Value = app.get_with_token(&url, &admin).await.json().await.unwrap();
    let values: Vec<f64> = points
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .collect();
    assert_eq!(values, [20.0, 21.0, 22.0]);
    let no_metric = app
        .get_with_token(&format!("/api/devices/{id}/readings"), &admin)
        .await;
    assert_eq!(no_metric.status(), 400);
    let reversed = app
        .get_with_token(&format!("/api/devices/{id}/readings?metric=temperature&from=2026-11-22T11:00:00Z&to=2026-11-22T09:00:00Z"), &admin)
        .await;
    assert_eq!(reversed.status(), 400);
    app.stop().await;
}

/// `to=-262143-01-01T00:30:00Z` once panicked (the default `from` is `to` − 1 h, before the
/// first time chrono can hold); times outside years 1–9999 are a 400 naming the parameter.
#[tokio::test]
async fn times_outside_the_supported_range_are_a_400_naming_the_parameter() {
    let app = spawn_app(Db::Sqlite, "").await;
    let admin = app.token(Role::Admin).await;
    let device = create(&app, &admin, &boiler()).await;
    let id: Uuid = device["id"].as_str().unwrap().parse().unwrap();
    let cases = [
        ("to=-262143-01-01T00:30:00Z", "to"),
        (
            "from=-262143-01-01T00:00:00Z&to=2026-01-01T00:00:00Z",
            "from",
        ),
        ("to=%2B262142-06-01T00:00:00Z", "to"),
        ("from=0000-12-31T23:00:00Z&to=0001-01-01T00:30:00Z", "from"),
    ];
    for (query, field) in cases {
        let response = app
            .get_with_token(
                &format!("/api/devices/{id}/readings?metric=temperature&{query}"),
                &admin,
            )
            .await;
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = response.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("`{field}`")) && message.contains("9999"),
            "{query}: {message}"
        );
    }
    // The edges themselves are fine.
    let edge = app
        .get_with_token(
            &format!("/api/devices/{id}/readings?metric=temperature&to=0001-01-01T00:30:00Z"),
            &admin,
        )
        .await;
    assert_eq!(edge.status(), 400, "`from` defaults to before year 1");
    let fine = app
        .get_with_token(
            &format!("/api/devices/{id}/readings?metric=temperature&from=9999-12-31T22:00:00Z&to=9999-12-31T23:00:00Z"),
            &admin,
        )
        .await;
    assert_eq!(fine.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn rollup_steps_give_min_max_avg_count_and_ranges_and_point_counts_are_bounded() {
    let app = spawn_app(Db::Sqlite, "").await;
    let admin = app.token(Role::Admin).await;
    let device = create(&app, &admin, &boiler()).await;
    let id: Uuid = device["id"].as_str().unwrap().parse().unwrap();
    let t0 = Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap();
    // Two minutes at one reading every 2 s: values 0..59 in each minute's order.
    let samples: Vec<Sample> = (0..60)
        .map(|i| Sample {
            device_id: id,
            metric: "temperature".into(),
            unit: None,
            ts: t0 + chrono::Duration::seconds(2 * i),
            value: (i % 30) as f64,
        })
        .collect();
    app.ingest.submit("api", samples).await.unwrap();
    let get = |query: String| {
        let app = &app;
        let admin = &admin;
        async move {
            app.get_with_token(
                &format!("/api/devices/{id}/readings?metric=temperature&{query}"),
                admin,
            )
            .await
        }
    };
    let minutes: Value = get("from=2026-11-22T10:00:00Z&to=2026-11-22T11:00:00Z&step=1m".into())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        minutes,
        json!([
            {"ts": "2026-11-22T10:00:00Z", "value": 14.5, "min": 0.0, "max": 29.0, "avg": 14.5, "count": 30},
            {"ts": "2026-11-22T10:01:00Z", "value": 14.5, "min": 0.0, "max": 29.0, "avg": 14.5, "count": 30},
        ])
    );
    let hours: Value = get("from=2026-11-22T10:30:00Z&to=2026-11-22T12:00:00Z&step=1h".into())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        hours[0]["ts"], "2026-11-22T10:00:00Z",
        "the bucket overlapping `from`"
    );
    assert_eq!(hours[0]["count"], 60);

    let message = |response: reqwest::Response| async move {
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        body["error"]["message"].as_str().unwrap().to_string()
    };
    let raw_month =
        message(get("from=2026-10-01T00:00:00Z&to=2026-11-01T00:00:00Z&step=raw".into()).await)
            .await;
    assert!(
        raw_month.contains("step=raw covers at most 7 days"),
        "{raw_month}"
    );
    let minute_year =
        message(get("from=2025-11-01T00:00:00Z&to=2026-11-01T00:00:00Z&step=1m".into()).await)
            .await;
    assert!(minute_year.contains("use step=1h"), "{minute_year}");
    let too_many =
        message(get("from=2026-11-22T10:00:00Z&to=2026-11-22T11:00:00Z&limit=59".into()).await)
            .await;
    assert!(too_many.contains("more than 59 points"), "{too_many}");
    let exactly: Value = get("from=2026-11-22T10:00:00Z&to=2026-11-22T11:00:00Z&limit=60".into())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(exactly.as_array().unwrap().len(), 60);
    let bad_step = message(get("step=5m".into()).await).await;
    assert!(bad_step.contains("use raw, 1m or 1h"), "{bad_step}");
    let unknown: Value = app
        .get_with_token(
            &format!("/api/devices/{id}/readings?metric=nope&step=1h"),
            &admin,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(unknown, json!([]));
    app.stop().await;
}

#[tokio::test]
async fn self_registration_needs_the_provisioning_token_and_is_rate_limited() {
    let app = spawn_app(Db::Sqlite, "[provisioning]\ntoken = \"prov-secret-42\"\n").await;
    let register = |token: &'static str, name: String| {
        let client = app.client.clone();
        let url = app.url("/api/devices/register");
        async move {
            client
                .post(url)
                .header("x-provisioning-token", token)
                .json(&json!({"name": name, "group": "field"}))
                .send()
                .await
                .unwrap()
        }
    };
    let refused = register("wrong", "gh-0".into()).await;
    assert_eq!(refused.status(), 401);
    assert!(
        app.store.list_devices().await.unwrap().is_empty(),
        "nothing created"
    );

    let created = register("prov-secret-42", "gh-1".into()).await;
    assert_eq!(created.status(), 201);
    let body: Value = created.json().await.unwrap();
    let device_id = body["device_id"].as_str().unwrap();
    assert_eq!(body["mqtt"]["username"], device_id);
    assert_eq!(body["mqtt"]["port"], 1883);
    let password = body["mqtt"]["password"].as_str().unwrap();
    assert!(password.len() >= 32);
    let stored = app.store.find_mqtt_credentials(device_id).await.unwrap();
    assert_eq!(
        stored.secret_hash,
        ddms::auth::hash_api_token(password),
        "stored hashed"
    );
    assert_ne!(stored.secret_hash, password);

    // 10 per minute per address: the first two above count.
    let mut statuses = Vec::new();
    for i in 2..12 {
        statuses.push(
            register("prov-secret-42", format!("gh-{i}"))
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(
        statuses.iter().filter(|&&s| s == 201).count(),
        8,
        "{statuses:?}"
    );
    let limited = register("prov-secret-42", "gh-99".into()).await;
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().contains_key("retry-after"));
    app.stop().await;
}

#[tokio::test]
async fn registration_is_refused_when_no_provisioning_token_is_configured() {
    let app = spawn_app(Db::Sqlite, "").await;
    let response = app
        .client
        .post(app.url("/api/devices/register"))
        .header("x-provisioning-token", "")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    app.stop().await;
}

#[tokio::test]
async fn connection_failures_open_after_the_threshold_clear_on_recovery_and_can_be_acknowledged() {
    let app = spawn_app(Db::Sqlite, "").await;
    let admin = app.token(Role::Admin).await;
    let viewer = app.token(Role::Viewer).await;
    let a: Uuid = create(&app, &admin, &boiler()).await["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut other = boiler();
    other["name"] = json!("boiler-2");
    let b: Uuid = create(&app, &admin, &other).await["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let open = || async {
        let list: Value = app
            .get_with_token("/api/notifications/connection-failures", &viewer)
            .await
            .json()
            .await
            .unwrap();
        list.as_array().unwrap().clone()
    };
    for device in [a, b] {
        for _ in 0..2 {
            app.status
                .record_failure(device, Status::Offline, "connection refused", Utc::now())
                .await;
        }
    }
    assert!(open().await.is_empty(), "below the threshold of 3");
    app.status
        .record_failure(a, Status::Offline, "connection refused", Utc::now())
        .await;
    app.status
        .record_failure(b, Status::Offline, "connection refused", Utc::now())
        .await;
    let list = open().await;
    assert_eq!(list.len(), 2);
    let device: Value = app
        .get_with_token(&format!("/api/devices/{a}"), &viewer)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(device["status"]["status"], "offline");
    assert_eq!(device["status"]["last_error"], "connection refused");

    app.status.record_success(a, Utc::now()).await;
    let list = open().await;
    assert_eq!(list.len(), 1, "cleared on recovery");
    assert_eq!(list[0]["device_id"], b.to_string());
    let id = list[0]["id"].as_str().unwrap();
    let path = format!("/api/notifications/connection-failures/{id}");
    assert_eq!(app.delete(&path, &viewer).await.status(), 403);
    assert_eq!(app.delete(&path, &admin).await.status(), 200);
    assert!(open().await.is_empty());
    assert_eq!(
        app.delete(
            &format!("/api/notifications/connection-failures/{}", Uuid::now_v7()),
            &admin
        )
        .await
        .status(),
        404
    );
    app.stop().await;
}
