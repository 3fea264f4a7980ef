//! Where devices are told to connect: the broker address in the credentials ddms hands out.
//!
//! ddms itself reaches the broker at `mqtt.url` (external) or binds `mqtt.embedded.listen`
//! (embedded), but neither is necessarily an address a device can reach: a compose service
//! name, a loopback address behind a TLS proxy, or `0.0.0.0`. `mqtt.public_url` names the
//! address devices use; without it ddms derives one and replaces an unspecified bind address
//! (`0.0.0.0`, `::`) with the host of `http.public_url`, or else the host name the registering
//! client used to reach ddms.

use std::net::SocketAddr;

use serde::Serialize;

use super::{Config, MqttMode};

/// The broker address a device is given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceEndpoint {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

/// Parses `mqtt.public_url`: `mqtt://host[:port]` or `mqtts://host[:port]`, nothing else (no
/// credentials, path or query: devices get their own credentials).
pub fn parse_public_url(text: &str) -> Result<DeviceEndpoint, String> {
    let url = url::Url::parse(text).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    let tls = match url.scheme() {
        "mqtt" => false,
        "mqtts" => true,
        other => return Err(format!("scheme `{other}`: use mqtt:// or mqtts://")),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials (each device gets its own)".into());
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err("only a scheme, a host and a port: no path, query or fragment".into());
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or("has no host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
    {
        return Err(format!("{host} is not an address a device can connect to"));
    }
    Ok(DeviceEndpoint {
        host: host.to_string(),
        port: url.port().unwrap_or(if tls { 8883 } else { 1883 }),
        tls,
    })
}

/// The endpoint for a device that reached ddms at `request_host` (the HTTP `Host`, when known).
pub fn device_endpoint(config: &Config, request_host: Option<&str>) -> DeviceEndpoint {
    let mqtt = &config.mqtt;
    let known_host = match &config.http.public_url {
        Some(url) => url.host_str().map(str::to_string),
        None => request_host.and_then(host_without_port),
    };
    if let Some(public) = mqtt.public_url.as_deref() {
        // Validated at load time; a failure here would be a bug in config validation.
        if let Ok(endpoint) = parse_public_url(public) {
            return endpoint;
        }
    }
    match mqtt.mode {
        MqttMode::External => {
            let url = mqtt.url.as_deref().unwrap_or_default();
            let parsed = url::Url::parse(url).ok();
            let tls = url.starts_with("mqtts://");
            DeviceEndpoint {
                host: parsed
                    .as_ref()
                    .and_then(|u| u.host_str().map(String::from))
                    .unwrap_or_default(),
                port: parsed
                    .and_then(|u| u.port())
                    .unwrap_or(if tls { 8883 } else { 1883 }),
                tls,
            }
        }
        // The embedded broker's TLS listener, when there is one, is where devices belong.
        _ => match mqtt.embedded.tls_listen {
            Some(tls) => from_bind(tls, true, known_host),
            None => from_bind(mqtt.embedded.listen, false, known_host),
        },
    }
}

fn from_bind(bind: SocketAddr, tls: bool, known_host: Option<String>) -> DeviceEndpoint {
    let host = if bind.ip().is_unspecified() {
        known_host.unwrap_or_else(|| bind.ip().to_string())
    } else {
        bind.ip().to_string()
    };
    DeviceEndpoint {
        host,
        port: bind.port(),
        tls,
    }
}

/// `example.net:8080` → `example.net`, `[::1]:80` → `::1`; `None` for what is not a host.
fn host_without_port(authority: &str) -> Option<String> {
    let url = url::Url::parse(&format!("http://{authority}/")).ok()?;
    let host = url
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']');
    (!host.is_empty() && url.username().is_empty() && url.path() == "/").then(|| host.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_urls_name_scheme_host_and_port_only() {
        assert_eq!(
            parse_public_url("mqtts://mqtt.example.net").unwrap(),
            DeviceEndpoint {
                host: "mqtt.example.net".into(),
                port: 8883,
                tls: true
            }
        );
        assert_eq!(
            parse_public_url("mqtt://10.0.0.5:11883").unwrap(),
            DeviceEndpoint {
                host: "10.0.0.5".into(),
                port: 11883,
                tls: false
            }
        );
        assert_eq!(
            parse_public_url("mqtt://[2001:db8::1]:1883").unwrap().host,
            "2001:db8::1"
        );
        for bad in [
            "tcp://host:1883",
            "mqtt://user:pw@host",
            "mqtt://host/topic",
            "mqtt://host?x=1",
            "mqtt://0.0.0.0:1883",
            "mqtt://[::]:1883",
            "host:1883",
            "mqtt://",
        ] {
            assert!(parse_public_url(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn an_unspecified_bind_is_replaced_by_the_host_the_client_used() {
        let bind: SocketAddr = "0.0.0.0:1883".parse().unwrap();
        let host = |h: &str| host_without_port(h);
        assert_eq!(
            from_bind(bind, false, host("plant.example.net:8080")).host,
            "plant.example.net"
        );
        assert_eq!(
            from_bind(bind, false, host("[2001:db8::2]:80")).host,
            "2001:db8::2"
        );
        assert_eq!(from_bind(bind, false, host("a b")).host, "0.0.0.0");
        assert_eq!(from_bind(bind, false, None).host, "0.0.0.0");
        let loopback: SocketAddr = "127.0.0.1:1883".parse().unwrap();
        assert_eq!(
            from_bind(loopback, false, host("plant.example.net")).host,
            "127.0.0.1"
        );
    }
}
