//! Notification channels: what a channel is ([`Channel`], [`validate`]), what is sent
//! ([`Message`]), and sending it ([`Deliverer`]) as a webhook, a Discord or Slack message, or an
//! e-mail. One module per kind holds its template (a pure `format` function, sizes bounded)
//! and what is particular to its sending (Discord and Slack share one delivery to their
//! webhook URL); `target` is the SSRF guard every kind goes through; `http` the shared HTTP
//! client and the classification of answers into an [`Outcome`].

pub mod discord;
pub mod email;
pub mod http;
pub mod slack;
pub mod target;
pub mod text;
pub mod webhook;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::alerts::AlertsConfig;
pub use crate::modbus::FieldError;

/// What a channel is, as stored (the `channels` table's `kind`) and as created through the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    Webhook,
    Discord,
    Slack,
    Email,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Webhook => "webhook",
            ChannelKind::Discord => "discord",
            ChannelKind::Slack => "slack",
            ChannelKind::Email => "email",
        }
    }
}

/// Kind-specific settings, stored as JSON (secrets are not in here):
/// - webhook: `{"url": "...", "headers": {"X-Foo": "bar"}}`
/// - discord: `{"url": "https://discord.com/api/webhooks/..."}`
/// - slack: `{"url": "https://hooks.slack.com/services/..."}`
/// - email: `{"smtp_host": "...", "smtp_port": 587, "tls": "starttls"|"tls"|"none",
///   "username": "..."|null, "from": "ddms@x", "to": ["a@x", ...]}`
pub type ChannelSettings = serde_json::Value;

#[derive(Debug, Clone)]
pub struct Channel {
    pub id: uuid::Uuid,
    pub name: String,
    pub kind: ChannelKind,
    pub settings: ChannelSettings,
    /// webhook: the HMAC key; email: the SMTP password; discord/slack: None (the URL is the
    /// secret).
    pub secret: Option<secrecy::SecretString>,
    /// Asks to reach private addresses; effective only when `alerts.allow_private_targets`
    /// is set too (see [`target`]).
    pub allow_private: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// Which transition a message announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageState {
    Firing,
    Resolved,
    Acknowledged,
    /// A reminder that an alert is still firing (the rule's repeat interval).
    Repeat,
    /// A channel test from the API.
    Test,
}

impl MessageState {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Firing => "firing",
            MessageState::Resolved => "resolved",
            MessageState::Acknowledged => "acknowledged",
            MessageState::Repeat => "repeat",
            MessageState::Test => "test",
        }
    }
}

/// One of the alerts a grouped message stands for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupedAlert {
    pub alert_id: uuid::Uuid,
    pub device_id: Option<uuid::Uuid>,
    pub device_name: Option<String>,
    pub metric: Option<String>,
    pub value: Option<f64>,
}

/// One notification to deliver: everything a message needs, already resolved (names, link).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Stable per (transition, channel); receivers dedupe on it.
    pub idempotency_key: String,
    /// None for a grouped message or a channel test.
    pub alert_id: Option<uuid::Uuid>,
    pub rule_id: Option<uuid::Uuid>,
    pub rule_name: String,
    pub state: MessageState,
    pub severity: Severity,
    pub device_id: Option<uuid::Uuid>,
    pub device_name: Option<String>,
    pub metric: Option<String>,
    pub value: Option<f64>,
    pub threshold: Option<f64>,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When the transition happened.
    pub at: chrono::DateTime<chrono::Utc>,
    /// One line, e.g. "temperature 55 above 50 on boiler-1".
    pub summary: String,
    /// `http.public_url` + "/devices/{id}"; None without a public URL.
    pub link: Option<String>,
    pub acknowledged_by: Option<String>,
    pub comment: Option<String>,
    /// For a grouped message: the alerts it stands for (then alert_id and the device fields
    /// are None).
    pub grouped: Vec<GroupedAlert>,
}

/// What became of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Try again, no earlier than `after` when the receiver said so (Retry-After, Discord's
    /// `retry_after`), else at the worker's back-off.
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// Will never work (4xx other than 408/429, a refused target, bad settings):
    /// dead-letter now.
    Permanent {
        reason: String,
    },
}

impl Outcome {
    fn retry(reason: impl Into<String>) -> Outcome {
        Outcome::Retry {
            after: None,
            reason: reason.into(),
        }
    }

    fn permanent(reason: impl Into<String>) -> Outcome {
        Outcome::Permanent {
            reason: reason.into(),
        }
    }
}

/// Whether a channel may reach private addresses: only when the configuration allows it AND
/// the channel asks for it (see [`target`] for why both).
pub fn private_allowed(channel_allow_private: bool, config: &AlertsConfig) -> bool {
    channel_allow_private && config.allow_private_targets
}

/// Validates a channel before it is stored: the kind's settings, the URL (https, or http
/// only when private targets are allowed; literal IPs through the SSRF guard; host names are
/// checked at delivery, after DNS), header names and values, e-mail addresses. Every problem
/// is reported, each naming its field (`settings.url`, `settings.to[1]`, `allow_private`).
pub fn validate(
    kind: ChannelKind,
    settings: &ChannelSettings,
    allow_private: bool,
    config: &AlertsConfig,
) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    if allow_private && !config.allow_private_targets {
        errors.push(field_error(
            "allow_private",
            "not permitted while alerts.allow_private_targets is false in the server configuration",
        ));
    }
    let allow = private_allowed(allow_private, config);
    match kind {
        ChannelKind::Webhook => webhook::validate(settings, allow, &mut errors),
        ChannelKind::Discord | ChannelKind::Slack => {
            match parse_settings::<UrlSettings>(settings) {
                Ok(s) => {
                    http::validate_url("settings.url", &s.url, allow, &mut errors);
                }
                Err(e) => errors.push(e),
            }
        }
        ChannelKind::Email => email::validate(settings, allow, &mut errors),
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Discord's and Slack's settings: the webhook URL, which is also its secret.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UrlSettings {
    url: String,
}

/// Discord's and Slack's delivery: the JSON `payload` to the incoming webhook URL of the
/// channel's settings.
async fn deliver_to_chat(
    clients: &http::Clients,
    channel: &Channel,
    allow_private: bool,
    payload: serde_json::Value,
    retry_after: fn(&http::Answer) -> Option<Duration>,
) -> Outcome {
    let settings = match parse_settings::<UrlSettings>(&channel.settings) {
        Ok(s) => s,
        Err(e) => return Outcome::permanent(format!("invalid settings: {e}")),
    };
    let mut errors = Vec::new();
    let Some(url) = http::validate_url("settings.url", &settings.url, allow_private, &mut errors)
    else {
        return Outcome::permanent(format!("invalid settings: {}", errors[0]));
    };
    let body = serde_json::to_vec(&payload).unwrap_or_default();
    let headers = http::json_headers();
    http::post_and_classify(clients, &url, allow_private, headers, body, retry_after).await
}

/// What would let a channel reach a private target.
fn config_hint() -> &'static str {
    "refused unless alerts.allow_private_targets and the channel's allow_private are both set"
}

fn field_error(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// Settings JSON into the kind's typed settings; a missing or unknown key is named as
/// `settings.<key>`.
fn parse_settings<T: serde::de::DeserializeOwned>(
    settings: &ChannelSettings,
) -> Result<T, FieldError> {
    serde_json::from_value(settings.clone()).map_err(|e| {
        let message = e.to_string();
        let key = ["missing field `", "unknown field `"]
            .iter()
            .find_map(|prefix| message.strip_prefix(prefix))
            .and_then(|rest| rest.split('`').next());
        match key {
            Some(key) => field_error(format!("settings.{key}"), message.clone()),
            None => field_error("settings", message),
        }
    })
}

/// Sends messages through channels. Each attempt is bounded by `alerts.delivery_timeout`
/// (connecting and the whole exchange); redirects are not followed; response bodies are read
/// up to [`http::RESPONSE_BODY_LIMIT`]; every address is checked by the SSRF guard.
pub struct Deliverer {
    config: AlertsConfig,
    http: http::Clients,
    smtp_roots: email::ExtraRoots,
}

impl Deliverer {
    pub fn new(config: &AlertsConfig) -> Self {
        Deliverer {
            config: config.clone(),
            http: http::Clients::new(config.delivery_timeout),
            smtp_roots: email::ExtraRoots::load(config.smtp_ca_file.as_deref()),
        }
    }

    pub async fn deliver(&self, channel: &Channel, message: &Message) -> Outcome {
        let allow = private_allowed(channel.allow_private, &self.config);
        let outcome = match channel.kind {
            ChannelKind::Webhook => webhook::deliver(&self.http, channel, message, allow).await,
            ChannelKind::Discord => {
                let payload = discord::format(message);
                deliver_to_chat(&self.http, channel, allow, payload, discord::retry_after).await
            }
            ChannelKind::Slack => {
                let payload = slack::format(message);
                let retry_after = http::Answer::retry_after_header;
                deliver_to_chat(&self.http, channel, allow, payload, retry_after).await
            }
            ChannelKind::Email => {
                let send = email::deliver(&self.smtp_roots, &self.config, channel, message, allow);
                // lettre bounds each step; this bounds the whole exchange.
                match tokio::time::timeout(self.config.delivery_timeout, send).await {
                    Ok(outcome) => outcome,
                    Err(_) => Outcome::retry(format!(
                        "timed out after {:?}",
                        self.config.delivery_timeout
                    )),
                }
            }
        };
        match &outcome {
            Outcome::Delivered => {
                tracing::debug!(channel = %channel.id, kind = channel.kind.as_str(), key = %message.idempotency_key, "notification delivered");
            }
            Outcome::Retry { after, reason } => {
                tracing::info!(channel = %channel.id, kind = channel.kind.as_str(), key = %message.idempotency_key, ?after, %reason, "notification delivery will be retried");
            }
            Outcome::Permanent { reason } => {
                tracing::warn!(channel = %channel.id, kind = channel.kind.as_str(), key = %message.idempotency_key, %reason, "notification cannot be delivered");
            }
        }
        outcome
    }
}
