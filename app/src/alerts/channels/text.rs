//! Text shared by the templates: bounded strings and the lines every kind shows.
//!
//! Bounds (characters): summary 500, rule and device names 200, comment 1000, metric 200,
//! grouped alerts listed 100 (the rest counted). Each kind bounds further to its receiver's
//! limits.

use super::{Message, MessageState};

pub const SUMMARY_MAX: usize = 500;
pub const NAME_MAX: usize = 200;
pub const COMMENT_MAX: usize = 1000;
pub const GROUPED_MAX: usize = 100;
pub const ELLIPSIS: char = '…';

/// At most `max` characters; a shortened text ends with an ellipsis (within the `max`).
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push(ELLIPSIS);
    out
}

/// Control characters (newlines included) become spaces: for subjects, titles, headers.
pub fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The message with every free-text field bounded and at most [`GROUPED_MAX`] grouped alerts.
pub fn bounded(message: &Message) -> Message {
    let mut m = message.clone();
    m.rule_name = truncate(&one_line(&m.rule_name), NAME_MAX);
    m.summary = truncate(&one_line(&m.summary), SUMMARY_MAX);
    m.device_name = m.device_name.map(|n| truncate(&one_line(&n), NAME_MAX));
    m.metric = m.metric.map(|n| truncate(&one_line(&n), NAME_MAX));
    m.acknowledged_by = m.acknowledged_by.map(|n| truncate(&one_line(&n), NAME_MAX));
    m.comment = m.comment.map(|c| truncate(&c, COMMENT_MAX));
    m.link = m.link.filter(|l| l.len() <= 2048);
    m.grouped.truncate(GROUPED_MAX);
    for g in &mut m.grouped {
        g.device_name = g
            .device_name
            .take()
            .map(|n| truncate(&one_line(&n), NAME_MAX));
        g.metric = g.metric.take().map(|n| truncate(&one_line(&n), NAME_MAX));
    }
    m
}

pub fn state_label(state: MessageState) -> &'static str {
    match state {
        MessageState::Firing => "FIRING",
        MessageState::Resolved => "RESOLVED",
        MessageState::Acknowledged => "ACKNOWLEDGED",
        MessageState::Repeat => "STILL FIRING",
        MessageState::Test => "TEST",
    }
}

/// "[FIRING] boiler temperature" (unbounded; callers truncate to their limit).
pub fn title(message: &Message) -> String {
    format!(
        "[{}] {}",
        state_label(message.state),
        one_line(&message.rule_name)
    )
}

/// Numbers as people write them: 55, 55.25, 1e-7.
pub fn number(value: f64) -> String {
    format!("{value}")
}

/// The labelled details of a message, in display order, only those present.
pub fn details(message: &Message) -> Vec<(&'static str, String)> {
    let mut out = vec![("Severity", message.severity.as_str().to_string())];
    if let Some(device) = message
        .device_name
        .clone()
        .or_else(|| message.device_id.map(|id| id.to_string()))
    {
        out.push(("Device", device));
    }
    if let Some(metric) = &message.metric {
        out.push(("Metric", metric.clone()));
    }
    if let Some(value) = message.value {
        out.push(("Value", number(value)));
    }
    if let Some(threshold) = message.threshold {
        out.push(("Threshold", number(threshold)));
    }
    if let Some(started) = message.started_at {
        out.push((
            "Since",
            started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ));
    }
    if let Some(by) = &message.acknowledged_by {
        out.push(("Acknowledged by", by.clone()));
    }
    if let Some(comment) = &message.comment {
        out.push(("Comment", comment.clone()));
    }
    if !message.grouped.is_empty() {
        out.push(("Alerts", message.grouped.len().to_string()));
    }
    out
}

/// One line per grouped alert: "boiler-1 temperature = 55".
pub fn grouped_lines(message: &Message) -> Vec<String> {
    message
        .grouped
        .iter()
        .map(|g| {
            let device = g
                .device_name
                .clone()
                .or_else(|| g.device_id.map(|id| id.to_string()))
                .unwrap_or_else(|| "-".into());
            let mut line = match &g.metric {
                Some(metric) => format!("{device} {metric}"),
                None => device,
            };
            if let Some(value) = g.value {
                line.push_str(&format!(" = {}", number(value)));
            }
            line
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::alerts::channels::{GroupedAlert, Severity};

    pub fn sample() -> Message {
        Message {
            idempotency_key: "a1:3:c1".into(),
            alert_id: Some(uuid::Uuid::from_u128(1)),
            rule_id: Some(uuid::Uuid::from_u128(2)),
            rule_name: "boiler too hot".into(),
            state: MessageState::Firing,
            severity: Severity::Critical,
            device_id: Some(uuid::Uuid::from_u128(3)),
            device_name: Some("boiler-1".into()),
            metric: Some("temperature".into()),
            value: Some(55.5),
            threshold: Some(50.0),
            started_at: Some("2026-12-05T10:00:00Z".parse().unwrap()),
            at: "2026-12-05T10:01:00Z".parse().unwrap(),
            summary: "temperature 55.5 above 50 on boiler-1".into(),
            link: Some("https://ddms.example.com/devices/3".into()),
            acknowledged_by: None,
            comment: None,
            grouped: vec![],
        }
    }

    pub fn huge() -> Message {
        let long = "x".repeat(20_000);
        let mut m = sample();
        m.rule_name = long.clone();
        m.summary = long.clone();
        m.device_name = Some(long.clone());
        m.metric = Some(long.clone());
        m.comment = Some(long.clone());
        m.acknowledged_by = Some(long.clone());
        m.grouped = (0..1000)
            .map(|i| GroupedAlert {
                alert_id: uuid::Uuid::from_u128(i),
                device_id: None,
                device_name: Some(long.clone()),
                metric: Some(long.clone()),
                value: Some(i as f64),
            })
            .collect();
        m
    }

    #[test]
    fn truncation_counts_characters_and_marks_the_cut() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcd", 3), "ab…");
        assert_eq!(truncate("äöüß", 2), "ä…");
        assert_eq!(one_line("a\r\nb"), "a  b");
    }

    #[test]
    fn bounded_caps_every_free_text_field() {
        let m = bounded(&huge());
        assert_eq!(m.summary.chars().count(), SUMMARY_MAX);
        assert!(m.summary.ends_with(ELLIPSIS));
        assert_eq!(m.rule_name.chars().count(), NAME_MAX);
        assert_eq!(m.comment.unwrap().chars().count(), COMMENT_MAX);
        assert_eq!(m.grouped.len(), GROUPED_MAX);
    }
}
