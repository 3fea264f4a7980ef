//! The `[alerts]` configuration section: timing of evaluation and delivery, grouping, and
//! whether notification channels may reach private networks.

use std::path::PathBuf;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

/// Longest any duration key may be: 30 days.
const MAX_DURATION: Duration = Duration::from_secs(30 * 86_400);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Lets channels that also set their own `allow_private` reach loopback, private, link-local
    /// and CGNAT addresses and this host's own addresses (see `channels::target`). Both are
    /// needed: the operator opens the door here, an API admin chooses which channel goes
    /// through it.
    pub allow_private_targets: bool,
    /// Longest one delivery attempt may take: connecting and the whole request.
    #[serde(with = "seconds")]
    pub delivery_timeout: Duration,
    /// Notifications still undelivered this long after they were queued are dead-lettered.
    #[serde(with = "seconds")]
    pub delivery_expiry: Duration,
    /// More than this many alerts of one rule firing within `group_window` are sent as one
    /// grouped message.
    pub group_threshold: u32,
    #[serde(with = "seconds")]
    pub group_window: Duration,
    /// How often timers are checked: `for` durations, no-data, repeats, system checks.
    #[serde(with = "seconds")]
    pub evaluation_interval: Duration,
    /// A system alert fires when `data_dir` or the backup directory has less free space
    /// (percent; 0 turns the check off).
    pub disk_free_floor_percent: u8,
    /// `/ready` must say "not ready" this long before the `not_ready` system alert fires.
    #[serde(with = "seconds")]
    pub not_ready_grace: Duration,
    /// No successful backup for this long, while a backup schedule is set, fires
    /// `backup_stale`. Unset: twice the schedule's interval (2 h, 2 days, 2 weeks).
    #[serde(default, with = "optional_seconds")]
    pub backup_stale_after: Option<Duration>,
    /// Extra PEM CA certificates trusted for SMTP TLS (besides the system's), for a relay
    /// with a private CA. A configuration key rather than a channel setting so that the API
    /// cannot make ddms read files of its choosing.
    pub smtp_ca_file: Option<PathBuf>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            allow_private_targets: false,
            delivery_timeout: Duration::from_secs(10),
            delivery_expiry: Duration::from_secs(86_400),
            group_threshold: 5,
            group_window: Duration::from_secs(60),
            evaluation_interval: Duration::from_secs(5),
            disk_free_floor_percent: 10,
            not_ready_grace: Duration::from_secs(60),
            backup_stale_after: None,
            smtp_ca_file: None,
        }
    }
}

impl AlertsConfig {
    /// Every invalid key (its full name) with what is wrong with it; empty when all are valid.
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        let mut between = |key, value: Duration, min: Duration, max: Duration| {
            if value < min || value > max {
                problems.push((
                    key,
                    format!(
                        "must be between {} and {} seconds",
                        min.as_secs_f64(),
                        max.as_secs()
                    ),
                ));
            }
        };
        between(
            "alerts.delivery_timeout",
            self.delivery_timeout,
            Duration::from_secs(1),
            Duration::from_secs(300),
        );
        between(
            "alerts.delivery_expiry",
            self.delivery_expiry,
            Duration::from_secs(60),
            MAX_DURATION,
        );
        between(
            "alerts.group_window",
            self.group_window,
            Duration::from_secs(1),
            Duration::from_secs(86_400),
        );
        between(
            "alerts.evaluation_interval",
            self.evaluation_interval,
            Duration::from_millis(100),
            Duration::from_secs(3600),
        );
        between(
            "alerts.not_ready_grace",
            self.not_ready_grace,
            Duration::ZERO,
            Duration::from_secs(86_400),
        );
        if let Some(after) = self.backup_stale_after {
            between(
                "alerts.backup_stale_after",
                after,
                Duration::from_secs(1),
                MAX_DURATION,
            );
        }
        if self.group_threshold == 0 {
            problems.push(("alerts.group_threshold", "must be at least 1".into()));
        }
        if self.disk_free_floor_percent > 99 {
            problems.push((
                "alerts.disk_free_floor_percent",
                "must be between 0 and 99".into(),
            ));
        }
        if let Some(path) = &self.smtp_ca_file {
            let checked = std::fs::read(path)
                .map_err(|e| e.to_string())
                .and_then(|pem| parse_ca_pem(&pem).map(drop));
            if let Err(e) = checked {
                problems.push(("alerts.smtp_ca_file", format!("{}: {e}", path.display())));
            }
        }
        problems
    }

    /// The section as `ddms config check` prints it (durations in seconds, like the file).
    pub fn effective(&self) -> serde_json::Value {
        serde_json::json!({
            "allow_private_targets": self.allow_private_targets,
            "delivery_timeout": self.delivery_timeout.as_secs_f64(),
            "delivery_expiry": self.delivery_expiry.as_secs_f64(),
            "group_threshold": self.group_threshold,
            "group_window": self.group_window.as_secs_f64(),
            "evaluation_interval": self.evaluation_interval.as_secs_f64(),
            "disk_free_floor_percent": self.disk_free_floor_percent,
            "not_ready_grace": self.not_ready_grace.as_secs_f64(),
            "backup_stale_after": self.backup_stale_after.map(|d| d.as_secs_f64()),
            "smtp_ca_file": self.smtp_ca_file.as_ref().map(|p| p.display().to_string()),
        })
    }
}

/// `http.public_url`, the base of the links in notifications: an absolute http(s) URL
/// without credentials, query or fragment.
pub fn check_public_url(url: &url::Url) -> Result<(), String> {
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(format!("`{url}` is not an http:// or https:// URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("`{url}` may not have a query or a fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("may not contain a user name or password".into());
    }
    Ok(())
}

/// A link to `path` (`/devices/…`) under `http.public_url`, which may itself have a path
/// (`https://example.com/ddms`).
pub fn public_link(public_url: &url::Url, path: &str) -> String {
    format!(
        "{}/{}",
        public_url.as_str().trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

/// The certificates of a PEM file (at least one).
pub fn parse_ca_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(certs)
}

/// Durations are numbers of seconds (fractions allowed), as everywhere in the configuration.
mod seconds {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        if !secs.is_finite() || secs < 0.0 || secs > super::MAX_DURATION.as_secs_f64() {
            return Err(serde::de::Error::custom(format!(
                "{secs} is out of range: expected seconds between 0 and {}",
                super::MAX_DURATION.as_secs()
            )));
        }
        Ok(Duration::from_secs_f64(secs))
    }

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(value.as_secs_f64())
    }
}

/// An optional duration in seconds.
mod optional_seconds {
    use serde::{Deserializer, Serializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::seconds::deserialize(d).map(Some)
    }

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => super::seconds::serialize(value, s),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> AlertsConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let config = parse("");
        assert_eq!(config, AlertsConfig::default());
        assert_eq!(config.delivery_timeout, Duration::from_secs(10));
        assert_eq!(config.delivery_expiry, Duration::from_secs(86_400));
        assert!(!config.allow_private_targets);
        assert_eq!(config.validate(), []);
    }

    #[test]
    fn out_of_range_values_name_their_key() {
        for (text, key) in [
            ("delivery_timeout = 0", "alerts.delivery_timeout"),
            ("delivery_timeout = 301", "alerts.delivery_timeout"),
            ("delivery_expiry = 10", "alerts.delivery_expiry"),
            ("group_window = 0", "alerts.group_window"),
            ("evaluation_interval = 0.01", "alerts.evaluation_interval"),
            ("group_threshold = 0", "alerts.group_threshold"),
            ("not_ready_grace = 90000", "alerts.not_ready_grace"),
            ("backup_stale_after = 0", "alerts.backup_stale_after"),
            (
                "disk_free_floor_percent = 100",
                "alerts.disk_free_floor_percent",
            ),
            (
                "smtp_ca_file = \"/nonexistent/ca.pem\"",
                "alerts.smtp_ca_file",
            ),
        ] {
            let problems = parse(text).validate();
            let keys: Vec<&str> = problems.iter().map(|(k, _)| *k).collect();
            assert_eq!(keys, [key], "{text}");
        }
        // Every problem at once, not the first only.
        let problems =
            parse("delivery_timeout = 0\ngroup_threshold = 0\ndisk_free_floor_percent = 100")
                .validate();
        let keys: Vec<&str> = problems.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            [
                "alerts.delivery_timeout",
                "alerts.group_threshold",
                "alerts.disk_free_floor_percent"
            ]
        );
        assert!(toml::from_str::<AlertsConfig>("delivery_timeout = -1").is_err());
        assert!(toml::from_str::<AlertsConfig>("delivery_timeout = \"10s\"").is_err());
        assert!(toml::from_str::<AlertsConfig>("unknown = 1").is_err());
    }

    #[test]
    fn public_url_must_be_plain_http_or_https() {
        for bad in [
            "ftp://example.com",
            "https://example.com/?a=b",
            "https://example.com/#x",
            "https://user:pw@example.com",
        ] {
            let url = url::Url::parse(bad).unwrap();
            assert!(check_public_url(&url).is_err(), "{bad}");
        }
        for good in ["https://ddms.example.com", "http://10.0.0.5:8080/ddms/"] {
            check_public_url(&url::Url::parse(good).unwrap()).unwrap();
        }
        let base = url::Url::parse("https://example.com/ddms/").unwrap();
        assert_eq!(
            public_link(&base, "/devices/x"),
            "https://example.com/ddms/devices/x"
        );
        let base = url::Url::parse("https://example.com").unwrap();
        assert_eq!(
            public_link(&base, "/devices/x"),
            "https://example.com/devices/x"
        );
    }

    #[test]
    fn committed_example_documents_every_key() {
        let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ddms.example.toml");
        let text = std::fs::read_to_string(example).unwrap();
        let section = text
            .split("\n[alerts]\n")
            .nth(1)
            .expect("ddms.example.toml has an [alerts] section");
        let section = section.split("\n[").next().unwrap_or(section);
        let serde_json::Value::Object(keys) = AlertsConfig::default().effective() else {
            unreachable!()
        };
        for key in keys.keys() {
            assert!(
                section.lines().any(|line| {
                    line.trim_start_matches(['#', ' '])
                        .starts_with(&format!("{key} ="))
                }),
                "alerts.{key} is not in ddms.example.toml"
            );
        }
    }
}
