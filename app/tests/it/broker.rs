//! The embedded MQTT broker (`mqtt.mode = "embedded"`), driven by an independent client
//! (`mosquitto_pub` / `mosquitto_sub`): devices log in with the credentials ddms issued them,
//! publish only under their own topics, get their QoS 1 PUBACK only once the readings are in
//! the database, and cannot disturb one another with bad input.

mod listeners;

mod refusals;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use ddms::store::Role;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::support::wait::{eventually, eventually_some};

use crate::support::app::{spawn_app, Db, TestApp};
use crate::support::services::{Postgres, Provider};

const PROVISIONING_TOKEN: &str = "broker-test-provisioning-token";

/// ddms with the embedded broker on a free port; `embedded` adds keys to `[mqtt.embedded]`,
/// `extra` other tables.
async fn spawn_broker_app(db: Db, embedded: &str, extra: &str) -> TestApp {
    let config = format!(
        "[mqtt]\nmode = \"embedded\"\n[mqtt.embedded]\nlisten = \"127.0.0.1:0\"\n{embedded}\n\
         [provisioning]\ntoken = {PROVISIONING_TOKEN:?}\n{extra}"
    );
    spawn_app(db, &config).await
}

#[derive(Clone)]
struct Device {
    id: String,
    password: String,
}

/// A device created by an admin (`POST /api/devices`), with the credentials it got once.
async fn create_device(app: &TestApp, admin: &str, name: &str) -> Device {
    let response = app
        .post_json(
            "/api/devices",
            Some(admin),
            &json!({ "name": name, "protocol": "mqtt" }),
        )
        .await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    let id = body["id"].as_str().unwrap().to_string();
    assert_eq!(body["mqtt"]["username"], id.as_str());
    Device {
        id,
        password: body["mqtt"]["password"].as_str().unwrap().to_string(),
    }
}

fn port(app: &TestApp) -> u16 {
    app.mqtt_addr.expect("embedded broker runs").port()
}

fn client_args(port: u16, device: &Device, topic: &str) -> Vec<String> {
    [
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-u",
        &device.id,
        "-P",
        &device.password,
        "-i",
        &device.id,
        "-q",
        "1",
        "-t",
        topic,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

struct Published {
    code: i32,
    output: String,
}

async fn run_pub(args: Vec<String>) -> Published {
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new("mosquitto_pub")
            .args(&args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("mosquitto_pub finishes")
    .expect("mosquitto_pub is installed");
    Published {
        code: output.status.code().unwrap_or(-1),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// One QoS 1 message; `extra` adds mosquitto_pub options (`-V mqttv5`, `-d`, a will…).
async fn publish(
    port: u16,
    device: &Device,
    topic: &str,
    payload: &str,
    extra: &[&str],
) -> Published {
    let mut args = client_args(port, device, topic);
    args.extend(["-m".to_string(), payload.to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    run_pub(args).await
}

/// Many QoS 1 messages over one connection (`mosquitto_pub -l`, one message per line): exits 0
/// only once every message is acknowledged.
async fn publish_lines(port: u16, device: &Device, topic: &str, lines: &[String]) -> Published {
    let mut child = Command::new("mosquitto_pub")
        .args(client_args(port, device, topic))
        .arg("-l")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_pub is installed");
    let mut stdin = child.stdin.take().unwrap();
    let input = lines.join("\n") + "\n";
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("mosquitto_pub -l finishes")
        .unwrap();
    Published {
        code: output.status.code().unwrap_or(-1),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// A connected `mosquitto_pub -l -d`: lines written to it are published at once; its debug
/// output (CONNACK, PUBACK…) is collected.
struct LivePublisher {
    child: Child,
    stdin: Option<tokio::process::ChildStdin>,
    output: Arc<Mutex<Vec<String>>>,
}

impl LivePublisher {
    async fn connect(port: u16, device: &Device, topic: &str) -> LivePublisher {
        // mosquitto_pub writes its debug lines with stdio: line-buffer them, or a pipe holds
        // them back until exit.
        let mut child = Command::new("stdbuf")
            .args(["-oL", "-eL", "mosquitto_pub"])
            .args(client_args(port, device, topic))
            .args(["-l", "-d"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("mosquitto_pub is installed");
        let output = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = output.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    output.lock().unwrap().push(line);
                }
            });
        }
        let publisher = LivePublisher {
            stdin: child.stdin.take(),
            child,
            output,
        };
        publisher
            .wait_for("received CONNACK", Duration::from_secs(10))
            .await;
        publisher
    }

    async fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("still open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    fn saw(&self, needle: &str) -> bool {
        self.output
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
    }

    async fn wait_for(&self, needle: &str, within: Duration) {
        let started = Instant::now();
        while !self.saw(needle) {
            assert!(
                started.elapsed() < within,
                "no `{needle}` from mosquitto_pub within {within:?}: {:?}",
                self.output.lock().unwrap()
            );
            // sleep: the poll interval of this wait with a deadline (it reports the output).
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Closes stdin; mosquitto_pub exits once everything sent is acknowledged.
    async fn finish(mut self) -> i32 {
        drop(self.stdin.take());
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("mosquitto_pub exits")
            .unwrap()
            .code()
            .unwrap_or(-1)
    }
}

/// The value of one sample of /metrics (0 when absent): `name` with all of `labels`.
async fn metric(app: &TestApp, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = app.get("/metrics").await.text().await.unwrap();
    text.lines()
        .filter(|line| {
            line.starts_with(name)
                && line[name.len()..].starts_with(['{', ' '])
                && labels
                    .iter()
                    .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn rejected(app: &TestApp, reason: &str) -> f64 {
    metric(
        app,
        "ddms_readings_rejected_total",
        &[("protocol", "mqtt"), ("reason", reason)],
    )
    .await
}

/// Raw readings of one metric of a device over the last day.
async fn readings(app: &TestApp, viewer: &str, device: &Device, name: &str) -> Vec<Value> {
    let from = (Utc::now() - chrono::Duration::days(1)).to_rfc3339();
    let to = (Utc::now() + chrono::Duration::minutes(10)).to_rfc3339();
    let response = app
        .client
        .get(app.url(&format!("/api/devices/{}/readings", device.id)))
        .query(&[
            ("metric", name),
            ("from", &from),
            ("to", &to),
            ("limit", "100000"),
        ])
        .bearer_auth(viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json::<Vec<Value>>().await.unwrap()
}

/// `count` telemetry lines with distinct timestamps (an hour ago, 1 ms apart) and `seq` = i.
fn telemetry_lines(count: usize) -> Vec<String> {
    let base = Utc::now().timestamp_millis() - 3_600_000;
    (0..count)
        .map(|i| {
            format!(
                r#"{{"ts": {}, "metrics": {{"seq": {i}}}}}"#,
                base + i as i64
            )
        })
        .collect()
}

#[tokio::test]
async fn a_registered_device_publishes_telemetry_and_heartbeats_that_are_stored() {
    let app = spawn_broker_app(Db::Sqlite, "", "").await;
    let viewer = app.token(Role::Viewer).await;
    let port = port(&app);

    let ready = app.get("/ready").await;
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["components"]["mqtt"]["status"], "ok", "{ready}");
    assert_eq!(ready["components"]["mqtt"]["mode"], "embedded");

    let response = app
        .client
        .post(app.url("/api/devices/register"))
        .header("X-Provisioning-Token", PROVISIONING_TOKEN)
        .json(&json!({ "name": "greenhouse-3" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let registered: Value = response.json().await.unwrap();
    let device = Device {
        id: registered["device_id"].as_str().unwrap().to_string(),
        password: registered["mqtt"]["password"].as_str().unwrap().to_string(),
    };
    assert_eq!(registered["mqtt"]["username"], device.id.as_str());
    assert_eq!(registered["mqtt"]["tls"], false);

    let sent = publish(
        port,
        &device,
        &format!("devices/{}/telemetry", device.id),
        r#"{"metrics": {"temperature": 21.5, "humidity": 40}}"#,
        &[],
    )
    .await;
    assert_eq!(sent.code, 0, "{}", sent.output);
    // Acknowledged means committed: no waiting here.
    let latest: Value = app
        .get_with_token(&format!("/api/devices/{}/latest", device.id), &viewer)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(latest["temperature"]["value"], 21.5, "{latest}");
    assert_eq!(latest["humidity"]["value"], 40.0, "{latest}");
    let id: Uuid = device.id.parse().unwrap();
    let seen_after_telemetry = app.status.get(id).await.unwrap().last_seen_at.unwrap();

    // A flat object of numbers is telemetry too.
    let sent = publish(
        port,
        &device,
        &format!("devices/{}/telemetry", device.id),
        r#"{"pressure": 1013}"#,
        &[],
    )
    .await;
    assert_eq!(sent.code, 0, "{}", sent.output);
    assert_eq!(readings(&app, &viewer, &device, "pressure").await.len(), 1);

    // The heartbeat's time must be later than the telemetry's for the check below to mean
    // anything.
    eventually(
        "the clock to move past the telemetry's time",
        Duration::from_secs(5),
        || async { Utc::now() > seen_after_telemetry },
    )
    .await;
    let sent = publish(
        port,
        &device,
        &format!("devices/{}/heartbeat", device.id),
        r#"{"uptime_s": 3600, "rssi": -67}"#,
        &[],
    )
    .await;
    assert_eq!(sent.code, 0, "{}", sent.output);
    let status = app.status.get(id).await.unwrap();
    assert_eq!(status.status, ddms::store::Status::Online);
    assert!(status.last_seen_at.unwrap() > seen_after_telemetry);
    let shown: Value = app
        .get_with_token(&format!("/api/devices/{}", device.id), &viewer)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown["status"]["status"], "online", "{shown}");

    assert_eq!(
        metric(
            &app,
            "ddms_readings_ingested_total",
            &[("protocol", "mqtt")]
        )
        .await,
        3.0
    );

    // A graceful stop lets connected devices go and closes the broker's port.
    let idle =
        LivePublisher::connect(port, &device, &format!("devices/{}/telemetry", device.id)).await;
    // Earlier clients' disconnects may still be on their way.
    eventually(
        "the connections gauge to count the one connected client",
        Duration::from_secs(5),
        || async { metric(&app, "ddms_mqtt_connections", &[]).await == 1.0 },
    )
    .await;
    let addr: SocketAddr = app.mqtt_addr.unwrap();
    let stopping = Instant::now();
    app.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "{:?}",
        stopping.elapsed()
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the broker still accepts connections after stop"
    );
    drop(idle);
}

#[tokio::test]
async fn after_a_qos1_publish_is_acknowledged_its_reading_is_in_the_store_for_1000_messages() {
    let app = spawn_broker_app(Db::Sqlite, "", "").await;
    let admin = app.token(Role::Admin).await;
    let viewer = app.token(Role::Viewer).await;
    let port = port(&app);
    let mut devices = Vec::new();
    for i in 0..10 {
        devices.push(create_device(&app, &admin, &format!("fleet-{i}")).await);
    }
    let started = Instant::now();
    let runs = devices.iter().map(|device| {
        let app = &app;
        let viewer = &viewer;
        async move {
            let sent = publish_lines(
                port,
                device,
                &format!("devices/{}/telemetry", device.id),
                &telemetry_lines(100),
            )
            .await;
            assert_eq!(sent.code, 0, "{}", sent.output);
            // mosquitto_pub exits once every PUBACK arrived: all 100 must be stored by now.
            let stored = readings(app, viewer, device, "seq").await;
            assert_eq!(stored.len(), 100, "device {}", device.id);
        }
    });
    futures::future::join_all(runs).await;
    eprintln!(
        "1000 QoS 1 messages from 10 devices stored in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    app.stop().await;
}

#[tokio::test]
async fn the_puback_waits_for_the_database_and_comes_once_the_reading_is_committed() {
    // Its own PostgreSQL server: this test stops it.
    let server: &'static Postgres = Box::leak(Box::new(
        Postgres::start(Provider::from_env().await).await.unwrap(),
    ));
    let app = spawn_broker_app(Db::PostgresOn(server), "", "[http]\nshutdown_timeout = 2\n").await;
    let admin = app.token(Role::Admin).await;
    let viewer = app.token(Role::Viewer).await;
    let port = port(&app);
    let device = create_device(&app, &admin, "patient").await;
    let topic = format!("devices/{}/telemetry", device.id);

    let mut live = LivePublisher::connect(port, &device, &topic).await;
    live.send(r#"{"metrics": {"t": 1}}"#).await;
    live.wait_for("received PUBACK (Mid: 1", Duration::from_secs(10))
        .await;
    let id: Uuid = device.id.parse().unwrap();
    let last_seen = || async { app.status.get(id).await.and_then(|s| s.last_seen_at) };
    let seen_before = last_seen().await;

    server.stop().await.unwrap();
    live.send(r#"{"metrics": {"t": 2}}"#).await;
    // The broker hands a message to the writer as it marks the device seen.
    eventually(
        "the broker to take message 2",
        Duration::from_secs(10),
        || async { last_seen().await > seen_before },
    )
    .await;
    // sleep: a window in which the commit keeps failing and the PUBACK must not come; no
    // later event would show it did not (the writer retries until the database is back).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !live.saw("received PUBACK (Mid: 2"),
        "acknowledged while the database was down: {:?}",
        live.output.lock().unwrap()
    );

    server.restart().await.unwrap();
    live.wait_for("received PUBACK (Mid: 2", Duration::from_secs(30))
        .await;
    let stored = readings(&app, &viewer, &device, "t").await;
    let values: Vec<f64> = stored
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .collect();
    assert_eq!(values, vec![1.0, 2.0]);

    // Shutting down while a commit cannot happen: the message is not acknowledged either, and
    // the stop still ends (the writer gives up after http.shutdown_timeout).
    let seen_before = last_seen().await;
    server.stop().await.unwrap();
    live.send(r#"{"metrics": {"t": 3}}"#).await;
    live.wait_for("sending PUBLISH (d0, q1, r0, m3", Duration::from_secs(10))
        .await;
    eventually(
        "the broker to take message 3",
        Duration::from_secs(10),
        || async { last_seen().await > seen_before },
    )
    .await;
    let stopping = Instant::now();
    app.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(30),
        "stop took {:?}",
        stopping.elapsed()
    );
    // sleep: the broker is closed; a PUBACK it sent before closing would be in mosquitto_pub's
    // output within moments, and mosquitto_pub says nothing when the connection goes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !live.saw("received PUBACK (Mid: 3"),
        "acknowledged without a commit: {:?}",
        live.output.lock().unwrap()
    );
}

async fn device_status(app: &TestApp, token: &str, device: &Device) -> Value {
    let body: Value = app
        .get_with_token(&format!("/api/devices/{}", device.id), token)
        .await
        .json()
        .await
        .unwrap();
    body["status"].clone()
}

#[tokio::test]
async fn the_offline_threshold_set_at_run_time_marks_silent_devices_offline_and_spares_talking_ones(
) {
    // The configured threshold (an hour) would never fire within the test; the owner's
    // setting (10 s, the least allowed) does, without a restart.
    let app = spawn_app(
        Db::Sqlite,
        "[mqtt]\nmode = \"embedded\"\noffline_after = 3600\n[mqtt.embedded]\n\
         listen = \"127.0.0.1:0\"\n[devices]\nfailure_threshold = 1\n",
    )
    .await;
    let owner = app.token(Role::Owner).await;
    let silent = create_device(&app, &owner, "silent-1").await;
    let talking = create_device(&app, &owner, "talking-1").await;
    let port = port(&app);
    let talk = {
        let talking = talking.clone();
        tokio::spawn(async move {
            loop {
                let sent = publish(
                    port,
                    &talking,
                    &format!("devices/{}/telemetry", talking.id),
                    r#"{"metrics": {"t": 1.5}}"#,
                    &[],
                )
                .await;
                assert_eq!(sent.code, 0, "{}", sent.output);
                // sleep: the talking device's pace, well inside the 10 s threshold.
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    };
    // sleep: the subject is time passing: for 3 s under the configured hour the silent device
    // is not called offline (nothing happens that could be waited for instead).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        device_status(&app, &owner, &silent).await["status"],
        "unknown"
    );

    let response = app
        .put_json(
            "/api/system/config",
            &owner,
            &json!({ "offline_after_s": 10 }),
        )
        .await;
    assert_eq!(response.status(), 200);
    let settings: Value = response.json().await.unwrap();
    assert_eq!(settings["offline_after_s"], 10);

    let status = eventually_some(
        "the silent device to be offline",
        Duration::from_secs(30),
        || async {
            let status = device_status(&app, &owner, &silent).await;
            (status["status"] == "offline").then_some(status)
        },
    )
    .await;
    assert_eq!(status["status"], "offline", "{status}");
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .starts_with("no message for"),
        "{status}"
    );
    // The notification opens just after the status changes (not in the same step): wait for it.
    let open = eventually_some(
        "the silent device's connection-failure notification",
        Duration::from_secs(30),
        || async {
            let open: Value = app
                .get_with_token("/api/notifications/connection-failures", &owner)
                .await
                .json()
                .await
                .unwrap();
            let open = open.as_array().unwrap().clone();
            (!open.is_empty()).then_some(open)
        },
    )
    .await;
    assert_eq!(open.len(), 1, "only the silent device: {open:?}");
    assert_eq!(open[0]["device_id"], silent.id.as_str());
    assert_eq!(
        device_status(&app, &owner, &talking).await["status"],
        "online"
    );
    talk.abort();
    app.stop().await;
}
