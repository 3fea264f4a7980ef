//! Alerting API: rules, channels, alerts (list, acknowledge), silences and dead letters.
//! Viewers read; admins change and acknowledge. Every change is audited.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::body::JsonBody;
use super::extract::{AdminRole, Authorized, ViewerRole};
use super::{validation, ApiError, AppState};
use crate::alerts::channels::{
    self, Channel, ChannelKind, Message, MessageState, Outcome, Severity,
};
use crate::alerts::rule;
use crate::store::alerts::{
    Alert, AlertFilter, AlertRule, AlertState, ChannelInfo, DeliveryState, NewChannel, NewSilence,
};
use crate::store::StoreError;

/// Most alerts one `GET /api/alerts` returns (`limit`), and its default.
const MAX_ALERTS: u32 = 1000;
const DEFAULT_ALERTS: u32 = 100;
/// Most dead letters (or deliveries) one `GET /api/deliveries` returns.
const MAX_DELIVERIES: u32 = 1000;
/// Limits on stored text an admin can grow.
const MAX_CHANNEL_NAME: usize = 100;
const MAX_COMMENT: usize = 1000;
const MAX_SECRET: usize = 1000;
/// At most this many rules and channels exist (each rule is evaluated on the ingest path).
const MAX_RULES: usize = 1000;
const MAX_CHANNELS: usize = 100;
/// Longest silence: a year.
const MAX_SILENCE_DAYS: i64 = 366;

fn not_found(what: &str) -> impl Fn(StoreError) -> ApiError + '_ {
    move |e| match e {
        StoreError::NotFound => ApiError::NotFound(what.into()),
        other => other.into(),
    }
}

/// Refuses a create once `max` of a kind (`what`, plural) exist.
fn check_room(existing: usize, max: usize, what: &str) -> Result<(), ApiError> {
    if existing >= max {
        return Err(ApiError::Conflict(format!(
            "at most {max} {what}; delete one first"
        )));
    }
    Ok(())
}

/// An optional free-text comment (acknowledgements, silences): trimmed, empty as none, and at
/// most [`MAX_COMMENT`] characters.
fn comment(raw: Option<String>) -> Result<Option<String>, ApiError> {
    let comment = raw.map(|c| c.trim().to_string()).filter(|c| !c.is_empty());
    if comment
        .as_ref()
        .is_some_and(|c| c.chars().count() > MAX_COMMENT)
    {
        return Err(validation(
            "comment",
            format!("at most {MAX_COMMENT} characters"),
        ));
    }
    Ok(comment)
}

/// Parses, validates and resolves a rule: every problem as a 422 naming its field.
async fn validate_rule(
    state: &AppState,
    body: &Value,
) -> Result<crate::store::alerts::NewAlertRule, ApiError> {
    let parsed = rule::parse(body).map_err(|errors| {
        ApiError::Invalid(errors.into_iter().map(|e| (e.field, e.message)).collect())
    })?;
    let mut rule = parsed.rule;
    let mut errors = Vec::new();
    if let Some(device_id) = rule.device_id {
        match state.store.get_device(device_id).await {
            Ok(_) => {}
            Err(StoreError::NotFound) => {
                errors.push(("device_id".to_string(), "no such device".to_string()));
            }
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(group) = parsed.group {
        let groups = state.store.list_groups().await?;
        let id = Uuid::parse_str(&group).ok();
        match groups.iter().find(|g| Some(g.id) == id || g.name == group) {
            Some(found) => rule.group_id = Some(found.id),
            None => errors.push(("group".to_string(), "no such group".to_string())),
        }
    }
    if !rule.channels.is_empty() {
        let known: Vec<Uuid> = state
            .store
            .list_channels()
            .await?
            .into_iter()
            .map(|c| c.id)
            .collect();
        for (i, id) in rule.channels.iter().enumerate() {
            if !known.contains(id) {
                errors.push((format!("channels[{i}]"), "no such channel".to_string()));
            }
        }
    }
    if errors.is_empty() {
        Ok(rule)
    } else {
        Err(ApiError::Invalid(errors))
    }
}

async fn audit(
    state: &AppState,
    auth: &super::extract::Principal,
    action: &str,
    id: Uuid,
    detail: Value,
) {
    super::audit::action(state, auth, action, Some(id.to_string()), detail).await;
}

/// Records a change to rules or channels, then has the engine reload them so that the change
/// applies at the next reading (other instances pick it up at their next tick).
async fn audit_and_reload(
    state: &AppState,
    auth: &super::extract::Principal,
    action: &str,
    id: Uuid,
    detail: Value,
) {
    audit(state, auth, action, id, detail).await;
    state.alerts.rules_changed().await;
}

pub async fn list_rules(
    State(state): State<AppState>,
    _auth: Authorized<ViewerRole>,
) -> Result<Json<Vec<AlertRule>>, ApiError> {
    Ok(Json(state.store.list_alert_rules().await?))
}

pub async fn get_rule(
    State(state): State<AppState>,
    _auth: Authorized<ViewerRole>,
    Path(id): Path<Uuid>,
) -> Result<Json<AlertRule>, ApiError> {
    Ok(Json(
        state
            .store
            .get_alert_rule(id)
            .await
            .map_err(not_found("alert rule"))?,
    ))
}

pub async fn create_rule(
    State(state): State<AppState>,
    auth: Authorized<AdminRole>,
    JsonBody(body): JsonBody<Value>,
) -> Result<impl IntoResponse, ApiError> {
    let rule = validate_rule(&state, &body).await?;
    let existing = state.store.list_alert_rules().await?.len();
    check_room(existing, MAX_RULES, "alert rules")?;
    let created = state.store.create_alert_rule(&rule).await?;
    audit_and_reload(
        &state,
        &auth.principal,
        "alert_rule.create",
        created.id,
        json!({ "name": created.rule.name }),
    )
    .await;
    Ok((StatusCode::CREATED, Json(created)))
}

pub async fn update_rule(
    State(state): State<AppState>,
    auth: Authorized<AdminRole>,
    Path(id): Path<Uuid>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Json<AlertRule>, ApiError> {
    state
        .store
        .get_alert_rule(id)
        .await
        .map_err(not_found("alert rule"))?;
    let rule = validate_rule(&state, &body).await?;
    let updated = state
        .store
        .update_alert_rule(id, &rule)
        .await
        .map_err(not_found("alert rule"))?;
    audit_and_reload(
        &state,
        &auth.principal,
        "alert_rule.update",
        id,
        json!({ "name": updated.rule.name }),
    )
    .await;
    Ok(Json(updated))
}

/// `DELETE /api/alert-rules/{id}`; the engine evaluates with the rules, so it reloads them.
pub async fn delete_rule(
    State(state): State<AppState>,
    auth: Authorized<AdminRole>,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    state
        .store
        .delete_alert_rule(id)
        .await
        .map_err(not_found("alert rule"))?;
    audit_and_reload(&state, &auth.principal, "alert_rule.delete", id, json!({})).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelInput {
    name: String,
    kind: String,
    #[serde(default)]
    settings: Option<Value>,
    /// Webhook HMAC key or SMTP password; write-only.
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    allow_private: bool,
}

fn validate_channel(state: &AppState, input: ChannelInput) -> Result<NewChannel, ApiError> {
    let name = input.name.trim().to_string();
    if name.is_empty() || name.chars().count() > MAX_CHANNEL_NAME {
        return Err(validation(
            "name",
            format!("must be 1 to {MAX_CHANNEL_NAME} characters"),
        ));
    }
    let settings = input.settings.unwrap_or_else(|| json!({}));
    check_channel(state, &input.kind, &settings, input.allow_private)?;
    if input.secret.as_ref().is_some_and(|s| s.len() > MAX_SECRET) {
        return Err(validation("secret", format!("at most {MAX_SECRET} bytes")));
    }
    Ok(NewChannel {
        name,
        kind: input.kind,
        settings,
        secret: input
            .secret
            .filter(|s| !s.is_empty())
            .map(SecretString::from),
        allow_private: input.allow_private,
    })
}

pub async fn list_channels(
    State(state): State<AppState>,
    _auth: Authorized<ViewerRole>,
) -> Result<Json<Vec<ChannelInfo>>, ApiError> {
    Ok(Json(state.store.list_channels().await?))
}

pub async fn create_channel(
    State(state): State<AppState>,
    auth: Authorized<AdminRole>,
    JsonBody(body): JsonBody<ChannelInput>,
) -> Result<impl IntoResponse, ApiError> {
    let channel = validate_channel(&state, body)?;
    let existing = state.store.list_channels().await?.len();
    check_room(existing, MAX_CHANNELS, "channels")?;
    let created = state.store.create_channel(&channel).await?;
    audit(
        &state,
        &auth.principal,
        "channel.create",
        created.id,
        json!({ "name": created.name, "kind": created.kind }),
    )
    .await;
    Ok((StatusCode::CREATED, Json(created)))
}

pub async fn update_channel(
    State(state): State<AppState>,
    auth: Authorized<AdminRole>,
    Path(id): Path<Uuid>,
    JsonBody(body): JsonBody<ChannelInput>,
) -> Result<Json<ChannelInfo>, ApiError> {
    let channel = validate_channel(&state, body)?;
    let updated = state
        .store
        .update_channel(id, &channel)
        .await
        .map_err(not_found("channel"))?;
    audit_and_reload(
        &state,
        &auth.principal,
        "channel.update",
        id,
        json!({ "name": updated.name, "secret_changed": channel.secret.is_some() }),
    )
    .await;
    Ok(Json(updated))
}

/// `DELETE /api/channels/{id}`; rules lose the channel, so the engine reloads them.
pub async fn delete_channel(
    State(state): State<AppState>,
    auth: Authorized<AdminRole>,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    state
        .store
        .delete_channel(id)
        .await
        .map_err(not_found("channel"))?;
    audit_and_reload(&state, &auth.principal, "channel.delete", id, json!({})).await;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn test_channel(
    State(state): State<AppState>,
    auth: Authorized<AdminRole>,
    Path(id): Path<Uuid>,
) -> Result<Json<Value>, ApiError> {
    let channel = state
        .store
        .get_channel(id)
        .await
        .map_err(not_found("channel"))?;
    let outcome = send_test(&state, &channel).await?;
    audit(&state, &auth.principal, "channel.test", id, outcome.clone()).await;
    Ok(Json(outcome))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertQuery {
    state: Option<String>,
    device_id: Option<Uuid>,
    since: Option<DateTime<Utc>>,
    limit: Option<u32>,
}

pub async fn list_alerts(
    State(state): State<AppState>,
    _auth: Authorized<ViewerRole>,
    Query(query): Query<AlertQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_ALERTS);
    if limit == 0 || limit > MAX_ALERTS {
        return Err(validation("limit", format!("must be 1 to {MAX_ALERTS}")));
    }
    let alert_state = match query.state.as_deref() {
        None | Some("") => None,
        Some("pending") => Some(AlertState::Pending),
        Some("firing") => Some(AlertState::Firing),
        Some("resolved") => Some(AlertState::Resolved),
        Some(_) => return Err(validation("state", "must be pending, firing or resolved")),
    };
    let alerts = state
        .store
        .list_alerts(&AlertFilter {
            state: alert_state,
            device_id: query.device_id,
            since: query.since,
            limit,
        })
        .await?;
    let ids: Vec<Uuid> = alerts.iter().map(|a| a.id).collect();
    let transitions = state.store.list_transitions(&ids).await?;
    let out = alerts
        .into_iter()
        .map(|alert| {
            let history: Vec<_> = transitions
                .iter()
                .filter(|t| t.alert_id == alert.id)
                .collect();
            let mut value = serde_json::to_value(&alert).unwrap_or(Value::Null);
            value["transitions"] = json!(history);
            value
        })
        .collect();
    Ok(Json(out))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckInput {
    #[serde(default)]
    comment: Option<String>,
}

pub async fn acknowledge(
    State(state): State<AppState>,
    auth: Authorized<AdminRole>,
    Path(id): Path<Uuid>,
    body: Option<JsonBody<AckInput>>,
) -> Result<Json<Alert>, ApiError> {
    let comment = comment(body.and_then(|JsonBody(b)| b.comment))?;
    let alert = state
        .alerts
        .acknowledge(id, &auth.principal.subject, comment.clone())
        .await
        .map_err(not_found("alert"))?;
    audit(
        &state,
        &auth.principal,
        "alert.acknowledge",
        id,
        json!({ "comment": comment }),
    )
    .await;
    Ok(Json(alert))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilenceInput {
    #[serde(default)]
    rule_id: Option<Uuid>,
    #[serde(default)]
    device_id: Option<Uuid>,
    #[serde(default)]
    group_id: Option<Uuid>,
    #[serde(default)]
    starts_at: Option<DateTime<Utc>>,
    until: DateTime<Utc>,
    #[serde(default)]
    comment: Option<String>,
}

pub async fn list_silences(
    State(state): State<AppState>,
    _auth: Authorized<ViewerRole>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(
        state.store.list_silences(Some(Utc::now())).await?
    )))
}

pub async fn create_silence(
    State(state): State<AppState>,
    auth: Authorized<AdminRole>,
    JsonBody(input): JsonBody<SilenceInput>,
) -> Result<impl IntoResponse, ApiError> {
    if input.rule_id.is_none() && input.device_id.is_none() && input.group_id.is_none() {
        return Err(validation(
            "rule_id",
            "a silence names a rule, a device or a group (or several: all must match)",
        ));
    }
    let now = Utc::now();
    let starts_at = input.starts_at.unwrap_or(now);
    if input.until <= starts_at.max(now) {
        return Err(validation(
            "until",
            "must be in the future and after starts_at",
        ));
    }
    if input.until - now > chrono::Duration::days(MAX_SILENCE_DAYS) {
        return Err(validation(
            "until",
            format!("at most {MAX_SILENCE_DAYS} days ahead"),
        ));
    }
    let comment = comment(input.comment)?;
    let silence = state
        .store
        .create_silence(&NewSilence {
            rule_id: input.rule_id,
            device_id: input.device_id,
            group_id: input.group_id,
            starts_at,
            until: input.until,
            comment,
            created_by: auth.principal.subject.clone(),
        })
        .await
        .map_err(|e| match e {
            StoreError::Conflict(message) => validation("rule_id", message),
            other => other.into(),
        })?;
    audit(
        &state,
        &auth.principal,
        "silence.create",
        silence.id,
        json!(silence.silence),
    )
    .await;
    Ok((StatusCode::CREATED, Json(silence)))
}

/// `DELETE /api/silences/{id}`; the engine reads silences afresh at each alert, so nothing
/// reloads.
pub async fn delete_silence(
    State(state): State<AppState>,
    auth: Authorized<AdminRole>,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    state
        .store
        .delete_silence(id)
        .await
        .map_err(not_found("silence"))?;
    audit(&state, &auth.principal, "silence.delete", id, json!({})).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryQuery {
    state: Option<String>,
    limit: Option<u32>,
}

pub async fn list_deliveries(
    State(state): State<AppState>,
    _auth: Authorized<ViewerRole>,
    Query(query): Query<DeliveryQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_DELIVERIES {
        return Err(validation(
            "limit",
            format!("must be 1 to {MAX_DELIVERIES}"),
        ));
    }
    let filter = match query.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(
            DeliveryState::parse(s)
                .map_err(|_| validation("state", "must be pending, delivered or dead"))?,
        ),
    };
    Ok(Json(json!(
        state.store.list_deliveries(filter, limit).await?
    )))
}

/// The channel kind's own checks (settings, URL scheme, SSRF guard for literal addresses,
/// headers, e-mail addresses) — every problem named by its field.
fn check_channel(
    state: &AppState,
    kind: &str,
    settings: &Value,
    allow_private: bool,
) -> Result<(), ApiError> {
    let kind: ChannelKind = serde_json::from_value(json!(kind))
        .map_err(|_| validation("kind", "must be webhook, discord, slack or email"))?;
    channels::validate(kind, settings, allow_private, &state.config.alerts).map_err(|errors| {
        ApiError::Invalid(errors.into_iter().map(|e| (e.field, e.message)).collect())
    })
}

/// Sends a `test` message through the channel now and reports the outcome.
async fn send_test(state: &AppState, info: &ChannelInfo) -> Result<Value, ApiError> {
    let kind: ChannelKind =
        serde_json::from_value(json!(info.kind)).map_err(|e| ApiError::Internal(e.into()))?;
    let channel = Channel {
        id: info.id,
        name: info.name.clone(),
        kind,
        settings: info.settings.clone(),
        secret: state.store.channel_secret(info.id).await?,
        allow_private: info.allow_private,
    };
    let now = Utc::now();
    let message = Message {
        idempotency_key: format!("test:{}:{}", info.id, Uuid::now_v7()),
        alert_id: None,
        rule_id: None,
        rule_name: "channel test".into(),
        state: MessageState::Test,
        severity: Severity::Info,
        device_id: None,
        device_name: None,
        metric: None,
        value: None,
        threshold: None,
        started_at: None,
        at: now,
        summary: format!("test message from ddms to channel {}", info.name),
        link: state.config.http.public_url.as_ref().map(|u| u.to_string()),
        acknowledged_by: None,
        comment: None,
        grouped: Vec::new(),
    };
    Ok(
        match state.alerts.deliverer().deliver(&channel, &message).await {
            Outcome::Delivered => json!({ "outcome": "delivered", "reason": null }),
            Outcome::Retry { reason, .. } => json!({ "outcome": "retry", "reason": reason }),
            Outcome::Permanent { reason } => json!({ "outcome": "permanent", "reason": reason }),
        },
    )
}
