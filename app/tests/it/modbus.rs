//! Modbus polling end to end: ddms polls real Modbus TCP servers — pymodbus (an independent
//! implementation) and ddms' own simulator — through the devices API, and stores what it reads.

mod changes;
mod instances;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ddms::modbus::{
    ModbusSimulator, RegisterKind, RegisterSpec, SimulatedRegister, ValueType, Waveform,
};
use ddms::store::{NewDevice, Protocol, Role};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_modbus::ExceptionCode;
use uuid::Uuid;

use crate::support::app::{database_url, spawn_app, Db, DdmsProcess, TestApp};
use crate::support::services::Provider;
use crate::support::wait::eventually_some;

fn device_body(name: &str, addr: SocketAddr, poll_interval_ms: u64, registers: Value) -> Value {
    json!({"name": name, "protocol": "modbus",
           "modbus": {"host": addr.ip().to_string(), "port": addr.port(), "unit_id": 1,
                      "poll_interval_ms": poll_interval_ms, "registers": registers}})
}

async fn create_device(app: &TestApp, token: &str, body: &Value) -> Uuid {
    let response = app.post_json("/api/devices", Some(token), body).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().parse().unwrap()
}

async fn latest(app: &TestApp, token: &str, device: Uuid) -> Value {
    app.get_with_token(&format!("/api/devices/{device}/latest"), token)
        .await
        .json()
        .await
        .unwrap()
}

/// Stored readings of one metric since `from`, oldest first.
async fn readings(
    app: &TestApp,
    token: &str,
    device: Uuid,
    metric: &str,
    from: DateTime<Utc>,
) -> Vec<(DateTime<Utc>, f64)> {
    let to = Utc::now() + chrono::Duration::hours(1);
    let url = format!(
        "/api/devices/{device}/readings?metric={metric}&from={}&to={}&step=raw",
        from.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            .replace('+', "%2B"),
        to.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            .replace('+', "%2B"),
    );
    let response = app.get_with_token(&url, token).await;
    if response.status() == 404 {
        return Vec::new();
    }
    let points: Value = response.json().await.unwrap();
    points
        .as_array()
        .unwrap_or_else(|| panic!("readings of {metric}: {points}"))
        .iter()
        .map(|p| {
            (
                p["ts"].as_str().unwrap().parse().unwrap(),
                p["value"].as_f64().unwrap(),
            )
        })
        .collect()
}

async fn device_status(app: &TestApp, token: &str, device: Uuid) -> Value {
    let body: Value = app
        .get_with_token(&format!("/api/devices/{device}"), token)
        .await
        .json()
        .await
        .unwrap();
    body["status"].clone()
}

async fn open_connection_failures(app: &TestApp, token: &str) -> Vec<Value> {
    let list: Value = app
        .get_with_token("/api/notifications/connection-failures", token)
        .await
        .json()
        .await
        .unwrap();
    list.as_array().unwrap().clone()
}

/// The value of one sample line of `/metrics` (`name{labels}`), zero when absent.
fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn metrics_text(app: &TestApp) -> String {
    app.get("/metrics").await.text().await.unwrap()
}

fn close_to(actual: f64, expected: f64) -> bool {
    (actual - expected).abs() <= 1e-9 * expected.abs().max(1.0)
}

fn register(metric: &str, kind: RegisterKind, address: u16, value_type: ValueType) -> RegisterSpec {
    RegisterSpec::new(metric, kind, address, value_type)
}

fn simulated(spec: RegisterSpec, value: f64) -> SimulatedRegister {
    SimulatedRegister::new(spec, Waveform::Constant(value))
}

fn register_map(registers: &[SimulatedRegister]) -> Value {
    Value::Array(
        registers
            .iter()
            .map(|r| serde_json::to_value(&r.spec).unwrap())
            .collect(),
    )
}

/// A pymodbus server running `tests/support/pymodbus_device.py`, killed on drop.
struct PymodbusDevice {
    _child: tokio::process::Child,
    addr: SocketAddr,
}

impl PymodbusDevice {
    async fn start() -> PymodbusDevice {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/pymodbus_device.py");
        let port = crate::support::services::free_port().unwrap();
        let mut child = tokio::process::Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs (pymodbus: `cargo xtask setup` installs it)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("pymodbus device starts within 30 s")
            .expect("read its output");
        assert_eq!(
            ready.as_deref(),
            Some(format!("ready {port}").as_str()),
            "pymodbus device did not start; is pymodbus==3.16.1 installed?"
        );
        PymodbusDevice {
            _child: child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

#[tokio::test]
async fn every_kind_type_and_layout_reads_exactly_from_an_independent_pymodbus_device() {
    use RegisterKind::{Coil, Discrete, Holding, Input};
    use ValueType::*;
    let device = PymodbusDevice::start().await;
    let app = spawn_app(Db::Sqlite, "").await;
    let admin = app.token(Role::Admin).await;
    // (register as configured in ddms, extra fields, expected reading); the raw values and
    // their layouts are in pymodbus_device.py.
    let cases: Vec<(&str, RegisterKind, u16, ValueType, Value, f64)> = vec![
        ("h_u16", Holding, 0, U16, json!({}), 4660.0),
        ("h_i16", Holding, 1, I16, json!({}), -2.0),
        ("h_u32", Holding, 2, U32, json!({}), 305_419_896.0),
        (
            "h_i32_little",
            Holding,
            4,
            I32,
            json!({"word_order": "little"}),
            -123_456_789.0,
        ),
        (
            "h_f32_swapped",
            Holding,
            6,
            F32,
            json!({"byte_swap": true}),
            f64::from(123.456_f32),
        ),
        ("h_u64", Holding, 8, U64, json!({}), 1_099_511_627_781.0),
        (
            "h_i64_little_swapped",
            Holding,
            12,
            I64,
            json!({"word_order": "little", "byte_swap": true}),
            -1_234_567_890_123.0,
        ),
        (
            "h_f64_little",
            Holding,
            16,
            F64,
            json!({"word_order": "little"}),
            1234.5678,
        ),
        (
            "h_scaled",
            Holding,
            20,
            U16,
            json!({"scale": 0.1, "offset": -40.0}),
            655.0 * 0.1 - 40.0,
        ),
        (
            "h_after_small_gap",
            Holding,
            23,
            I16,
            json!({"scale": 0.5}),
            -150.0,
        ),
        (
            "h_after_large_gap",
            Holding,
            200,
            U32,
            json!({"word_order": "little", "byte_swap": true}),
            70_000.0,
        ),
        ("i_f32", Input, 0, F32, json!({}), -0.15625),
        ("i_u16", Input, 2, U16, json!({}), 65_535.0),
        (
            "i_f64_swapped",
            Input,
            10,
            F64,
            json!({"byte_swap": true}),
            -98.25,
        ),
        ("c_on", Coil, 0, Bool, json!({}), 1.0),
        ("c_off", Coil, 1, Bool, json!({}), 0.0),
        ("c_after_gap", Coil, 5, Bool, json!({}), 1.0),
        ("d_on", Discrete, 3, Bool, json!({}), 1.0),
        (
            "d_inverted",
            Discrete,
            4,
            Bool,
            json!({"scale": -1.0, "offset": 1.0}),
            1.0,
        ),
    ];
    let registers: Vec<Value> = cases
        .iter()
        .map(|(metric, kind, address, value_type, extra, _)| {
            let mut spec =
                serde_json::to_value(register(metric, *kind, *address, *value_type)).unwrap();
            for (key, value) in extra.as_object().unwrap() {
                spec[key] = value.clone();
            }
            spec
        })
        .collect();
    let id = create_device(
        &app,
        &admin,
        &device_body("pymodbus", device.addr, 200, json!(registers)),
    )
    .await;

    let values = eventually_some(
        "a reading of every register",
        Duration::from_secs(30),
        || async {
            let latest = latest(&app, &admin, id).await;
            (latest.as_object().map(|o| o.len()) == Some(cases.len())).then_some(latest)
        },
    )
    .await;
    for (metric, .., expected) in &cases {
        let actual = values[*metric]["value"].as_f64().unwrap();
        assert!(
            close_to(actual, *expected),
            "{metric}: read {actual}, expected {expected}"
        );
    }
    assert_eq!(device_status(&app, &admin, id).await["status"], "online");
    app.stop().await;
}

fn cadence_device(index: u16) -> Vec<SimulatedRegister> {
    vec![simulated(
        register("level", RegisterKind::Holding, 0, ValueType::U16),
        f64::from(index),
    )]
}

#[tokio::test]
async fn a_device_that_stops_goes_offline_with_a_notification_and_recovers_while_ten_others_keep_their_cadence(
) {
    let app = spawn_app(Db::Sqlite, "[devices]\nfailure_threshold = 3\n").await;
    let admin = app.token(Role::Admin).await;
    let interval_ms = 500;
    // A device that accepts connections but never answers in time: every request of its
    // poller runs into the timeout, which must cost the other devices nothing.
    let hanging = ModbusSimulator::start(cadence_device(98)).await.unwrap();
    hanging.set_response_delay(Duration::from_secs(30));
    create_device(
        &app,
        &admin,
        &device_body(
            "hanging",
            hanging.addr(),
            interval_ms,
            register_map(&cadence_device(98)),
        ),
    )
    .await;
    let flaky = ModbusSimulator::start(cadence_device(99)).await.unwrap();
    let flaky_id = create_device(
        &app,
        &admin,
        &device_body(
            "flaky",
            flaky.addr(),
            interval_ms,
            register_map(&cadence_device(99)),
        ),
    )
    .await;
    let mut steady = Vec::new();
    for index in 0..10 {
        let simulator = ModbusSimulator::start(cadence_device(index)).await.unwrap();
        let body = device_body(
            &format!("steady-{index}"),
            simulator.addr(),
            interval_ms,
            register_map(&cadence_device(index)),
        );
        steady.push((create_device(&app, &admin, &body).await, simulator));
    }
    let started = Utc::now();
    for &(id, _) in &steady {
        eventually_some(
            "steady devices to report",
            Duration::from_secs(20),
            || async { latest(&app, &admin, id).await.get("level").map(|_| ()) },
        )
        .await;
    }

    flaky.stop().await;
    let notification = eventually_some(
        "a connection-failure notification",
        Duration::from_secs(30),
        || async {
            open_connection_failures(&app, &admin)
                .await
                .into_iter()
                .find(|n| n["device_id"] == flaky_id.to_string())
        },
    )
    .await;
    assert!(
        notification["message"]
            .as_str()
            .unwrap()
            .contains("3 consecutive failures"),
        "{notification}"
    );
    let status = device_status(&app, &admin, flaky_id).await;
    assert_eq!(status["status"], "offline", "{status}");

    flaky.restart().await.unwrap();
    // Back-off may have grown to several seconds while the device was away.
    eventually_some(
        "the flaky device to recover",
        Duration::from_secs(60),
        || async {
            let online = device_status(&app, &admin, flaky_id).await["status"] == "online";
            let cleared = open_connection_failures(&app, &admin)
                .await
                .iter()
                .all(|n| n["device_id"] != flaky_id.to_string());
            (online && cleared).then_some(())
        },
    )
    .await;
    let recovered_at = Utc::now();
    eventually_some(
        "a fresh reading of the recovered device",
        Duration::from_secs(10),
        || async {
            let points = readings(&app, &admin, flaky_id, "level", recovered_at).await;
            (!points.is_empty()).then_some(())
        },
    )
    .await;

    let limit = chrono::Duration::milliseconds(2 * interval_ms as i64 + 300);
    for (index, (id, _)) in steady.iter().enumerate() {
        let points = readings(&app, &admin, *id, "level", started).await;
        assert!(
            points.len() >= 10,
            "steady-{index}: {} readings",
            points.len()
        );
        assert!(points.iter().all(|&(_, value)| value == index as f64));
        let widest = points
            .windows(2)
            .map(|pair| pair[1].0 - pair[0].0)
            .max()
            .unwrap();
        assert!(
            widest <= limit,
            "steady-{index} missed its cadence: a gap of {widest} between readings"
        );
        let last = points.last().unwrap().0;
        assert!(
            Utc::now() - last < limit * 2,
            "steady-{index} still reports"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn an_answer_arriving_after_the_timeout_does_not_shift_later_reads() {
    use RegisterKind::{Coil, Holding, Input};
    // Distinct values in separate requests: a late answer taken for the next request's would
    // put one register's value under another's name.
    let registers = vec![
        simulated(register("first", Holding, 0, ValueType::U16), 1111.0),
        simulated(register("second", Holding, 50, ValueType::U16), 2222.0),
        simulated(register("third", Input, 0, ValueType::U16), 3333.0),
        simulated(register("fourth", Input, 50, ValueType::U16), 4444.0),
        simulated(register("fifth", Coil, 0, ValueType::Bool), 1.0),
    ];
    let simulator = ModbusSimulator::start(registers.clone()).await.unwrap();
    let app = spawn_app(Db::Sqlite, "[modbus]\nrequest_timeout_ms = 300\n").await;
    let admin = app.token(Role::Admin).await;
    let started = Utc::now();
    let id = create_device(
        &app,
        &admin,
        &device_body("late", simulator.addr(), 400, register_map(&registers)),
    )
    .await;
    eventually_some("first readings", Duration::from_secs(20), || async {
        (latest(&app, &admin, id).await.as_object().map(|o| o.len()) == Some(5)).then_some(())
    })
    .await;

    simulator.answer_late(1, Duration::from_millis(1500));
    eventually_some(
        "the poll that timed out",
        Duration::from_secs(20),
        || async {
            let text = metrics_text(&app).await;
            (metric(&text, "ddms_modbus_polls_total{result=\"timeout\"}") >= 1.0).then_some(())
        },
    )
    .await;
    let after_timeout = Utc::now();
    eventually_some(
        "five polls after the late answer",
        Duration::from_secs(30),
        || async {
            let points = readings(&app, &admin, id, "fourth", after_timeout).await;
            (points.len() >= 5).then_some(())
        },
    )
    .await;

    for register in &registers {
        let expected = register.waveform.value_at(Duration::ZERO);
        let points = readings(&app, &admin, id, &register.spec.metric, started).await;
        assert!(!points.is_empty());
        for (ts, value) in points {
            assert_eq!(value, expected, "{} at {ts}", register.spec.metric);
        }
    }
    assert!(
        simulator.connections() >= 2,
        "a fresh connection after the timeout"
    );
    assert_eq!(device_status(&app, &admin, id).await["status"], "online");
    app.stop().await;
}

/// A device answering 1e308 would have overflowed the rollups' sums (on PostgreSQL failing the
/// batch for every device): the value is refused, counted and shown as a register error, while
/// the device's other registers are stored.
#[tokio::test]
async fn a_value_beyond_the_reading_range_is_refused_and_counted_while_the_others_read() {
    use RegisterKind::Holding;
    let registers = vec![
        simulated(register("huge", Holding, 0, ValueType::F64), 1e308),
        simulated(register("fine", Holding, 10, ValueType::U16), 7.0),
    ];
    let simulator = ModbusSimulator::start(registers.clone()).await.unwrap();
    let app = spawn_app(Db::Sqlite, "").await;
    let admin = app.token(Role::Admin).await;
    let started = Utc::now();
    let id = create_device(
        &app,
        &admin,
        &device_body(
            "overflowing",
            simulator.addr(),
            200,
            register_map(&registers),
        ),
    )
    .await;
    eventually_some("several polls", Duration::from_secs(20), || async {
        let points = readings(&app, &admin, id, "fine", started).await;
        (points.len() >= 3).then_some(())
    })
    .await;
    let values = latest(&app, &admin, id).await;
    assert_eq!(values["fine"]["value"], 7.0);
    assert!(
        values.get("huge").is_none(),
        "nothing stored for it: {values}"
    );
    let status = device_status(&app, &admin, id).await;
    assert_eq!(status["status"], "error", "{status}");
    assert!(
        status["last_error"].as_str().unwrap().contains("huge"),
        "{status}"
    );
    let text = metrics_text(&app).await;
    assert!(
        metric(
            &text,
            "ddms_readings_rejected_total{protocol=\"modbus\",reason=\"value_out_of_range\"}"
        ) >= 3.0,
        "{text}"
    );
    app.stop().await;
}

#[tokio::test]
async fn exceptions_mark_their_registers_while_the_others_still_read() {
    use RegisterKind::{Holding, Input};
    let registers = vec![
        simulated(register("pressure", Holding, 0, ValueType::U16), 7.0),
        simulated(register("flow", Holding, 40, ValueType::U16), 8.0),
        simulated(register("level", Input, 0, ValueType::U16), 9.0),
    ];
    let simulator = ModbusSimulator::start(registers.clone()).await.unwrap();
    simulator.set_exception(Holding, 40, ExceptionCode::IllegalDataAddress);
    let app = spawn_app(Db::Sqlite, "").await;
    let admin = app.token(Role::Admin).await;
    let started = Utc::now();
    let id = create_device(
        &app,
        &admin,
        &device_body("partly", simulator.addr(), 200, register_map(&registers)),
    )
    .await;

    eventually_some("several polls", Duration::from_secs(20), || async {
        let points = readings(&app, &admin, id, "level", started).await;
        (points.len() >= 5).then_some(())
    })
    .await;
    let values = latest(&app, &admin, id).await;
    assert_eq!(values["pressure"]["value"], 7.0);
    assert_eq!(values["level"]["value"], 9.0);
    assert!(
        values.get("flow").is_none(),
        "no reading for the refused register: {values}"
    );
    let status = device_status(&app, &admin, id).await;
    assert_eq!(status["status"], "error", "{status}");
    let problem = status["last_error"].as_str().unwrap();
    assert!(
        problem.contains("flow") && problem.contains("illegal_data_address"),
        "{problem}"
    );
    assert!(
        !problem.contains("pressure") && !problem.contains("level"),
        "{problem}"
    );
    let text = metrics_text(&app).await;
    assert!(
        metric(
            &text,
            "ddms_modbus_register_errors_total{exception=\"illegal_data_address\"}"
        ) >= 5.0
    );
    assert!(metric(&text, "ddms_modbus_polls_total{result=\"error\"}") >= 5.0);
    assert!(
        open_connection_failures(&app, &admin).await.is_empty(),
        "an exception is an answer"
    );
    assert_eq!(
        simulator.connections(),
        1,
        "the connection is kept across exceptions"
    );

    simulator.clear_exceptions();
    eventually_some(
        "the register to read again",
        Duration::from_secs(20),
        || async {
            let values = latest(&app, &admin, id).await;
            (values["flow"]["value"] == 8.0).then_some(())
        },
    )
    .await;
    eventually_some(
        "the device to be online",
        Duration::from_secs(10),
        || async { (device_status(&app, &admin, id).await["status"] == "online").then_some(()) },
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_device_answering_with_errors_is_in_error_without_counting_toward_a_connection_failure() {
    let app = spawn_app(Db::Sqlite, "[devices]\nfailure_threshold = 2\n").await;
    let admin = app.token(Role::Admin).await;
    // Disabled, so that only this test reports its status.
    let mut body = device_body(
        "reported",
        SocketAddr::from(([127, 0, 0, 1], 9)),
        1000,
        register_map(&cadence_device(1)),
    );
    body["enabled"] = json!(false);
    let id = create_device(&app, &admin, &body).await;
    let problem = "1 register unreadable: flow: Modbus exception 0x02 (illegal_data_address)";
    for _ in 0..3 {
        app.status.record_error(id, problem, Utc::now()).await;
    }
    let status = device_status(&app, &admin, id).await;
    assert_eq!(
        (
            &status["status"],
            &status["last_error"],
            &status["consecutive_failures"]
        ),
        (&json!("error"), &json!(problem), &json!(0))
    );
    assert!(open_connection_failures(&app, &admin).await.is_empty());

    for _ in 0..2 {
        app.status
            .record_failure(
                id,
                ddms::store::Status::Offline,
                "connection refused",
                Utc::now(),
            )
            .await;
    }
    assert_eq!(open_connection_failures(&app, &admin).await.len(), 1);
    app.status.record_error(id, problem, Utc::now()).await;
    assert!(
        open_connection_failures(&app, &admin).await.is_empty(),
        "answering at all ends the connection failure"
    );
    assert_eq!(device_status(&app, &admin, id).await["status"], "error");
    app.status.record_success(id, Utc::now()).await;
    let status = device_status(&app, &admin, id).await;
    assert_eq!(
        (&status["status"], &status["last_error"]),
        (&json!("online"), &Value::Null)
    );
    app.stop().await;
}
