//! Tests of `Config::validate`: each check names its key (and source).

use std::time::Duration;

use crate::config::from_toml;

/// The error of a configuration that must not load.
fn error_of(text: &str) -> String {
    from_toml(text).unwrap_err().to_string()
}

#[test]
fn dynsec_needs_an_external_broker_and_admin_credentials() {
    let err = error_of("[mqtt.dynsec]\nenabled = true\n");
    assert!(err.contains("mqtt.dynsec.enabled"), "{err}");
    let err = error_of(
        "[mqtt]\nmode = \"external\"\nurl = \"mqtt://b\"\n[mqtt.dynsec]\nenabled = true\nusername = \"admin\"\n",
    );
    assert!(err.contains("mqtt.dynsec.password"), "{err}");
    let config = from_toml(
        "[mqtt]\nmode = \"external\"\nurl = \"mqtt://b\"\n[mqtt.dynsec]\nenabled = true\nusername = \"admin\"\npassword = \"s3cr3t-admin\"\n",
    )
    .unwrap();
    assert_eq!(config.mqtt.offline_after, Duration::from_secs(90));
    assert!(!config.redacted_toml().contains("s3cr3t-admin"));
}

#[test]
fn mqtt_offline_after_and_client_id_are_checked() {
    let err = error_of("[mqtt]\noffline_after = 0\n");
    assert!(err.contains("mqtt.offline_after"), "{err}");
    let err = error_of("[mqtt]\nclient_id = \"ddms/#\"\n");
    assert!(err.contains("mqtt.client_id"), "{err}");
}

#[test]
fn web_security_settings_are_checked_and_name_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("server.crt");
    std::fs::write(&cert, "x").unwrap();
    let only_cert = format!("[http.tls]\ncert = {:?}\n", cert.display().to_string());
    for (text, key) in [
        (
            "[http.session]\nidle_timeout = 0\n",
            "http.session.idle_timeout",
        ),
        (
            "[http.session]\nidle_timeout = 600\nabsolute_timeout = 60\n",
            "http.session.absolute_timeout",
        ),
        (
            "[http.login]\nattempts_per_minute_per_ip = 0\n",
            "http.login.attempts_per_minute_per_ip",
        ),
        (
            "[http.rate_limit]\nrequests_per_second = 10\nburst = 5\n",
            "http.rate_limit.burst",
        ),
        (
            "[http.cors]\nallowed_origins = [\"https://a.example/path\"]\n",
            "http.cors.allowed_origins",
        ),
        (
            "[http.cors]\nallowed_origins = [\"*\"]\n",
            "http.cors.allowed_origins",
        ),
        (only_cert.as_str(), "http.tls.cert"),
        (
            "[http]\ntrusted_proxies = [\"nginx\"]\n",
            "http.trusted_proxies",
        ),
    ] {
        let err = error_of(text);
        assert!(err.contains(key), "{text}: {err}");
    }
    let config = from_toml(
        "[http]\ntrusted_proxies = [\"127.0.0.1\", \"::1\"]\n\
         [http.cors]\nallowed_origins = [\"https://scada.example.net:8443\"]\n\
         [http.rate_limit]\nrequests_per_second = 0\n",
    )
    .unwrap();
    assert_eq!(config.http.trusted_proxies.len(), 2);
    assert!(!config.http.tls.enabled());
    assert_eq!(config.http.session.idle_timeout, Duration::from_secs(1800));
}

#[test]
fn modbus_settings_out_of_range_name_their_key() {
    for (text, key) in [
        ("[modbus]\nlease_ttl_s = 0\n", "modbus.lease_ttl_s"),
        (
            "[modbus]\nrequest_timeout_ms = 5\n",
            "modbus.request_timeout_ms",
        ),
    ] {
        let err = error_of(text);
        assert!(err.contains(key), "{text}: {err}");
    }
    let config = from_toml("[modbus]\nlease_ttl_s = 4\nrequest_timeout_ms = 250\n").unwrap();
    assert_eq!(config.modbus.lease_ttl(), Duration::from_secs(4));
    assert_eq!(config.modbus.request_timeout(), Duration::from_millis(250));
}

#[test]
fn a_public_broker_url_devices_cannot_use_is_refused() {
    for text in [
        "[mqtt]\npublic_url = \"tcp://mqtt.example.net\"\n",
        "[mqtt]\npublic_url = \"mqtts://device:secret@mqtt.example.net\"\n",
        "[mqtt]\npublic_url = \"mqtt://0.0.0.0:1883\"\n",
    ] {
        let err = error_of(text);
        assert!(err.contains("mqtt.public_url"), "{text}: {err}");
    }
    let config = from_toml("[mqtt]\npublic_url = \"mqtts://mqtt.example.net\"\n").unwrap();
    assert_eq!(
        config.mqtt.public_url.as_deref(),
        Some("mqtts://mqtt.example.net")
    );
}

#[test]
fn embedded_tls_needs_its_listener_a_certificate_and_a_key() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let cases = [
        (
            "[mqtt.embedded]\ntls_listen = \"127.0.0.1:8883\"\n".to_string(),
            "mqtt.embedded.tls.cert",
        ),
        (
            format!("[mqtt.embedded]\ntls_listen = \"127.0.0.1:8883\"\n[mqtt.embedded.tls]\ncert = {file:?}\n"),
            "mqtt.embedded.tls.key",
        ),
        (
            format!("[mqtt.embedded.tls]\ncert = {file:?}\nkey = {file:?}\n"),
            "mqtt.embedded.tls_listen",
        ),
        (
            format!("[mqtt.embedded]\ntls_listen = \"127.0.0.1:8883\"\n[mqtt.embedded.tls]\ncert = \"/nonexistent/broker.crt\"\nkey = {file:?}\n"),
            "mqtt.embedded.tls.cert",
        ),
        (
            format!("[mqtt.embedded]\ntls_listen = \"127.0.0.1:1883\"\n[mqtt.embedded.tls]\ncert = {file:?}\nkey = {file:?}\n"),
            "mqtt.embedded.tls_listen",
        ),
    ];
    for (text, key) in cases {
        let err = error_of(&text);
        assert!(err.starts_with(key), "{text}: {err}");
    }
    let config = from_toml(&format!(
        "[mqtt.embedded]\ntls_listen = \"0.0.0.0:8883\"\n[mqtt.embedded.tls]\ncert = {file:?}\nkey = {file:?}\n"
    ))
    .unwrap();
    assert_eq!(
        config.mqtt.embedded.tls_listen,
        Some("0.0.0.0:8883".parse().unwrap())
    );
    let shown = config.redacted_toml();
    assert!(shown.contains("tls_listen = \"0.0.0.0:8883\""), "{shown}");
}

/// Every problem is in the one error, one line each in the order the checks are written, so
/// an operator fixes a configuration in one round rather than one `ddms config check` a mistake.
#[test]
fn every_invalid_key_is_reported_at_once() {
    let mixed = "[database]\nurl = \"mysql://u:pw@x/db\"\n\
                 [http]\nmax_connections = 0\n\
                 [mqtt]\noffline_after = 0\n";
    let cases: [(&str, &[&str]); 2] = [
        (
            mixed,
            &["database.url", "http.max_connections", "mqtt.offline_after"],
        ),
        // The embedded broker's TLS listener: three problems of one section.
        (
            "[mqtt.embedded]\ntls_listen = \"127.0.0.1:1883\"\n",
            &[
                "mqtt.embedded.tls.cert",
                "mqtt.embedded.tls.key",
                "mqtt.embedded.tls_listen",
            ],
        ),
    ];
    for (text, keys) in cases {
        let err = error_of(text);
        let named: Vec<&str> = err
            .lines()
            .map(|line| line.split(": ").next().unwrap())
            .collect();
        assert_eq!(named, keys, "{err}");
    }
    // Each line names where its value came from, and never a secret.
    let err = error_of(mixed);
    assert!(err.lines().all(|line| line.contains(" (from ")), "{err}");
    assert!(!err.contains("pw@"), "{err}");
}

/// A check that compares with a value already refused would only restate that problem.
#[test]
fn a_check_on_an_already_invalid_value_is_skipped() {
    let err = error_of("[http.session]\nidle_timeout = 0.5\nabsolute_timeout = 0.2\n");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("http.session.idle_timeout: "), "{err}");
    // With a valid idle timeout the comparison is made.
    let err = error_of("[http.session]\nidle_timeout = 600\nabsolute_timeout = 60\n");
    assert!(err.starts_with("http.session.absolute_timeout: "), "{err}");
}
