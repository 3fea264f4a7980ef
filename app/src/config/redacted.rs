//! `Config::redacted_toml`, the only way the configuration is printed (`ddms config check`):
//! the effective values as TOML, every secret replaced by `[redacted]` and passwords taken out of
//! URLs.

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};

use super::{redact_url, Config};

impl Config {
    /// The effective configuration as TOML with every secret replaced by `[redacted]`.
    pub fn redacted_toml(&self) -> String {
        let secret = |s: &Option<SecretString>| s.as_ref().map(|_| "[redacted]".to_string());
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        let value = serde_json::json!({
            "profile": self.profile,
            "data_dir": self.data_dir.display().to_string(),
            "slot": self.slot,
            "database": {
                "url": redact_url(self.database_url().expose_secret()),
                "url_file": path(&self.database.url_file),
                "max_connections": self.database.max_connections,
                "connect_timeout": self.database.connect_timeout.as_secs(),
                "migrate_on_start": self.database.migrate_on_start,
                "partitions_ahead_days": self.database.partitions_ahead_days,
            },
            "http": {
                "listen": self.http.listen.to_string(),
                "body_limit": self.http.body_limit,
                "request_timeout": self.http.request_timeout.as_secs(),
                "shutdown_timeout": self.http.shutdown_timeout.as_secs(),
                "max_connections": self.http.max_connections,
                "header_read_timeout": self.http.header_read_timeout.as_secs_f64(),
                "max_streams": self.http.max_streams,
                "stream_recheck_interval": self.http.stream_recheck_interval.as_secs_f64(),
                "trusted_proxies": self.http.trusted_proxies.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "tls": { "cert": path(&self.http.tls.cert), "key": path(&self.http.tls.key) },
                "session": {
                    "idle_timeout": self.http.session.idle_timeout.as_secs_f64(),
                    "absolute_timeout": self.http.session.absolute_timeout.as_secs_f64(),
                },
                "login": {
                    "attempts_per_minute_per_ip": self.http.login.attempts_per_minute_per_ip,
                    "attempts_per_minute_per_username": self.http.login.attempts_per_minute_per_username,
                    "max_concurrent_hashes": self.http.login.max_concurrent_hashes,
                },
                "rate_limit": {
                    "requests_per_second": self.http.rate_limit.requests_per_second,
                    "burst": self.http.rate_limit.burst,
                },
                "cors": { "allowed_origins": self.http.cors.allowed_origins },
                "public_url": self.http.public_url.as_ref().map(url::Url::as_str),
            },
            "mqtt": {
                "mode": format!("{:?}", self.mqtt.mode).to_lowercase(),
                "embedded": {
                    "listen": self.mqtt.embedded.listen.to_string(),
                    "tls_listen": self.mqtt.embedded.tls_listen.map(|a| a.to_string()),
                    "tls": { "cert": path(&self.mqtt.embedded.tls.cert), "key": path(&self.mqtt.embedded.tls.key) },
                },
                "url": self.mqtt.url.as_deref().map(redact_url),
                "public_url": self.mqtt.public_url,
                "tls": { "ca": path(&self.mqtt.tls.ca), "cert": path(&self.mqtt.tls.cert), "key": path(&self.mqtt.tls.key) },
                "username": self.mqtt.username,
                "password": secret(&self.mqtt.password),
                "password_file": path(&self.mqtt.password_file),
                "client_id": self.mqtt.client_id,
                "shared_subscription": self.mqtt.shared_subscription,
                "offline_after": self.mqtt.offline_after.as_secs_f64(),
                "dynsec": {
                    "enabled": self.mqtt.dynsec.enabled,
                    "username": self.mqtt.dynsec.username,
                    "password": secret(&self.mqtt.dynsec.password),
                    "password_file": path(&self.mqtt.dynsec.password_file),
                },
            },
            "provisioning": {
                "token": secret(&self.provisioning.token),
                "token_file": path(&self.provisioning.token_file),
            },
            "ingest": {
                "max_batch": self.ingest.max_batch,
                "max_delay_ms": self.ingest.max_delay_ms,
                "channel_capacity": self.ingest.channel_capacity,
                "max_series_per_device": self.ingest.max_series_per_device,
            },
            "devices": { "failure_threshold": self.devices.failure_threshold },
            "modbus": {
                "lease_ttl_s": self.modbus.lease_ttl_s,
                "request_timeout_ms": self.modbus.request_timeout_ms,
            },
            "backup": {
                "dir": self.backup_dir().display().to_string(),
                "keep": self.backup.keep,
                "s3": {
                    "bucket": self.backup.s3.bucket,
                    "prefix": self.backup.s3.prefix,
                    "region": self.backup.s3.region,
                    "endpoint": self.backup.s3.endpoint.as_deref().map(crate::redact::redact_endpoint),
                    "force_path_style": self.backup.s3.force_path_style,
                    "access_key_id": self.backup.s3.access_key_id,
                    "secret_access_key": secret(&self.backup.s3.secret_access_key),
                    "secret_access_key_file": path(&self.backup.s3.secret_access_key_file),
                },
            },
            "log": { "format": self.log.format, "level": self.log.level },
            "alerts": self.alerts.effective(),
        });
        toml::to_string_pretty(&strip_nulls(value)).unwrap_or_else(|e| format!("# {e}"))
    }
}

/// TOML has no null: unset optional keys are simply left out.
fn strip_nulls(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        other => other,
    }
}
