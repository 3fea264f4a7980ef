//! The dashboard in a real browser: Debian's headless Chromium driven through chromedriver
//! (WebDriver, with fantoccini) against ddms in this process. Screenshots at 1280 px and 800 px
//! go to `$CARGO_TARGET_DIR/artifacts/screenshots/`.

mod sessions;

mod charts;

use std::time::Duration;

use chrono::Utc;
use ddms::ingest::Sample;
use ddms::modbus::{
    ModbusSimulator, RegisterKind, RegisterSpec, SimulatedRegister, ValueType, Waveform,
};
use ddms::store::{NewNotification, Role};
use serde_json::{json, Value};
use tokio::time::Instant;
use uuid::Uuid;

use crate::support::app::{spawn_app, Db, TestApp};
use crate::support::browser::{log_in, Browser};
use crate::support::session::PASSWORD;

pub(crate) async fn create_device(app: &TestApp, token: &str, body: Value) -> Uuid {
    let response = app.post_json("/api/devices", Some(token), &body).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().parse().unwrap()
}

fn modbus_body(name: &str, port: u16, group: &str) -> Value {
    json!({"name": name, "protocol": "modbus", "group": group,
           "modbus": {"host": "127.0.0.1", "port": port, "unit_id": 1, "poll_interval_ms": 200,
                      "registers": [{"metric": "level", "kind": "holding", "address": 0, "type": "u16", "unit": "%"}]}})
}

/// Readings for the last `minutes`, one every 10 s, so the history chart has something to draw.
async fn history(app: &TestApp, device: Uuid, metric: &str, minutes: i64) {
    let now = Utc::now();
    let samples: Vec<Sample> = (0..minutes * 6)
        .map(|i| Sample {
            device_id: device,
            metric: metric.into(),
            unit: Some("°C".into()),
            ts: now - chrono::Duration::seconds(10 * (minutes * 6 - i)),
            value: 20.0 + 5.0 * ((i as f64) / 12.0).sin(),
        })
        .collect();
    app.ingest.submit("api", samples).await.unwrap();
}

#[tokio::test]
async fn a_simulated_devices_value_changes_on_screen_within_two_seconds() {
    let app = spawn_app(Db::Sqlite, "").await;
    let admin = app.token(Role::Admin).await;
    let viewer = app.token(Role::Viewer).await;
    let spec = RegisterSpec::new("level", RegisterKind::Holding, 0, ValueType::U16);
    let simulator =
        ModbusSimulator::start(vec![SimulatedRegister::new(spec, Waveform::Constant(11.0))])
            .await
            .unwrap();
    let device = create_device(
        &app,
        &admin,
        modbus_body("tank-1", simulator.port(), "plant-a"),
    )
    .await;
    let quiet = create_device(
        &app,
        &admin,
        json!({"name": "greenhouse-3", "protocol": "mqtt", "group": "plant-b"}),
    )
    .await;
    history(&app, device, "temperature", 90).await;

    let browser = Browser::start().await;
    browser.open_with_token(&app, "/", &viewer).await;
    let cell = format!("#values-{device} [data-metric=\"level\"] .metric-value");
    browser
        .wait_js(
            &format!("document.querySelector('{cell}')?.textContent === '11 %'"),
            Duration::from_secs(10),
        )
        .await;
    browser
        .wait_js(
            "document.getElementById('connection').dataset.state === 'live'",
            Duration::from_secs(5),
        )
        .await;
    let status = browser
        .js(&format!(
            "return document.getElementById('status-{device}').textContent;"
        ))
        .await;
    assert_eq!(status, json!("online"));
    assert!(browser
        .text(&format!("#values-{quiet}"))
        .await
        .contains("no readings yet"));
    let groups = browser
        .js("return [...document.querySelectorAll('.group h2')].map(h => h.textContent);")
        .await;
    assert_eq!(groups, json!(["plant-a", "plant-b"]));

    simulator.set_waveform("level", Waveform::Constant(42.0));
    let changed = Instant::now();
    browser
        .wait_js(
            &format!("document.querySelector('{cell}').textContent === '42 %'"),
            Duration::from_secs(2),
        )
        .await;
    let took = changed.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");
    browser.screenshots("dashboard").await;

    // The device page: live value, and the history chart drew its readings.
    browser
        .open_with_token(&app, &format!("/devices/{device}"), &viewer)
        .await;
    browser
        .wait_js(
            "document.querySelector('[data-metric=\"level\"] .card-value')?.textContent === '42 %'",
            Duration::from_secs(10),
        )
        .await;
    browser.js("document.getElementById('metric').value = 'temperature'; document.getElementById('metric').dispatchEvent(new Event('change'));").await;
    // 90 minutes of history every 10 s: the 1 h view shows the last hour's raw readings.
    browser
        .wait_js(
            "Number(/Raw readings \\((\\d+)\\)/.exec(document.getElementById('chart-step').textContent)?.[1]) >= 300",
            Duration::from_secs(10),
        )
        .await;
    browser.screenshots("device").await;
    browser.click("[data-range=\"24h\"]").await;
    browser
        .wait_js(
            "document.getElementById('chart-step').textContent.startsWith('1-minute averages')",
            Duration::from_secs(10),
        )
        .await;
    browser.click("[data-range=\"30d\"]").await;
    browser
        .wait_js(
            "document.getElementById('chart-step').textContent.startsWith('1-hour averages')",
            Duration::from_secs(10),
        )
        .await;
    browser.close().await;
    simulator.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn creating_a_modbus_device_with_a_bad_register_map_shows_the_field_error() {
    let app = spawn_app(Db::Sqlite, "").await;
    let admin = app.token(Role::Admin).await;
    let browser = Browser::start().await;
    browser
        .open_with_token(&app, "/admin/devices", &admin)
        .await;
    browser
        .wait_js(
            "!document.getElementById('list-empty').hidden",
            Duration::from_secs(10),
        )
        .await;
    browser.click("#new-modbus").await;
    browser
        .type_into("#device-form [name=name]", "boiler-7")
        .await;
    browser
        .type_into("#device-form [name=host]", "10.0.0.7")
        .await;
    browser
        .type_into("[data-field=\"modbus.registers[0].metric\"]", "temperature")
        .await;
    browser
        .type_into("[data-field=\"modbus.registers[0].address\"]", "70000")
        .await;
    browser.click("#save").await;
    let message = browser
        .wait_js("document.querySelector('[data-error-field=\"modbus.registers[0].address\"]')?.textContent", Duration::from_secs(10))
        .await;
    assert!(message.as_str().unwrap().contains("65535"), "{message}");
    let invalid = browser.js("return document.querySelector('[data-field=\"modbus.registers[0].address\"]').getAttribute('aria-invalid');").await;
    assert_eq!(invalid, json!("true"));
    assert!(!browser.text("#form-error").await.is_empty());
    browser
        .js("document.querySelector('[aria-invalid]').scrollIntoView({ block: 'center' });")
        .await;
    browser.screenshots("device-form-error").await;
    let devices: Value = app
        .get_with_token("/api/devices", &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(devices, json!([]), "nothing was created");

    // Corrected, it saves and shows up in the list.
    browser
        .type_into("[data-field=\"modbus.registers[0].address\"]", "4")
        .await;
    browser.click("#save").await;
    browser
        .wait_js("[...document.querySelectorAll('#device-rows td a')].some(a => a.textContent === 'boiler-7')", Duration::from_secs(10))
        .await;
    assert!(
        browser
            .js("return document.getElementById('device-form').hidden;")
            .await
            == json!(true)
    );
    let devices: Value = app
        .get_with_token("/api/devices", &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(devices[0]["modbus"]["registers"][0]["address"], 4);
    browser.close().await;
    app.stop().await;
}

#[tokio::test]
async fn acknowledging_a_notification_removes_it() {
    let app = spawn_app(Db::Sqlite, "").await;
    let admin = app.token(Role::Admin).await;
    let device = create_device(&app, &admin, json!({"name": "pump-4", "protocol": "mqtt"})).await;
    app.store
        .open_notification(&NewNotification {
            kind: ddms::status::CONNECTION_FAILURE.into(),
            device_id: Some(device),
            message: "no answer for 3 polls".into(),
        })
        .await
        .unwrap();
    let browser = Browser::start().await;
    browser.open_with_token(&app, "/", &admin).await;
    browser
        .wait_js(
            "document.getElementById('failures-text').textContent.includes('pump-4')",
            Duration::from_secs(10),
        )
        .await;
    browser
        .open_with_token(&app, "/notifications", &admin)
        .await;
    browser
        .wait_js(
            "document.querySelectorAll('.note').length === 1",
            Duration::from_secs(10),
        )
        .await;
    assert!(browser.text(".note").await.contains("pump-4"));
    browser.screenshots("notifications").await;
    browser.click(".note .ack").await;
    browser
        .wait_js("document.querySelectorAll('.note').length === 0 && !document.getElementById('notes-empty').hidden", Duration::from_secs(10))
        .await;
    let open = app
        .store
        .list_open_notifications(ddms::status::CONNECTION_FAILURE)
        .await
        .unwrap();
    assert!(open.is_empty(), "{open:?}");
    browser.close().await;
    app.stop().await;
}

#[tokio::test]
async fn a_viewer_sees_no_admin_controls_and_cannot_change_anything() {
    let app = spawn_app(Db::Sqlite, "").await;
    let admin = app.token(Role::Admin).await;
    let viewer = app.token(Role::Viewer).await;
    let device = create_device(&app, &admin, json!({"name": "meter-9", "protocol": "mqtt"})).await;
    app.store
        .open_notification(&NewNotification {
            kind: ddms::status::CONNECTION_FAILURE.into(),
            device_id: Some(device),
            message: "silent".into(),
        })
        .await
        .unwrap();
    let browser = Browser::start().await;
    browser.open_with_token(&app, "/", &viewer).await;
    browser
        .wait_js(
            "document.body.dataset.role === 'viewer'",
            Duration::from_secs(10),
        )
        .await;
    let visible = browser
        .js("return [...document.querySelectorAll('#nav a')].filter(a => !a.hidden && a.offsetParent !== null).map(a => a.textContent);")
        .await;
    assert_eq!(
        visible,
        json!(["Dashboard", "Notifications", "Alerts"]),
        "no Devices, alert rules, channels, Settings, Users or Audit"
    );

    browser
        .open_with_token(&app, "/notifications", &viewer)
        .await;
    browser
        .wait_js(
            "document.querySelectorAll('.note').length === 1",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        browser
            .js("return document.querySelectorAll('.note .ack').length;")
            .await,
        json!(0)
    );

    browser
        .open_with_token(&app, "/admin/devices", &viewer)
        .await;
    browser
        .wait_js(
            "!document.getElementById('page-error').hidden",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        browser
            .js("return document.getElementById('new-modbus').offsetParent;")
            .await,
        Value::Null
    );
    // The server enforces it too: the viewer's own requests are refused.
    let statuses = browser
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             const auth = { Authorization: 'Bearer ' + sessionStorage.getItem('ddms.token'), 'Content-Type': 'application/json' };
             Promise.all([
               fetch('/api/devices', { method: 'POST', headers: auth, body: JSON.stringify({ name: 'x', protocol: 'mqtt' }) }),
               fetch('/api/devices/' + arguments[0], { method: 'DELETE', headers: auth }),
               fetch('/api/notifications/connection-failures/' + arguments[1], { method: 'DELETE', headers: auth }),
             ]).then(rs => done(rs.map(r => r.status)));",
            vec![json!(device), json!(Uuid::now_v7())],
        )
        .await
        .unwrap();
    assert_eq!(statuses, json!([403, 403, 403]));
    assert_eq!(app.store.list_devices().await.unwrap().len(), 1);
    browser.close().await;
    app.stop().await;
}

#[tokio::test]
async fn device_names_holding_markup_or_sql_are_shown_as_text_and_run_nothing() {
    let app = spawn_app(Db::Sqlite, "").await;
    let admin = app.token(Role::Admin).await;
    let names = [
        "<script>alert(1)</script>",
        "'; DROP TABLE devices; --",
        "<img src=x onerror=\"window.__pwned=1\">",
    ];
    let mut ids = Vec::new();
    for name in names {
        ids.push(
            create_device(
                &app,
                &admin,
                json!({"name": name, "protocol": "mqtt", "group": "<b>g</b>"}),
            )
            .await,
        );
    }
    app.store
        .open_notification(&NewNotification {
            kind: ddms::status::CONNECTION_FAILURE.into(),
            device_id: Some(ids[2]),
            message: "<img src=y onerror=\"window.__pwned=2\">".into(),
        })
        .await
        .unwrap();
    let stored: Vec<String> = app
        .store
        .list_devices()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(
        stored.len(),
        3,
        "stored as given, the table is still there: {stored:?}"
    );

    let browser = Browser::start().await;
    let inert = "window.__pwned === undefined && document.querySelectorAll('main script, main img').length === 0";
    for path in ["/", "/admin/devices", "/notifications"] {
        browser.open_with_token(&app, path, &admin).await;
        browser
            .wait_js(
                "document.querySelectorAll('td a, .note strong').length >= 1",
                Duration::from_secs(10),
            )
            .await;
        let shown = browser
            .js("return [...document.querySelectorAll('td a, .note strong')].map(a => a.textContent);")
            .await;
        for name in &names[2..] {
            assert!(
                shown.as_array().unwrap().iter().any(|s| s == name),
                "{path}: {shown}"
            );
        }
        if path != "/notifications" {
            for name in names {
                assert!(
                    shown.as_array().unwrap().iter().any(|s| s == name),
                    "{path}: {shown}"
                );
            }
        }
        assert_eq!(
            browser.js(&format!("return {inert};")).await,
            json!(true),
            "{path}"
        );
    }
    browser
        .open_with_token(&app, &format!("/devices/{}", ids[0]), &admin)
        .await;
    browser
        .wait_js(
            "document.getElementById('device-name').textContent === '<script>alert(1)</script>'",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        browser.js("return document.title;").await,
        json!("<script>alert(1)</script> — ddms")
    );
    assert_eq!(browser.js(&format!("return {inert};")).await, json!(true));
    assert!(
        browser.client.get_alert_text().await.is_err(),
        "no alert is open"
    );
    browser.screenshots("markup-names").await;
    browser.close().await;
    app.stop().await;
}
