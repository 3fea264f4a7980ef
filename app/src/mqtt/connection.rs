//! How ddms reaches an external broker: address, TLS (rustls with our CA or the system roots,
//! optional client certificate), credentials. Built once from the configuration, so a bad CA
//! file or key fails at start-up with the key named, not at the first reconnect.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::{ExposeSecret, SecretString};

use crate::config::{Config, Slot};

/// The largest packet MQTT can carry (remaining length 268,435,455). rumqttc drops the whole
/// connection on a larger incoming packet, and the broker would redeliver it forever; so the
/// client accepts anything the broker delivers and the ingester refuses large payloads itself
/// (counted as `oversized`). The shipped Mosquitto config bounds packets much lower.
pub const MAX_PACKET_SIZE: usize = 268_435_455;

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("mqtt.url: {0}")]
    Url(String),
    #[error("{key}: {message}")]
    Tls { key: &'static str, message: String },
}

/// Where and how to connect; cheap to clone.
#[derive(Clone)]
pub struct BrokerConnection {
    pub host: String,
    pub port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for BrokerConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerConnection")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl BrokerConnection {
    /// From `mqtt.url` and `mqtt.tls.*`.
    pub fn from_config(config: &Config) -> Result<Self, ConnectionError> {
        let raw = config
            .mqtt
            .url
            .as_deref()
            .ok_or_else(|| ConnectionError::Url("not set".into()))?;
        let url = url::Url::parse(raw).map_err(|e| {
            ConnectionError::Url(format!("`{}`: {e}", crate::redact::redact_url(raw)))
        })?;
        let tls = match url.scheme() {
            "mqtt" => false,
            "mqtts" => true,
            other => {
                return Err(ConnectionError::Url(format!(
                    "scheme `{other}`: expected mqtt:// or mqtts://"
                )))
            }
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| {
                ConnectionError::Url(format!(
                    "`{}` names no host",
                    crate::redact::redact_url(raw)
                ))
            })?
            // IPv6 literals come bracketed; connecting and TLS name checks want them bare.
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = url.port().unwrap_or(if tls { 8883 } else { 1883 });
        let tls = if tls {
            Some(Arc::new(tls_config(config)?))
        } else {
            None
        };
        Ok(BrokerConnection { host, port, tls })
    }

    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// rumqttc options for one client of this broker.
    pub fn options(
        &self,
        client_id: &str,
        credentials: Option<(&str, &SecretString)>,
    ) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, self.host.clone(), self.port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(MAX_PACKET_SIZE, MAX_PACKET_SIZE);
        if let Some(tls) = &self.tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls.clone(),
            )));
        }
        if let Some((username, password)) = credentials {
            options.set_credentials(username, password.expose_secret());
        }
        options
    }
}

fn tls_config(config: &Config) -> Result<rustls::ClientConfig, ConnectionError> {
    let tls = &config.mqtt.tls;
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca {
        Some(path) => {
            let certs = pem_certificates("mqtt.tls.ca", path)?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(ConnectionError::Tls {
                    key: "mqtt.tls.ca",
                    message: format!("{} holds no usable certificate", path.display()),
                });
            }
        }
        None => {
            // A broker with a publicly trusted certificate needs no CA file.
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                return Err(ConnectionError::Tls {
                    key: "mqtt.tls.ca",
                    message: "not set and no system CA certificates found".into(),
                });
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectionError::Tls {
            key: "mqtt.tls",
            message: e.to_string(),
        })?
        .with_root_certificates(roots);
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let chain = pem_certificates("mqtt.tls.cert", cert)?;
            if chain.is_empty() {
                return Err(ConnectionError::Tls {
                    key: "mqtt.tls.cert",
                    message: format!("{} holds no certificate", cert.display()),
                });
            }
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| ConnectionError::Tls {
                key: "mqtt.tls.key",
                message: format!("{}: {e}", key.display()),
            })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| ConnectionError::Tls {
                    key: "mqtt.tls.key",
                    message: e.to_string(),
                })
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// The certificates of the PEM file `path`, named by the setting `key` in an error.
fn pem_certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ConnectionError> {
    CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ConnectionError::Tls {
            key,
            message: format!("{}: {e}", path.display()),
        })
}

/// The ingester's stable client id: `mqtt.client_id`, else `ddms-<host>[-<slot>]`. Never random,
/// so a restarted process resumes its persistent session (and what queued meanwhile).
pub fn ingester_client_id(config: &Config) -> String {
    if let Some(id) = &config.mqtt.client_id {
        return id.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    derived_client_id(&host, config.slot)
}

fn derived_client_id(host: &str, slot: Option<Slot>) -> String {
    // Topic wildcards and odd characters in a host name would make a client id some brokers
    // refuse.
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    match slot {
        Some(slot) => format!("ddms-{host}-{slot}"),
        None => format!("ddms-{host}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        crate::config::from_toml(&format!("[mqtt]\nmode = \"external\"\n{extra}")).unwrap()
    }

    #[test]
    fn client_id_is_derived_from_host_and_slot_and_never_random() {
        assert_eq!(derived_client_id("plant-a", None), "ddms-plant-a");
        assert_eq!(
            derived_client_id("plant a/#1", Some(Slot::Green)),
            "ddms-plant-a--1-green"
        );
        let c = config("url = \"mqtt://127.0.0.1\"");
        assert_eq!(ingester_client_id(&c), ingester_client_id(&c));
        let c = config("url = \"mqtt://127.0.0.1\"\nclient_id = \"ddms-x\"");
        assert_eq!(ingester_client_id(&c), "ddms-x");
    }

    #[test]
    fn url_gives_host_port_and_tls() {
        let plain =
            BrokerConnection::from_config(&config("url = \"mqtt://broker.local\"")).unwrap();
        assert_eq!(
            (plain.host.as_str(), plain.port, plain.uses_tls()),
            ("broker.local", 1883, false)
        );
        let v6 = BrokerConnection::from_config(&config("url = \"mqtt://[::1]:1999\"")).unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 1999));
    }

    #[test]
    fn unreadable_ca_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate").unwrap();
        let c = config(&format!(
            "url = \"mqtts://broker.local\"\n[mqtt.tls]\nca = {:?}\n",
            ca.display().to_string()
        ));
        let err = BrokerConnection::from_config(&c).unwrap_err().to_string();
        assert!(err.starts_with("mqtt.tls.ca"), "{err}");
    }
}
