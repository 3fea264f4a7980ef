//! `Config::validate`: the checks of values that deserializing alone cannot express (ranges,
//! settings that go together, files that must exist, URL shapes), each naming its key and where
//! the value came from. Every problem is reported at once, so an operator fixes a file in one
//! round instead of one `ddms config check` per mistake.

use std::time::Duration;

use figment::Figment;
use secrecy::ExposeSecret;

use super::load::source_of;
use super::{redact_url, Config, ConfigError, MqttMode, MAX_SERIES_PER_DEVICE};

/// The problems found so far, one `key: message (from source)` line each, in the order the
/// checks are written (so the same configuration always gives the same error).
struct Problems<'a> {
    figment: &'a Figment,
    lines: Vec<String>,
    keys: Vec<String>,
}

impl<'a> Problems<'a> {
    fn new(figment: &'a Figment) -> Self {
        Problems {
            figment,
            lines: Vec::new(),
            keys: Vec::new(),
        }
    }

    fn add(&mut self, key: &str, message: impl Into<String>) {
        self.lines.push(format!(
            "{key}: {} (from {})",
            message.into(),
            source_of(self.figment, key)
        ));
        self.keys.push(key.to_string());
    }

    /// Whether `key` was already found invalid: a check that uses its value is skipped then,
    /// since it would only restate that problem in other words.
    fn reported(&self, key: &str) -> bool {
        self.keys.iter().any(|k| k == key)
    }

    fn into_result(self) -> Result<(), ConfigError> {
        if self.lines.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(self.lines.join("\n")))
        }
    }
}

impl Config {
    pub(super) fn validate(&self, figment: &Figment) -> Result<(), ConfigError> {
        let mut problems = Problems::new(figment);
        if let Some(url) = &self.database.url {
            let url = url.expose_secret();
            if !(url.starts_with("sqlite:")
                || url.starts_with("postgres:")
                || url.starts_with("postgresql:"))
            {
                problems.add(
                    "database.url",
                    format!(
                        "unsupported scheme in `{}`; expected sqlite://… or postgres://…",
                        redact_url(url)
                    ),
                );
            }
        }
        if self.database.max_connections == 0 {
            problems.add("database.max_connections", "must be at least 1");
        }
        if self.http.max_connections == 0 {
            problems.add("http.max_connections", "must be at least 1");
        }
        if self.http.header_read_timeout.is_zero() {
            problems.add("http.header_read_timeout", "must be more than 0 seconds");
        }
        if self.http.stream_recheck_interval.is_zero() {
            problems.add(
                "http.stream_recheck_interval",
                "must be more than 0 seconds",
            );
        }
        if self.http.body_limit < 1024 {
            problems.add("http.body_limit", "must be at least 1024 bytes");
        }
        let session = &self.http.session;
        if session.idle_timeout < Duration::from_secs(1) {
            problems.add("http.session.idle_timeout", "must be at least 1 second");
        }
        if !problems.reported("http.session.idle_timeout")
            && session.absolute_timeout < session.idle_timeout
        {
            problems.add(
                "http.session.absolute_timeout",
                "must be at least http.session.idle_timeout",
            );
        }
        if self.http.login.attempts_per_minute_per_ip == 0 {
            problems.add(
                "http.login.attempts_per_minute_per_ip",
                "must be at least 1",
            );
        }
        if self.http.login.attempts_per_minute_per_username == 0 {
            problems.add(
                "http.login.attempts_per_minute_per_username",
                "must be at least 1",
            );
        }
        if self.http.rate_limit.requests_per_second > 0
            && self.http.rate_limit.burst < self.http.rate_limit.requests_per_second
        {
            problems.add(
                "http.rate_limit.burst",
                "must be at least http.rate_limit.requests_per_second",
            );
        }
        // One line per origin that is not one: each needs its own fix.
        for origin in &self.http.cors.allowed_origins {
            let valid = url::Url::parse(origin).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.path() == "/"
                    && !origin.ends_with('/')
            });
            if !valid {
                problems.add(
                    "http.cors.allowed_origins",
                    format!("`{origin}` is not an origin (scheme://host[:port], no path)"),
                );
            }
        }
        if self.http.tls.cert.is_some() != self.http.tls.key.is_some() {
            problems.add(
                "http.tls.cert",
                "http.tls.cert and http.tls.key go together",
            );
        }
        if !(1..=100_000).contains(&self.ingest.max_batch) {
            problems.add("ingest.max_batch", "must be between 1 and 100000");
        }
        if self.ingest.max_delay_ms > 10_000 {
            problems.add("ingest.max_delay_ms", "must be between 0 and 10000");
        }
        if self.ingest.channel_capacity == 0 {
            problems.add("ingest.channel_capacity", "must be at least 1");
        }
        if !(1..=MAX_SERIES_PER_DEVICE).contains(&self.ingest.max_series_per_device) {
            problems.add(
                "ingest.max_series_per_device",
                format!("must be between 1 and {MAX_SERIES_PER_DEVICE}"),
            );
        }
        if self.devices.failure_threshold == 0 {
            problems.add("devices.failure_threshold", "must be at least 1");
        }
        if !(1..=3600).contains(&self.modbus.lease_ttl_s) {
            problems.add("modbus.lease_ttl_s", "must be between 1 and 3600");
        }
        if !(10..=60_000).contains(&self.modbus.request_timeout_ms) {
            problems.add("modbus.request_timeout_ms", "must be between 10 and 60000");
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            problems.add(
                "log.level",
                format!("`{}` is not a valid filter: {e}", self.log.level),
            );
        }
        if self.mqtt.mode == MqttMode::External {
            match &self.mqtt.url {
                None => problems.add("mqtt.url", "required when mqtt.mode = \"external\""),
                Some(u) if !(u.starts_with("mqtt://") || u.starts_with("mqtts://")) => {
                    problems.add(
                        "mqtt.url",
                        format!("`{}` must start with mqtt:// or mqtts://", redact_url(u)),
                    );
                }
                Some(_) => {}
            }
        }
        if let Some(public) = &self.mqtt.public_url {
            if let Err(e) = super::endpoint::parse_public_url(public) {
                problems.add("mqtt.public_url", e);
            }
        }
        if let Some(id) = &self.mqtt.client_id {
            if id.is_empty() || id.len() > 128 || id.contains(['+', '#', '/']) {
                problems.add(
                    "mqtt.client_id",
                    "must be 1 to 128 characters without + # /",
                );
            }
        }
        if self.mqtt.offline_after < Duration::from_secs(1) {
            problems.add("mqtt.offline_after", "must be at least 1 second");
        }
        if self.mqtt.tls.cert.is_some() != self.mqtt.tls.key.is_some() {
            problems.add(
                "mqtt.tls.cert",
                "mqtt.tls.cert and mqtt.tls.key go together (mutual TLS)",
            );
        }
        if self.mqtt.dynsec.enabled {
            if self.mqtt.mode != MqttMode::External {
                problems.add(
                    "mqtt.dynsec.enabled",
                    "needs mqtt.mode = \"external\" (Mosquitto)",
                );
            }
            if self.mqtt.dynsec.username.is_none() {
                problems.add(
                    "mqtt.dynsec.username",
                    "required when mqtt.dynsec.enabled (the dynsec admin ddms connects as)",
                );
            }
            if self.mqtt.dynsec.password.is_none() {
                problems.add(
                    "mqtt.dynsec.password",
                    "required (or mqtt.dynsec.password_file) when mqtt.dynsec.enabled",
                );
            }
        }
        if self.mqtt.mode == MqttMode::External
            && self.mqtt.password.is_some()
            && self.mqtt.username.is_none()
        {
            problems.add(
                "mqtt.password",
                "set mqtt.username too: MQTT sends a password only with a username",
            );
        }
        let embedded = &self.mqtt.embedded;
        if let Some(tls_listen) = embedded.tls_listen {
            if embedded.tls.cert.is_none() {
                problems.add(
                    "mqtt.embedded.tls.cert",
                    "required when mqtt.embedded.tls_listen is set",
                );
            }
            if embedded.tls.key.is_none() {
                problems.add(
                    "mqtt.embedded.tls.key",
                    "required when mqtt.embedded.tls_listen is set",
                );
            }
            if tls_listen == embedded.listen && tls_listen.port() != 0 {
                problems.add(
                    "mqtt.embedded.tls_listen",
                    format!("{tls_listen} is also mqtt.embedded.listen; use another port"),
                );
            }
        } else if embedded.tls.cert.is_some() || embedded.tls.key.is_some() {
            problems.add(
                "mqtt.embedded.tls_listen",
                "required when mqtt.embedded.tls.cert or .key is set (the TLS listener's address)",
            );
        }
        for (key, path) in [
            ("http.tls.cert", &self.http.tls.cert),
            ("http.tls.key", &self.http.tls.key),
            ("mqtt.embedded.tls.cert", &embedded.tls.cert),
            ("mqtt.embedded.tls.key", &embedded.tls.key),
            ("mqtt.tls.ca", &self.mqtt.tls.ca),
            ("mqtt.tls.cert", &self.mqtt.tls.cert),
            ("mqtt.tls.key", &self.mqtt.tls.key),
        ] {
            if let Some(path) = path {
                if !path.is_file() {
                    problems.add(key, format!("{} is not a readable file", path.display()));
                }
            }
        }
        if let Some(url) = &self.http.public_url {
            if let Err(message) = super::alerts::check_public_url(url) {
                problems.add("http.public_url", message);
            }
        }
        for (key, message) in self.alerts.validate() {
            problems.add(key, message);
        }
        if self.backup.keep == 0 {
            problems.add("backup.keep", "must be at least 1");
        }
        let s3 = &self.backup.s3;
        if s3.bucket.as_deref().is_some_and(|b| b.trim().is_empty()) {
            problems.add("backup.s3.bucket", "must not be empty");
        }
        if let Some(endpoint) = &s3.endpoint {
            match url::Url::parse(endpoint) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => {}
                _ => problems.add(
                    "backup.s3.endpoint",
                    format!(
                        "`{}` is not an http:// or https:// URL",
                        crate::redact::redact_endpoint(endpoint)
                    ),
                ),
            }
        }
        if s3.access_key_id.is_some() != s3.secret_access_key.is_some() {
            problems.add(
                "backup.s3.access_key_id",
                "set it together with backup.s3.secret_access_key (or its _file), or neither",
            );
        }
        problems.into_result()
    }
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
