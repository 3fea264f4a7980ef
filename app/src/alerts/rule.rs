//! Alert rules as the API takes them: parsing and validation (every problem named by its field,
//! so the API answers 422 naming it), and the typed condition the engine evaluates.
//!
//! JSON shape: `{"name", "device_id", "group", "metric", "condition", "threshold",
//! "threshold_high", "clear_threshold", "clear_threshold_high", "for_s", "repeat_interval_s",
//! "no_data_s", "system_check", "severity", "channels": [ids], "enabled"}`. A `"system"` condition
//! makes a system rule: no metric or thresholds, a `system_check` instead (see `alerts::system`). `group` is a group's id or name.
//! Whether the device, group and channels exist is checked by the caller (it has the store).

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::modbus::FieldError;
use crate::store::alerts::{NewAlertRule, MAX_RULE_CHANNELS};

/// Longest rule name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest metric name, in characters (metric names of devices are shorter still).
pub const MAX_METRIC_CHARS: usize = 200;
/// Longest `for_s`, `repeat_interval_s` and `no_data_s`: 30 days.
pub const MAX_DURATION_S: i64 = 30 * 24 * 3600;

const FIELDS: &[&str] = &[
    "name",
    "device_id",
    "group",
    "metric",
    "condition",
    "threshold",
    "threshold_high",
    "clear_threshold",
    "clear_threshold_high",
    "for_s",
    "repeat_interval_s",
    "no_data_s",
    "system_check",
    "severity",
    "channels",
    "enabled",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Above,
    Below,
    Outside,
    Inside,
    NoData,
}

impl Condition {
    pub fn parse(s: &str) -> Option<Condition> {
        Some(match s {
            "above" => Condition::Above,
            "below" => Condition::Below,
            "outside" => Condition::Outside,
            "inside" => Condition::Inside,
            "no_data" => Condition::NoData,
            _ => return None,
        })
    }

    fn is_band(self) -> bool {
        matches!(self, Condition::Outside | Condition::Inside)
    }
}

/// A threshold rule's fire and clear tests (hysteresis: firing needs the fire test, resolving
/// the clear test; values in between keep the state).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Check {
    pub condition: Condition,
    pub low: f64,
    pub high: f64,
    pub clear_low: f64,
    pub clear_high: f64,
}

impl Check {
    /// The check of a stored (validated) rule; `None` for no-data rules.
    pub fn of(rule: &NewAlertRule) -> Option<Check> {
        let condition = Condition::parse(&rule.condition)?;
        let threshold = rule.threshold?;
        let high = rule.threshold_high.unwrap_or(threshold);
        Some(Check {
            condition,
            low: threshold,
            high,
            clear_low: rule.clear_threshold.unwrap_or(threshold),
            clear_high: rule.clear_threshold_high.unwrap_or(high),
        })
        .filter(|_| condition != Condition::NoData)
    }

    /// The value meets the alert condition.
    pub fn fires(&self, v: f64) -> bool {
        match self.condition {
            Condition::Above => v > self.low,
            Condition::Below => v < self.low,
            Condition::Outside => v < self.low || v > self.high,
            Condition::Inside => v >= self.low && v <= self.high,
            Condition::NoData => false,
        }
    }

    /// The value is back on the good side of the clear threshold(s).
    pub fn clears(&self, v: f64) -> bool {
        match self.condition {
            Condition::Above => v <= self.clear_low,
            Condition::Below => v >= self.clear_low,
            Condition::Outside => v >= self.clear_low && v <= self.clear_high,
            Condition::Inside => v < self.clear_low || v > self.clear_high,
            Condition::NoData => true,
        }
    }

    /// The threshold a message quotes.
    pub fn threshold_for(&self, v: f64) -> f64 {
        match self.condition {
            Condition::Outside if v > self.high => self.high,
            _ => self.low,
        }
    }
}

/// A parsed rule; `group` (id or name) still to be resolved by the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedRule {
    pub rule: NewAlertRule,
    pub group: Option<String>,
}

struct Fields<'a> {
    body: &'a Map<String, Value>,
    errors: Vec<FieldError>,
}

impl<'a> Fields<'a> {
    fn error(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    fn present(&self, field: &str) -> Option<&'a Value> {
        self.body.get(field).filter(|v| !v.is_null())
    }

    /// Records that `field` is wrong; nothing is read from it.
    fn refuse<T>(&mut self, field: &str, message: impl Into<String>) -> Option<T> {
        self.error(field, message);
        None
    }

    fn string(&mut self, field: &str) -> Option<String> {
        match self.present(field)? {
            Value::String(s) => Some(s.trim().to_string()),
            _ => self.refuse(field, "must be a string"),
        }
    }

    fn number(&mut self, field: &str) -> Option<f64> {
        match self.present(field)?.as_f64().filter(|v| v.is_finite()) {
            Some(v) => Some(v),
            None => self.refuse(field, "must be a finite number"),
        }
    }

    fn seconds(&mut self, field: &str) -> Option<i64> {
        match self.present(field)?.as_i64() {
            Some(v) if v < 0 => self.refuse(field, "must not be negative"),
            Some(v) if v > MAX_DURATION_S => self.refuse(
                field,
                format!("must be at most {MAX_DURATION_S} s (30 days)"),
            ),
            Some(v) => Some(v),
            None => self.refuse(field, "must be a whole number of seconds"),
        }
    }

    fn uuid(&mut self, field: &str) -> Option<Uuid> {
        let text = self.string(field)?;
        match Uuid::parse_str(&text) {
            Ok(id) => Some(id),
            Err(_) => self.refuse(field, "must be a UUID"),
        }
    }
}

/// Checks a rule's JSON; every problem is returned, each naming its field.
pub fn parse(body: &Value) -> Result<ParsedRule, Vec<FieldError>> {
    let Some(map) = body.as_object() else {
        return Err(vec![FieldError {
            field: "body".into(),
            message: "must be a JSON object".into(),
        }]);
    };
    let mut f = Fields {
        body: map,
        errors: Vec::new(),
    };
    for key in map.keys() {
        if !FIELDS.contains(&key.as_str()) {
            f.error(key, "unknown field");
        }
    }
    let name = f.string("name").unwrap_or_default();
    if name.is_empty() {
        f.error("name", "required");
    } else if name.chars().count() > MAX_NAME_CHARS {
        f.error(
            "name",
            format!("must be at most {MAX_NAME_CHARS} characters"),
        );
    }
    let device_id = f.uuid("device_id");
    let group = f.string("group").filter(|g| !g.is_empty());
    if f.present("device_id").is_some() && f.present("group").is_some() {
        f.error(
            "group",
            "a rule targets one device, one group, or (neither set) every device",
        );
    }
    let condition_text = f.string("condition");
    let system = condition_text.as_deref() == Some("system");
    let metric = f.string("metric").filter(|m| !m.is_empty());
    match &metric {
        None if !system => f.error("metric", "required"),
        None => {}
        Some(_) if system => f.error("metric", "a system rule watches no metric"),
        Some(m) if m.chars().count() > MAX_METRIC_CHARS => f.error(
            "metric",
            format!("must be at most {MAX_METRIC_CHARS} characters"),
        ),
        Some(_) => {}
    }
    let condition = match condition_text.as_deref() {
        None => {
            f.error("condition", "required");
            None
        }
        Some("system") => None,
        Some(text) => match Condition::parse(text) {
            Some(c) => Some(c),
            None => {
                f.error(
                    "condition",
                    "must be one of above, below, outside, inside, no_data, system",
                );
                None
            }
        },
    };
    let threshold = f.number("threshold");
    let threshold_high = f.number("threshold_high");
    let clear = f.number("clear_threshold");
    let clear_high = f.number("clear_threshold_high");
    let for_s = f.seconds("for_s").unwrap_or(0);
    let repeat_interval_s = f.seconds("repeat_interval_s").filter(|s| *s > 0);
    let no_data_s = f.seconds("no_data_s");
    let severity = f.string("severity").unwrap_or_else(|| "warning".into());
    if !matches!(severity.as_str(), "info" | "warning" | "critical") {
        f.error("severity", "must be one of info, warning, critical");
    }
    let enabled = match f.present("enabled") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            f.error("enabled", "must be true or false");
            true
        }
    };
    let channels = parse_channels(&mut f);
    let system_check = f.string("system_check");
    match (&system_check, system) {
        (None, true) => f.error("system_check", "required for a system rule"),
        (Some(check), true) if !crate::alerts::system::CHECKS.contains(&check.as_str()) => f.error(
            "system_check",
            format!(
                "must be one of {}",
                crate::alerts::system::CHECKS.join(", ")
            ),
        ),
        (Some(_), false) => f.error(
            "system_check",
            "only for a system rule (condition \"system\")",
        ),
        _ => {}
    }

    if let Some(condition) = condition {
        check_thresholds(
            &mut f,
            condition,
            threshold,
            threshold_high,
            clear,
            clear_high,
            no_data_s,
        );
    }
    if !f.errors.is_empty() {
        return Err(f.errors);
    }
    if system {
        return Ok(ParsedRule {
            rule: NewAlertRule {
                name,
                kind: "system".into(),
                device_id,
                group_id: None,
                metric: None,
                condition: "system".into(),
                threshold: None,
                threshold_high: None,
                clear_threshold: None,
                clear_threshold_high: None,
                for_s: 0,
                repeat_interval_s,
                no_data_s: None,
                system_check,
                severity,
                channels,
                enabled,
            },
            group,
        });
    }
    let condition = condition.expect("checked above");
    let band = condition.is_band();
    let no_data = condition == Condition::NoData;
    Ok(ParsedRule {
        rule: NewAlertRule {
            name,
            kind: if no_data { "no_data" } else { "threshold" }.into(),
            device_id,
            group_id: None,
            metric,
            condition: condition_text.unwrap_or_default(),
            threshold: threshold.filter(|_| !no_data),
            threshold_high: threshold_high.filter(|_| band),
            // The clear threshold defaults to the threshold (no hysteresis).
            clear_threshold: if no_data { None } else { clear.or(threshold) },
            clear_threshold_high: if band {
                clear_high.or(threshold_high)
            } else {
                None
            },
            for_s: if no_data { 0 } else { for_s },
            repeat_interval_s,
            no_data_s: no_data_s.filter(|_| no_data),
            system_check: None,
            severity,
            channels,
            enabled,
        },
        group,
    })
}

fn parse_channels(f: &mut Fields<'_>) -> Vec<Uuid> {
    let mut channels = Vec::new();
    match f.present("channels") {
        None => {}
        Some(Value::Array(items)) => {
            if items.len() > MAX_RULE_CHANNELS {
                f.error(
                    "channels",
                    format!("at most {MAX_RULE_CHANNELS} channels per rule"),
                );
            }
            for (i, item) in items.iter().enumerate() {
                match item.as_str().map(Uuid::parse_str) {
                    Some(Ok(id)) if !channels.contains(&id) => channels.push(id),
                    Some(Ok(_)) => f.error(&format!("channels[{i}]"), "listed twice"),
                    _ => f.error(&format!("channels[{i}]"), "must be a channel id (UUID)"),
                }
            }
        }
        Some(_) => f.error("channels", "must be a list of channel ids"),
    }
    channels
}

fn check_thresholds(
    f: &mut Fields<'_>,
    condition: Condition,
    threshold: Option<f64>,
    high: Option<f64>,
    clear: Option<f64>,
    clear_high: Option<f64>,
    no_data_s: Option<i64>,
) {
    if condition == Condition::NoData {
        match no_data_s {
            None | Some(0) => f.error("no_data_s", "required for no_data rules (seconds > 0)"),
            Some(_) => {}
        }
        for field in [
            "threshold",
            "threshold_high",
            "clear_threshold",
            "clear_threshold_high",
        ] {
            if f.present(field).is_some() {
                f.error(field, "no_data rules have no thresholds");
            }
        }
        return;
    }
    let Some(low) = threshold else {
        if f.present("threshold").is_none() {
            f.error("threshold", "required");
        }
        return;
    };
    if f.present("no_data_s").is_some() {
        f.error("no_data_s", "only for no_data rules");
    }
    if !condition.is_band() {
        for field in ["threshold_high", "clear_threshold_high"] {
            if f.present(field).is_some() {
                f.error(field, "only for outside and inside rules");
            }
        }
        let Some(clear) = clear else { return };
        match condition {
            Condition::Above if clear > low => f.error(
                "clear_threshold",
                "must be at or below the threshold for an above rule",
            ),
            Condition::Below if clear < low => f.error(
                "clear_threshold",
                "must be at or above the threshold for a below rule",
            ),
            _ => {}
        }
        return;
    }
    let Some(high) = high else {
        if f.present("threshold_high").is_none() {
            f.error("threshold_high", "required for outside and inside rules");
        }
        return;
    };
    if high <= low {
        f.error("threshold_high", "must be above threshold");
        return;
    }
    let clear_low = clear.unwrap_or(low);
    let clear_high = clear_high.unwrap_or(high);
    if clear_high <= clear_low {
        f.error("clear_threshold_high", "must be above clear_threshold");
        return;
    }
    // Outside: the band is the good side, so the clear band lies within it. Inside: the band is
    // the bad side, so the clear band lies around it.
    let (low_ok, high_ok) = match condition {
        Condition::Outside => (clear_low >= low, clear_high <= high),
        _ => (clear_low <= low, clear_high >= high),
    };
    let side = if condition == Condition::Outside {
        ("at or above threshold", "at or below threshold_high")
    } else {
        ("at or below threshold", "at or above threshold_high")
    };
    if !low_ok {
        f.error("clear_threshold", format!("must be {}", side.0));
    }
    if !high_ok {
        f.error("clear_threshold_high", format!("must be {}", side.1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(body: Value) -> Vec<String> {
        parse(&body)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    fn base() -> Value {
        json!({"name": "hot", "metric": "temperature", "condition": "above", "threshold": 50})
    }

    fn with(key: &str, value: Value) -> Value {
        let mut body = base();
        body[key] = value;
        body
    }

    #[test]
    fn a_minimal_rule_defaults_the_clear_threshold_to_the_threshold() {
        let parsed = parse(&base()).unwrap();
        assert_eq!(parsed.rule.clear_threshold, Some(50.0));
        assert_eq!(parsed.rule.severity, "warning");
        assert_eq!(parsed.rule.kind, "threshold");
        assert!(parsed.rule.enabled);
        assert_eq!(parsed.rule.device_id, None);
        assert_eq!(parsed.group, None);
    }

    #[test]
    fn each_bad_input_is_named_by_its_field() {
        let cases: Vec<(Value, &str)> = vec![
            (with("condition", json!("sideways")), "condition"),
            (with("severity", json!("apocalyptic")), "severity"),
            (with("threshold", Value::Null), "threshold"),
            (with("threshold", json!("50")), "threshold"),
            (with("clear_threshold", json!(55)), "clear_threshold"),
            (with("for_s", json!(-1)), "for_s"),
            (with("for_s", json!(1.5)), "for_s"),
            (with("name", json!("x".repeat(201))), "name"),
            (with("name", json!("  ")), "name"),
            (with("metric", Value::Null), "metric"),
            (with("device_id", json!("not-a-uuid")), "device_id"),
            (with("channels", json!(["nope"])), "channels[0]"),
            (with("surprise", json!(1)), "surprise"),
            (with("enabled", json!("yes")), "enabled"),
            (with("no_data_s", json!(60)), "no_data_s"),
        ];
        for (body, field) in cases {
            assert_eq!(fields(body.clone()), [field], "{body}");
        }
    }

    #[test]
    fn target_is_one_device_or_one_group_or_every_device() {
        let mut both = with("device_id", json!(Uuid::nil().to_string()));
        both["group"] = json!("plant-a");
        assert_eq!(fields(both), ["group"]);
        let group = parse(&with("group", json!("plant-a"))).unwrap();
        assert_eq!(group.group.as_deref(), Some("plant-a"));
    }

    #[test]
    fn at_most_twenty_channels() {
        let ids: Vec<String> = (0..21).map(|_| Uuid::new_v4().to_string()).collect();
        assert_eq!(fields(with("channels", json!(ids))), ["channels"]);
        let id = Uuid::new_v4().to_string();
        assert_eq!(fields(with("channels", json!([id, id]))), ["channels[1]"]);
    }

    #[test]
    fn below_clear_must_be_at_or_above_the_threshold() {
        let mut body = with("condition", json!("below"));
        body["clear_threshold"] = json!(45);
        assert_eq!(fields(body.clone()), ["clear_threshold"]);
        body["clear_threshold"] = json!(55);
        assert!(parse(&body).is_ok());
    }

    #[test]
    fn bands_need_high_above_low_and_clear_bands_on_the_right_side() {
        let band = |condition: &str, extra: Value| {
            let mut body = with("condition", json!(condition));
            body["threshold"] = json!(10);
            body["threshold_high"] = json!(20);
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            body
        };
        // One key set wrong on the 10..20 band: that key is refused.
        for (condition, key, value) in [
            ("outside", "threshold_high", json!(10)),
            ("outside", "threshold_high", json!(null)),
            ("outside", "clear_threshold", json!(9)),
            ("outside", "clear_threshold_high", json!(21)),
            ("inside", "clear_threshold", json!(11)),
        ] {
            let mut body = band(condition, json!({}));
            body[key] = value;
            assert_eq!(fields(body), [key], "{condition} {key}");
        }
        // Clear bands on the right side of the band are accepted.
        for (condition, clear, clear_high) in [("outside", 11, 19), ("inside", 9, 21)] {
            let extra = json!({"clear_threshold": clear, "clear_threshold_high": clear_high});
            assert!(parse(&band(condition, extra)).is_ok(), "{condition}");
        }
    }

    #[test]
    fn no_data_rules_need_a_silence_length_and_no_thresholds() {
        let body = json!({"name": "quiet", "metric": "t", "condition": "no_data"});
        assert_eq!(fields(body.clone()), ["no_data_s"]);
        let mut ok = body.clone();
        ok["no_data_s"] = json!(300);
        let parsed = parse(&ok).unwrap();
        assert_eq!(parsed.rule.kind, "no_data");
        assert_eq!(parsed.rule.clear_threshold, None);
        ok["threshold"] = json!(3);
        assert_eq!(fields(ok), ["threshold"]);
    }

    #[test]
    fn non_finite_numbers_are_refused() {
        // JSON has no NaN or infinity literal; a number too large for f64 is the way in.
        let body: Value = serde_json::from_str(
            r#"{"name":"x","metric":"t","condition":"above","threshold":1e999}"#,
        )
        .unwrap_or_else(|_| with("threshold", json!("inf")));
        assert_eq!(fields(body), ["threshold"]);
    }

    #[test]
    fn hysteresis_checks() {
        let check = Check::of(&parse(&with("clear_threshold", json!(45))).unwrap().rule).unwrap();
        assert!(check.fires(50.5) && !check.fires(50.0));
        assert!(check.clears(45.0) && !check.clears(46.0));
    }
}
