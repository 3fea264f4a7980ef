//! The dashboard in a real browser: Debian's headless Chromium driven through chromedriver
//! (WebDriver, with fantoccini) against ddms in this process. Screenshots at 1280 px and 800 px
//! go to `$CARGO_TARGET_DIR/artifacts/screenshots/`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use chrono::Utc;
use ddms::ingest::Sample;
use ddms::modbus::{
    ModbusSimulator, RegisterKind, RegisterSpec, SimulatedRegister, ValueType, Waveform,
};
use ddms::store::{NewNotification, Role};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tokio::time::Instant;
use uuid::Uuid;

use crate::support::app::{spawn_app, Db, TestApp};

/// Browsers are heavy on a 2-core machine: one at a time across the test binary.
static ONE_BROWSER: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

pub(crate) struct Browser {
    pub(crate) client: Client,
    _driver: tokio::process::Child,
    _profile: tempfile::TempDir,
    _permit: tokio::sync::SemaphorePermit<'static>,
}

fn find_program(names: &[&str]) -> PathBuf {
    for name in names {
        for dir in std::env::var("PATH").unwrap_or_default().split(':') {
            let candidate = PathBuf::from(dir).join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
        let lib = PathBuf::from("/usr/lib/chromium").join(name);
        if lib.is_file() {
            return lib;
        }
    }
    panic!("none of {names:?} is installed (apt-get install chromium chromium-driver)");
}

impl Browser {
    pub(crate) async fn start() -> Browser {
        let permit = ONE_BROWSER.acquire().await.unwrap();
        let driver_bin = find_program(&["chromedriver"]);
        let chromium = find_program(&["chromium", "chromium-browser"]);
        let port = crate::support::services::free_port().unwrap();
        let driver = tokio::process::Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let webdriver = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while reqwest::get(format!("{webdriver}/status")).await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not answer");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        // Flags for a closed network, as root, without a display.
        let args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1280,900".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": chromium, "args": args }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&webdriver)
            .await
            .expect("a WebDriver session with Chromium");
        Browser {
            client,
            _driver: driver,
            _profile: profile,
            _permit: permit,
        }
    }

    /// Opens `path` of the app, signed in with an API token (taken from the URL fragment).
    pub(crate) async fn open_with_token(&self, app: &TestApp, path: &str, token: &str) {
        self.client
            .goto(&format!("{}#token={token}", app.url(path)))
            .await
            .unwrap();
    }

    pub(crate) async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Polls a JavaScript expression until it is truthy; returns its value.
    pub(crate) async fn wait_js(&self, expression: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.js(&format!("return ({expression}) || null;")).await;
            if !value.is_null() && value != json!(false) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for `{expression}`"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .text()
            .await
            .unwrap()
    }

    pub(crate) async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap();
    }

    pub(crate) async fn type_into(&self, css: &str, text: &str) {
        let input = self.client.find(Locator::Css(css)).await.unwrap();
        input.clear().await.unwrap();
        input.send_keys(text).await.unwrap();
    }

    /// Screenshots of the current page at 1280 px and 800 px wide.
    pub(crate) async fn screenshots(&self, name: &str) {
        let dir = screenshot_dir();
        for width in [1280u32, 800] {
            self.client.set_window_size(width, 900).await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            let png = self.client.screenshot().await.unwrap();
            assert!(png.starts_with(b"\x89PNG"), "a PNG");
            std::fs::write(dir.join(format!("{name}-{width}.png")), png).unwrap();
        }
        self.client.set_window_size(1280, 900).await.unwrap();
    }

    pub(crate) async fn close(self) {
        self.client.close().await.unwrap();
    }
}

fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("artifacts/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

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

const PASSWORD: &str = "correct horse battery staple";

pub(crate) async fn add_user(app: &TestApp, username: &str, role: Role) {
    app.store
        .create_user(&ddms::store::NewUser {
            username: username.into(),
            password_hash: ddms::auth::hash_password(PASSWORD).unwrap(),
            role,
        })
        .await
        .unwrap();
}

/// Signs in through the login form; waits for the page `next` to know who is signed in.
pub(crate) async fn log_in(browser: &Browser, app: &TestApp, username: &str, next: &str) {
    browser
        .client
        .goto(&app.url(&format!("/login?next={next}")))
        .await
        .unwrap();
    browser.type_into("#username", username).await;
    browser.type_into("#password", PASSWORD).await;
    browser.click("#submit").await;
    browser
        .wait_js(
            &format!("location.pathname === '{next}' && document.getElementById('whoami')?.textContent === 'user:{username}'"),
            Duration::from_secs(10),
        )
        .await;
}

#[tokio::test]
async fn an_owner_logs_in_sees_readings_live_over_event_source_and_changes_settings() {
    let app = spawn_app(Db::Sqlite, "").await;
    let admin = app.token(Role::Admin).await;
    add_user(&app, "ada", Role::Owner).await;
    let device = create_device(
        &app,
        &admin,
        json!({"name": "greenhouse-3", "protocol": "mqtt"}),
    )
    .await;

    let browser = Browser::start().await;
    // A wrong password is refused on the form.
    browser.client.goto(&app.url("/login")).await.unwrap();
    browser.type_into("#username", "ada").await;
    browser.type_into("#password", "wrong").await;
    browser.click("#submit").await;
    let refused = browser
        .wait_js("!document.getElementById('login-error').hidden && document.getElementById('login-error').textContent", Duration::from_secs(10))
        .await;
    assert_eq!(refused, json!("Wrong username or password."));

    log_in(&browser, &app, "ada", "/").await;
    assert_eq!(
        browser.js("return typeof EventSource;").await,
        json!("function")
    );
    browser
        .wait_js(
            "document.getElementById('connection').dataset.state === 'live'",
            Duration::from_secs(10),
        )
        .await;
    let nav = browser
        .js("return [...document.querySelectorAll('#nav a')].filter(a => a.offsetParent !== null).map(a => a.textContent);")
        .await;
    assert_eq!(
        nav,
        json!([
            "Dashboard",
            "Notifications",
            "Alerts",
            "Devices",
            "Alert rules",
            "Channels",
            "Audit log",
            "Users and tokens",
            "Settings"
        ])
    );
    app.ingest
        .submit(
            "api",
            vec![Sample {
                device_id: device,
                metric: "humidity".into(),
                unit: Some("%".into()),
                ts: Utc::now(),
                value: 61.5,
            }],
        )
        .await
        .unwrap();
    let committed = Instant::now();
    browser
        .wait_js(&format!("document.querySelector('#values-{device} [data-metric=\"humidity\"] .metric-value')?.textContent === '61.50 %'"), Duration::from_secs(2))
        .await;
    assert!(committed.elapsed() < Duration::from_secs(2));

    // A write with the session: the page sends the CSRF token, the change is stored.
    browser
        .client
        .goto(&app.url("/admin/settings"))
        .await
        .unwrap();
    browser
        .wait_js(
            "!document.getElementById('settings-content').hidden",
            Duration::from_secs(10),
        )
        .await;
    browser.type_into("[name=retention_days]", "400").await;
    browser
        .type_into("[name=backup_schedule]", "sometimes")
        .await;
    browser.click("#settings-save").await;
    let error = browser
        .wait_js(
            "document.querySelector('[data-error-field=\"backup_schedule\"]')?.textContent",
            Duration::from_secs(10),
        )
        .await;
    assert!(!error.as_str().unwrap().is_empty());
    browser
        .type_into("[name=backup_schedule]", "daily 02:30")
        .await;
    browser.click("#settings-save").await;
    browser
        .wait_js(
            "!document.getElementById('settings-saved').hidden",
            Duration::from_secs(10),
        )
        .await;
    // Keeping 400 days where everything was kept deletes data: pending for a day.
    assert_eq!(app.store.get_setting("retention_days").await.unwrap(), None);
    assert_eq!(
        app.store
            .get_setting("retention_pending")
            .await
            .unwrap()
            .unwrap()["retention_days"],
        json!(400)
    );
    browser
        .wait_js(
            "!document.getElementById('retention-pending').hidden",
            Duration::from_secs(10),
        )
        .await;
    // "Delete now", confirmed: it takes effect at once.
    browser.click("#retention-apply").await;
    browser.client.accept_alert().await.unwrap();
    browser
        .wait_js(
            "document.getElementById('retention-pending').hidden",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        app.store.get_setting("retention_days").await.unwrap(),
        Some(json!(400))
    );
    assert_eq!(
        app.store.get_setting("backup_schedule").await.unwrap(),
        Some(json!("daily 02:30"))
    );
    // Back up now: the archive is listed once written, with the session's CSRF token sent.
    browser
        .wait_js(
            "!document.getElementById('backups-empty').hidden",
            Duration::from_secs(10),
        )
        .await;
    browser.click("#backup-now").await;
    let archive = browser
        .wait_js(
            "document.querySelector('#backup-rows [data-backup]')?.dataset.backup",
            Duration::from_secs(20),
        )
        .await;
    let archive = archive.as_str().unwrap().to_string();
    assert!(archive.starts_with("ddms-backup-"), "{archive}");
    let audit = app.store.list_audit(20).await.unwrap();
    assert!(
        audit.iter().any(|e| e.action == "backup.create"
            && e.target.as_deref() == Some(&format!("backup:{archive}"))),
        "{audit:?}"
    );
    browser.screenshots("settings").await;

    // Users and tokens: a new token is shown once; the audit log lists the changes.
    browser.client.goto(&app.url("/admin/users")).await.unwrap();
    browser
        .wait_js(
            "!document.getElementById('users-content').hidden",
            Duration::from_secs(10),
        )
        .await;
    browser.type_into("#new-token-name", "scada-export").await;
    browser.click("#token-form button").await;
    let secret = browser
        .wait_js("!document.getElementById('secret').hidden && document.getElementById('secret-value').textContent", Duration::from_secs(10))
        .await;
    let me: Value = app
        .get_with_token("/api/me", secret.as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["subject"], "token:scada-export");
    browser.screenshots("users").await;
    browser.client.goto(&app.url("/admin/audit")).await.unwrap();
    browser
        .wait_js(
            "!document.getElementById('audit-content').hidden",
            Duration::from_secs(10),
        )
        .await;
    let actions = browser.js("return [...document.querySelectorAll('#audit-rows tr td:nth-child(3)')].map(td => td.textContent);").await;
    for action in ["auth.login", "token.create"] {
        assert!(
            actions.as_array().unwrap().iter().any(|a| a == action),
            "{action}: {actions}"
        );
    }
    browser.screenshots("audit").await;

    browser.click("#logout").await;
    browser
        .wait_js("location.pathname === '/login'", Duration::from_secs(10))
        .await;
    browser.client.goto(&app.url("/")).await.unwrap();
    browser
        .wait_js("location.pathname === '/login'", Duration::from_secs(10))
        .await;
    browser.close().await;
    app.stop().await;
}

#[tokio::test]
async fn a_viewer_with_a_session_sees_no_settings_and_every_write_is_refused() {
    let app = spawn_app(Db::Sqlite, "").await;
    add_user(&app, "vic", Role::Viewer).await;
    let browser = Browser::start().await;
    log_in(&browser, &app, "vic", "/").await;
    let nav = browser
        .js("return [...document.querySelectorAll('#nav a')].filter(a => a.offsetParent !== null).map(a => a.textContent);")
        .await;
    assert_eq!(nav, json!(["Dashboard", "Notifications", "Alerts"]));
    browser
        .client
        .goto(&app.url("/admin/settings"))
        .await
        .unwrap();
    browser
        .wait_js(
            "!document.getElementById('settings-empty').hidden",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        browser
            .js("return document.getElementById('settings-content').hidden && document.getElementById('backups-section').hidden;")
            .await,
        json!(true)
    );
    // Even with the CSRF token the viewer's session may change nothing.
    let statuses = browser
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             const csrf = document.cookie.split('; ').find(c => c.startsWith('ddms_csrf=')).split('=')[1];
             const headers = { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf };
             Promise.all([
               fetch('/api/system/config', { method: 'PUT', headers, body: JSON.stringify({ retention_days: 1 }) }),
               fetch('/api/devices', { method: 'POST', headers, body: JSON.stringify({ name: 'x', protocol: 'mqtt' }) }),
               fetch('/api/users', { method: 'GET' }),
             ]).then(rs => done(rs.map(r => r.status)));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(statuses, json!([403, 403, 403]));
    assert_eq!(app.store.get_setting("retention_days").await.unwrap(), None);
    browser.close().await;
    app.stop().await;
}

/// The chart's view as the canvas reports it: (from, to) in ms since the epoch.
async fn chart_view(browser: &Browser) -> (f64, f64) {
    let view = browser
        .js("const c = document.getElementById('chart'); return [Number(c.dataset.from), Number(c.dataset.to)];")
        .await;
    (view[0].as_f64().unwrap(), view[1].as_f64().unwrap())
}

#[tokio::test]
async fn the_history_chart_pans_with_a_drag_and_zooms_with_a_pinch_and_the_wheel() {
    use fantoccini::actions::{
        InputSource, PointerAction, TouchActions, WheelAction, WheelActions,
    };
    let app = spawn_app(Db::Sqlite, "").await;
    let admin = app.token(Role::Admin).await;
    let device = create_device(&app, &admin, json!({"name": "kiln-2", "protocol": "mqtt"})).await;
    history(&app, device, "temperature", 6 * 60).await;
    let browser = Browser::start().await;
    browser
        .open_with_token(&app, &format!("/devices/{device}"), &admin)
        .await;
    browser
        .wait_js(
            "document.getElementById('chart-step').textContent.startsWith('Raw readings')",
            Duration::from_secs(10),
        )
        .await;
    let rect = browser
        .js("const r = document.getElementById('chart').getBoundingClientRect(); return [r.left, r.top, r.width, r.height];")
        .await;
    let (left, top, width, height) = (
        rect[0].as_f64().unwrap(),
        rect[1].as_f64().unwrap(),
        rect[2].as_f64().unwrap(),
        rect[3].as_f64().unwrap(),
    );
    let (cx, cy) = (left + width / 2.0, top + height / 2.0);
    let ms = |n| Some(Duration::from_millis(n));

    // One finger dragged to the right shows earlier readings; the span stays.
    let (from, to) = chart_view(&browser).await;
    let drag = TouchActions::new("finger".into())
        .then(PointerAction::MoveTo {
            duration: None,
            x: cx,
            y: cy,
        })
        .then(PointerAction::Down { button: 0 })
        .then(PointerAction::MoveBy {
            duration: ms(200),
            x: width / 4.0,
            y: 0.0,
        })
        .then(PointerAction::Up { button: 0 });
    browser.client.perform_actions(drag).await.unwrap();
    let (dragged_from, dragged_to) = chart_view(&browser).await;
    assert!(
        dragged_from < from - 600e3,
        "panned back: {from} → {dragged_from}"
    );
    assert!(
        ((dragged_to - dragged_from) - (to - from)).abs() < 1e3,
        "same span"
    );

    // Two fingers moving apart zoom in.
    let finger = |id: &str, start: f64, by: f64| {
        TouchActions::new(id.into())
            .then(PointerAction::MoveTo {
                duration: None,
                x: start,
                y: cy,
            })
            .then(PointerAction::Down { button: 0 })
            .then(PointerAction::MoveBy {
                duration: ms(300),
                x: by,
                y: 0.0,
            })
            .then(PointerAction::Up { button: 0 })
    };
    let pinch = fantoccini::actions::Actions::from(finger("a", cx - 60.0, -150.0)).and(finger(
        "b",
        cx + 60.0,
        150.0,
    ));
    browser.client.perform_actions(pinch).await.unwrap();
    let (pinched_from, pinched_to) = chart_view(&browser).await;
    assert!(
        pinched_to - pinched_from < 0.6 * (dragged_to - dragged_from),
        "zoomed in: {} → {} s",
        (dragged_to - dragged_from) / 1e3,
        (pinched_to - pinched_from) / 1e3
    );

    // The wheel zooms out; past 3 hours the chart loads 1-minute buckets with a band.
    for _ in 0..4 {
        let mut wheel = WheelActions::new("wheel".into());
        wheel.push(WheelAction::Scroll {
            duration: None,
            x: cx as i64,
            y: cy as i64,
            delta_x: 0,
            delta_y: 600,
        });
        browser.client.perform_actions(wheel).await.unwrap();
    }
    let (wide_from, wide_to) = chart_view(&browser).await;
    assert!(
        wide_to - wide_from > 3.0 * 3600e3,
        "zoomed out to {} h",
        (wide_to - wide_from) / 3600e3
    );
    browser
        .wait_js(
            "document.getElementById('chart-step').textContent.startsWith('1-minute averages')",
            Duration::from_secs(10),
        )
        .await;
    browser.screenshots("device-rollups").await;
    browser.close().await;
    app.stop().await;
}

#[tokio::test]
async fn the_history_chart_describes_the_point_under_a_tap_or_the_mouse_and_folds_live_readings_into_rollups(
) {
    use fantoccini::actions::{InputSource, MouseActions, PointerAction, TouchActions};
    let app = spawn_app(Db::Sqlite, "").await;
    let admin = app.token(Role::Admin).await;
    let device = create_device(&app, &admin, json!({"name": "kiln-3", "protocol": "mqtt"})).await;
    history(&app, device, "temperature", 90).await;
    let browser = Browser::start().await;
    browser
        .open_with_token(&app, &format!("/devices/{device}"), &admin)
        .await;
    browser
        .wait_js(
            "document.getElementById('chart-step').textContent.startsWith('Raw readings')",
            Duration::from_secs(10),
        )
        .await;
    let rect = browser
        .js("const r = document.getElementById('chart').getBoundingClientRect(); return [r.left, r.top, r.width, r.height];")
        .await;
    let [left, top, width, height] = [0, 1, 2, 3].map(|i| rect[i].as_f64().unwrap());
    let readout = "document.getElementById('chart-readout').textContent";

    // A tap marks the nearest reading: its time and value, with the unit.
    let tap = TouchActions::new("finger".into())
        .then(PointerAction::MoveTo {
            duration: None,
            x: left + width * 0.5,
            y: top + height / 2.0,
        })
        .then(PointerAction::Down { button: 0 })
        .then(PointerAction::Up { button: 0 });
    browser.client.perform_actions(tap).await.unwrap();
    let tapped = browser
        .wait_js(
            &format!("/: \\d+\\.\\d\\d °C$/.test({readout}) && {readout}"),
            Duration::from_secs(5),
        )
        .await;
    // The mouse marks the point under it as it moves, another one further right.
    let hover = MouseActions::new("mouse".into()).then(PointerAction::MoveTo {
        duration: None,
        x: left + width * 0.9,
        y: top + height / 2.0,
    });
    browser.client.perform_actions(hover).await.unwrap();
    let hovered = browser
        .wait_js(
            &format!("{readout} !== {tapped} && / °C$/.test({readout}) && {readout}"),
            Duration::from_secs(5),
        )
        .await;
    assert_ne!(tapped, hovered);

    // The 24 h view shows 1-minute buckets; live readings fold into the newest one (or start
    // the next), without a reload.
    browser.click("[data-range=\"24h\"]").await;
    browser
        .wait_js(
            "document.getElementById('chart-step').textContent.startsWith('1-minute averages')",
            Duration::from_secs(10),
        )
        .await;
    // (Clicking the range button took the mouse off the chart: point at it again.)
    let hover = MouseActions::new("mouse".into()).then(PointerAction::MoveTo {
        duration: None,
        x: left + width * 0.8,
        y: top + height / 2.0,
    });
    browser.client.perform_actions(hover).await.unwrap();
    let described = browser
        .wait_js(
            &format!("/avg .* min .* max .*readings\\)$/.test({readout}) && {readout}"),
            Duration::from_secs(5),
        )
        .await;
    assert!(
        described.as_str().unwrap().contains("(1 minute)"),
        "{described}"
    );
    let before: Value = serde_json::from_str(
        browser
            .js("return document.getElementById('chart').dataset.newest;")
            .await
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let now = Utc::now();
    let minute = now - chrono::Duration::milliseconds(now.timestamp_millis().rem_euclid(60_000));
    let at = |s: i64| minute + chrono::Duration::milliseconds(s * 10);
    let center = (minute.timestamp_millis() + 30_000) as f64;
    let same_bucket = before["t"].as_f64() == Some(center);
    let count = before["count"].as_u64().unwrap();
    // A `reading` event carries each series' newest reading of a batch: one at a time here.
    for (i, value, min, max, expected) in [
        (
            1,
            1000.0,
            if same_bucket { "n.min" } else { "1000" },
            1000.0,
            if same_bucket { count + 1 } else { 1 },
        ),
        (
            2,
            -1000.0,
            "-1000",
            1000.0,
            if same_bucket { count + 2 } else { 2 },
        ),
    ] {
        app.ingest
            .submit(
                "api",
                vec![Sample {
                    device_id: device,
                    metric: "temperature".into(),
                    unit: Some("°C".into()),
                    ts: at(i),
                    value,
                }],
            )
            .await
            .unwrap();
        browser
            .wait_js(
                &format!(
                    "(() => {{ const n = JSON.parse(document.getElementById('chart').dataset.newest); \
                     return n.t === {center} && n.count === {expected} && n.max === {max} && n.min === {min}; }})()"
                ),
                Duration::from_secs(5),
            )
            .await;
    }
    let after: Value = serde_json::from_str(
        browser
            .js("return document.getElementById('chart').dataset.newest;")
            .await
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(after["t"].as_f64(), Some(center), "{before} → {after}");
    browser.close().await;
    app.stop().await;
}

/// `?next=` after a login never leaves the site, however the URL is disguised (a tab the URL
/// parser drops, a backslash it reads as a slash, a scheme-relative or absolute URL).
#[tokio::test]
async fn a_login_with_a_foreign_next_stays_on_the_site() {
    let app = spawn_app(Db::Sqlite, "").await;
    add_user(&app, "ann", Role::Viewer).await;
    let browser = Browser::start().await;
    let origin = format!("http://{}", app.addr);
    for next in [
        "%2F%09%2Fevil.example",
        "//evil.example",
        "https://evil.example",
        "/%5Cevil.example",
        "javascript:alert(1)",
    ] {
        browser
            .client
            .goto(&app.url(&format!("/login?next={next}")))
            .await
            .unwrap();
        browser.type_into("#username", "ann").await;
        browser.type_into("#password", PASSWORD).await;
        browser.click("#submit").await;
        // Wait for the navigation the login starts to land somewhere, then look where.
        let deadline = Instant::now() + Duration::from_secs(10);
        let landed = loop {
            let here = browser
                .js("return [location.origin, location.pathname, document.getElementById('whoami')?.textContent || ''];")
                .await;
            let off_site = here[0] != json!(origin);
            let signed_in = here[2] == json!("user:ann");
            if off_site || signed_in {
                break here;
            }
            assert!(
                Instant::now() < deadline,
                "next={next}: no page after login: {here}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            landed[0],
            json!(origin),
            "next={next} left the site: {landed}"
        );
        assert_eq!(landed[1], json!("/"), "next={next}: {landed}");
    }
    browser.close().await;
    app.stop().await;
}
