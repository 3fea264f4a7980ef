//! Slack: an incoming webhook (`https://hooks.slack.com/services/…`) receiving Block Kit
//! blocks, with `text` as the notification fallback.
//!
//! Slack's limits are a header's text ≤ 150, a section's text ≤ 3000, ≤ 10 section fields
//! of ≤ 2000 each, ≤ 50 blocks. Ours: header ≤ 150, summary section ≤ 3000, ≤ 10 fields of
//! ≤ 300, grouped alerts ≤ 3000, `text` ≤ 3000, at most 6 blocks. `&`, `<` and `>` are
//! escaped, so names cannot inject links or mentions; the limits count escaped text.

use serde_json::json;

use super::text::{self, truncate, ELLIPSIS};
use super::Message;

pub const HEADER_MAX: usize = 150;
pub const SECTION_MAX: usize = 3000;
pub const FIELDS_MAX: usize = 10;
pub const FIELD_MAX: usize = 300;
pub const FALLBACK_MAX: usize = 3000;

/// Escapes for mrkdwn and bounds the escaped text to `max` characters, never cutting an
/// escape in half.
pub fn escape(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut count = 0;
    let total: usize = text.chars().map(escaped_len).sum();
    for c in text.chars() {
        let len = escaped_len(c);
        if total > max && count + len > max.saturating_sub(1) {
            out.push(ELLIPSIS);
            break;
        }
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
        count += len;
    }
    out
}

fn non_empty(text: String) -> String {
    if text.trim().is_empty() {
        "-".into()
    } else {
        text
    }
}

fn escaped_len(c: char) -> usize {
    match c {
        '&' => 5,
        '<' | '>' => 4,
        _ => 1,
    }
}

/// The webhook's JSON body.
pub fn format(message: &Message) -> serde_json::Value {
    let message = text::bounded(message);
    let title = text::title(&message);
    let mut blocks = vec![
        json!({
            "type": "header",
            "text": { "type": "plain_text", "text": truncate(&title, HEADER_MAX), "emoji": false },
        }),
        json!({
            "type": "section",
            // Slack refuses empty texts.
            "text": { "type": "mrkdwn", "text": non_empty(escape(&message.summary, SECTION_MAX)) },
        }),
    ];
    let fields: Vec<serde_json::Value> = text::details(&message)
        .into_iter()
        .take(FIELDS_MAX)
        .map(|(name, value)| {
            let label = format!("*{name}*\n");
            let room = FIELD_MAX - label.chars().count();
            json!({ "type": "mrkdwn", "text": format!("{label}{}", escape(&value, room)) })
        })
        .collect();
    blocks.push(json!({ "type": "section", "fields": fields }));
    let lines = text::grouped_lines(&message);
    if !lines.is_empty() {
        blocks.push(json!({
            "type": "section",
            "text": { "type": "mrkdwn", "text": escape(&lines.join("\n"), SECTION_MAX) },
        }));
    }
    if let Some(link) = message.link.filter(|l| l.starts_with("http")) {
        blocks.push(json!({
            "type": "actions",
            "elements": [{
                "type": "button",
                "text": { "type": "plain_text", "text": "Open in ddms" },
                "url": link,
            }],
        }));
    }
    blocks.push(json!({
        "type": "context",
        "elements": [{
            "type": "mrkdwn",
            "text": format!("ddms · {} · {}", message.severity.as_str(),
                message.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        }],
    }));
    json!({
        "text": escape(&format!("{title}: {}", message.summary), FALLBACK_MAX),
        "blocks": blocks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::channels::text::tests::{huge, sample};

    #[test]
    fn escaping_is_bounded_without_cutting_an_entity() {
        assert_eq!(escape("a<b>&c", 100), "a&lt;b&gt;&amp;c");
        assert_eq!(escape("abc&def", 6), "abc…");
        assert!(escape(&"&".repeat(1000), 3000).chars().count() <= 3000);
    }

    #[test]
    fn blocks_stay_inside_slacks_limits() {
        let body = format(&huge());
        let chars = |v: &serde_json::Value| v.as_str().unwrap().chars().count();
        assert!(chars(&body["text"]) <= 3000);
        let blocks = body["blocks"].as_array().unwrap();
        assert!(blocks.len() <= 50);
        for block in blocks {
            match block["type"].as_str().unwrap() {
                "header" => assert!(chars(&block["text"]["text"]) <= 150),
                "section" => {
                    if let Some(t) = block.get("text") {
                        assert!(chars(&t["text"]) <= 3000);
                    }
                    for f in block["fields"].as_array().into_iter().flatten() {
                        assert!(chars(&f["text"]) <= 2000);
                    }
                }
                _ => {}
            }
        }
    }

    #[test]
    fn names_cannot_inject_mentions() {
        let mut message = sample();
        message.summary = "<!channel> <https://evil|click>".into();
        let body = format(&message);
        assert_eq!(
            body["blocks"][1]["text"]["text"],
            "&lt;!channel&gt; &lt;https://evil|click&gt;"
        );
    }
}
