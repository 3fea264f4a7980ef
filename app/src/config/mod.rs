//! The shape of ddms' configuration: `Config` and one struct per section, as deserialized from
//! the layers `load` merges (defaults → `ddms.toml` (profiles) → `DDMS_` environment (nesting on
//! `__`) → command-line flags). Secrets are `SecretString`s that never print, and each one also
//! accepts `<key>_file`, a path whose content is the secret.
//!
//! Loading lives in `load.rs`, the checks of values in `validate.rs`, the one way the
//! configuration is printed in `redacted.rs`, and the broker address devices are told (from
//! `mqtt.*`, `mqtt.public_url` first) in `endpoint.rs`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

pub mod alerts;
pub mod endpoint;
mod load;
mod redacted;
mod validate;

pub use crate::redact::redact_url;
pub use load::{check_example, from_toml, Loader, Overrides};

/// Profiles named in the contract; any other value of `DDMS_PROFILE` is refused.
pub const PROFILES: &[&str] = &["default", "dev", "staging", "production"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub data_dir: PathBuf,
    /// `blue` or `green` when run as a blue-green slot (`ddms@blue`); reported by `/api/version`.
    pub slot: Option<Slot>,
    pub database: DatabaseConfig,
    pub http: HttpConfig,
    pub mqtt: MqttConfig,
    pub provisioning: ProvisioningConfig,
    pub ingest: IngestSettings,
    pub devices: DeviceSettings,
    pub modbus: ModbusSettings,
    pub backup: BackupConfig,
    pub log: LogConfig,
    #[serde(default)]
    pub alerts: alerts::AlertsConfig,
    /// The profile the values were selected with (not a key of its own).
    #[serde(skip)]
    pub profile: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    Blue,
    Green,
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Slot::Blue => "blue",
            Slot::Green => "green",
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://…` or `postgres://…`; defaults to `sqlite://<data_dir>/ddms.db`. A secret, since
    /// PostgreSQL URLs carry the password.
    pub url: Option<SecretString>,
    pub url_file: Option<PathBuf>,
    pub max_connections: u32,
    #[serde(with = "seconds")]
    pub connect_timeout: Duration,
    pub migrate_on_start: bool,
    /// Days of daily PostgreSQL reading partitions kept created ahead of today.
    pub partitions_ahead_days: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Largest accepted request body, in bytes (413 beyond).
    pub body_limit: usize,
    #[serde(with = "seconds")]
    pub request_timeout: Duration,
    /// The whole stop after SIGTERM — lame duck, in-flight requests, producers, the ingest flush,
    /// the event log — shares this one deadline (`shutdown.rs`). Keep it below the service
    /// manager's stop timeout (systemd `TimeoutStopSec=40`) by a few seconds.
    #[serde(with = "seconds")]
    pub shutdown_timeout: Duration,
    /// Connections served at once; beyond, new ones wait in the listen backlog.
    pub max_connections: usize,
    /// A connection that has not sent a complete request head this long after connecting (or
    /// after its previous response) is closed: slow clients and idle keep-alives alike.
    #[serde(with = "seconds")]
    pub header_read_timeout: Duration,
    /// Live event streams (`GET /api/stream`) open at once; beyond, 503 with `Retry-After`.
    pub max_streams: usize,
    /// How often an open stream re-checks its credentials (revoked elsewhere, user disabled).
    #[serde(with = "seconds")]
    pub stream_recheck_interval: Duration,
    /// In-process TLS (HTTPS on `listen`) when both are set.
    pub tls: HttpTlsConfig,
    pub session: SessionSettings,
    pub login: LoginThrottle,
    pub rate_limit: RateLimitSettings,
    pub cors: CorsSettings,
    /// Peers (reverse proxies) whose `X-Forwarded-For` / `X-Forwarded-Proto` are believed: the
    /// client address then comes from the header (audit log, throttling) and `https` there
    /// counts as TLS (Secure cookies, HSTS).
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Where users reach ddms (`https://ddms.example.com`): the base of links in notifications.
    pub public_url: Option<url::Url>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTlsConfig {
    /// PEM certificate chain (leaf first).
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert` (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

impl HttpTlsConfig {
    pub fn enabled(&self) -> bool {
        self.cert.is_some() && self.key.is_some()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSettings {
    /// A session unused for this long ends.
    #[serde(with = "seconds")]
    pub idle_timeout: Duration,
    /// A session ends this long after login, however active.
    #[serde(with = "seconds")]
    pub absolute_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginThrottle {
    /// Login attempts allowed per client address per minute (a burst of this many, then one
    /// more every 60/n seconds).
    pub attempts_per_minute_per_ip: u32,
    /// Login attempts allowed per username per minute, from any address.
    pub attempts_per_minute_per_username: u32,
    /// Password hashes (logins, password changes) computed at once, ~19 MiB each; beyond, 503
    /// with `Retry-After`. 0 = twice the CPUs.
    pub max_concurrent_hashes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    /// `/api/*` requests allowed per second per client address and per credential; 0 = no limit.
    pub requests_per_second: u32,
    /// Requests allowed at once above the steady rate.
    pub burst: u32,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsSettings {
    /// Origins (`https://scada.example.net`) whose pages may call the API; empty = none.
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MqttMode {
    Embedded,
    External,
    Off,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    pub mode: MqttMode,
    pub embedded: EmbeddedBrokerConfig,
    /// `mqtt://host:1883` or `mqtts://host:8883` for `mode = "external"`.
    pub url: Option<String>,
    /// `mqtt://host:port` or `mqtts://host:port`: the broker address devices are given in
    /// their credentials, when it is not the one ddms uses itself (see `config::endpoint`).
    pub public_url: Option<String>,
    pub tls: MqttTlsConfig,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    pub password_file: Option<PathBuf>,
    /// The broker client id of the ingester's persistent session. Unset: derived from the host
    /// name and `slot`, stable across restarts so a restarted ddms resumes its session.
    pub client_id: Option<String>,
    /// Subscribe through `$share/ddms/…` so several instances split the stream.
    pub shared_subscription: bool,
    /// An MQTT device that sent nothing for this long is marked offline.
    #[serde(with = "seconds")]
    pub offline_after: Duration,
    pub dynsec: DynsecConfig,
}

/// Mosquitto's dynamic-security plugin: ddms, as its admin, creates a broker client per device.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynsecConfig {
    pub enabled: bool,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedBrokerConfig {
    /// Plain MQTT listener (devices on a trusted network, or behind a TLS-terminating proxy).
    pub listen: SocketAddr,
    /// Optional second listener speaking MQTT over TLS with `tls.cert` and `tls.key`.
    pub tls_listen: Option<SocketAddr>,
    pub tls: EmbeddedTlsConfig,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedTlsConfig {
    /// PEM certificate chain of the broker (leaf first).
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTlsConfig {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisioningConfig {
    pub token: Option<SecretString>,
    pub token_file: Option<PathBuf>,
}

/// The highest `ingest.max_series_per_device` accepted.
pub const MAX_SERIES_PER_DEVICE: usize = 100_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSettings {
    /// A batch is committed once it holds this many readings…
    pub max_batch: usize,
    /// …or this many milliseconds after its first reading arrived.
    pub max_delay_ms: u64,
    /// Submissions queued for the batch writer before producers wait.
    pub channel_capacity: usize,
    /// Series (metrics) one device may have; readings that would create more are refused
    /// (`reason="series_quota"`). See `docs/limits.md`.
    pub max_series_per_device: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSettings {
    /// Consecutive failures after which a connection-failure notification opens.
    pub failure_threshold: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusSettings {
    /// Seconds a device's poller lease lasts without renewal: how long an instance that died
    /// without releasing its leases keeps its devices unpolled. Renewed every third of it.
    pub lease_ttl_s: u64,
    /// Longest wait for one Modbus request (and for connecting); a device's poll interval caps it.
    pub request_timeout_ms: u64,
}

impl ModbusSettings {
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl_s)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// Where archives are written (and kept); unset: `<data_dir>/backups`.
    pub dir: Option<PathBuf>,
    /// Archives kept, in the directory and in S3 each; older ones are deleted.
    pub keep: usize,
    pub s3: BackupS3Config,
}

/// An S3 bucket (or an S3-compatible store) every archive is also uploaded to; off while
/// `bucket` is unset.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupS3Config {
    pub bucket: Option<String>,
    /// Key prefix of the archives (`ddms/` puts them under `ddms/ddms-backup-….tar.gz`).
    pub prefix: String,
    pub region: String,
    /// An S3-compatible endpoint (MinIO, Ceph, Garage); unset: AWS.
    pub endpoint: Option<String>,
    /// Path-style URLs (`endpoint/bucket/key`), as most S3-compatible stores want.
    pub force_path_style: bool,
    /// Unset: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` from the environment.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<SecretString>,
    pub secret_access_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `pretty` or `json`; unset means pretty on a terminal in the default/dev profiles, else json.
    pub format: Option<LogFormat>,
    /// A tracing filter directive (`info`, `ddms=debug,sqlx=warn`); `RUST_LOG` wins when set.
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// The directory backups are written to.
    pub fn backup_dir(&self) -> PathBuf {
        self.backup
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("backups"))
    }

    /// The database URL in effect (the SQLite default lives in `data_dir`).
    pub fn database_url(&self) -> SecretString {
        match &self.database.url {
            Some(url) => url.clone(),
            None => SecretString::from(format!(
                "sqlite://{}",
                self.data_dir.join("ddms.db").display()
            )),
        }
    }

    pub fn log_format(&self, stdout_is_terminal: bool) -> LogFormat {
        self.log.format.unwrap_or({
            if stdout_is_terminal && (self.profile == "default" || self.profile == "dev") {
                LogFormat::Pretty
            } else {
                LogFormat::Json
            }
        })
    }
}

/// Durations are written as whole seconds in the file and the environment.
mod seconds {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        if !(0.0..=86_400.0).contains(&secs) {
            return Err(serde::de::Error::custom(format!(
                "{secs} is out of range: expected seconds between 0 and 86400"
            )));
        }
        Ok(Duration::from_secs_f64(secs))
    }
}
