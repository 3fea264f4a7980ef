//! Devices, their readings, self-registration and connection-failure notifications.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use super::body::JsonBody;
use super::extract::{AdminRole, Authorized, Principal, ViewerRole};
use super::security::ClientInfo;
use super::{validation, ApiError, AppState};
use crate::auth::{hash_api_token, random_secret};
use crate::events::{LiveEvent, NotificationChanged};
use crate::modbus::ModbusConfig;
use crate::store::{
    Device, DeviceStatus, Group, MqttCredentials, NewDevice, Notification, Protocol, RollupStep,
    Status, StoreError,
};

/// Most points one readings request may return (`limit`), and its default.
pub(crate) const MAX_POINTS: u32 = 100_000;
const DEFAULT_POINTS: u32 = 20_000;
/// Longest range one readings request may cover, per step.
pub(crate) const MAX_RAW_DAYS: i64 = 7;
pub(crate) const MAX_1M_DAYS: i64 = 31;
pub(crate) const MAX_1H_DAYS: i64 = 731;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceInput {
    name: String,
    protocol: Protocol,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    modbus: Option<Value>,
    #[serde(default = "enabled_by_default")]
    enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}

/// Turns API input into a storable device: every field checked, the Modbus map normalised
/// (defaults filled in) so pollers read exactly what was validated.
async fn validate(state: &AppState, input: DeviceInput) -> Result<NewDevice, ApiError> {
    let name = input.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(validation("name", "must be 1 to 100 characters"));
    }
    let config = match (input.protocol, input.modbus) {
        (Protocol::Modbus, None) => {
            return Err(validation("modbus", "required for Modbus devices"))
        }
        (Protocol::Modbus, Some(raw)) => {
            let config = ModbusConfig::from_json(&raw).map_err(|errors| {
                ApiError::Invalid(errors.into_iter().map(|e| (e.field, e.message)).collect())
            })?;
            serde_json::to_value(config).map_err(|e| ApiError::Internal(e.into()))?
        }
        (Protocol::Mqtt, Some(_)) => {
            return Err(validation(
                "modbus",
                "only Modbus devices have a register map",
            ))
        }
        (Protocol::Mqtt, None) => json!({}),
    };
    let group_id = match input.group.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(group) if group.chars().count() > 100 => {
            return Err(validation("group", "must be at most 100 characters"))
        }
        Some(group) => Some(group_id(state, group).await?),
    };
    Ok(NewDevice {
        name: name.to_string(),
        protocol: input.protocol,
        group_id,
        config,
        enabled: input.enabled,
    })
}

async fn group_id(state: &AppState, name: &str) -> Result<Uuid, ApiError> {
    if let Some(group) = state
        .store
        .list_groups()
        .await?
        .into_iter()
        .find(|g| g.name == name)
    {
        return Ok(group.id);
    }
    match state.store.create_group(name).await {
        Ok(group) => Ok(group.id),
        // Created concurrently: use that one.
        Err(StoreError::Conflict(_)) => state
            .store
            .list_groups()
            .await?
            .into_iter()
            .find(|g| g.name == name)
            .map(|g| g.id)
            .ok_or_else(|| ApiError::Conflict(format!("group `{name}`"))),
        Err(e) => Err(e.into()),
    }
}

async fn render(
    state: &AppState,
    device: &Device,
    status: Option<DeviceStatus>,
) -> Result<Value, ApiError> {
    let groups = match device.group_id {
        Some(_) => state.store.list_groups().await?,
        None => Vec::new(),
    };
    serde_json::to_value(DeviceView::new(device, status.as_ref(), &groups))
        .map_err(|e| ApiError::Internal(e.into()))
}

/// The API shape of a device, its group named from `groups` (one query for a whole list).
/// It borrows the device and is serialised straight into the response: building a JSON tree
/// per device (and copying its register map into it) made listing a large fleet cost several
/// times the query. Fields are in alphabetical order, the order the objects have always had.
#[derive(Serialize)]
struct DeviceView<'a> {
    created_at: DateTime<Utc>,
    enabled: bool,
    group: Option<&'a str>,
    id: Uuid,
    /// Modbus devices only.
    #[serde(skip_serializing_if = "Option::is_none")]
    modbus: Option<&'a Value>,
    name: &'a str,
    protocol: Protocol,
    status: StatusView<'a>,
    updated_at: DateTime<Utc>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum StatusView<'a> {
    Known {
        changed_at: DateTime<Utc>,
        consecutive_failures: u32,
        last_error: Option<&'a str>,
        last_seen_at: Option<DateTime<Utc>>,
        status: Status,
    },
    /// Not polled or heard from since this instance started.
    Unknown { status: &'static str },
}

impl<'a> DeviceView<'a> {
    fn new(device: &'a Device, status: Option<&'a DeviceStatus>, groups: &'a [Group]) -> Self {
        let group = device
            .group_id
            .and_then(|id| groups.iter().find(|g| g.id == id))
            .map(|g| g.name.as_str());
        let status = match status {
            Some(s) => StatusView::Known {
                changed_at: s.changed_at,
                consecutive_failures: s.consecutive_failures,
                last_error: s.last_error.as_deref(),
                last_seen_at: s.last_seen_at,
                status: s.status,
            },
            None => StatusView::Unknown { status: "unknown" },
        };
        DeviceView {
            created_at: device.created_at,
            enabled: device.enabled,
            group,
            id: device.id,
            modbus: (device.protocol == Protocol::Modbus).then_some(&device.config),
            name: &device.name,
            protocol: device.protocol,
            status,
            updated_at: device.updated_at,
        }
    }
}

fn not_found(err: StoreError) -> ApiError {
    match err {
        StoreError::NotFound => ApiError::NotFound("device".into()),
        other => other.into(),
    }
}

fn conflict_on_name(err: StoreError, name: &str) -> ApiError {
    match err {
        StoreError::Conflict(_) => {
            ApiError::Conflict(format!("a device named `{name}` already exists"))
        }
        other => not_found(other),
    }
}

async fn audit(state: &AppState, principal: &Principal, action: &str, device: &Device) {
    super::audit::action(
        state,
        principal,
        action,
        Some(format!("device:{}", device.id)),
        json!({ "name": device.name, "protocol": device.protocol,
                "group_id": device.group_id, "enabled": device.enabled }),
    )
    .await;
}

pub async fn list(
    State(state): State<AppState>,
    _auth: Authorized<ViewerRole>,
) -> Result<Response, ApiError> {
    let statuses = state.status.all().await;
    let groups = state.store.list_groups().await?;
    let devices = state.store.list_devices().await?;
    let views: Vec<DeviceView> = devices
        .iter()
        .map(|device| DeviceView::new(device, statuses.get(&device.id), &groups))
        .collect();
    // Serialised here, while the views still borrow the devices.
    Ok(Json(views).into_response())
}

pub async fn get(
    State(state): State<AppState>,
    _auth: Authorized<ViewerRole>,
    Path(id): Path<Uuid>,
) -> Result<Json<Value>, ApiError> {
    let device = state.store.get_device(id).await.map_err(not_found)?;
    Ok(Json(
        render(&state, &device, state.status.get(id).await).await?,
    ))
}

/// Issues MQTT credentials for a device: the secret is returned here once and stored hashed.
async fn issue_credentials(
    state: &AppState,
    device: &Device,
    request_host: Option<&str>,
) -> Result<Value, ApiError> {
    let password = random_secret(32);
    let credentials = MqttCredentials {
        device_id: device.id,
        username: device.id.to_string(),
        secret_hash: hash_api_token(&password),
    };
    state.store.put_mqtt_credentials(&credentials).await?;
    if let Some(accounts) = &state.broker_accounts {
        let secret = secrecy::SecretString::from(password.clone());
        if let Err(e) = accounts.put_device(device.id, &secret).await {
            // Credentials the broker does not know are useless: undo, let the caller retry.
            tracing::error!(device.id = %device.id, error = %e, "cannot create the device's broker account; device not created");
            if let Err(e) = state.store.delete_device(device.id).await {
                tracing::error!(device.id = %device.id, error = %e, "cannot remove the half-created device");
            }
            return Err(ApiError::Unavailable(
                "the MQTT broker did not take the device's account; nothing was created, try again"
                    .into(),
            ));
        }
    }
    state.credentials_changed.notify_waiters();
    let endpoint = crate::config::endpoint::device_endpoint(&state.config, request_host);
    Ok(
        json!({ "host": endpoint.host, "port": endpoint.port, "tls": endpoint.tls, "username": credentials.username, "password": password }),
    )
}

pub async fn create(
    State(state): State<AppState>,
    auth: Authorized<AdminRole>,
    uri: Uri,
    headers: HeaderMap,
    JsonBody(input): JsonBody<DeviceInput>,
) -> Result<impl IntoResponse, ApiError> {
    let new = validate(&state, input).await?;
    let device = state
        .store
        .create_device(&new)
        .await
        .map_err(|e| conflict_on_name(e, &new.name))?;
    let mqtt = match device.protocol {
        Protocol::Mqtt => {
            Some(issue_credentials(&state, &device, request_host(&uri, &headers)).await?)
        }
        Protocol::Modbus => None,
    };
    audit(&state, &auth.principal, "device.create", &device).await;
    let mut body = render(&state, &device, None).await?;
    if let Some(mqtt) = mqtt {
        body["mqtt"] = mqtt;
    }
    state.devices_changed.notify_waiters();
    tracing::info!(device.id = %device.id, device.name = %device.name, "device created");
    Ok((StatusCode::CREATED, Json(body)))
}

pub async fn update(
    State(state): State<AppState>,
    auth: Authorized<AdminRole>,
    Path(id): Path<Uuid>,
    JsonBody(input): JsonBody<DeviceInput>,
) -> Result<Json<Value>, ApiError> {
    let existing = state.store.get_device(id).await.map_err(not_found)?;
    if existing.protocol != input.protocol {
        return Err(validation(
            "protocol",
            "cannot change; delete the device and create a new one",
        ));
    }
    let new = validate(&state, input).await?;
    let device = state
        .store
        .update_device(id, &new)
        .await
        .map_err(|e| conflict_on_name(e, &new.name))?;
    audit(&state, &auth.principal, "device.update", &device).await;
    state.devices_changed.notify_waiters();
    Ok(Json(
        render(&state, &device, state.status.get(id).await).await?,
    ))
}

pub async fn delete(
    State(state): State<AppState>,
    auth: Authorized<AdminRole>,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    let device = state.store.get_device(id).await.map_err(not_found)?;
    state.store.delete_device(id).await.map_err(not_found)?;
    state.status.remove(id).await;
    if let (Some(accounts), Protocol::Mqtt) = (&state.broker_accounts, device.protocol) {
        if let Err(e) = accounts.remove_device(id).await {
            tracing::warn!(device.id = %id, error = %e, "cannot remove the device's broker account now; ddms removes it when it next reconciles broker accounts (at start, then every 10 minutes)");
        }
    }
    audit(&state, &auth.principal, "device.delete", &device).await;
    state.devices_changed.notify_waiters();
    state.credentials_changed.notify_waiters();
    Ok(StatusCode::NO_CONTENT)
}

pub async fn latest(
    State(state): State<AppState>,
    _auth: Authorized<ViewerRole>,
    Path(id): Path<Uuid>,
) -> Result<Json<Value>, ApiError> {
    state.store.get_device(id).await.map_err(not_found)?;
    let mut out = serde_json::Map::new();
    for reading in state.store.latest_readings(id).await? {
        out.insert(
            reading.metric,
            json!({ "ts": reading.ts, "value": reading.value, "unit": reading.unit }),
        );
    }
    Ok(Json(Value::Object(out)))
}

#[derive(Debug, Deserialize)]
pub struct ReadingsQuery {
    pub(crate) metric: Option<String>,
    pub(crate) from: Option<DateTime<Utc>>,
    pub(crate) to: Option<DateTime<Utc>>,
    pub(crate) step: Option<String>,
    pub(crate) limit: Option<u32>,
}

/// What one step may cover: a request for a longer range is refused (400), so no request can
/// make the database scan or the server serialise without bound.
fn max_range(step: Option<RollupStep>) -> chrono::Duration {
    match step {
        None => chrono::Duration::days(MAX_RAW_DAYS),
        Some(RollupStep::Minute) => chrono::Duration::days(MAX_1M_DAYS),
        Some(RollupStep::Hour) => chrono::Duration::days(MAX_1H_DAYS),
    }
}

/// Times a query may name: years 1 to 9999, the range of RFC 3339 and of every backend (chrono
/// parses years up to ±262143, PostgreSQL refuses most of those).
fn supported_time(parameter: &str, time: DateTime<Utc>) -> Result<DateTime<Utc>, ApiError> {
    let earliest = Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0).single();
    let latest = Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).single();
    match (earliest, latest) {
        (Some(earliest), Some(latest)) if (earliest..=latest).contains(&time) => Ok(time),
        _ => Err(ApiError::BadRequest(format!(
            "`{parameter}` must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z"
        ))),
    }
}

/// A readings request's parameters, checked against the limits above.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadingsWindow {
    pub metric: String,
    /// `None` for raw readings.
    pub step: Option<RollupStep>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub limit: u32,
}

/// Checks a readings query without touching the store (a pure function, so that its bounds can
/// be property-tested); `now` is the default `to`.
pub fn readings_window(
    query: ReadingsQuery,
    now: DateTime<Utc>,
) -> Result<ReadingsWindow, ApiError> {
    let metric = query
        .metric
        .ok_or_else(|| ApiError::BadRequest("query parameter `metric` is required".into()))?;
    let step = match query.step.as_deref() {
        None | Some("raw") => None,
        Some("1m") => Some(RollupStep::Minute),
        Some("1h") => Some(RollupStep::Hour),
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "step `{other}` is not available; use raw, 1m or 1h"
            )))
        }
    };
    let to = supported_time("to", query.to.unwrap_or(now))?;
    // Checked: `to` near the earliest time chrono holds would overflow (a panic, before).
    let default_from = to
        .checked_sub_signed(chrono::Duration::hours(1))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let from = supported_time("from", query.from.unwrap_or(default_from))?;
    if from >= to {
        return Err(ApiError::BadRequest("`from` must be before `to`".into()));
    }
    let step_name = step.map_or("raw", RollupStep::as_str);
    let longest = max_range(step);
    if to - from > longest {
        let hint = match step {
            None => "; use step=1m or step=1h for longer ranges",
            Some(RollupStep::Minute) => "; use step=1h for longer ranges",
            Some(RollupStep::Hour) => "",
        };
        return Err(ApiError::BadRequest(format!(
            "step={step_name} covers at most {} days per request (asked for {:.1} days){hint}",
            longest.num_days(),
            (to - from).num_seconds() as f64 / 86_400.0
        )));
    }
    let limit = query.limit.unwrap_or(DEFAULT_POINTS);
    if limit == 0 || limit > MAX_POINTS {
        return Err(ApiError::BadRequest(format!(
            "`limit` must be between 1 and {MAX_POINTS}"
        )));
    }
    Ok(ReadingsWindow {
        metric,
        step,
        from,
        to,
        limit,
    })
}

pub async fn readings(
    State(state): State<AppState>,
    _auth: Authorized<ViewerRole>,
    Path(id): Path<Uuid>,
    Query(query): Query<ReadingsQuery>,
) -> Result<axum::response::Response, ApiError> {
    let ReadingsWindow {
        metric,
        step,
        from,
        to,
        limit,
    } = readings_window(query, Utc::now())?;
    let step_name = step.map_or("raw", RollupStep::as_str);
    state.store.get_device(id).await.map_err(not_found)?;
    let Some(series) = state.store.find_series(id, &metric).await? else {
        return Ok(Json(json!([])).into_response());
    };
    // One more than allowed tells "exactly at the limit" from "cut off": a cut-off answer would
    // look like a gap in the data, so it is refused instead.
    let too_many = || {
        ApiError::BadRequest(format!(
            "more than {limit} points with step={step_name} between `from` and `to`; narrow the \
             range, raise `limit` (at most {MAX_POINTS}) or use a coarser step"
        ))
    };
    // Serialised straight from the points: a `serde_json::Value` tree of a long series costs
    // about ten times the answer's size in short-lived allocations.
    let response = match step {
        None => {
            let points = state
                .store
                .query_readings(series, from, to, limit + 1)
                .await?;
            if points.len() > limit as usize {
                return Err(too_many());
            }
            Json(points).into_response()
        }
        Some(step) => {
            let buckets = state
                .store
                .query_rollups(series, step, from, to, limit + 1)
                .await?;
            if buckets.len() > limit as usize {
                return Err(too_many());
            }
            Json(buckets).into_response()
        }
    };
    Ok(response)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    name: String,
    #[serde(default)]
    group: Option<String>,
}

/// Devices register themselves with the shared provisioning token and get MQTT credentials.
pub async fn register(
    State(state): State<AppState>,
    client: ClientInfo,
    uri: Uri,
    headers: HeaderMap,
    JsonBody(input): JsonBody<Registration>,
) -> Result<impl IntoResponse, ApiError> {
    if state.register_limiter.check_key(&client.ip).is_err() {
        return Err(ApiError::RateLimited { retry_after_s: 60 });
    }
    let Some(expected) = state.config.provisioning.token.as_ref() else {
        return Err(ApiError::Forbidden(
            "self-registration is disabled (provisioning.token is not set)".into(),
        ));
    };
    let given = headers
        .get("x-provisioning-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !super::security::constant_time_eq(
        given.as_bytes(),
        secrecy::ExposeSecret::expose_secret(expected).as_bytes(),
    ) {
        tracing::warn!(remote_addr = %client.ip, "device registration refused: wrong provisioning token");
        return Err(ApiError::Unauthenticated);
    }
    let new = validate(
        &state,
        DeviceInput {
            name: input.name,
            protocol: Protocol::Mqtt,
            group: input.group,
            modbus: None,
            enabled: true,
        },
    )
    .await?;
    let device = match state.store.create_device(&new).await {
        Ok(device) => device,
        // Every device holds the provisioning token: a 409 would tell any of them which names
        // exist. A taken name gets a random suffix instead, and the answer says which it is.
        Err(StoreError::Conflict(_)) => {
            let suffix = Uuid::new_v4().simple().to_string();
            let base: String = new.name.chars().take(100 - 9).collect();
            let renamed = NewDevice {
                name: format!("{base}-{}", &suffix[..8]),
                ..new
            };
            state
                .store
                .create_device(&renamed)
                .await
                .map_err(|e| match e {
                    StoreError::Conflict(_) => {
                        ApiError::Conflict("registration failed; try again".into())
                    }
                    other => other.into(),
                })?
        }
        Err(e) => return Err(e.into()),
    };
    let mqtt = issue_credentials(&state, &device, request_host(&uri, &headers)).await?;
    let principal = Principal::system("provisioning", client.ip);
    audit(&state, &principal, "device.register", &device).await;
    state.devices_changed.notify_waiters();
    tracing::info!(device.id = %device.id, device.name = %device.name, "device registered itself");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "device_id": device.id, "name": device.name, "mqtt": mqtt })),
    ))
}

pub async fn connection_failures(
    State(state): State<AppState>,
    _auth: Authorized<ViewerRole>,
) -> Result<Json<Vec<Notification>>, ApiError> {
    let kind = crate::status::CONNECTION_FAILURE;
    Ok(Json(state.store.list_open_notifications(kind).await?))
}

pub async fn acknowledge(
    State(state): State<AppState>,
    auth: Authorized<AdminRole>,
    Path(id): Path<Uuid>,
) -> Result<Json<Value>, ApiError> {
    let notification = match state
        .store
        .acknowledge_notification(id, &auth.principal.subject)
        .await
    {
        Err(StoreError::NotFound) => return Err(ApiError::NotFound("notification".into())),
        other => other?,
    };
    super::audit::action(
        &state,
        &auth.principal,
        "notification.acknowledge",
        Some(format!("notification:{id}")),
        json!({ "kind": notification.kind, "device_id": notification.device_id }),
    )
    .await;
    let body = serde_json::to_value(&notification).map_err(|e| ApiError::Internal(e.into()))?;
    state
        .events
        .publish(LiveEvent::Notification(NotificationChanged::acknowledged(
            notification,
        )));
    Ok(Json(body))
}

/// The host the client used to reach ddms: HTTP/2's `:authority` (in the URI) or the HTTP/1.1
/// `Host` header.
fn request_host<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    uri.authority().map(|a| a.as_str()).or_else(|| {
        headers
            .get(axum::http::header::HOST)
            .and_then(|v| v.to_str().ok())
    })
}
