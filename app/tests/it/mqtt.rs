//! MQTT ingestion from a real Mosquitto: acknowledged readings survive ddms being SIGKILLed and
//! the broker restarting mid-stream (each stored exactly once); bad messages are refused and
//! counted without disturbing a good device; per-device accounts on the dynamic-security
//! plugin keep a device inside its own topic; TLS with certificates made here; heartbeats,
//! silence and recovery drive the device status.
//!
//! The publisher is independent of ddms' client: paho-mqtt (tests/support/mqtt_publish.py)
//! or mosquitto_pub.

mod restarts;

mod tls_and_dynsec;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ddms::store::{NewDevice, Point, Protocol, Role, Status, Store};
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::support::app::{spawn_app, Db, DdmsProcess, TestApp};
use crate::support::services::{Mosquitto, Postgres, Provider};
use crate::support::wait::{eventually, eventually_some};

/// Broker settings sized for ddms' persistent session (ops/mosquitto/mosquitto.conf does the
/// same): a window large enough for ack-after-commit, a queue that holds a restart's worth.
const BROKER_TUNING: &str = "max_inflight_messages 1000\nmax_queued_messages 200000\n";
const STREAM: usize = 10_000;

async fn ready(client: &reqwest::Client, url: &str) -> (u16, Value) {
    match client.get(url).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

pub(crate) async fn wait_ready(url: &str) {
    let client = reqwest::Client::new();
    let mut last = Value::Null;
    let started = Instant::now();
    loop {
        let (status, body) = ready(&client, url).await;
        if status == 200 {
            return;
        }
        last = if body.is_null() { last } else { body };
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "/ready not 200 within 30 s: {last}"
        );
        // sleep: the poll interval of this wait with a deadline (it reports the last body).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn mqtt_toml(url: &str, client_id: &str, extra: &str) -> String {
    format!("[mqtt]\nmode = \"external\"\nurl = {url:?}\nclient_id = {client_id:?}\n{extra}")
}

async fn app_on(broker_port: u16, client_id: &str, extra: &str) -> TestApp {
    let app = spawn_app(
        Db::Sqlite,
        &mqtt_toml(&format!("mqtt://127.0.0.1:{broker_port}"), client_id, extra),
    )
    .await;
    wait_ready(&app.url("/ready")).await;
    app
}

async fn create_mqtt_device(app: &TestApp, name: &str) -> (Uuid, Value) {
    let admin = app.token(Role::Admin).await;
    let response = app
        .post_json(
            "/api/devices",
            Some(&admin),
            &json!({"name": name, "protocol": "mqtt"}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    (body["id"].as_str().unwrap().parse().unwrap(), body)
}

/// Every stored reading of one metric of a device, oldest first.
pub(crate) async fn readings(store: &dyn Store, device: Uuid, metric: &str) -> Vec<Point> {
    let Some(series) = store
        .latest_readings(device)
        .await
        .unwrap()
        .into_iter()
        .find(|l| l.metric == metric)
        .map(|l| l.series)
    else {
        return Vec::new();
    };
    let from = DateTime::<Utc>::from_timestamp(0, 0).unwrap();
    store
        .query_readings(
            series,
            from,
            Utc::now() + chrono::Duration::days(1),
            1_000_000,
        )
        .await
        .unwrap()
}

/// `mosquitto_pub -q 1`; `Ok` when the broker took the message. With a login, the client id
/// is the username, as devices connect.
async fn publish(port: u16, topic: &str, payload: &[u8], login: Option<(&str, &str)>) -> bool {
    publish_as(port, topic, payload, login, login.map(|(user, _)| user)).await
}

async fn publish_as(
    port: u16,
    topic: &str,
    payload: &[u8],
    login: Option<(&str, &str)>,
    client_id: Option<&str>,
) -> bool {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", topic, "-s"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some((user, password)) = login {
        cmd.args(["-u", user, "-P", password]);
    }
    if let Some(id) = client_id {
        cmd.args(["-i", id]);
    }
    let mut child = cmd.spawn().expect("mosquitto_pub is installed");
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, payload)
        .await
        .unwrap();
    drop(stdin);
    tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("mosquitto_pub finishes")
        .unwrap()
        .success()
}

/// The paho publisher: `count` readings `seq` = 0..count with distinct timestamps.
pub(crate) struct Publisher {
    child: Child,
    acked: Arc<AtomicUsize>,
    output: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Publisher {
    pub(crate) fn start(
        port: u16,
        device: Uuid,
        count: usize,
        rate: u32,
        base_ms: i64,
    ) -> Publisher {
        Self::start_as(port, device, count, rate, base_ms, None)
    }

    /// With a login, the client id is the username, as devices connect to the embedded broker.
    pub(crate) fn start_as(
        port: u16,
        device: Uuid,
        count: usize,
        rate: u32,
        base_ms: i64,
        login: Option<(&str, &str)>,
    ) -> Publisher {
        let client_id = match login {
            Some((user, _)) => user.to_string(),
            None => format!("publisher-{}", Uuid::new_v4().simple()),
        };
        let login_args: Vec<&str> = match login {
            Some((user, password)) => vec!["--username", user, "--password", password],
            None => vec![],
        };
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/mqtt_publish.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--port", &port.to_string()])
            .args(["--device", &device.to_string()])
            .args(["--count", &count.to_string()])
            .args(["--rate", &rate.to_string()])
            .args(["--base-ms", &base_ms.to_string()])
            .args(["--client-id", &client_id])
            .args(login_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let acked = Arc::new(AtomicUsize::new(0));
        let output = Arc::new(std::sync::Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let (acked, output) = (acked.clone(), output.clone());
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(n) = line.strip_prefix("acked ") {
                        acked.store(n.parse().unwrap_or(0), Ordering::Relaxed);
                    } else {
                        output.lock().unwrap().push(line);
                    }
                }
            });
        }
        Publisher {
            child,
            acked,
            output,
        }
    }

    pub(crate) fn acked(&self) -> usize {
        self.acked.load(Ordering::Relaxed)
    }

    pub(crate) async fn wait_acked(&self, at_least: usize) {
        eventually("publisher progress", Duration::from_secs(60), || async {
            self.acked() >= at_least
        })
        .await;
    }

    pub(crate) async fn finish(mut self) {
        let status = tokio::time::timeout(Duration::from_secs(240), self.child.wait())
            .await
            .expect("the publisher finishes")
            .unwrap();
        assert!(
            status.success(),
            "publisher failed (paho-mqtt installed? pip install paho-mqtt==2.2.0): {:?}",
            self.output.lock().unwrap()
        );
    }
}

pub(crate) fn base_ms() -> i64 {
    // Ten minutes back: neither stale nor in the future, one distinct millisecond per message.
    (Utc::now() - chrono::Duration::minutes(10)).timestamp_millis()
}

/// Every message stored exactly once: `count` rows, values 0..count, distinct timestamps.
pub(crate) fn assert_exactly_once(points: &[Point], count: usize, base_ms: i64) {
    assert_eq!(points.len(), count, "rows stored");
    let values: BTreeSet<i64> = points.iter().map(|p| p.value as i64).collect();
    assert_eq!(values.len(), count, "distinct values");
    assert_eq!(values.first(), Some(&0));
    assert_eq!(values.last(), Some(&(count as i64 - 1)));
    let stamps: BTreeSet<i64> = points.iter().map(|p| p.ts.timestamp_millis()).collect();
    assert_eq!(stamps.len(), count, "distinct timestamps");
    for p in points {
        assert_eq!(p.ts.timestamp_millis() - base_ms, p.value as i64);
    }
}

pub(crate) async fn wait_for_rows(store: &dyn Store, device: Uuid, count: usize, within: Duration) {
    eventually(&format!("{count} readings stored"), within, || async {
        readings(store, device, "seq").await.len() >= count
    })
    .await;
}

fn metric(text: &str, name: &str, labels: &str) -> f64 {
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn bad_messages_are_refused_and_counted_while_a_good_device_is_unaffected() {
    let broker = Mosquitto::start(Provider::from_env().await, BROKER_TUNING)
        .await
        .unwrap();
    let app = app_on(broker.port(), "ddms-rejections", "").await;
    let (good, _) = create_mqtt_device(&app, "good").await;
    let (noisy, _) = create_mqtt_device(&app, "noisy").await;
    let port = broker.port();
    let base = base_ms();
    let publisher = Publisher::start(port, good, 500, 500, base);

    let topic = format!("devices/{noisy}/telemetry");
    let oversized = format!(r#"{{"t": 1, "pad": "{}"}}"#, "x".repeat(70 * 1024));
    let bad: [(String, Vec<u8>); 6] = [
        (topic.clone(), b"{not json".to_vec()),
        (topic.clone(), oversized.into_bytes()),
        (topic.clone(), br#"{"temp": "hot"}"#.to_vec()),
        (
            topic.clone(),
            br#"{"ts": "2099-01-01T00:00:00Z", "t": 1}"#.to_vec(),
        ),
        (
            format!("devices/{}/telemetry", Uuid::new_v4()),
            br#"{"t": 1}"#.to_vec(),
        ),
        ("devices/not-a-device/heartbeat".into(), b"{}".to_vec()),
    ];
    for (topic, payload) in &bad {
        assert!(publish(port, topic, payload, None).await, "{topic}");
    }
    publisher.finish().await;
    wait_for_rows(app.store.as_ref(), good, 500, Duration::from_secs(60)).await;
    assert_exactly_once(&readings(app.store.as_ref(), good, "seq").await, 500, base);

    let expected = [
        ("malformed_json", 1.0),
        ("oversized", 1.0),
        ("non_numeric", 1.0),
        ("future_timestamp", 1.0),
        ("unknown_device", 2.0),
    ];
    let text = eventually_some(
        &format!("refusals counted as {expected:?}"),
        Duration::from_secs(20),
        || async {
            let text = app.get("/metrics").await.text().await.unwrap();
            let counted = expected.iter().all(|(reason, n)| {
                metric(
                    &text,
                    "ddms_readings_rejected_total",
                    &format!("protocol=\"mqtt\",reason=\"{reason}\""),
                ) == *n
            });
            counted.then_some(text)
        },
    )
    .await;
    assert!(
        app.store.latest_readings(noisy).await.unwrap().is_empty(),
        "nothing of the refused messages was stored"
    );
    // Refused messages were acknowledged: a restarted session gets none of them back.
    assert_eq!(
        metric(&text, "ddms_mqtt_messages_total", "outcome=\"rejected\""),
        6.0
    );
    app.stop().await;
}

/// `{"big": 1e308}` twice in one minute once overflowed PostgreSQL's rollup sum: every batch
/// holding it failed, its messages stayed unacknowledged, the poison came back forever. Now the
/// poison is refused (counted, acknowledged) and a good device streaming meanwhile is stored.
#[tokio::test]
async fn a_value_beyond_the_reading_range_is_refused_while_a_good_device_is_stored() {
    let provider = Provider::from_env().await;
    let broker = Mosquitto::start(provider, BROKER_TUNING).await.unwrap();
    let app = spawn_app(
        Db::Postgres(provider),
        &mqtt_toml(
            &format!("mqtt://127.0.0.1:{}", broker.port()),
            "ddms-poison",
            "",
        ),
    )
    .await;
    wait_ready(&app.url("/ready")).await;
    let (good, _) = create_mqtt_device(&app, "good").await;
    let (poisoner, _) = create_mqtt_device(&app, "poisoner").await;
    let port = broker.port();
    let base = base_ms();
    let publisher = Publisher::start(port, good, 500, 500, base);
    publisher.wait_acked(100).await;
    let topic = format!("devices/{poisoner}/telemetry");
    for _ in 0..2 {
        assert!(publish(port, &topic, br#"{"big": 1e308}"#, None).await);
    }
    publisher.finish().await;
    wait_for_rows(app.store.as_ref(), good, 500, Duration::from_secs(60)).await;
    assert_exactly_once(&readings(app.store.as_ref(), good, "seq").await, 500, base);

    let text = eventually_some(
        "the poison to be refused twice",
        Duration::from_secs(20),
        || async {
            let text = app.get("/metrics").await.text().await.unwrap();
            let refused = metric(
                &text,
                "ddms_readings_rejected_total",
                "protocol=\"mqtt\",reason=\"value_out_of_range\"",
            );
            (refused == 2.0).then_some(text)
        },
    )
    .await;
    // Acknowledged: refused messages are dropped, not redelivered into the next batches.
    assert_eq!(
        metric(&text, "ddms_mqtt_messages_total", "outcome=\"rejected\""),
        2.0
    );
    assert!(app
        .store
        .latest_readings(poisoner)
        .await
        .unwrap()
        .is_empty());
    app.stop().await;
}

#[tokio::test]
async fn heartbeats_update_last_seen_silence_opens_a_notification_and_a_message_clears_it() {
    let broker = Mosquitto::start(Provider::from_env().await, "")
        .await
        .unwrap();
    let app = app_on(
        broker.port(),
        "ddms-heartbeats",
        "offline_after = 1\n[devices]\nfailure_threshold = 2\n",
    )
    .await;
    let (device, _) = create_mqtt_device(&app, "sensor").await;
    let open = |store: Arc<dyn Store>| async move {
        store
            .list_open_notifications(ddms::status::CONNECTION_FAILURE)
            .await
            .unwrap()
            .into_iter()
            .any(|n| n.device_id == Some(device))
    };

    let before = Utc::now();
    assert!(
        publish(
            broker.port(),
            &format!("devices/{device}/heartbeat"),
            br#"{"uptime_s": 12, "rssi": -60}"#,
            None
        )
        .await
    );
    eventually(
        "online after a heartbeat",
        Duration::from_secs(10),
        || async {
            app.status.get(device).await.is_some_and(|s| {
                s.status == Status::Online && s.last_seen_at.is_some_and(|t| t >= before)
            })
        },
    )
    .await;

    eventually("offline after silence", Duration::from_secs(15), || async {
        app.status
            .get(device)
            .await
            .is_some_and(|s| s.status == Status::Offline)
    })
    .await;
    let status = app.status.get(device).await.unwrap();
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("no message for")),
        "{status:?}"
    );
    eventually(
        "notification after the threshold",
        Duration::from_secs(15),
        || open(app.store.clone()),
    )
    .await;

    assert!(
        publish(
            broker.port(),
            &format!("devices/{device}/telemetry"),
            br#"{"t": 20.5}"#,
            None
        )
        .await
    );
    eventually("online and cleared", Duration::from_secs(10), || async {
        app.status
            .get(device)
            .await
            .is_some_and(|s| s.status == Status::Online)
            && !open(app.store.clone()).await
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_simulated_device_registers_itself_and_its_telemetry_is_stored() {
    let broker = Mosquitto::start(Provider::Local, "").await.unwrap();
    let app = app_on(
        broker.port(),
        "ddms-simulated",
        "[provisioning]\ntoken = \"sim-provisioning-1\"\n",
    )
    .await;
    let base = format!("http://{}", app.addr);
    let registration =
        ddms::mqtt::simulator::register(&base, "sim-provisioning-1", "sim-1", Some("demo"))
            .await
            .unwrap();
    assert_eq!(registration.port, broker.port());
    assert!(
        ddms::mqtt::simulator::register(&base, "wrong-token", "sim-2", None)
            .await
            .is_err(),
        "a wrong provisioning token is refused"
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let device: Uuid = registration.device_id.parse().unwrap();
    let run = tokio::spawn(ddms::mqtt::simulator::run(
        registration,
        vec![ddms::mqtt::simulator::SimulatedMetric {
            name: "temperature".into(),
            waveform: ddms::modbus::simulator::Waveform::Constant(21.5),
        }],
        Duration::from_millis(100),
        Duration::from_millis(500),
        stop.clone(),
    ));
    eventually("the telemetry stored", Duration::from_secs(15), || async {
        let latest = app.store.latest_readings(device).await.unwrap();
        latest
            .iter()
            .any(|l| l.metric == "temperature" && l.value == 21.5)
    })
    .await;
    stop.cancel();
    let acknowledged = run.await.unwrap().unwrap();
    assert!(
        acknowledged >= 1,
        "the broker acknowledged the device's messages"
    );
    let status = app.status.get(device).await.expect("a status");
    assert_eq!(status.status, ddms::store::Status::Online);
    app.stop().await;
}

/// A retained message is the broker's copy of an old one, handed to every new subscription:
/// ddms refuses it (counted as `retained`) instead of storing an old reading again, with a
/// new timestamp when the message had none, after every reconnect.
#[tokio::test]
async fn a_retained_message_waiting_at_the_broker_is_not_ingested() {
    let broker = Mosquitto::start(Provider::from_env().await, BROKER_TUNING)
        .await
        .unwrap();
    // The device exists before ddms first connects; the retained message is published then.
    let first = spawn_app(Db::Postgres(Provider::from_env().await), "").await;
    let (device, _) = create_mqtt_device(&first, "retained-meter").await;
    let mut retained = Command::new("mosquitto_pub");
    retained
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port().to_string(),
            "-q",
            "1",
            "-r",
        ])
        .args([
            "-t",
            &format!("devices/{device}/telemetry"),
            "-m",
            r#"{"kwh": 7}"#,
        ]);
    assert!(retained.status().await.unwrap().success());
    let app = spawn_app(
        Db::Url(first.database_url.clone()),
        &mqtt_toml(
            &format!("mqtt://127.0.0.1:{}", broker.port()),
            "ddms-retained",
            "",
        ),
    )
    .await;
    wait_ready(&app.url("/ready")).await;
    eventually(
        "the retained message is refused and counted",
        Duration::from_secs(20),
        || async {
            let text = app.get("/metrics").await.text().await.unwrap();
            metric(
                &text,
                "ddms_readings_rejected_total",
                "protocol=\"mqtt\",reason=\"retained\"",
            ) == 1.0
        },
    )
    .await;
    assert!(
        readings(app.store.as_ref(), device, "kwh").await.is_empty(),
        "the retained reading was stored"
    );
    app.stop().await;
    first.stop().await;
}
