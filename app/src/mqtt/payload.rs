//! What an MQTT message from a device means, or exactly why it is refused. Pure functions: the
//! ingester counts each refusal by [`Rejection::reason`] and moves on, so one bad device can never
//! block or crash ingestion for the others.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::Value;

use crate::ingest::limits::{check_value, SampleProblem};

/// Bounds on what a device may send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_payload_bytes: usize,
    pub max_metrics: usize,
    /// How far ahead of our clock a device timestamp may be (device clocks drift).
    pub max_future_skew: Duration,
    /// How far back a device timestamp may be (buffered readings after an outage).
    pub max_age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: 64 * 1024,
            max_metrics: 500,
            max_future_skew: Duration::minutes(5),
            max_age: Duration::days(365),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicKind {
    Telemetry,
    Heartbeat,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    pub ts: DateTime<Utc>,
    /// Metric name → value, in name order.
    pub metrics: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Heartbeat {
    pub uptime_s: Option<f64>,
    pub rssi: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Telemetry {
        device_id: String,
        telemetry: Telemetry,
    },
    Heartbeat {
        device_id: String,
        heartbeat: Heartbeat,
    },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    #[error("topic `{0}` is not devices/{{id}}/telemetry or devices/{{id}}/heartbeat")]
    UnknownTopic(String),
    #[error("payload of {size} bytes exceeds the limit of {limit}")]
    Oversized { size: usize, limit: usize },
    #[error("payload is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("payload must be a JSON object")]
    NotAnObject,
    #[error("metric `{0}` is not a number")]
    NonNumeric(String),
    #[error("metric `{metric}`: {problem}")]
    OutOfRange {
        metric: String,
        problem: SampleProblem,
    },
    #[error("metric name `{0}` is invalid (1-100 characters: letters, digits, _ . - /)")]
    InvalidMetricName(String),
    #[error("no metrics in the message")]
    NoMetrics,
    #[error("{count} metrics exceed the limit of {limit}")]
    TooManyMetrics { count: usize, limit: usize },
    #[error("timestamp is invalid: {0}")]
    InvalidTimestamp(String),
    #[error("timestamp {0} is too far in the future")]
    FutureTimestamp(DateTime<Utc>),
    #[error("timestamp {0} is too old")]
    StaleTimestamp(DateTime<Utc>),
}

impl Rejection {
    /// A stable label for the `reason` of the rejected-messages metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::UnknownTopic(_) => "unknown_topic",
            Rejection::Oversized { .. } => "oversized",
            Rejection::MalformedJson(_) => "malformed_json",
            Rejection::NotAnObject => "not_an_object",
            Rejection::NonNumeric(_) => "non_numeric",
            Rejection::OutOfRange { problem, .. } => problem.reason(),
            Rejection::InvalidMetricName(_) => "invalid_metric_name",
            Rejection::NoMetrics => "no_metrics",
            Rejection::TooManyMetrics { .. } => "too_many_metrics",
            Rejection::InvalidTimestamp(_) => "invalid_timestamp",
            Rejection::FutureTimestamp(_) => "future_timestamp",
            Rejection::StaleTimestamp(_) => "stale_timestamp",
        }
    }
}

/// Splits `devices/{id}/telemetry|heartbeat`. Device ids are one topic level, never a wildcard.
pub fn parse_topic(topic: &str) -> Result<(&str, TopicKind), Rejection> {
    let unknown = || Rejection::UnknownTopic(topic.chars().take(200).collect());
    let mut levels = topic.split('/');
    let (Some("devices"), Some(id), Some(kind), None) =
        (levels.next(), levels.next(), levels.next(), levels.next())
    else {
        return Err(unknown());
    };
    if id.is_empty() || id.contains(['+', '#']) {
        return Err(unknown());
    }
    match kind {
        "telemetry" => Ok((id, TopicKind::Telemetry)),
        "heartbeat" => Ok((id, TopicKind::Heartbeat)),
        _ => Err(unknown()),
    }
}

/// Parses one message; `now` is the receive time, used when the device sends no timestamp.
pub fn parse_message(
    topic: &str,
    payload: &[u8],
    now: DateTime<Utc>,
    limits: &Limits,
) -> Result<Message, Rejection> {
    let (device_id, kind) = parse_topic(topic)?;
    if payload.len() > limits.max_payload_bytes {
        return Err(Rejection::Oversized {
            size: payload.len(),
            limit: limits.max_payload_bytes,
        });
    }
    let device_id = device_id.to_string();
    match kind {
        TopicKind::Telemetry => Ok(Message::Telemetry {
            device_id,
            telemetry: parse_telemetry(payload, now, limits)?,
        }),
        TopicKind::Heartbeat => Ok(Message::Heartbeat {
            device_id,
            heartbeat: parse_heartbeat(payload)?,
        }),
    }
}

fn parse_object(payload: &[u8]) -> Result<serde_json::Map<String, Value>, Rejection> {
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Rejection::NotAnObject),
        Err(e) => Err(Rejection::MalformedJson(e.to_string())),
    }
}

fn parse_telemetry(
    payload: &[u8],
    now: DateTime<Utc>,
    limits: &Limits,
) -> Result<Telemetry, Rejection> {
    let mut object = parse_object(payload)?;
    let ts = match object.remove("ts") {
        None | Some(Value::Null) => now,
        Some(value) => parse_timestamp(&value)?,
    };
    if ts > now + limits.max_future_skew {
        return Err(Rejection::FutureTimestamp(ts));
    }
    if ts < now - limits.max_age {
        return Err(Rejection::StaleTimestamp(ts));
    }
    // `{"metrics": {...}}`, or the flat form where every other key is a metric.
    let metrics = match object.remove("metrics") {
        Some(Value::Object(nested)) if object.is_empty() => nested,
        Some(Value::Object(_)) => {
            let extra = object.keys().next().cloned().unwrap_or_default();
            return Err(Rejection::NonNumeric(extra));
        }
        Some(_) => return Err(Rejection::NonNumeric("metrics".into())),
        None => object,
    };
    if metrics.is_empty() {
        return Err(Rejection::NoMetrics);
    }
    if metrics.len() > limits.max_metrics {
        return Err(Rejection::TooManyMetrics {
            count: metrics.len(),
            limit: limits.max_metrics,
        });
    }
    let mut parsed = BTreeMap::new();
    for (name, value) in metrics {
        if !valid_metric_name(&name) {
            return Err(Rejection::InvalidMetricName(
                name.chars().take(100).collect(),
            ));
        }
        let Some(number) = value.as_f64() else {
            return Err(Rejection::NonNumeric(name));
        };
        // One message's value out of range would overflow the rollups' sums for the batch it
        // shares with every other device: refuse the message here, with the reason.
        let number = match check_value(number) {
            Ok(number) => number,
            Err(problem) => {
                return Err(Rejection::OutOfRange {
                    metric: name,
                    problem,
                })
            }
        };
        parsed.insert(name, number);
    }
    Ok(Telemetry {
        ts,
        metrics: parsed,
    })
}

fn parse_heartbeat(payload: &[u8]) -> Result<Heartbeat, Rejection> {
    // An empty heartbeat is still a sign of life.
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(Heartbeat::default());
    }
    let object = parse_object(payload)?;
    let field = |name: &str| match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|v| v.is_finite())
            .map(Some)
            .ok_or_else(|| Rejection::NonNumeric(name.to_string())),
    };
    Ok(Heartbeat {
        uptime_s: field("uptime_s")?,
        rssi: field("rssi")?,
    })
}

/// RFC 3339 text or epoch milliseconds.
fn parse_timestamp(value: &Value) -> Result<DateTime<Utc>, Rejection> {
    match value {
        Value::String(text) => DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| Rejection::InvalidTimestamp(format!("`{text}`: {e}"))),
        Value::Number(n) => {
            let millis = n.as_i64().ok_or_else(|| {
                Rejection::InvalidTimestamp(format!("{n} is not whole epoch milliseconds"))
            })?;
            Utc.timestamp_millis_opt(millis)
                .single()
                .ok_or_else(|| Rejection::InvalidTimestamp(format!("{millis} is out of range")))
        }
        other => Err(Rejection::InvalidTimestamp(format!(
            "{other} is neither RFC 3339 text nor epoch milliseconds"
        ))),
    }
}

fn valid_metric_name(name: &str) -> bool {
    (1..=100).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap()
    }

    fn parse(topic: &str, payload: &str) -> Result<Message, Rejection> {
        parse_message(topic, payload.as_bytes(), now(), &Limits::default())
    }

    fn telemetry(payload: &str) -> Telemetry {
        match parse("devices/d1/telemetry", payload) {
            Ok(Message::Telemetry {
                device_id,
                telemetry,
            }) => {
                assert_eq!(device_id, "d1");
                telemetry
            }
            other => panic!("{payload}: {other:?}"),
        }
    }

    #[test]
    fn values_beyond_the_reading_range_are_refused_with_the_metric() {
        let err = parse("devices/d1/telemetry", r#"{"big": 1e308}"#).unwrap_err();
        assert_eq!(err.reason(), "value_out_of_range");
        assert!(err.to_string().contains("`big`"), "{err}");
        let err = parse(
            "devices/d1/telemetry",
            r#"{"metrics": {"ok": 1, "neg": -2e15}}"#,
        )
        .unwrap_err();
        assert_eq!(err.reason(), "value_out_of_range");
        let t = telemetry(r#"{"edge": 1e15, "low": -1e15}"#);
        assert_eq!(t.metrics["edge"], 1e15);
    }

    #[test]
    fn nested_metrics_with_rfc3339_timestamp_are_read() {
        let t = telemetry(r#"{"ts": "2026-11-22T11:59:00Z", "metrics": {"temp": 21.5, "rh": 40}}"#);
        assert_eq!(t.ts, Utc.with_ymd_and_hms(2026, 11, 22, 11, 59, 0).unwrap());
        assert_eq!(t.metrics["temp"], 21.5);
        assert_eq!(t.metrics["rh"], 40.0);
    }

    #[test]
    fn flat_object_and_epoch_millis_are_read() {
        let t = telemetry(r#"{"ts": 1795348740000, "temp": -3, "flow/in": 1e3}"#);
        assert_eq!(t.ts.timestamp_millis(), 1_795_348_740_000);
        assert_eq!(t.metrics.len(), 2);
        assert_eq!(t.metrics["flow/in"], 1000.0);
    }

    #[test]
    fn missing_timestamp_means_receive_time() {
        assert_eq!(telemetry(r#"{"temp": 1}"#).ts, now());
        assert_eq!(telemetry(r#"{"ts": null, "temp": 1}"#).ts, now());
    }

    #[test]
    fn bad_messages_are_refused_with_a_reason() {
        let cases = [
            ("devices/d1/telemetry", "{not json", "malformed_json"),
            ("devices/d1/telemetry", "[1, 2]", "not_an_object"),
            ("devices/d1/telemetry", r#"{"temp": "hot"}"#, "non_numeric"),
            ("devices/d1/telemetry", r#"{"temp": true}"#, "non_numeric"),
            ("devices/d1/telemetry", r#"{"metrics": 3}"#, "non_numeric"),
            (
                "devices/d1/telemetry",
                r#"{"metrics": {"a": 1}, "b": 2}"#,
                "non_numeric",
            ),
            ("devices/d1/telemetry", r"{}", "no_metrics"),
            (
                "devices/d1/telemetry",
                r#"{"ts": "2026-11-22T11:00:00Z"}"#,
                "no_metrics",
            ),
            (
                "devices/d1/telemetry",
                r#"{"bad name": 1}"#,
                "invalid_metric_name",
            ),
            (
                "devices/d1/telemetry",
                r#"{"ts": "2027-01-01T00:00:00Z", "t": 1}"#,
                "future_timestamp",
            ),
            (
                "devices/d1/telemetry",
                r#"{"ts": "1999-01-01T00:00:00Z", "t": 1}"#,
                "stale_timestamp",
            ),
            (
                "devices/d1/telemetry",
                r#"{"ts": "yesterday", "t": 1}"#,
                "invalid_timestamp",
            ),
            (
                "devices/d1/telemetry",
                r#"{"ts": 1.5, "t": 1}"#,
                "invalid_timestamp",
            ),
            ("devices/d1/heartbeat", r#"{"rssi": "weak"}"#, "non_numeric"),
            ("devices/d1/status", r"{}", "unknown_topic"),
            ("devices/+/telemetry", r#"{"t": 1}"#, "unknown_topic"),
            ("devices//telemetry", r#"{"t": 1}"#, "unknown_topic"),
            ("devices/d1/telemetry/extra", r#"{"t": 1}"#, "unknown_topic"),
            ("sensors/d1/telemetry", r#"{"t": 1}"#, "unknown_topic"),
        ];
        for (topic, payload, reason) in cases {
            let err = parse(topic, payload).expect_err(payload);
            assert_eq!(err.reason(), reason, "{topic} {payload}: {err}");
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn oversized_payloads_and_too_many_metrics_are_refused() {
        let limits = Limits {
            max_payload_bytes: 64,
            max_metrics: 2,
            ..Limits::default()
        };
        let big = format!(r#"{{"t": 1, "pad": "{}"}}"#, "x".repeat(100));
        let err = parse_message("devices/d/telemetry", big.as_bytes(), now(), &limits).unwrap_err();
        assert_eq!(err.reason(), "oversized");
        let many = r#"{"a": 1, "b": 2, "c": 3}"#;
        let err =
            parse_message("devices/d/telemetry", many.as_bytes(), now(), &limits).unwrap_err();
        assert_eq!(err.reason(), "too_many_metrics");
    }

    #[test]
    fn heartbeats_may_be_empty_or_carry_uptime_and_rssi() {
        for (payload, expected) in [
            ("", Heartbeat::default()),
            ("{}", Heartbeat::default()),
            (
                r#"{"uptime_s": 3600, "rssi": -67}"#,
                Heartbeat {
                    uptime_s: Some(3600.0),
                    rssi: Some(-67.0),
                },
            ),
        ] {
            let heartbeat = Message::Heartbeat {
                device_id: "d9".into(),
                heartbeat: expected,
            };
            assert_eq!(
                parse("devices/d9/heartbeat", payload),
                Ok(heartbeat),
                "{payload}"
            );
        }
    }
}
