//! Administration for the pages: users and API tokens (owner), runtime settings (admin reads,
//! owner changes), device groups (admin changes). Every change is audited.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::audit;
use super::body::JsonBody;
use super::extract::{AdminRole, Authorized, OwnerRole, Principal, ViewerRole};
use super::revocation::Ended;
use super::{validation, ApiError, AppState};
use crate::auth::{generate_api_token, hash_api_token, random_secret};
use crate::store::{ApiToken, NewApiToken, NewUser, Role, StoreError, User, UserChange};

fn not_found(what: &'static str) -> impl Fn(StoreError) -> ApiError {
    move |e| match e {
        StoreError::NotFound => ApiError::NotFound(what.into()),
        StoreError::Conflict(reason) if reason == crate::store::LAST_OWNER => last_owner(),
        other => other.into(),
    }
}

fn last_owner() -> ApiError {
    ApiError::Conflict("this is the last enabled owner; make another user owner first".into())
}

fn user_json(user: &User) -> Value {
    json!({
        "id": user.id, "username": user.username, "role": user.role,
        "created_at": user.created_at, "disabled_at": user.disabled_at,
    })
}

/// Audits `action` on `user` (created or deleted): its name as the target, its id and role.
async fn audit_user(state: &AppState, principal: &Principal, action: &str, user: &User) {
    audit::action(
        state,
        principal,
        action,
        Some(format!("user:{}", user.username)),
        json!({ "user_id": user.id, "role": user.role }),
    )
    .await;
}

/// Audits `action` on `token` (created or revoked): its name as the target, its id and role.
async fn audit_token(state: &AppState, principal: &Principal, action: &str, token: &ApiToken) {
    audit::action(
        state,
        principal,
        action,
        Some(format!("token:{}", token.name)),
        json!({ "token_id": token.id, "role": token.role }),
    )
    .await;
}

// ---------------------------------------------------------------------------------- users

pub async fn list_users(
    State(state): State<AppState>,
    _auth: Authorized<OwnerRole>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let users = state.store.list_users().await?;
    Ok(Json(users.iter().map(user_json).collect()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUserInput {
    username: String,
    role: Role,
    /// Unset: a password is generated and returned once.
    #[serde(default)]
    password: Option<String>,
}

fn check_username(username: &str) -> Result<(), ApiError> {
    if username.is_empty() || username.chars().count() > 64 {
        return Err(validation("username", "must be 1 to 64 characters"));
    }
    if username
        .chars()
        .any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(validation(
            "username",
            "must not contain spaces or control characters",
        ));
    }
    Ok(())
}

pub async fn create_user(
    State(state): State<AppState>,
    auth: Authorized<OwnerRole>,
    JsonBody(input): JsonBody<NewUserInput>,
) -> Result<impl IntoResponse, ApiError> {
    let username = input.username.trim().to_string();
    check_username(&username)?;
    let generated = input.password.is_none();
    let password = input.password.unwrap_or_else(|| random_secret(20));
    let password_hash = state
        .security
        .hashing
        .hash("password", password.clone())
        .await?;
    let user = state
        .store
        .create_user(&NewUser {
            username: username.clone(),
            password_hash,
            role: input.role,
        })
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => {
                ApiError::Conflict(format!("a user named `{username}` already exists"))
            }
            other => other.into(),
        })?;
    audit_user(&state, &auth.principal, "user.create", &user).await;
    let mut body = user_json(&user);
    if generated {
        body["password"] = json!(password);
    }
    Ok((StatusCode::CREATED, Json(body)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserUpdate {
    #[serde(default)]
    role: Option<Role>,
    #[serde(default)]
    disabled: Option<bool>,
    #[serde(default)]
    password: Option<String>,
}

/// Refuses a change that would leave no enabled owner: nobody could administer ddms then
/// (short of `ddms user add` on the host).
async fn keep_an_owner(state: &AppState, changing: &User) -> Result<(), ApiError> {
    if changing.role != Role::Owner || changing.is_disabled() {
        return Ok(());
    }
    let owners = state
        .store
        .list_users()
        .await?
        .into_iter()
        .filter(|u| u.role == Role::Owner && !u.is_disabled())
        .count();
    // The quick answer; the store checks again in the transaction of the change (two
    // owners demoting each other at once both pass here).
    if owners <= 1 {
        return Err(last_owner());
    }
    Ok(())
}

pub async fn update_user(
    State(state): State<AppState>,
    auth: Authorized<OwnerRole>,
    Path(id): Path<Uuid>,
    JsonBody(input): JsonBody<UserUpdate>,
) -> Result<Json<Value>, ApiError> {
    let existing = state.store.get_user(id).await.map_err(not_found("user"))?;
    let demoted = input.role.is_some_and(|r| r != Role::Owner);
    if demoted || input.disabled == Some(true) {
        keep_an_owner(&state, &existing).await?;
    }
    let password_hash = match input.password {
        Some(p) => Some(state.security.hashing.hash("password", p).await?),
        None => None,
    };
    let reset = password_hash.is_some();
    let user = state
        .store
        .update_user(
            id,
            &UserChange {
                role: input.role,
                disabled: input.disabled,
                password_hash,
            },
        )
        .await
        .map_err(not_found("user"))?;
    // Sessions read the user's role at every request; a disabled user or a new password
    // ends them outright.
    if reset || input.disabled == Some(true) {
        state.store.delete_user_sessions(id).await?;
        state.security.revocations.announce(Ended::UserSessions {
            user_id: id,
            except: None,
        });
    }
    audit::action(
        &state,
        &auth.principal,
        "user.update",
        Some(format!("user:{}", user.username)),
        json!({ "user_id": id, "role": input.role, "disabled": input.disabled,
                "password_reset": reset }),
    )
    .await;
    Ok(Json(user_json(&user)))
}

pub async fn delete_user(
    State(state): State<AppState>,
    auth: Authorized<OwnerRole>,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    let existing = state.store.get_user(id).await.map_err(not_found("user"))?;
    keep_an_owner(&state, &existing).await?;
    state
        .store
        .delete_user(id)
        .await
        .map_err(not_found("user"))?;
    state.security.revocations.announce(Ended::UserSessions {
        user_id: id,
        except: None,
    });
    audit_user(&state, &auth.principal, "user.delete", &existing).await;
    Ok(StatusCode::NO_CONTENT)
}

// --------------------------------------------------------------------------------- tokens

pub async fn list_tokens(
    State(state): State<AppState>,
    _auth: Authorized<OwnerRole>,
) -> Result<Json<Vec<ApiToken>>, ApiError> {
    Ok(Json(state.store.list_api_tokens().await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    name: String,
    role: Role,
}

/// Owners create tokens for scripts; the secret is in this response and nowhere else.
pub async fn create_token(
    State(state): State<AppState>,
    auth: Authorized<OwnerRole>,
    JsonBody(body): JsonBody<CreateToken>,
) -> Result<impl IntoResponse, ApiError> {
    let name = body.name.trim();
    if name.is_empty() || name.len() > 100 {
        return Err(validation("name", "must be 1 to 100 characters"));
    }
    let secret = generate_api_token();
    let token = state
        .store
        .create_api_token(&NewApiToken {
            name: name.to_string(),
            token_hash: hash_api_token(&secret),
            role: body.role,
        })
        .await?;
    audit_token(&state, &auth.principal, "token.create", &token).await;
    tracing::info!(token.id = %token.id, token.role = %token.role, actor = %auth.principal.subject, "API token created");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": token.id, "name": token.name, "role": token.role, "token": secret })),
    ))
}

pub async fn revoke_token(
    State(state): State<AppState>,
    auth: Authorized<OwnerRole>,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    let token = state
        .store
        .revoke_api_token(id)
        .await
        .map_err(not_found("token"))?;
    state.security.revocations.announce(Ended::Token(token.id));
    audit_token(&state, &auth.principal, "token.revoke", &token).await;
    Ok(StatusCode::NO_CONTENT)
}

// ------------------------------------------------------------------------------- settings

/// Runtime settings: stored in the database (shared by every instance), changed by owners,
/// acted on by [`crate::settings`]'s followers (retention, the silence checks, backups).
pub use crate::settings::{BACKUP_SCHEDULE, OFFLINE_AFTER_S, RETENTION_DAYS, RETENTION_PENDING};

/// Read from the store, so that a change another instance made shows (and applies) at once.
async fn current_settings(state: &AppState) -> Result<Value, ApiError> {
    Ok(state.settings.refresh().await?.to_json())
}

pub async fn get_settings(
    State(state): State<AppState>,
    _auth: Authorized<AdminRole>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(current_settings(&state).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsUpdate {
    /// Days of readings kept; `null` keeps everything.
    #[serde(default, deserialize_with = "some_or_null")]
    retention_days: Option<Option<u32>>,
    #[serde(default)]
    offline_after_s: Option<u32>,
    #[serde(default)]
    backup_schedule: Option<String>,
}

/// Tells "absent" (`None`) from "null" (`Some(None)`).
fn some_or_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u32>>, D::Error> {
    Option::<u32>::deserialize(d).map(Some)
}

/// `off`, `hourly`, `daily HH:MM` or `weekly <mon…sun> HH:MM` (UTC).
pub fn valid_backup_schedule(schedule: &str) -> bool {
    schedule.parse::<crate::backup::Schedule>().is_ok()
}

pub async fn put_settings(
    State(state): State<AppState>,
    auth: Authorized<OwnerRole>,
    JsonBody(input): JsonBody<SettingsUpdate>,
) -> Result<Json<Value>, ApiError> {
    let mut errors = Vec::new();
    let mut changes: Vec<(&'static str, Value)> = Vec::new();
    let mut retention = None;
    if let Some(days) = input.retention_days {
        match days {
            Some(d) if !(1..=36_500).contains(&d) => errors.push((
                RETENTION_DAYS.to_string(),
                "must be between 1 and 36500 days, or null to keep everything".to_string(),
            )),
            _ => retention = Some(days),
        }
    }
    if let Some(seconds) = input.offline_after_s {
        if (10..=86_400).contains(&seconds) {
            changes.push((OFFLINE_AFTER_S, json!(seconds)));
        } else {
            errors.push((
                OFFLINE_AFTER_S.to_string(),
                "must be between 10 and 86400 seconds".to_string(),
            ));
        }
    }
    if let Some(schedule) = input.backup_schedule {
        let schedule = schedule.trim().to_lowercase();
        if valid_backup_schedule(&schedule) {
            changes.push((BACKUP_SCHEDULE, json!(schedule)));
        } else {
            errors.push((
                BACKUP_SCHEDULE.to_string(),
                "must be `off`, `hourly`, `daily HH:MM` or `weekly mon..sun HH:MM` (UTC)"
                    .to_string(),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    let before = current_settings(&state).await?;
    let mut after = state.settings.store(&changes).await?.to_json();
    let mut detail: serde_json::Map<String, Value> = changes
        .iter()
        .map(|(k, v)| (k.to_string(), json!({ "from": before[*k], "to": v })))
        .collect();
    if let Some(days) = retention {
        // A shortening waits a day (and warns); see `retention::pending`.
        after = crate::retention::pending::request(
            &state.settings,
            state.store.as_ref(),
            state.alerts.as_ref(),
            days,
            &auth.principal.subject,
        )
        .await?
        .to_json();
        detail.insert(
            RETENTION_DAYS.to_string(),
            json!({ "from": before[RETENTION_DAYS], "to": days,
                    "pending": after[RETENTION_PENDING] }),
        );
    }
    audit::action(
        &state,
        &auth.principal,
        "settings.update",
        None,
        Value::Object(detail),
    )
    .await;
    Ok(Json(after))
}

/// An owner's "delete now" for a pending shortening of retention: it takes effect at once
/// and the retention job deletes. 409 when nothing is pending.
pub async fn apply_retention(
    State(state): State<AppState>,
    auth: Authorized<OwnerRole>,
) -> Result<Json<Value>, ApiError> {
    let by = auth.principal.subject.clone();
    let pending =
        crate::retention::pending::apply(&state.settings, state.alerts.as_ref(), false, &by)
            .await?
            .ok_or_else(|| ApiError::Conflict("no retention change is pending".into()))?;
    audit::action(
        &state,
        &auth.principal,
        "retention.apply_now",
        None,
        json!({ "retention_days": pending.retention_days, "from_days": pending.from_days,
                "due_at": pending.due_at, "readings": pending.readings }),
    )
    .await;
    Ok(Json(current_settings(&state).await?))
}

// --------------------------------------------------------------------------------- groups

pub async fn list_groups(
    State(state): State<AppState>,
    _auth: Authorized<ViewerRole>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let devices = state.store.list_devices().await?;
    let groups = state.store.list_groups().await?;
    Ok(Json(
        groups
            .iter()
            .map(|g| {
                let count = devices.iter().filter(|d| d.group_id == Some(g.id)).count();
                json!({ "id": g.id, "name": g.name, "created_at": g.created_at, "devices": count })
            })
            .collect(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewGroup {
    name: String,
}

pub async fn create_group(
    State(state): State<AppState>,
    auth: Authorized<AdminRole>,
    JsonBody(input): JsonBody<NewGroup>,
) -> Result<impl IntoResponse, ApiError> {
    let name = input.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(validation("name", "must be 1 to 100 characters"));
    }
    let group = state.store.create_group(name).await.map_err(|e| match e {
        StoreError::Conflict(_) => ApiError::Conflict(format!("a group named `{name}` exists")),
        other => other.into(),
    })?;
    audit::action(
        &state,
        &auth.principal,
        "group.create",
        Some(format!("group:{}", group.id)),
        json!({ "name": group.name }),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({ "id": group.id, "name": group.name, "created_at": group.created_at, "devices": 0 }),
        ),
    ))
}

/// Deletes a group; its devices stay, without a group.
pub async fn delete_group(
    State(state): State<AppState>,
    auth: Authorized<AdminRole>,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    let group = state
        .store
        .list_groups()
        .await?
        .into_iter()
        .find(|g| g.id == id)
        .ok_or_else(|| ApiError::NotFound("group".into()))?;
    state
        .store
        .delete_group(id)
        .await
        .map_err(not_found("group"))?;
    audit::action(
        &state,
        &auth.principal,
        "group.delete",
        Some(format!("group:{id}")),
        json!({ "name": group.name }),
    )
    .await;
    state.devices_changed.notify_waiters();
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::valid_backup_schedule;

    #[test]
    fn backup_schedules_are_off_hourly_daily_or_weekly() {
        for ok in ["off", "hourly", "daily 02:00", "weekly sun 23:59"] {
            assert!(valid_backup_schedule(ok), "{ok}");
        }
        for bad in [
            "",
            "daily",
            "daily 24:00",
            "daily 2:00",
            "weekly sunday 01:00",
            "* * * * *",
        ] {
            assert!(!valid_backup_schedule(bad), "{bad}");
        }
    }
}
