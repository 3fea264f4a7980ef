//! Tests of loading: layering, sources named in errors, `_file` secrets, profiles, and the
//! committed example against the defaults' keys.

// figment's Jail API returns figment::Error by value; its size is not ours to change.
#![allow(clippy::result_large_err)]

use std::path::Path;
use std::time::Duration;

use figment::Jail;
use secrecy::ExposeSecret;

use super::*;
use crate::config::MqttMode;

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
