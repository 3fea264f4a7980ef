//! Loading: the built-in defaults, `ddms.toml` (flat or by profile), the `DDMS_` environment and
//! command-line flags layered with figment, `<key>_file` secrets read, and figment's errors turned
//! into one line per problem that names the key and where its value came from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Data, Env, Format, Serialized, Toml};
use figment::{Figment, Profile};
use secrecy::SecretString;
use serde::Serialize;

use super::{Config, ConfigError, PROFILES};

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
pub(super) fn source_of(figment: &Figment, key: &str) -> String {
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

#[cfg(test)]
#[path = "load_tests.rs"]
mod tests;
