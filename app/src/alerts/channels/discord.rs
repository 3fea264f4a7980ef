//! Discord: an incoming webhook (`https://discord.com/api/webhooks/<id>/<token>`) receiving
//! one embed, coloured by severity (green once resolved).
//!
//! Discord's limits are title ≤ 256, description ≤ 4096, ≤ 25 fields (name ≤ 256, value
//! ≤ 1024) and ≤ 6000 characters per embed. Ours stay well inside: title ≤ 256, description
//! ≤ 2000 (the summary and the grouped alerts), ≤ 10 fields with names ≤ 64 and values ≤ 256
//! — at most 4816 characters. Mentions in the text (`@everyone`, `<@id>`) never ping:
//! `allowed_mentions` is empty.

use std::time::Duration;

use serde_json::json;

use super::http::{Answer, RETRY_AFTER_MAX};
use super::text::{self, truncate};
use super::{Message, MessageState, Severity};

pub const TITLE_MAX: usize = 256;
pub const DESCRIPTION_MAX: usize = 2000;
pub const FIELDS_MAX: usize = 10;
pub const FIELD_NAME_MAX: usize = 64;
pub const FIELD_VALUE_MAX: usize = 256;

/// Embed colours (24-bit RGB).
pub fn color(message: &Message) -> u32 {
    if message.state == MessageState::Resolved {
        return 0x2E_B6_7D;
    }
    match message.severity {
        Severity::Critical => 0xE0_1E_5A,
        Severity::Warning => 0xEC_B2_2E,
        Severity::Info => 0x36_C5_F0,
    }
}

/// The webhook's JSON body.
pub fn format(message: &Message) -> serde_json::Value {
    let message = text::bounded(message);
    let mut description = message.summary.clone();
    let lines = text::grouped_lines(&message);
    if !lines.is_empty() {
        description.push_str("\n\n");
        description.push_str(&lines.join("\n"));
    }
    let fields: Vec<serde_json::Value> = text::details(&message)
        .into_iter()
        .take(FIELDS_MAX)
        .map(|(name, value)| {
            // Discord refuses empty field values.
            let value = if value.trim().is_empty() {
                "-".to_string()
            } else {
                value
            };
            json!({
                "name": truncate(name, FIELD_NAME_MAX),
                "value": truncate(&value, FIELD_VALUE_MAX),
                "inline": name != "Comment",
            })
        })
        .collect();
    let mut embed = json!({
        "title": truncate(&text::title(&message), TITLE_MAX),
        "description": truncate(&description, DESCRIPTION_MAX),
        "color": color(&message),
        "timestamp": message.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "fields": fields,
        "footer": { "text": "ddms" },
    });
    if let Some(link) = message.link.filter(|l| l.starts_with("http")) {
        embed["url"] = link.into();
    }
    json!({
        "content": null,
        "allowed_mentions": { "parse": [] },
        "embeds": [embed],
    })
}

/// How long Discord asks us to wait: on 429 it says so in the body, in (fractional) seconds;
/// else the `Retry-After` header.
pub fn retry_after(answer: &Answer) -> Option<Duration> {
    serde_json::from_slice::<serde_json::Value>(&answer.body)
        .ok()
        .and_then(|v| v.get("retry_after").and_then(|r| r.as_f64()))
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(RETRY_AFTER_MAX.as_secs_f64())))
        .or_else(|| answer.retry_after_header())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::channels::text::tests::{huge, sample};

    #[test]
    fn embed_stays_inside_discords_limits() {
        let body = format(&huge());
        let embed = &body["embeds"][0];
        let chars = |v: &serde_json::Value| v.as_str().unwrap().chars().count();
        assert!(chars(&embed["title"]) <= 256);
        assert!(chars(&embed["description"]) <= 4096);
        let fields = embed["fields"].as_array().unwrap();
        assert!(fields.len() <= 25);
        let mut total = chars(&embed["title"]) + chars(&embed["description"]) + 4;
        for f in fields {
            assert!(chars(&f["name"]) <= 256 && chars(&f["value"]) <= 1024);
            total += chars(&f["name"]) + chars(&f["value"]);
        }
        assert!(total <= 6000, "{total}");
    }

    #[test]
    fn embed_shows_the_alert() {
        let body = format(&sample());
        let embed = &body["embeds"][0];
        assert_eq!(embed["title"], "[FIRING] boiler too hot");
        assert_eq!(embed["color"], 0xE01E5A);
        assert_eq!(embed["url"], "https://ddms.example.com/devices/3");
        assert_eq!(body["allowed_mentions"]["parse"], json!([]));
        let fields = embed["fields"].as_array().unwrap();
        assert!(fields
            .iter()
            .any(|f| f["name"] == "Value" && f["value"] == "55.5"));
    }
}
