//! MQTT topics and payloads: never a panic; accepted readings are finite, in range, well named.
#![no_main]

use chrono::{TimeZone, Utc};
use ddms::mqtt::payload::{parse_message, parse_topic, Limits, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the topic; the rest is the payload (or, for 0, a topic of its own).
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let own_topic = String::from_utf8_lossy(payload);
    let topic = match selector % 3 {
        0 => {
            let _ = parse_topic(&own_topic);
            return;
        }
        1 => "devices/dev-1/telemetry",
        _ => "devices/dev-1/heartbeat",
    };
    let now = Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap();
    if let Ok(Message::Telemetry { telemetry, .. }) =
        parse_message(topic, payload, now, &Limits::default())
    {
        for (name, value) in &telemetry.metrics {
            assert!((1..=100).contains(&name.len()), "{name:?}");
            assert!(value.is_finite() && value.abs() <= 1e15, "{name} = {value}");
        }
    }
});
