//! Configuration loading (`config::from_toml`, the loader without the environment).

use proptest::prelude::*;

use crate::config::from_toml;

/// Keys of every section, with values of every TOML type, so that validation is reached.
fn config_text() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "data_dir",
        "database.url",
        "database.max_connections",
        "database.connect_timeout",
        "http.listen",
        "http.body_limit",
        "http.request_timeout",
        "http.shutdown_timeout",
        "http.max_connections",
        "http.header_read_timeout",
        "http.max_streams",
        "http.stream_recheck_interval",
        "http.trusted_proxies",
        "http.session.idle_timeout",
        "http.rate_limit.requests_per_second",
        "http.rate_limit.burst",
        "mqtt.mode",
        "mqtt.offline_after",
        "mqtt.embedded.listen",
        "ingest.max_batch",
        "ingest.max_delay_ms",
        "ingest.channel_capacity",
        "ingest.max_series_per_device",
        "devices.failure_threshold",
        "modbus.lease_ttl_s",
        "modbus.request_timeout_ms",
        "backup.keep",
        "backup.s3.bucket",
        "log.level",
        "unknown.key",
    ]);
    let value = prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        (0i64..100_000).prop_map(|v| v.to_string()),
        any::<f64>()
            .prop_filter("TOML floats are finite here", |v| v.is_finite())
            .prop_map(|v| format!("{v:?}")),
        Just("inf".to_string()),
        Just("nan".to_string()),
        any::<bool>().prop_map(|v| v.to_string()),
        "\\PC{0,24}".prop_map(|s| toml::Value::String(s).to_string()),
        Just("\"127.0.0.1:0\"".to_string()),
        Just("\"embedded\"".to_string()),
        Just("[]".to_string()),
        Just("[\"10.0.0.0/8\", \"x\"]".to_string()),
    ];
    prop::collection::btree_map(key, value, 0..8).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect()
    })
}

proptest! {
    #![proptest_config(super::config())]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = from_toml(&text);
    }

    #[test]
    fn an_accepted_config_passes_config_check(text in config_text()) {
        if let Ok(config) = from_toml(&text) {
            // What `ddms config check` prints: the effective configuration, as TOML.
            let shown = config.redacted_toml();
            prop_assert!(toml::from_str::<toml::Value>(&shown).is_ok(), "{shown}");
        }
    }
}
