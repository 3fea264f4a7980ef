//! MQTT topics and telemetry payloads (`mqtt::payload`).

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;

use crate::ingest::limits::MAX_ABS_VALUE;
use crate::mqtt::payload::{parse_message, parse_topic, Limits, Message, TopicKind};

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0)
        .single()
        .expect("a valid time")
}

fn topic() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,40}",
        "devices/[^/]{0,12}/(telemetry|heartbeat|other)",
        "(devices|/|#|\\+){1,4}(/[a-z+#]{0,6}){0,4}",
    ]
}

/// A number as a device may write it, including magnitudes no f64 holds.
fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "-?[0-9]{1,20}(\\.[0-9]{1,20})?([eE][+-]?[0-9]{1,4})?",
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |v| v.is_finite())
            .prop_map(|v| v.to_string()),
        Just("1e309".to_string()),
        Just("-0".to_string()),
    ]
}

/// JSON-shaped payloads, which reach further into the parser than arbitrary bytes.
fn telemetry_text() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        "[A-Za-z0-9_./-]{1,8}",
        "\\PC{0,110}",
        Just("ts".to_string()),
        Just("metrics".to_string())
    ];
    let value = prop_oneof![
        number_text(),
        Just("null".into()),
        Just("\"x\"".into()),
        Just("{}".into()),
        Just("[1]".into()),
        "-?[0-9]{1,22}".prop_map(|n| n),
        "\"[0-9T:Z+.-]{0,30}\"".prop_map(|s| s)
    ];
    prop::collection::vec((key, value), 0..8).prop_map(|pairs| {
        let body: Vec<String> = pairs
            .into_iter()
            .map(|(k, v)| format!("{}:{v}", serde_json::Value::String(k)))
            .collect();
        format!("{{{}}}", body.join(","))
    })
}

fn check_accepted(message: &Message) -> Result<(), TestCaseError> {
    match message {
        Message::Telemetry {
            device_id,
            telemetry,
        } => {
            prop_assert!(!device_id.is_empty() && !device_id.contains(['/', '+', '#']));
            prop_assert!(!telemetry.metrics.is_empty());
            for (name, value) in &telemetry.metrics {
                prop_assert!((1..=100).contains(&name.len()), "name {name:?}");
                prop_assert!(
                    name.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/')),
                    "name {name:?}"
                );
                prop_assert!(
                    value.is_finite() && value.abs() <= MAX_ABS_VALUE,
                    "{name} = {value}"
                );
            }
        }
        Message::Heartbeat { heartbeat, .. } => {
            for value in [heartbeat.uptime_s, heartbeat.rssi].into_iter().flatten() {
                prop_assert!(value.is_finite());
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(super::config())]

    #[test]
    fn topics_never_panic_and_accepted_ids_are_one_plain_level(topic in topic()) {
        if let Ok((id, kind)) = parse_topic(&topic) {
            prop_assert!(!id.is_empty() && !id.contains(['/', '+', '#']));
            let suffix = match kind { TopicKind::Telemetry => "telemetry", TopicKind::Heartbeat => "heartbeat" };
            prop_assert_eq!(topic.as_str(), format!("devices/{id}/{suffix}"));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(topic in topic(), payload in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(message) = parse_message(&topic, &payload, now(), &Limits::default()) {
            check_accepted(&message)?;
        }
    }

    #[test]
    fn accepted_telemetry_is_finite_in_range_and_well_named(
        kind in prop_oneof![Just("telemetry"), Just("heartbeat")],
        payload in telemetry_text(),
    ) {
        let topic = format!("devices/dev-1/{kind}");
        if let Ok(message) = parse_message(&topic, payload.as_bytes(), now(), &Limits::default()) {
            check_accepted(&message)?;
        }
    }

    #[test]
    fn valid_metrics_parse_back_to_the_same_readings(
        metrics in prop::collection::btree_map(
            "[A-Za-z0-9_./-]{1,100}",
            -MAX_ABS_VALUE..=MAX_ABS_VALUE,
            1..20,
        ),
        age_ms in 0i64..86_400_000,
        nested in any::<bool>(),
    ) {
        let ts = now() - chrono::Duration::milliseconds(age_ms);
        let metrics_json: serde_json::Map<String, serde_json::Value> =
            metrics.iter().map(|(k, v)| (k.clone(), serde_json::Value::from(*v))).collect();
        // The flat form reserves `ts` and `metrics`; the nested form holds any valid name.
        let flat_ok = !metrics.contains_key("ts") && !metrics.contains_key("metrics");
        let payload = if nested || !flat_ok {
            serde_json::json!({ "ts": ts.timestamp_millis(), "metrics": metrics_json })
        } else {
            let mut flat = metrics_json.clone();
            flat.insert("ts".into(), ts.to_rfc3339().into());
            serde_json::Value::Object(flat)
        };
        let bytes = serde_json::to_vec(&payload).expect("serialisable");
        let parsed = parse_message("devices/dev-1/telemetry", &bytes, now(), &Limits::default());
        let expected: BTreeMap<String, f64> = metrics;
        match parsed {
            Ok(Message::Telemetry { device_id, telemetry }) => {
                prop_assert_eq!(device_id, "dev-1");
                prop_assert_eq!(telemetry.ts, ts);
                prop_assert_eq!(telemetry.metrics, expected);
            }
            other => prop_assert!(false, "refused {payload}: {other:?}"),
        }
    }
}
