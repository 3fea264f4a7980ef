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

/// A configuration that does not load: what makes it invalid, in files of the working
/// directory and in the environment.
struct Invalid {
    files: &'static [(&'static str, &'static str)],
    env: &'static [(&'static str, &'static str)],
    /// What the error names: the key, and the source of its value where it has one.
    names: &'static [&'static str],
}

#[test]
fn an_invalid_configuration_names_the_key_and_its_source_but_no_secret() {
    let cases = [
        // A value that does not parse, from the environment.
        Invalid {
            files: &[],
            env: &[("DDMS_HTTP__LISTEN", "not-an-address")],
            names: &["http.listen", "DDMS_HTTP__LISTEN"],
        },
        // The same from the file.
        Invalid {
            files: &[("ddms.toml", "[default.log]\nformat = \"yaml\"\n")],
            env: &[],
            names: &["log.format", "ddms.toml"],
        },
        // A key no section has.
        Invalid {
            files: &[("ddms.toml", "[default.http]\nlisten_addr = \"x\"\n")],
            env: &[],
            names: &["listen_addr"],
        },
        // A secret and its `_file` together.
        Invalid {
            files: &[("pw", "a")],
            env: &[
                ("DDMS_MQTT__PASSWORD", "b"),
                ("DDMS_MQTT__PASSWORD_FILE", "pw"),
            ],
            names: &["mqtt.password_file"],
        },
        // An unsupported database scheme: the URL's password is not shown.
        Invalid {
            files: &[],
            env: &[("DDMS_DATABASE__URL", "mysql://u:pw@x/db")],
            names: &["database.url", "DDMS_DATABASE__URL"],
        },
        // A profile ddms does not know.
        Invalid {
            files: &[],
            env: &[("DDMS_PROFILE", "prod")],
            names: &["DDMS_PROFILE"],
        },
    ];
    for case in cases {
        Jail::expect_with(|jail| {
            for (name, text) in case.files {
                jail.create_file(name, text)?;
            }
            for (key, value) in case.env {
                jail.set_env(key, value);
            }
            let err = load().unwrap_err().to_string();
            for name in case.names {
                assert!(err.contains(name), "{name}: {err}");
            }
            assert!(!err.contains("pw@"), "{err}");
            Ok(())
        });
    }
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
