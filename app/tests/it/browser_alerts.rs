//! The alerting pages in a real browser (Chromium through chromedriver, as in `browser.rs`):
//! channels and rules made in the UI, an alert driven through the ingest pipeline showing in
//! the banner, the navigation and the Alerts page and notified to a webhook receiver,
//! acknowledged there and resolved; the device chart's thresholds and markers; and what a
//! viewer may not do.

use std::time::Duration;

use chrono::Utc;
use ddms::ingest::Sample;
use ddms::store::Role;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::browser::create_device;
use crate::support::app::{spawn_app, Db, TestApp};
use crate::support::browser::{log_in, Browser};
use crate::support::wait::eventually;
use crate::support::webhook::WebhookReceiver as Receiver;

const WAIT: Duration = Duration::from_secs(15);

impl Receiver {
    /// The bodies of the requests received so far.
    fn bodies(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .map(|request| {
                assert_eq!(request["signature_valid"], true, "signed: {request}");
                request["body"].clone()
            })
            .collect()
    }

    /// Waits (with a deadline) for a notification in `state` and returns it.
    async fn wait_for(&self, state: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(body) = self.bodies().into_iter().find(|b| b["state"] == state) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no `{state}` notification: {:?}",
                self.bodies()
            );
            // sleep: the poll interval of this wait with a deadline (it reports the bodies)
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One reading of `temperature` at `ts`, through the same pipeline MQTT and Modbus use.
async fn reading(app: &TestApp, device: Uuid, ts: chrono::DateTime<Utc>, value: f64) {
    app.ingest
        .submit(
            "api",
            vec![Sample {
                device_id: device,
                metric: "temperature".into(),
                unit: Some("°C".into()),
                ts,
                value,
            }],
        )
        .await
        .expect("reading stored");
}

/// Three hours of 20 °C every 20 s, with one 60 °C spike of four minutes two hours ago: a rule
/// "above 50" would have fired once.
async fn history_with_one_spike(app: &TestApp, device: Uuid) {
    let now = Utc::now();
    let samples: Vec<Sample> = (1..=540)
        .rev()
        .map(|i| {
            let ts = now - chrono::Duration::seconds(20 * i);
            let minutes_ago = (now - ts).num_minutes();
            let value = if (118..122).contains(&minutes_ago) {
                60.0
            } else {
                20.0
            };
            Sample {
                device_id: device,
                metric: "temperature".into(),
                unit: Some("°C".into()),
                ts,
                value,
            }
        })
        .collect();
    app.ingest.submit("api", samples).await.unwrap();
}

async fn select(browser: &Browser, css: &str, value: &str) {
    browser
        .js(&format!(
            "const s = document.querySelector('{css}'); s.value = '{value}'; \
             s.dispatchEvent(new Event('change', {{ bubbles: true }}));"
        ))
        .await;
}

async fn alerts(app: &TestApp, token: &str) -> Vec<Value> {
    let response = app.get_with_token("/api/alerts", token).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn an_admin_sets_up_alerting_in_the_ui_and_acknowledges_the_alert_until_it_resolves() {
    // The receiver is on loopback: the configuration and the channel must both allow it.
    let app = spawn_app(Db::Sqlite, "[alerts]\nallow_private_targets = true\n").await;
    let receiver = Receiver::start("s3cret-key").await;
    let token = app.token(Role::Admin).await;
    app.add_user("ada", Role::Admin).await;
    let device = create_device(
        &app,
        &token,
        json!({"name": "boiler-1", "protocol": "mqtt", "group": "plant-a"}),
    )
    .await;
    history_with_one_spike(&app, device).await;

    let browser = Browser::start().await;
    log_in(&browser, &app, "ada", "/admin/channels").await;

    // A webhook channel with a signing key: the key is write-only.
    browser
        .wait_js("!document.getElementById('channels-empty').hidden", WAIT)
        .await;
    browser.click("#new-channel").await;
    browser
        .type_into("#channel-form [name=name]", "ops-hook")
        .await;
    browser
        .type_into("#channel-form [name=url]", &receiver.url("/ok"))
        .await;
    browser
        .type_into("#channel-form [name=headers]", "X-Team: boilers")
        .await;
    browser
        .type_into("#channel-form [name=secret]", "s3cret-key")
        .await;
    browser.click("#channel-form [name=allow_private]").await;
    browser.click("#channel-save").await;
    let channel = browser
        .wait_js(
            "document.querySelector('#channel-rows [data-channel]')?.dataset.channel",
            WAIT,
        )
        .await;
    let channel = channel.as_str().unwrap().to_string();
    assert_eq!(
        browser
            .js("return document.querySelector('#channel-rows [data-channel] td:nth-child(4)').textContent;")
            .await,
        json!("set")
    );
    let listed: Vec<Value> = app
        .get_with_token("/api/channels", &token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["settings"]["headers"]["X-Team"], "boilers");
    assert_eq!(listed[0]["has_secret"], true);
    assert_eq!(listed[0]["allow_private"], true);
    assert!(
        !listed[0].to_string().contains("s3cret-key"),
        "the secret is never listed"
    );
    // Editing without typing a secret keeps it ("unchanged").
    browser.click("#channel-rows .edit").await;
    browser
        .wait_js(
            "document.getElementById('secret-state').dataset.secret === 'set'",
            WAIT,
        )
        .await;
    assert_eq!(
        browser
            .js("return document.querySelector('#channel-form [name=secret]').value;")
            .await,
        json!("")
    );
    browser
        .type_into("#channel-form [name=name]", "ops-webhook")
        .await;
    browser.click("#channel-save").await;
    browser
        .wait_js(
            "document.querySelector('#channel-rows [data-channel] td')?.textContent === 'ops-webhook'",
            WAIT,
        )
        .await;
    let listed: Vec<Value> = app
        .get_with_token("/api/channels", &token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["has_secret"], true, "unchanged: {listed:?}");
    // "Send test" shows the outcome, whatever it is, next to the channel.
    browser.click("#channel-rows .test").await;
    let outcome = browser
        .wait_js(
            "['ok', 'failed'].includes(document.querySelector('[data-test-for] .test-result').dataset.testResult) \
             && document.querySelector('[data-test-for] .test-result').textContent",
            WAIT,
        )
        .await;
    assert_eq!(outcome, json!("Delivered."));
    let test = receiver.wait_for("test").await;
    assert!(
        test["summary"].as_str().unwrap().contains("ops-webhook"),
        "{test}"
    );
    browser.screenshots("alert-channels").await;

    // A rule made in the editor: pickers filled from the device, a bad threshold named by the
    // API next to its field, the preview's estimate from the spike in the history.
    browser
        .client
        .goto(&app.url("/admin/alerts"))
        .await
        .unwrap();
    browser
        .wait_js("!document.getElementById('rules-empty').hidden", WAIT)
        .await;
    browser.click("#new-rule").await;
    browser
        .type_into("#rule-form [name=name]", "boiler too hot")
        .await;
    select(&browser, "#rule-form [name=device_id]", &device.to_string()).await;
    browser
        .wait_js(
            "[...document.querySelectorAll('#metric-names option')].some(o => o.value === 'temperature')",
            WAIT,
        )
        .await;
    browser
        .type_into("#rule-form [name=metric]", "temperature")
        .await;
    browser
        .type_into("#rule-form [name=threshold]", "fifty")
        .await;
    browser
        .type_into("#rule-form [name=clear_threshold]", "45")
        .await;
    browser
        .click(&format!("#rule-channel-list input[value=\"{channel}\"]"))
        .await;
    browser.click("#rule-save").await;
    let message = browser
        .wait_js(
            "document.querySelector('[data-error-field=\"threshold\"]')?.textContent",
            WAIT,
        )
        .await;
    assert!(message.as_str().unwrap().contains("number"), "{message}");
    assert_eq!(
        browser
            .js("return document.querySelector('#rule-form [name=threshold]').getAttribute('aria-invalid');")
            .await,
        json!("true")
    );
    browser.type_into("#rule-form [name=threshold]", "50").await;
    let preview = browser
        .wait_js(
            "document.getElementById('preview-text').dataset.fires === '1' && document.getElementById('preview-text').textContent",
            WAIT,
        )
        .await;
    assert!(
        preview
            .as_str()
            .unwrap()
            .starts_with("Would have fired 1 time in the last 24 h"),
        "{preview}"
    );
    browser.screenshots("alert-rule-editor").await;
    browser.click("#rule-save").await;
    browser
        .wait_js(
            "document.querySelector('#rule-rows [data-rule] td')?.textContent === 'boiler too hot'",
            WAIT,
        )
        .await;
    let rules: Vec<Value> = app
        .get_with_token("/api/alert-rules", &token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(rules[0]["device_id"], json!(device));
    assert_eq!(rules[0]["threshold"], json!(50.0));
    assert_eq!(rules[0]["clear_threshold"], json!(45.0));
    assert_eq!(rules[0]["for_s"], json!(0));
    assert_eq!(rules[0]["channels"], json!([channel]));
    assert_eq!(
        browser
            .js("return document.getElementById('firing-banner').hidden;")
            .await,
        json!(true)
    );

    // Over the threshold: the banner and the navigation count appear live on this page.
    reading(&app, device, Utc::now(), 61.0).await;
    browser
        .wait_js(
            "!document.getElementById('firing-banner').hidden \
             && document.getElementById('firing-banner').dataset.count === '1' \
             && document.getElementById('nav-alert-count').textContent === '1'",
            WAIT,
        )
        .await;
    browser.screenshots("alert-banner").await;
    let fired = receiver.wait_for("firing").await;
    assert_eq!(fired["rule_name"], "boiler too hot");
    assert_eq!(fired["device_id"], json!(device));
    assert_eq!(fired["value"], json!(61.0));

    // The Alerts page lists it as firing; ada acknowledges it with a comment.
    browser.click("#firing-link").await;
    browser
        .wait_js(
            "location.pathname === '/alerts' && document.querySelector('#list-firing [data-alert]')",
            WAIT,
        )
        .await;
    let item = browser.text("#list-firing [data-alert]").await;
    assert!(item.contains("boiler too hot"), "{item}");
    assert!(item.contains("boiler-1"), "{item}");
    browser.screenshots("alerts-firing").await;
    browser.click("#list-firing .ack").await;
    browser
        .type_into(".ack-form [name=comment]", "on it, valve stuck")
        .await;
    browser.click(".ack-form button[type=submit]").await;
    browser
        .wait_js(
            "document.querySelector('#list-acknowledged [data-alert]') && !document.querySelector('#list-firing [data-alert]')",
            WAIT,
        )
        .await;
    let acked = browser.text("#list-acknowledged [data-alert]").await;
    assert!(acked.contains("user:ada"), "{acked}");
    assert!(acked.contains("on it, valve stuck"), "{acked}");
    let stored = alerts(&app, &token).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["state"], "firing");
    assert_eq!(stored[0]["acknowledged_by"], "user:ada");
    assert_eq!(stored[0]["ack_comment"], "on it, valve stuck");
    browser
        .wait_js(
            "document.getElementById('firing-link').textContent.includes('1 acknowledged')",
            WAIT,
        )
        .await;
    browser.screenshots("alerts-acknowledged").await;

    // Between the thresholds it keeps firing; under the clear threshold it resolves, live.
    reading(&app, device, Utc::now(), 48.0).await;
    let resolving_at = Utc::now() + chrono::Duration::seconds(1);
    reading(&app, device, resolving_at, 40.0).await;
    browser
        .wait_js(
            "document.querySelector('#list-resolved [data-alert]') \
             && !document.querySelector('#list-acknowledged [data-alert]') \
             && document.getElementById('firing-banner').hidden \
             && document.getElementById('nav-alert-count').hidden",
            WAIT,
        )
        .await;
    let stored = alerts(&app, &token).await;
    assert_eq!(stored[0]["state"], "resolved", "{stored:?}");
    let resolved = receiver.wait_for("resolved").await;
    assert_eq!(resolved["alert_id"], stored[0]["id"]);
    browser.screenshots("alerts-resolved").await;

    // The device chart: the rule's thresholds as lines, the alert's start and end as markers.
    // The chart ends at the time the page loads: once past the resolving reading's.
    eventually(
        "the clock past the resolving reading's time",
        Duration::from_secs(10),
        || async { Utc::now() > resolving_at },
    )
    .await;
    browser
        .client
        .goto(&app.url(&format!("/devices/{device}")))
        .await
        .unwrap();
    browser
        .wait_js(
            "(() => { const c = document.getElementById('chart'); \
               const t = JSON.parse(c.dataset.thresholds || '[]'); \
               const m = JSON.parse(c.dataset.markers || '[]'); \
               return t.includes(50) && t.includes(45) \
                 && m.some(x => x.kind === 'start') && m.some(x => x.kind === 'resolve'); })()",
            WAIT,
        )
        .await;
    browser.screenshots("device-alert-markers").await;
    browser.close().await;
    app.stop().await;
}

#[tokio::test]
async fn a_viewer_sees_firing_and_muted_alerts_but_no_acknowledge_or_edit_controls() {
    let app = spawn_app(Db::Sqlite, "").await;
    let admin = app.token(Role::Admin).await;
    let viewer = app.token(Role::Viewer).await;
    let device = create_device(&app, &admin, json!({"name": "kiln-7", "protocol": "mqtt"})).await;
    let response = app
        .post_json(
            "/api/alert-rules",
            Some(&admin),
            &json!({"name": "kiln over 900", "device_id": device, "metric": "temperature",
                    "condition": "above", "threshold": 900, "severity": "critical"}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let rule: Value = response.json().await.unwrap();
    // Silenced: the alert fires without notifying anyone, and says so.
    let response = app
        .post_json(
            "/api/silences",
            Some(&admin),
            &json!({"rule_id": rule["id"], "until": Utc::now() + chrono::Duration::hours(1),
                    "comment": "kiln maintenance"}),
        )
        .await;
    assert_eq!(response.status(), 201);
    reading(&app, device, Utc::now(), 950.0).await;

    let browser = Browser::start().await;
    browser.open_with_token(&app, "/alerts", &viewer).await;
    browser
        .wait_js(
            "document.querySelector('#list-firing [data-alert][data-severity=\"critical\"]') \
             && !document.getElementById('firing-banner').hidden",
            WAIT,
        )
        .await;
    assert!(browser
        .text("#list-firing [data-alert]")
        .await
        .contains("kiln over 900"));
    assert_eq!(
        browser
            .js("return document.querySelectorAll('#list-firing [data-alert] [data-muted]').length;")
            .await,
        json!(1)
    );
    assert_eq!(
        browser
            .js("return document.querySelectorAll('.ack, .ack-form').length;")
            .await,
        json!(0)
    );
    assert_eq!(
        browser
            .js("return document.getElementById('dead-section').hidden;")
            .await,
        json!(true)
    );
    let nav = browser
        .js("return [...document.querySelectorAll('#nav a')].filter(a => a.offsetParent !== null).map(a => a.getAttribute('href'));")
        .await;
    assert_eq!(nav, json!(["/", "/notifications", "/alerts"]));
    browser.screenshots("alerts-viewer").await;

    // The rules are listed for reading; nothing to create, edit or delete.
    browser
        .open_with_token(&app, "/admin/alerts", &viewer)
        .await;
    browser
        .wait_js(
            "document.querySelector('#rule-rows [data-rule]') && !document.getElementById('page-error').hidden",
            WAIT,
        )
        .await;
    assert_eq!(
        browser
            .js("return [document.querySelectorAll('#rule-rows button').length, document.getElementById('new-rule').offsetParent];")
            .await,
        json!([0, null])
    );
    browser
        .open_with_token(&app, "/admin/channels", &viewer)
        .await;
    browser
        .wait_js("!document.getElementById('page-error').hidden", WAIT)
        .await;
    assert_eq!(
        browser
            .js("return document.getElementById('new-channel').offsetParent;")
            .await,
        Value::Null
    );
    // The server refuses the viewer's acknowledgement too.
    let id = alerts(&app, &admin).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let response = app
        .post_json(&format!("/api/alerts/{id}/ack"), Some(&viewer), &json!({}))
        .await;
    assert_eq!(response.status(), 403);
    browser.close().await;
    app.stop().await;
}
