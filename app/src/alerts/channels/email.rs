//! E-mail through an SMTP relay (lettre, tokio, rustls): STARTTLS (required, the default),
//! implicit TLS, or plain text — the latter only for channels allowed to reach private
//! targets (a local relay, tests). AUTH (PLAIN or LOGIN, lettre's choice) when `username` is
//! set, with the channel secret as the password.
//!
//! The relay's name goes through the SSRF guard like any URL host: it is resolved, every
//! address is checked, and lettre is given the checked address, with the name kept for
//! the certificate check (SNI). Server certificates are verified against the system's roots
//! plus `alerts.smtp_ca_file`.
//!
//! Template: subject `[ddms] {STATE} {severity}: {summary}` (≤ 200 characters), a plain-text
//! body with the details, the grouped alerts (≤ 100) and the link.

use std::net::IpAddr;
use std::path::Path;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use rustls::pki_types::CertificateDer;
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::config_hint;
use super::target::{check_ip, resolve_checked, ResolveError};
use super::text::{self, truncate};
use super::{field_error, parse_settings, Channel, FieldError, Message, Outcome};
use crate::config::alerts::{parse_ca_pem, AlertsConfig};

pub const SUBJECT_MAX: usize = 200;
pub const RECIPIENTS_MAX: usize = 50;
const HOST_MAX: usize = 253;
const USERNAME_MAX: usize = 256;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmailTls {
    /// Plain connection upgraded with STARTTLS, which the server must offer (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption: only for channels allowed to reach private targets (port 25).
    None,
}

impl EmailTls {
    fn default_port(self) -> u16 {
        match self {
            EmailTls::Starttls => 587,
            EmailTls::Tls => 465,
            EmailTls::None => 25,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailSettings {
    pub smtp_host: String,
    /// Default: 587 (starttls), 465 (tls), 25 (none).
    #[serde(default)]
    pub smtp_port: Option<u16>,
    #[serde(default)]
    pub tls: EmailTls,
    #[serde(default)]
    pub username: Option<String>,
    pub from: String,
    pub to: Vec<String>,
}

impl EmailSettings {
    pub fn port(&self) -> u16 {
        self.smtp_port.unwrap_or(self.tls.default_port())
    }
}

pub(super) fn validate(
    settings: &serde_json::Value,
    allow_private: bool,
    errors: &mut Vec<FieldError>,
) {
    match parse_settings::<EmailSettings>(settings) {
        Ok(s) => check(&s, allow_private, errors),
        Err(e) => errors.push(e),
    }
}

fn check(s: &EmailSettings, allow_private: bool, errors: &mut Vec<FieldError>) {
    let host = s.smtp_host.trim_end_matches('.');
    match url::Host::parse(host) {
        _ if host.is_empty() || host.len() > HOST_MAX => errors.push(field_error(
            "settings.smtp_host",
            format!("must be a host name or IP address of 1 to {HOST_MAX} characters"),
        )),
        Ok(url::Host::Domain(name)) => {
            let name = name.to_ascii_lowercase();
            if !allow_private && (name == "localhost" || name.ends_with(".localhost")) {
                errors.push(field_error(
                    "settings.smtp_host",
                    format!("{name} is this host: {}", config_hint()),
                ));
            }
        }
        Ok(url::Host::Ipv4(ip)) => check_literal(ip.into(), allow_private, errors),
        Ok(url::Host::Ipv6(ip)) => check_literal(ip.into(), allow_private, errors),
        Err(e) => errors.push(field_error("settings.smtp_host", e.to_string())),
    }
    if s.smtp_port == Some(0) {
        errors.push(field_error("settings.smtp_port", "must be 1 to 65535"));
    }
    if s.tls == EmailTls::None && !allow_private {
        errors.push(field_error(
            "settings.tls",
            format!(
                "\"none\" (no encryption) is only for local relays: {}",
                config_hint()
            ),
        ));
    }
    if let Some(username) = &s.username {
        if username.is_empty()
            || username.chars().count() > USERNAME_MAX
            || username.chars().any(char::is_control)
        {
            errors.push(field_error(
                "settings.username",
                format!("must be 1 to {USERNAME_MAX} characters without control characters"),
            ));
        }
    }
    if let Err(e) = s.from.parse::<Mailbox>() {
        errors.push(field_error(
            "settings.from",
            format!("not an e-mail address: {e}"),
        ));
    }
    if s.to.is_empty() || s.to.len() > RECIPIENTS_MAX {
        errors.push(field_error(
            "settings.to",
            format!("must list 1 to {RECIPIENTS_MAX} addresses"),
        ));
    }
    for (i, to) in s.to.iter().enumerate().take(RECIPIENTS_MAX) {
        if let Err(e) = to.parse::<Mailbox>() {
            errors.push(field_error(
                format!("settings.to[{i}]"),
                format!("not an e-mail address: {e}"),
            ));
        }
    }
}

fn check_literal(ip: IpAddr, allow_private: bool, errors: &mut Vec<FieldError>) {
    if let Err(e) = check_ip(ip, allow_private) {
        errors.push(field_error("settings.smtp_host", e.to_string()));
    }
}

/// `alerts.smtp_ca_file`, read once when the deliverer is made.
pub struct ExtraRoots(Result<Vec<CertificateDer<'static>>, String>);

impl ExtraRoots {
    pub fn load(path: Option<&Path>) -> ExtraRoots {
        let Some(path) = path else {
            return ExtraRoots(Ok(Vec::new()));
        };
        let roots = std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|pem| parse_ca_pem(&pem))
            .map_err(|e| format!("alerts.smtp_ca_file {}: {e}", path.display()));
        if let Err(e) = &roots {
            tracing::error!(error = %e, "e-mail channels cannot use TLS");
        }
        ExtraRoots(roots)
    }
}

/// The subject line.
pub fn subject(message: &Message) -> String {
    let subject = format!(
        "[ddms] {} {}: {}",
        text::state_label(message.state),
        message.severity.as_str(),
        text::one_line(&message.summary)
    );
    truncate(&subject, SUBJECT_MAX)
}

/// The plain-text body.
pub fn body(message: &Message) -> String {
    let message = text::bounded(message);
    let mut out = format!("{}\n\n{}\n\n", text::title(&message), message.summary);
    for (label, value) in text::details(&message) {
        out.push_str(&format!("{label}: {value}\n"));
    }
    let lines = text::grouped_lines(&message);
    if !lines.is_empty() {
        out.push_str("\nAlerts:\n");
        for line in lines {
            out.push_str(&format!("- {line}\n"));
        }
    }
    if let Some(link) = &message.link {
        out.push_str(&format!("\nOpen in ddms: {link}\n"));
    }
    out.push_str(&format!(
        "\n-- \nddms, {}\n",
        message
            .at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    ));
    out
}

pub(super) async fn deliver(
    roots: &ExtraRoots,
    config: &AlertsConfig,
    channel: &Channel,
    message: &Message,
    allow_private: bool,
) -> Outcome {
    let settings = match parse_settings::<EmailSettings>(&channel.settings) {
        Ok(s) => s,
        Err(e) => return Outcome::permanent(format!("invalid settings: {e}")),
    };
    let mut errors = Vec::new();
    check(&settings, allow_private, &mut errors);
    if let Some(e) = errors.first() {
        return Outcome::permanent(format!("invalid settings: {e}"));
    }
    let credentials = match (&settings.username, &channel.secret) {
        (Some(user), Some(password)) => Some(Credentials::new(
            user.clone(),
            password.expose_secret().to_string(),
        )),
        (Some(_), None) => {
            return Outcome::permanent(
                "settings.username is set but the channel has no password (secret)",
            )
        }
        (None, _) => None,
    };
    let host = settings.smtp_host.trim_end_matches('.').to_string();
    let port = settings.port();
    let address = match resolve_checked(&host, port, allow_private).await {
        Ok(addrs) => addrs[0].ip(),
        Err(ResolveError::Refused(e)) => return Outcome::permanent(e.to_string()),
        Err(e @ ResolveError::Lookup(_)) => return Outcome::retry(e.to_string()),
    };
    let tls = match tls_mode(settings.tls, &host, roots) {
        Ok(tls) => tls,
        Err(outcome) => return outcome,
    };
    // lettre connects to the checked address; the name stays in the TLS parameters.
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(address.to_string())
        .port(port)
        .tls(tls)
        .timeout(Some(config.delivery_timeout));
    if let Some(credentials) = credentials {
        builder = builder.credentials(credentials);
    }
    let transport = builder.build();
    let email = match build_email(&settings, message) {
        Ok(email) => email,
        Err(e) => return Outcome::permanent(format!("cannot build the e-mail: {e}")),
    };
    match transport.send(email).await {
        Ok(_) => Outcome::Delivered,
        // 5xx: the server refuses for good (unknown recipient, authentication failed).
        Err(e) if e.is_permanent() => Outcome::permanent(super::http::error_chain(&e)),
        Err(e) => Outcome::retry(super::http::error_chain(&e)),
    }
}

fn tls_mode(mode: EmailTls, host: &str, roots: &ExtraRoots) -> Result<Tls, Outcome> {
    if mode == EmailTls::None {
        return Ok(Tls::None);
    }
    let extra = roots.0.as_ref().map_err(|e| Outcome::retry(e.clone()))?;
    let mut params = TlsParameters::builder(host.to_string());
    for cert in extra {
        let cert = Certificate::from_der(cert.to_vec())
            .map_err(|e| Outcome::retry(format!("alerts.smtp_ca_file: {e}")))?;
        params = params.add_root_certificate(cert);
    }
    let params = params
        .build_rustls()
        .map_err(|e| Outcome::retry(format!("TLS set-up: {e}")))?;
    Ok(match mode {
        EmailTls::Tls => Tls::Wrapper(params),
        _ => Tls::Required(params),
    })
}

/// A Message-ID derived from the idempotency key, so that a retried e-mail is recognisably
/// the same message (mail stores and clients drop duplicates by it).
pub fn message_id(idempotency_key: &str) -> String {
    let left: String = idempotency_key
        .chars()
        .take(200)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.+=".contains(c) {
                c
            } else {
                '.'
            }
        })
        .collect();
    format!("<{}@ddms>", left.trim_matches('.'))
}

fn build_email(settings: &EmailSettings, message: &Message) -> Result<lettre::Message, String> {
    let from: Mailbox = settings.from.parse().map_err(|e| format!("{e}"))?;
    let mut builder = lettre::Message::builder()
        .message_id(Some(message_id(&message.idempotency_key)))
        .from(from)
        .subject(subject(message))
        .header(ContentType::TEXT_PLAIN);
    for to in &settings.to {
        builder = builder.to(to.parse().map_err(|e| format!("{e}"))?);
    }
    builder.body(body(message)).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::channels::text::tests::{huge, sample};

    fn errors(settings: serde_json::Value, allow_private: bool) -> Vec<FieldError> {
        let mut errors = Vec::new();
        validate(&settings, allow_private, &mut errors);
        errors
    }

    #[test]
    fn settings_are_checked_field_by_field() {
        let good = serde_json::json!({
            "smtp_host": "smtp.example.com", "from": "ddms <ddms@example.com>",
            "to": ["ops@example.com"], "username": "ddms"
        });
        assert!(errors(good.clone(), false).is_empty());
        for (change, field) in [
            (
                serde_json::json!({"smtp_host": "127.0.0.1"}),
                "settings.smtp_host",
            ),
            (
                serde_json::json!({"smtp_host": "localhost"}),
                "settings.smtp_host",
            ),
            (serde_json::json!({"smtp_host": ""}), "settings.smtp_host"),
            (serde_json::json!({"smtp_port": 0}), "settings.smtp_port"),
            (serde_json::json!({"tls": "none"}), "settings.tls"),
            (
                serde_json::json!({"from": "not an address"}),
                "settings.from",
            ),
            (serde_json::json!({"to": []}), "settings.to"),
            (
                serde_json::json!({"to": ["a@example.com", "bad"]}),
                "settings.to[1]",
            ),
            (serde_json::json!({"username": ""}), "settings.username"),
        ] {
            let mut settings = good.clone();
            for (k, v) in change.as_object().unwrap() {
                settings[k] = v.clone();
            }
            let errs = errors(settings, false);
            assert_eq!(errs.len(), 1, "{change}: {errs:?}");
            assert_eq!(errs[0].field, field, "{change}");
        }
        let mut local = good.clone();
        local["smtp_host"] = "127.0.0.1".into();
        local["tls"] = "none".into();
        assert!(errors(local, true).is_empty());
    }

    #[test]
    fn subject_and_body_carry_the_alert() {
        assert_eq!(
            subject(&sample()),
            "[ddms] FIRING critical: temperature 55.5 above 50 on boiler-1"
        );
        let body = body(&sample());
        assert!(
            body.contains("Open in ddms: https://ddms.example.com/devices/3"),
            "{body}"
        );
        assert!(body.contains("Value: 55.5"), "{body}");
        assert!(subject(&huge()).chars().count() <= SUBJECT_MAX);
        assert!(super::body(&huge()).len() < 64 * 1024);
    }

    #[test]
    fn message_id_is_stable_per_idempotency_key() {
        assert_eq!(message_id("a1:3:c1"), "<a1.3.c1@ddms>");
        assert_eq!(message_id("a1:3:c1"), message_id("a1:3:c1"));
    }

    #[test]
    fn ca_files_must_hold_certificates() {
        assert!(parse_ca_pem(b"").is_err());
        assert!(parse_ca_pem(b"hello").is_err());
    }
}
