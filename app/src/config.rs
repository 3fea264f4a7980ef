//! Typed, layered configuration: defaults → `ddms.toml` (profiles) → `DDMS_` environment
//! (nesting on `__`) → command-line flags. Secrets are `SecretString`s that never print, and each
//! one also accepts `<key>_file`, a path whose content is the secret.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Data, Env, Format, Serialized, Toml};
use figment::{Figment, Profile};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::ingest::MAX_SERIES_PER_DEVICE;

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
    pub alerts: crate::alerts::config::AlertsConfig,
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
    /// their credentials, when it is not the one ddms uses itself (see `mqtt::endpoint`).
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

/// `DDMS_*` variables that belong to the tooling, not to the configuration: `ddms release`
/// (which passes its environment on to the `ddms migrate` and `ddms serve` it starts),
/// `cargo xtask deploy`, the test harnesses, `cargo xtask images` and the release signing key
/// of `cargo xtask build|sign` (`DDMS_SIGNING_KEY`, `DDMS_SIGNING_KEY_PASSWORD`).
const TOOLING_ENV_PREFIXES: [&str; 6] = [
    "test_", "release_", "deploy_", "e2e_", "debian_", "signing_",
];

/// The built-in defaults, as the lowest layer. Kept as TOML so `ddms.example.toml` can be checked
/// against the very same keys.
const DEFAULTS: &str = r#"
data_dir = "./data"

[database]
max_connections = 16
connect_timeout = 5
migrate_on_start = true
partitions_ahead_days = 7

[http]
listen = "127.0.0.1:8080"
body_limit = 1048576
request_timeout = 30
shutdown_timeout = 25
max_connections = 16384
header_read_timeout = 10
max_streams = 10000
stream_recheck_interval = 30
trusted_proxies = []

[http.tls]

[http.session]
idle_timeout = 1800
absolute_timeout = 43200

[http.login]
attempts_per_minute_per_ip = 30
attempts_per_minute_per_username = 10
max_concurrent_hashes = 0

[http.rate_limit]
requests_per_second = 1000
burst = 2000

[http.cors]
allowed_origins = []

[mqtt]
mode = "embedded"
shared_subscription = false
offline_after = 90

[mqtt.dynsec]
enabled = false

[mqtt.embedded]
listen = "127.0.0.1:1883"

[mqtt.embedded.tls]

[mqtt.tls]

[provisioning]

[ingest]
max_batch = 10000
max_delay_ms = 0
channel_capacity = 4096
max_series_per_device = 1000

[devices]
failure_threshold = 3

[modbus]
lease_ttl_s = 15
request_timeout_ms = 2000

[backup]
keep = 7

[backup.s3]
prefix = "ddms/"
region = "us-east-1"
force_path_style = false

[log]
level = "info"
"#;

/// Values given on the command line; they override every other layer.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
}

impl ConfigError {
    /// One line per problem: the key, what is wrong, and where the value came from (the file
    /// path or the exact environment variable).
    fn from_figment(err: figment::Error, profile: &Profile) -> Self {
        let lines: Vec<String> = err
            .into_iter()
            .map(|e| {
                let key = e.path.join(".").to_ascii_lowercase();
                let source = match &e.metadata {
                    Some(meta) => match &meta.source {
                        Some(figment::Source::File(path)) => path.display().to_string(),
                        Some(other) => format!("{} {other}", meta.name),
                        // figment names env values "HTTP.LISTEN"; operators set DDMS_HTTP__LISTEN.
                        None if meta.name.contains("environment") => format!(
                            "environment variable DDMS_{}",
                            e.path.join("__").to_ascii_uppercase()
                        ),
                        None if !e.path.is_empty() => {
                            let keys: Vec<&str> = e.path.iter().map(String::as_str).collect();
                            format!("{} {}", meta.name, meta.interpolate(profile, &keys))
                        }
                        None => meta.name.to_string(),
                    },
                    None => "configuration".to_string(),
                };
                if key.is_empty() {
                    format!("{} (from {source})", e.kind)
                } else {
                    format!("{key}: {} (from {source})", e.kind)
                }
            })
            .collect();
        ConfigError::Invalid(lines.join("\n"))
    }
}

/// Where configuration comes from: a file path (optional) and the process environment.
pub struct Loader {
    pub file: Option<PathBuf>,
    pub overrides: Overrides,
}

impl Loader {
    pub fn figment(&self) -> Result<Figment, ConfigError> {
        let profile = std::env::var("DDMS_PROFILE").unwrap_or_else(|_| "default".into());
        if !PROFILES.contains(&profile.as_str()) {
            return Err(ConfigError::Invalid(format!(
                "DDMS_PROFILE: unknown profile `{profile}` (from the DDMS_PROFILE environment variable); expected one of {}",
                PROFILES.join(", ")
            )));
        }
        let file = match &self.file {
            Some(path) => {
                if !path.exists() {
                    return Err(ConfigError::Invalid(format!(
                        "config file {} does not exist (from --config)",
                        path.display()
                    )));
                }
                path.clone()
            }
            None => PathBuf::from("ddms.toml"),
        };
        let mut figment = Figment::from(Toml::string(DEFAULTS))
            .merge(file_provider(&file)?)
            // Env and CLI are global so they override profile sections of the file too.
            .merge(
                Env::prefixed("DDMS_")
                    .split("__")
                    .filter(|key| {
                        let key = key.as_str().to_ascii_lowercase();
                        key != "profile"
                            && key != "config"
                            && !TOOLING_ENV_PREFIXES.iter().any(|p| key.starts_with(p))
                    })
                    .global(),
            );
        let mut cli = serde_json::Map::new();
        if let Some(dir) = &self.overrides.data_dir {
            cli.insert("data_dir".into(), dir.display().to_string().into());
        }
        if let Some(listen) = self.overrides.http_listen {
            cli.insert(
                "http".into(),
                serde_json::json!({ "listen": listen.to_string() }),
            );
        }
        if !cli.is_empty() {
            figment = figment.merge(Serialized::globals(cli));
        }
        Ok(figment.select(Profile::new(&profile)))
    }

    pub fn load(&self) -> Result<Config, ConfigError> {
        let figment = self.figment()?;
        let mut config: Config = figment
            .extract()
            .map_err(|e| ConfigError::from_figment(e, figment.profile()))?;
        config.profile = figment.profile().to_string();
        resolve_secret_file(
            &figment,
            "database.url",
            &mut config.database.url,
            &config.database.url_file,
        )?;
        resolve_secret_file(
            &figment,
            "mqtt.password",
            &mut config.mqtt.password,
            &config.mqtt.password_file,
        )?;
        resolve_secret_file(
            &figment,
            "mqtt.dynsec.password",
            &mut config.mqtt.dynsec.password,
            &config.mqtt.dynsec.password_file,
        )?;
        resolve_secret_file(
            &figment,
            "provisioning.token",
            &mut config.provisioning.token,
            &config.provisioning.token_file,
        )?;
        resolve_secret_file(
            &figment,
            "backup.s3.secret_access_key",
            &mut config.backup.s3.secret_access_key,
            &config.backup.s3.secret_access_key_file,
        )?;
        config.validate(&figment)?;
        Ok(config)
    }
}

/// `ddms.toml` may be flat (one configuration) or split in profile sections (`[default]`,
/// `[production]`, …, `[global]`); the shape is recognised from its top-level keys.
fn file_provider(path: &Path) -> Result<Data<Toml>, ConfigError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(Toml::file(path));
    };
    let table: toml::Table = text
        .parse()
        .map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))?;
    let by_profile = !table.is_empty()
        && table
            .keys()
            .all(|k| PROFILES.contains(&k.as_str()) || k == "global");
    Ok(if by_profile {
        Toml::file(path).nested()
    } else {
        Toml::file(path)
    })
}

/// Names where a key's value came from, for error messages.
fn source_of(figment: &Figment, key: &str) -> String {
    match figment.find_metadata(key) {
        Some(meta) => match &meta.source {
            Some(figment::Source::File(path)) => path.display().to_string(),
            Some(source) => format!("{} {}", meta.name, source),
            None if meta.name.contains("environment") => format!(
                "environment variable DDMS_{}",
                key.replace('.', "__").to_ascii_uppercase()
            ),
            None => meta.name.to_string(),
        },
        None => "defaults".into(),
    }
}

fn resolve_secret_file(
    figment: &Figment,
    key: &str,
    value: &mut Option<SecretString>,
    file: &Option<PathBuf>,
) -> Result<(), ConfigError> {
    let Some(path) = file else { return Ok(()) };
    let file_key = format!("{key}_file");
    if value.is_some() {
        return Err(ConfigError::Invalid(format!(
            "{key} and {file_key} are both set ({} and {}); set only one",
            source_of(figment, key),
            source_of(figment, &file_key)
        )));
    }
    let content = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::Invalid(format!(
            "{file_key}: cannot read {}: {e} (from {})",
            path.display(),
            source_of(figment, &file_key)
        ))
    })?;
    // Files written by editors and secret managers usually end with a newline.
    let secret = content.trim_end_matches(['\n', '\r']).to_string();
    if secret.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "{file_key}: {} is empty (from {})",
            path.display(),
            source_of(figment, &file_key)
        )));
    }
    *value = Some(SecretString::from(secret));
    Ok(())
}

impl Config {
    /// Loads from `ddms.toml` in the working directory and the environment, without flags.
    pub fn from_env() -> Result<Config, ConfigError> {
        Loader {
            file: None,
            overrides: Overrides::default(),
        }
        .load()
    }

    fn validate(&self, figment: &Figment) -> Result<(), ConfigError> {
        let invalid = |key: &str, msg: String| {
            Err(ConfigError::Invalid(format!(
                "{key}: {msg} (from {})",
                source_of(figment, key)
            )))
        };
        if let Some(url) = &self.database.url {
            let url = url.expose_secret();
            if !(url.starts_with("sqlite:")
                || url.starts_with("postgres:")
                || url.starts_with("postgresql:"))
            {
                return invalid(
                    "database.url",
                    format!(
                        "unsupported scheme in `{}`; expected sqlite://… or postgres://…",
                        redact_url(url)
                    ),
                );
            }
        }
        if self.database.max_connections == 0 {
            return invalid("database.max_connections", "must be at least 1".into());
        }
        if self.http.max_connections == 0 {
            return invalid("http.max_connections", "must be at least 1".into());
        }
        if self.http.header_read_timeout.is_zero() {
            return invalid(
                "http.header_read_timeout",
                "must be more than 0 seconds".into(),
            );
        }
        if self.http.stream_recheck_interval.is_zero() {
            return invalid(
                "http.stream_recheck_interval",
                "must be more than 0 seconds".into(),
            );
        }
        if self.http.body_limit < 1024 {
            return invalid("http.body_limit", "must be at least 1024 bytes".into());
        }
        let session = &self.http.session;
        if session.idle_timeout < Duration::from_secs(1) {
            return invalid(
                "http.session.idle_timeout",
                "must be at least 1 second".into(),
            );
        }
        if session.absolute_timeout < session.idle_timeout {
            return invalid(
                "http.session.absolute_timeout",
                "must be at least http.session.idle_timeout".into(),
            );
        }
        if self.http.login.attempts_per_minute_per_ip == 0 {
            return invalid(
                "http.login.attempts_per_minute_per_ip",
                "must be at least 1".into(),
            );
        }
        if self.http.login.attempts_per_minute_per_username == 0 {
            return invalid(
                "http.login.attempts_per_minute_per_username",
                "must be at least 1".into(),
            );
        }
        if self.http.rate_limit.requests_per_second > 0
            && self.http.rate_limit.burst < self.http.rate_limit.requests_per_second
        {
            return invalid(
                "http.rate_limit.burst",
                "must be at least http.rate_limit.requests_per_second".into(),
            );
        }
        for origin in &self.http.cors.allowed_origins {
            let valid = url::Url::parse(origin).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.path() == "/"
                    && !origin.ends_with('/')
            });
            if !valid {
                return invalid(
                    "http.cors.allowed_origins",
                    format!("`{origin}` is not an origin (scheme://host[:port], no path)"),
                );
            }
        }
        if self.http.tls.cert.is_some() != self.http.tls.key.is_some() {
            return invalid(
                "http.tls.cert",
                "http.tls.cert and http.tls.key go together".into(),
            );
        }
        if !(1..=100_000).contains(&self.ingest.max_batch) {
            return invalid("ingest.max_batch", "must be between 1 and 100000".into());
        }
        if self.ingest.max_delay_ms > 10_000 {
            return invalid("ingest.max_delay_ms", "must be between 0 and 10000".into());
        }
        if self.ingest.channel_capacity == 0 {
            return invalid("ingest.channel_capacity", "must be at least 1".into());
        }
        if !(1..=MAX_SERIES_PER_DEVICE).contains(&self.ingest.max_series_per_device) {
            return invalid(
                "ingest.max_series_per_device",
                format!("must be between 1 and {MAX_SERIES_PER_DEVICE}"),
            );
        }
        if self.devices.failure_threshold == 0 {
            return invalid("devices.failure_threshold", "must be at least 1".into());
        }
        if !(1..=3600).contains(&self.modbus.lease_ttl_s) {
            return invalid("modbus.lease_ttl_s", "must be between 1 and 3600".into());
        }
        if !(10..=60_000).contains(&self.modbus.request_timeout_ms) {
            return invalid(
                "modbus.request_timeout_ms",
                "must be between 10 and 60000".into(),
            );
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return invalid(
                "log.level",
                format!("`{}` is not a valid filter: {e}", self.log.level),
            );
        }
        if self.mqtt.mode == MqttMode::External {
            match &self.mqtt.url {
                None => {
                    return invalid("mqtt.url", "required when mqtt.mode = \"external\"".into())
                }
                Some(u) if !(u.starts_with("mqtt://") || u.starts_with("mqtts://")) => {
                    return invalid(
                        "mqtt.url",
                        format!("`{}` must start with mqtt:// or mqtts://", redact_url(u)),
                    );
                }
                Some(_) => {}
            }
        }
        if let Some(public) = &self.mqtt.public_url {
            if let Err(e) = crate::mqtt::endpoint::parse_public_url(public) {
                return invalid("mqtt.public_url", e);
            }
        }
        if let Some(id) = &self.mqtt.client_id {
            if id.is_empty() || id.len() > 128 || id.contains(['+', '#', '/']) {
                return invalid(
                    "mqtt.client_id",
                    "must be 1 to 128 characters without + # /".into(),
                );
            }
        }
        if self.mqtt.offline_after < Duration::from_secs(1) {
            return invalid("mqtt.offline_after", "must be at least 1 second".into());
        }
        if self.mqtt.tls.cert.is_some() != self.mqtt.tls.key.is_some() {
            return invalid(
                "mqtt.tls.cert",
                "mqtt.tls.cert and mqtt.tls.key go together (mutual TLS)".into(),
            );
        }
        if self.mqtt.dynsec.enabled {
            if self.mqtt.mode != MqttMode::External {
                return invalid(
                    "mqtt.dynsec.enabled",
                    "needs mqtt.mode = \"external\" (Mosquitto)".into(),
                );
            }
            if self.mqtt.dynsec.username.is_none() {
                return invalid(
                    "mqtt.dynsec.username",
                    "required when mqtt.dynsec.enabled (the dynsec admin ddms connects as)".into(),
                );
            }
            if self.mqtt.dynsec.password.is_none() {
                return invalid(
                    "mqtt.dynsec.password",
                    "required (or mqtt.dynsec.password_file) when mqtt.dynsec.enabled".into(),
                );
            }
        }
        if self.mqtt.mode == MqttMode::External
            && self.mqtt.password.is_some()
            && self.mqtt.username.is_none()
        {
            return invalid(
                "mqtt.password",
                "set mqtt.username too: MQTT sends a password only with a username".into(),
            );
        }
        let embedded = &self.mqtt.embedded;
        match (embedded.tls_listen, &embedded.tls.cert, &embedded.tls.key) {
            (Some(_), None, _) => {
                return invalid(
                    "mqtt.embedded.tls.cert",
                    "required when mqtt.embedded.tls_listen is set".into(),
                )
            }
            (Some(_), _, None) => {
                return invalid(
                    "mqtt.embedded.tls.key",
                    "required when mqtt.embedded.tls_listen is set".into(),
                )
            }
            (Some(tls_listen), _, _) if tls_listen == embedded.listen && tls_listen.port() != 0 => {
                return invalid(
                    "mqtt.embedded.tls_listen",
                    format!("{tls_listen} is also mqtt.embedded.listen; use another port"),
                )
            }
            (None, Some(_), _) | (None, _, Some(_)) => return invalid(
                "mqtt.embedded.tls_listen",
                "required when mqtt.embedded.tls.cert or .key is set (the TLS listener's address)"
                    .into(),
            ),
            _ => {}
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
                    return invalid(key, format!("{} is not a readable file", path.display()));
                }
            }
        }
        if let Some(url) = &self.http.public_url {
            if let Err(message) = crate::alerts::config::check_public_url(url) {
                return invalid("http.public_url", message);
            }
        }
        if let Err((key, message)) = self.alerts.validate() {
            return invalid(key, message);
        }
        if self.backup.keep == 0 {
            return invalid("backup.keep", "must be at least 1".into());
        }
        let s3 = &self.backup.s3;
        if s3.bucket.as_deref().is_some_and(|b| b.trim().is_empty()) {
            return invalid("backup.s3.bucket", "must not be empty".into());
        }
        if let Some(endpoint) = &s3.endpoint {
            match url::Url::parse(endpoint) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => {}
                _ => {
                    return invalid(
                        "backup.s3.endpoint",
                        format!(
                            "`{}` is not an http:// or https:// URL",
                            crate::redact::redact_endpoint(endpoint)
                        ),
                    )
                }
            }
        }
        if s3.access_key_id.is_some() != s3.secret_access_key.is_some() {
            return invalid(
                "backup.s3.access_key_id",
                "set it together with backup.s3.secret_access_key (or its _file), or neither"
                    .into(),
            );
        }
        Ok(())
    }

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

pub use crate::redact::redact_url;

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Slot::Blue => "blue",
            Slot::Green => "green",
        })
    }
}

/// Configuration from defaults plus one flat TOML text, ignoring the environment: for embedding
/// ddms (tests spawn servers this way) and for checking example files.
pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
    let figment = Figment::from(Toml::string(DEFAULTS))
        .merge(Toml::string(text))
        .select(Profile::Default);
    let mut config: Config = figment
        .extract()
        .map_err(|e| ConfigError::from_figment(e, &Profile::Default))?;
    config.profile = Profile::Default.to_string();
    config.validate(&figment)?;
    Ok(config)
}

/// The keys documented in `ddms.example.toml` must be exactly the keys `Config` accepts; the
/// example is checked by a test through this function.
pub fn check_example(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))?;
    from_toml(&text)
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

#[cfg(test)]
// figment's Jail API returns figment::Error by value; its size is not ours to change.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    fn load() -> Result<Config, ConfigError> {
        Config::from_env()
    }

    #[test]
    fn defaults_select_sqlite_in_data_dir_and_embedded_broker() {
        Jail::expect_with(|_jail| {
            let config = load().expect("defaults are valid");
            assert_eq!(config.http.listen.to_string(), "127.0.0.1:8080");
            assert_eq!(
                config.database_url().expose_secret(),
                "sqlite://./data/ddms.db"
            );
            assert_eq!(config.mqtt.mode, MqttMode::Embedded);
            assert_eq!(config.http.shutdown_timeout, Duration::from_secs(25));
            Ok(())
        });
    }

    #[test]
    fn environment_overrides_profile_section_of_the_file() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "ddms.toml",
                r#"
                [default.http]
                listen = "127.0.0.1:9000"
                [production.http]
                listen = "0.0.0.0:9001"
                "#,
            )?;
            assert_eq!(load().unwrap().http.listen.to_string(), "127.0.0.1:9000");
            jail.set_env("DDMS_PROFILE", "production");
            assert_eq!(load().unwrap().http.listen.to_string(), "0.0.0.0:9001");
            jail.set_env("DDMS_HTTP__LISTEN", "127.0.0.1:9002");
            assert_eq!(load().unwrap().http.listen.to_string(), "127.0.0.1:9002");
            Ok(())
        });
    }

    #[test]
    fn invalid_value_names_the_key_and_the_environment_variable() {
        Jail::expect_with(|jail| {
            jail.set_env("DDMS_HTTP__LISTEN", "not-an-address");
            let err = load().unwrap_err().to_string();
            assert!(err.contains("http.listen"), "{err}");
            assert!(err.contains("DDMS_HTTP__LISTEN"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn invalid_value_in_file_names_the_file() {
        Jail::expect_with(|jail| {
            jail.create_file("ddms.toml", "[default.log]\nformat = \"yaml\"\n")?;
            let err = load().unwrap_err().to_string();
            assert!(err.contains("log.format"), "{err}");
            assert!(err.contains("ddms.toml"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn release_tooling_variables_are_not_configuration_keys() {
        Jail::expect_with(|jail| {
            // `ddms release` passes its environment to the `ddms migrate` and `ddms serve` it runs.
            jail.set_env("DDMS_RELEASE_ROOT", "/srv/staging");
            jail.set_env("DDMS_RELEASE_WATCH", "10");
            jail.set_env("DDMS_DEPLOY_SSH_KEY", "/home/ci/.ssh/id");
            jail.set_env("DDMS_E2E_DDMS", "/tmp/ddms");
            jail.set_env("DDMS_DEBIAN_MIRROR", "http://deb.example/debian");
            jail.set_env("DDMS_SIGNING_KEY", "/home/ci/release.key");
            jail.set_env("DDMS_SIGNING_KEY_PASSWORD", "x");
            load().expect("tooling variables are not unknown keys");
            jail.set_env("DDMS_RELEASED", "x");
            assert!(load().is_err(), "only the DDMS_RELEASE_ prefix is reserved");
            Ok(())
        });
    }

    #[test]
    fn unknown_key_is_refused() {
        Jail::expect_with(|jail| {
            jail.create_file("ddms.toml", "[default.http]\nlisten_addr = \"x\"\n")?;
            let err = load().unwrap_err().to_string();
            assert!(err.contains("listen_addr"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn secret_file_is_read_and_never_displayed() {
        Jail::expect_with(|jail| {
            jail.create_file("token.txt", "s3cr3t-provisioning\n")?;
            jail.set_env("DDMS_PROVISIONING__TOKEN_FILE", "token.txt");
            let config = load().unwrap();
            assert_eq!(
                config.provisioning.token.as_ref().unwrap().expose_secret(),
                "s3cr3t-provisioning"
            );
            let shown = format!("{} {:?}", config.redacted_toml(), config);
            assert!(!shown.contains("s3cr3t-provisioning"), "{shown}");
            Ok(())
        });
    }

    #[test]
    fn secret_and_secret_file_together_are_refused() {
        Jail::expect_with(|jail| {
            jail.create_file("pw", "a")?;
            jail.set_env("DDMS_MQTT__PASSWORD", "b");
            jail.set_env("DDMS_MQTT__PASSWORD_FILE", "pw");
            let err = load().unwrap_err().to_string();
            assert!(err.contains("mqtt.password_file"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn dynsec_needs_an_external_broker_and_admin_credentials() {
        let err = from_toml("[mqtt.dynsec]\nenabled = true\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("mqtt.dynsec.enabled"), "{err}");
        let err = from_toml(
            "[mqtt]\nmode = \"external\"\nurl = \"mqtt://b\"\n[mqtt.dynsec]\nenabled = true\nusername = \"admin\"\n",
        )
        .unwrap_err()
        .to_string();
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
        let err = from_toml("[mqtt]\noffline_after = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("mqtt.offline_after"), "{err}");
        let err = from_toml("[mqtt]\nclient_id = \"ddms/#\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("mqtt.client_id"), "{err}");
    }

    #[test]
    fn database_password_is_redacted() {
        assert_eq!(
            redact_url("postgres://ddms:hunter2@db:5432/ddms"),
            "postgres://ddms:[redacted]@db:5432/ddms"
        );
        assert_eq!(
            redact_url("sqlite://./data/ddms.db"),
            "sqlite://./data/ddms.db"
        );
    }

    #[test]
    fn unsupported_database_scheme_names_key_and_source() {
        Jail::expect_with(|jail| {
            jail.set_env("DDMS_DATABASE__URL", "mysql://u:pw@x/db");
            let err = load().unwrap_err().to_string();
            assert!(err.contains("database.url"), "{err}");
            assert!(err.contains("DDMS_DATABASE__URL"), "{err}");
            assert!(!err.contains("pw@"), "{err}");
            Ok(())
        });
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
            let err = from_toml(text).unwrap_err().to_string();
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
            let err = from_toml(text).unwrap_err().to_string();
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
            let err = from_toml(text).unwrap_err().to_string();
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
            let err = from_toml(&text).unwrap_err().to_string();
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

    #[test]
    fn unknown_profile_is_refused() {
        Jail::expect_with(|jail| {
            jail.set_env("DDMS_PROFILE", "prod");
            assert!(load().unwrap_err().to_string().contains("DDMS_PROFILE"));
            Ok(())
        });
    }

    #[test]
    fn committed_example_documents_every_key() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ddms.example.toml");
        let text = std::fs::read_to_string(&example).unwrap();
        check_example(&example).expect("ddms.example.toml parses with every key known");
        // Every key the defaults know appears in the example (commented or not).
        let defaults: toml::Table = DEFAULTS.parse().unwrap();
        let mut missing = Vec::new();
        collect_keys(&defaults, "", &mut missing);
        let documented = [
            "slot",
            "http.tls.cert",
            "http.public_url",
            "http.tls.key",
            "database.url",
            "database.url_file",
            "mqtt.embedded.tls_listen",
            "mqtt.embedded.tls.cert",
            "mqtt.embedded.tls.key",
            "mqtt.url",
            "mqtt.tls.ca",
            "mqtt.tls.cert",
            "mqtt.tls.key",
            "mqtt.username",
            "mqtt.password",
            "mqtt.password_file",
            "mqtt.client_id",
            "mqtt.dynsec.username",
            "mqtt.dynsec.password",
            "mqtt.dynsec.password_file",
            "provisioning.token",
            "provisioning.token_file",
            "backup.dir",
            "backup.s3.bucket",
            "backup.s3.endpoint",
            "backup.s3.access_key_id",
            "backup.s3.secret_access_key",
            "backup.s3.secret_access_key_file",
            "log.format",
        ];
        missing.extend(documented.iter().map(|k| k.to_string()));
        let absent: Vec<_> = missing
            .iter()
            .filter(|key| {
                let leaf = key.rsplit('.').next().unwrap();
                !text.lines().any(|line| {
                    let line = line.trim_start_matches(['#', ' ']);
                    line.starts_with(&format!("{leaf} =")) || line.starts_with(&format!("{leaf}="))
                })
            })
            .collect();
        assert!(absent.is_empty(), "undocumented keys: {absent:?}");
    }

    fn collect_keys(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
        for (key, value) in table {
            let full = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                toml::Value::Table(t) => collect_keys(t, &full, out),
                _ => out.push(full),
            }
        }
    }
}
