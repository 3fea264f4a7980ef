//! Readings query strings: never a panic; accepted windows stay within the documented bounds.
#![no_main]

use axum::extract::Query;
use chrono::{Datelike, TimeZone, Utc};
use ddms::http::{readings_window, ReadingsQuery};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(uri) = format!("/r?{text}").parse::<axum::http::Uri>() else {
        return;
    };
    let Ok(Query(query)) = Query::<ReadingsQuery>::try_from_uri(&uri) else {
        return;
    };
    let now = Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap();
    if let Ok(window) = readings_window(query, now) {
        assert!((1..=100_000).contains(&window.limit));
        assert!(window.from < window.to);
        assert!(window.to - window.from <= chrono::Duration::days(731));
        assert!((1..=9999).contains(&window.from.year()) && (1..=9999).contains(&window.to.year()));
    }
});
