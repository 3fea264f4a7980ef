//! Readings query parameters (`GET /api/v1/devices/{id}/readings`, `http::devices`).

use axum::extract::Query;
use chrono::{Datelike, TimeZone, Utc};
use proptest::prelude::*;

use crate::http::devices::{
    readings_window, ReadingsQuery, MAX_1H_DAYS, MAX_1M_DAYS, MAX_POINTS, MAX_RAW_DAYS,
};
use crate::store::RollupStep;

fn time_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,30}",
        "[+-]?[0-9]{1,6}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})",
        (-262_000i32..262_000, 1u32..13, 1u32..29).prop_map(|(y, m, d)| format!("{y:+07}-{m:02}-{d:02}T00:00:00Z")),
        (1i32..10_000, 1u32..13).prop_map(|(y, m)| format!("{y:04}-{m:02}-01T00:00:00Z")),
    ]
}

fn percent_encode(text: &str) -> String {
    text.bytes().map(|b| format!("%{b:02X}")).collect()
}

fn query_text() -> impl Strategy<Value = String> {
    (
        prop::option::of("\\PC{0,10}"),
        prop::option::of(time_text()),
        prop::option::of(time_text()),
        prop::option::of(prop_oneof![
            Just("raw".to_string()),
            Just("1m".to_string()),
            Just("1h".to_string()),
            "\\PC{0,4}"
        ]),
        prop::option::of(prop_oneof![
            any::<u64>().prop_map(|v| v.to_string()),
            "\\PC{0,6}"
        ]),
    )
        .prop_map(|(metric, from, to, step, limit)| {
            [
                ("metric", metric),
                ("from", from),
                ("to", to),
                ("step", step),
                ("limit", limit),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| format!("{k}={}", percent_encode(&v))))
            .collect::<Vec<_>>()
            .join("&")
        })
}

proptest! {
    #![proptest_config(super::config())]

    #[test]
    fn accepted_queries_are_within_the_documented_bounds(query in query_text()) {
        let now = Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).single().expect("a valid time");
        let uri: axum::http::Uri = format!("/api/v1/devices/x/readings?{query}").parse().expect("encoded");
        // What axum does with the query string, then what the handler checks.
        let Ok(Query(parsed)) = Query::<ReadingsQuery>::try_from_uri(&uri) else { return Ok(()) };
        let Ok(window) = readings_window(parsed, now) else { return Ok(()) };
        prop_assert!((1..=MAX_POINTS).contains(&window.limit));
        prop_assert!(window.from < window.to);
        let days = match window.step {
            None => MAX_RAW_DAYS,
            Some(RollupStep::Minute) => MAX_1M_DAYS,
            Some(RollupStep::Hour) => MAX_1H_DAYS,
        };
        prop_assert!(window.to - window.from <= chrono::Duration::days(days));
        for time in [window.from, window.to] {
            prop_assert!((1..=9999).contains(&time.year()), "{time}");
        }
    }
}
