//! Generic webhook: the message as JSON, signed with HMAC-SHA256 when the channel has a secret.
//!
//! Body: the [`Message`] (every field present, `null` when absent; free text bounded as in
//! [`super::text`]) plus `grouped_count`, the number of grouped alerts before the list was
//! capped at [`super::text::GROUPED_MAX`]. Headers: `Content-Type: application/json`,
//! `X-Ddms-Idempotency-Key`, `X-Ddms-Signature: sha256=<hex HMAC-SHA256(body, secret)>`
//! (with a secret), `User-Agent: ddms/<version>`, and the channel's own headers.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use reqwest::header::{HeaderName, HeaderValue};
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::http::{self, Clients};
use super::{field_error, parse_settings, Channel, FieldError, Message, Outcome};

pub const SIGNATURE_HEADER: &str = "x-ddms-signature";
pub const IDEMPOTENCY_HEADER: &str = "x-ddms-idempotency-key";
/// Custom headers: at most this many, names up to 64 characters, values up to 1024.
pub const HEADERS_MAX: usize = 20;
pub const HEADER_NAME_MAX: usize = 64;
pub const HEADER_VALUE_MAX: usize = 1024;
/// Headers a channel may not set: ours (`X-Ddms-*`), the body's framing, and hop-by-hop ones.
const RESERVED_HEADERS: [&str; 11] = [
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-connection",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

pub(super) fn validate(
    settings: &serde_json::Value,
    allow_private: bool,
    errors: &mut Vec<FieldError>,
) {
    match parse_settings::<WebhookSettings>(settings) {
        Ok(s) => {
            http::validate_url("settings.url", &s.url, allow_private, errors);
            check_headers(&s.headers, errors);
        }
        Err(e) => errors.push(e),
    }
}

fn check_headers(headers: &BTreeMap<String, String>, errors: &mut Vec<FieldError>) {
    if headers.len() > HEADERS_MAX {
        errors.push(field_error(
            "settings.headers",
            format!("at most {HEADERS_MAX} headers"),
        ));
    }
    for (name, value) in headers {
        let field = format!(
            "settings.headers.{}",
            super::text::truncate(name, HEADER_NAME_MAX)
        );
        let lower = name.to_ascii_lowercase();
        if name.is_empty()
            || name.len() > HEADER_NAME_MAX
            || HeaderName::from_bytes(name.as_bytes()).is_err()
        {
            errors.push(field_error(
                field,
                format!("not a header name (letters, digits and !#$%&'*+-.^_`|~, up to {HEADER_NAME_MAX})"),
            ));
        } else if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("x-ddms-") {
            errors.push(field_error(
                field,
                "set by ddms itself; cannot be overridden",
            ));
        } else if value.len() > HEADER_VALUE_MAX || HeaderValue::from_str(value).is_err() {
            errors.push(field_error(
                field,
                format!("value must be printable ASCII, up to {HEADER_VALUE_MAX} characters"),
            ));
        }
    }
}

/// The JSON body of a message.
pub fn body(message: &Message) -> serde_json::Value {
    let bounded = super::text::bounded(message);
    let mut value = serde_json::to_value(&bounded).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.insert("grouped_count".into(), message.grouped.len().into());
    }
    value
}

/// `sha256=<hex>` of HMAC-SHA256 over the exact body bytes (None only if the key were refused,
/// which HMAC, taking keys of any length, never does).
pub fn signature(secret: &[u8], body: &[u8]) -> Option<String> {
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret).ok()?;
    mac.update(body);
    Some(format!(
        "sha256={}",
        hex::encode(mac.finalize().into_bytes())
    ))
}

pub(super) async fn deliver(
    clients: &Clients,
    channel: &Channel,
    message: &Message,
    allow_private: bool,
) -> Outcome {
    let settings = match parse_settings::<WebhookSettings>(&channel.settings) {
        Ok(s) => s,
        Err(e) => return Outcome::permanent(format!("invalid settings: {e}")),
    };
    let mut errors = Vec::new();
    let url = http::validate_url("settings.url", &settings.url, allow_private, &mut errors);
    check_headers(&settings.headers, &mut errors);
    let Some(url) = url.filter(|_| errors.is_empty()) else {
        return Outcome::permanent(format!("invalid settings: {}", join(&errors)));
    };
    let body = match serde_json::to_vec(&body(message)) {
        Ok(body) => body,
        Err(e) => return Outcome::permanent(format!("cannot encode the message: {e}")),
    };
    let mut headers = http::json_headers();
    for (name, value) in &settings.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    match HeaderValue::from_str(&message.idempotency_key) {
        Ok(key) => headers.insert(IDEMPOTENCY_HEADER, key),
        Err(_) => return Outcome::permanent("the idempotency key is not a header value"),
    };
    if let Some(secret) = &channel.secret {
        let signed = signature(secret.expose_secret().as_bytes(), &body)
            .and_then(|s| HeaderValue::from_str(&s).ok());
        match signed {
            Some(value) => headers.insert(SIGNATURE_HEADER, value),
            None => return Outcome::permanent("cannot sign the body with the secret"),
        };
    }
    http::post_and_classify(
        clients,
        &url,
        allow_private,
        headers,
        body,
        http::Answer::retry_after_header,
    )
    .await
}

fn join(errors: &[FieldError]) -> String {
    let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    texts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::channels::text::tests::{huge, sample};

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?").unwrap(),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn body_has_every_field_with_nulls_and_is_bounded() {
        let mut message = sample();
        message.link = None;
        let body = body(&message);
        for key in [
            "alert_id",
            "rule_id",
            "state",
            "severity",
            "device_id",
            "metric",
            "value",
            "threshold",
            "started_at",
            "idempotency_key",
            "link",
            "grouped_count",
        ] {
            assert!(body.get(key).is_some(), "{key} missing in {body}");
        }
        assert!(body["link"].is_null());
        assert_eq!(body["state"], "firing");
        assert_eq!(body["severity"], "critical");
        let big = serde_json::to_vec(&super::body(&huge())).unwrap();
        assert!(big.len() < 64 * 1024, "{} bytes", big.len());
        assert_eq!(super::body(&huge())["grouped_count"], 1000);
    }

    #[test]
    fn headers_are_bounded_and_cannot_override_ours() {
        let settings = |headers: serde_json::Value| serde_json::json!({"url": "https://hooks.example.com/x", "headers": headers});
        let errors = |value| {
            let mut errors = Vec::new();
            validate(&value, false, &mut errors);
            errors
        };
        assert!(errors(settings(
            serde_json::json!({"X-Api-Key": "k", "Authorization": "Bearer t"})
        ))
        .is_empty());
        for (headers, field) in [
            (
                serde_json::json!({"Content-Type": "text/plain"}),
                "settings.headers.Content-Type",
            ),
            (serde_json::json!({"host": "evil"}), "settings.headers.host"),
            (
                serde_json::json!({"X-Ddms-Signature": "x"}),
                "settings.headers.X-Ddms-Signature",
            ),
            (
                serde_json::json!({"Bad Name": "x"}),
                "settings.headers.Bad Name",
            ),
            (
                serde_json::json!({"X-A": "line\nbreak"}),
                "settings.headers.X-A",
            ),
            (
                serde_json::json!({"X-A": "v".repeat(HEADER_VALUE_MAX + 1)}),
                "settings.headers.X-A",
            ),
        ] {
            let errs = errors(settings(headers.clone()));
            assert_eq!(errs.len(), 1, "{headers}: {errs:?}");
            assert_eq!(errs[0].field, field);
        }
        let many: serde_json::Map<String, serde_json::Value> = (0..=HEADERS_MAX)
            .map(|i| (format!("X-H{i}"), "v".into()))
            .collect();
        let errs = errors(settings(many.into()));
        assert_eq!(errs[0].field, "settings.headers");
        let errs = errors(serde_json::json!({"headers": {}}));
        assert_eq!(errs[0].field, "settings.url");
        let errs = errors(serde_json::json!({"url": "https://a.example", "extra": 1}));
        assert_eq!(errs[0].field, "settings.extra");
    }
}
