//! Dashboard sessions: `POST /api/auth/login` (argon2id, throttled per address and per
//! username), `POST /api/auth/logout`, `GET /api/auth/session`, and the cookie half of the
//! `Authorized` extractor (idle and absolute expiry, CSRF double-submit).
//!
//! The session cookie holds a random secret; the store keeps only its SHA-256, so a leaked
//! database (or backup) opens no session. The CSRF token is a second random value in a cookie
//! JavaScript may read: a state-changing request made with the session cookie must repeat it in
//! `X-CSRF-Token`. Another site can make the browser send our cookies (SameSite=Strict already
//! stops that in current browsers) but cannot read the CSRF cookie to copy it into a header.

use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;

use super::audit;
use super::body::JsonBody;
use super::extract::{Authorized, Principal, SessionInfo, ViewerRole};
use super::revocation::{Credential, Ended};
use super::security::{constant_time_eq, ClientInfo};
use super::{validation, ApiError, AppState};
use crate::auth::{hash_api_token, hash_password, random_secret, verify_password_in};
use crate::store::{NewAuditEntry, NewSession, SessionRecord, StoreError};

pub const SESSION_COOKIE: &str = "ddms_session";
pub const CSRF_COOKIE: &str = "ddms_csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Longest username and password looked at (argon2 of megabytes would be a cheap DoS lever).
const MAX_USERNAME: usize = 64;
const MAX_PASSWORD: usize = 1024;

/// The value of cookie `name` in the request, if any.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

fn set_cookie(name: &str, value: &str, max_age: Duration, http_only: bool, secure: bool) -> String {
    let mut cookie = format!(
        "{name}={value}; Path=/; Max-Age={}; SameSite=Strict",
        max_age.as_secs()
    );
    if http_only {
        cookie.push_str("; HttpOnly");
    }
    if secure {
        cookie.push_str("; Secure");
    }
    cookie
}

fn clear_cookies(headers: &mut HeaderMap, secure: bool) {
    for (name, http_only) in [(SESSION_COOKIE, true), (CSRF_COOKIE, false)] {
        if let Ok(value) =
            HeaderValue::from_str(&set_cookie(name, "", Duration::ZERO, http_only, secure))
        {
            headers.append(header::SET_COOKIE, value);
        }
    }
}

/// A hash to verify against when the user does not exist, so that "no such user" takes as
/// long as "wrong password" (no username probing by timing). Computed once, off the runtime.
fn dummy_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| hash_password(&random_secret(32)).expect("a 32-character password hashes"))
}

/// Computes the dummy hash in the background at start-up, so the first login for an unknown
/// user does not pay for it (and stand out by taking twice as long).
pub fn warm_up() {
    tokio::task::spawn_blocking(|| {
        dummy_hash();
    });
}

/// Whether `password` matches `stored` (argon2id), on the blocking pool: a verification takes
/// tens of milliseconds of CPU and must not stall the async workers.
/// At most `http.login.max_concurrent_hashes` at once (503 beyond): each holds ~19 MiB.
async fn verify(
    state: &AppState,
    password: String,
    stored: Option<String>,
) -> Result<bool, ApiError> {
    state
        .security
        .hashing
        .run(move |memory| match stored {
            Some(hash) => verify_password_in(memory, &password, &hash),
            None => {
                let _ = verify_password_in(memory, &password, dummy_hash());
                false
            }
        })
        .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    username: String,
    password: String,
}

pub async fn login(
    State(state): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Login>,
) -> Result<Response, ApiError> {
    let username: String = body.username.trim().chars().take(MAX_USERNAME).collect();
    if username.is_empty() || body.password.is_empty() {
        return Err(ApiError::BadRequest(
            "username and password are required".into(),
        ));
    }
    if let Err(e) = state.security.check_login(client.ip, &username) {
        tracing::warn!(client.ip = %client.ip, auth.username = %username, "login refused: too many attempts");
        return Err(e);
    }
    let password: String = body.password.chars().take(MAX_PASSWORD).collect();
    let user = match state.store.find_user(&username).await {
        Ok(user) => Some(user),
        Err(StoreError::NotFound) => None,
        Err(e) => return Err(e.into()),
    };
    let matches = verify(
        &state,
        password,
        user.as_ref().map(|u| u.password_hash.clone()),
    )
    .await?;
    let failure = match &user {
        None => Some("unknown_user"),
        Some(_) if !matches => Some("wrong_password"),
        Some(u) if u.is_disabled() => Some("disabled"),
        Some(_) => None,
    };
    let user = match (failure, user) {
        (None, Some(user)) => user,
        (reason, _) => {
            let reason = reason.unwrap_or("unknown_user");
            tracing::info!(client.ip = %client.ip, auth.username = %username, reason, "login failed");
            audit::record(
                &state,
                NewAuditEntry {
                    actor: "anonymous".into(),
                    action: "auth.login_failed".into(),
                    target: Some(format!("user:{username}")),
                    detail: json!({ "username": username, "reason": reason }),
                    remote_addr: Some(client.ip.to_string()),
                },
            )
            .await;
            return Err(ApiError::LoginFailed);
        }
    };

    let settings = &state.config.http.session;
    let now = Utc::now();
    // A session cookie the browser already had is ended: every login gets a new id, so an id
    // planted before login (session fixation) is worthless after it.
    if let Some(old) = cookie(&headers, SESSION_COOKIE) {
        state.store.delete_session(&hash_api_token(old)).await?;
    }
    let idle = chrono::Duration::from_std(settings.idle_timeout).unwrap_or(chrono::Duration::MAX);
    if let Err(e) = state.store.prune_sessions(now, now - idle).await {
        tracing::warn!(error = %e, "cannot prune expired sessions");
    }
    let secret = random_secret(43);
    let csrf = random_secret(32);
    let expires_at = now
        + chrono::Duration::from_std(settings.absolute_timeout).unwrap_or(chrono::Duration::MAX);
    state
        .store
        .create_session(&NewSession {
            id_hash: hash_api_token(&secret),
            user_id: user.id,
            csrf_hash: hash_api_token(&csrf),
            created_at: now,
            expires_at,
            remote_addr: Some(client.ip.to_string()),
        })
        .await?;
    audit::record(
        &state,
        NewAuditEntry {
            actor: format!("user:{}", user.username),
            action: "auth.login".into(),
            target: Some(format!("user:{}", user.username)),
            detail: json!({ "role": user.role }),
            remote_addr: Some(client.ip.to_string()),
        },
    )
    .await;
    tracing::info!(auth.username = %user.username, auth.role = %user.role, client.ip = %client.ip, "logged in");

    let mut response = Json(json!({
        "username": user.username,
        "role": user.role,
        "csrf_token": csrf,
        "expires_at": expires_at,
        "idle_timeout_s": settings.idle_timeout.as_secs_f64(),
    }))
    .into_response();
    let max_age = settings.absolute_timeout;
    for cookie in [
        set_cookie(SESSION_COOKIE, &secret, max_age, true, client.https),
        set_cookie(CSRF_COOKIE, &csrf, max_age, false, client.https),
    ] {
        let value = HeaderValue::from_str(&cookie).map_err(|e| ApiError::Internal(e.into()))?;
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    Ok(response)
}

/// Ends the session of the cookie (which must come with its CSRF token, like any state
/// change) and clears the cookies. Without a live session there is nothing to end: 204 anyway.
pub async fn logout(
    State(state): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(secret) = cookie(&headers, SESSION_COOKIE) {
        let id_hash = hash_api_token(secret);
        match state.store.find_session(&id_hash).await {
            Ok(record) => {
                if !csrf_matches(&headers, &record) {
                    return Err(ApiError::CsrfFailed);
                }
                state.store.delete_session(&id_hash).await?;
                state
                    .security
                    .revocations
                    .announce(Ended::Session(id_hash.clone()));
                audit::record(
                    &state,
                    NewAuditEntry {
                        actor: format!("user:{}", record.user.username),
                        action: "auth.logout".into(),
                        target: Some(format!("user:{}", record.user.username)),
                        detail: json!({}),
                        remote_addr: Some(client.ip.to_string()),
                    },
                )
                .await;
                tracing::info!(auth.username = %record.user.username, "logged out");
            }
            Err(StoreError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    clear_cookies(response.headers_mut(), client.https);
    Ok(response)
}

/// Who is logged in (or which token is used), for the pages.
pub async fn session(auth: Authorized<ViewerRole>) -> Json<serde_json::Value> {
    let p = &auth.principal;
    let mut body = json!({
        "subject": p.subject,
        "role": p.role,
        "method": if p.session.is_some() { "session" } else { "token" },
    });
    if let Some(session) = &p.session {
        body["username"] = json!(session.username);
        body["expires_at"] = json!(session.expires_at);
        body["idle_expires_at"] = json!(session.idle_expires_at);
    }
    Json(body)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    current_password: String,
    new_password: String,
}

/// A logged-in user changes their own password; every other session of theirs ends, the one
/// making the change goes on.
pub async fn change_password(
    State(state): State<AppState>,
    auth: Authorized<ViewerRole>,
    JsonBody(body): JsonBody<PasswordChange>,
) -> Result<StatusCode, ApiError> {
    let Some(session) = &auth.principal.session else {
        return Err(ApiError::Forbidden(
            "API tokens have no password; log in as the user".into(),
        ));
    };
    let user = state.store.find_user(&session.username).await?;
    let current: String = body.current_password.chars().take(MAX_PASSWORD).collect();
    if !verify(&state, current, Some(user.password_hash.clone())).await? {
        return Err(validation(
            "current_password",
            "is not your current password",
        ));
    }
    let hash = state
        .security
        .hashing
        .hash("new_password", body.new_password)
        .await?;
    state
        .store
        .update_user(
            user.id,
            &crate::store::UserChange {
                password_hash: Some(hash),
                ..Default::default()
            },
        )
        .await?;
    // The session that changed the password goes on; any other (perhaps the one whose
    // password leaked) ends.
    state
        .store
        .delete_other_sessions(user.id, &session.id_hash)
        .await?;
    state.security.revocations.announce(Ended::UserSessions {
        user_id: user.id,
        except: Some(session.id_hash.clone()),
    });
    audit::action(
        &state,
        &auth.principal,
        "user.password_change",
        Some(format!("user:{}", user.username)),
        json!({}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

fn csrf_matches(headers: &HeaderMap, record: &SessionRecord) -> bool {
    let header = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    match (header, cookie(headers, CSRF_COOKIE)) {
        (Some(given), Some(cookie)) if !given.is_empty() => {
            // Header = cookie (double submit), and the token is this session's own.
            constant_time_eq(given.as_bytes(), cookie.as_bytes())
                & constant_time_eq(
                    hash_api_token(given).as_bytes(),
                    record.csrf_hash.as_bytes(),
                )
        }
        _ => false,
    }
}

/// Methods that change nothing and therefore need no CSRF token.
fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The session behind cookie `secret`: 401 when unknown, expired (idle or absolute) or its
/// user is disabled; 403 when a state-changing request lacks the matching CSRF token.
pub(super) async fn authenticate(
    parts: &Parts,
    state: &AppState,
    secret: &str,
    client: ClientInfo,
) -> Result<Principal, ApiError> {
    let id_hash = hash_api_token(secret);
    let record = match state.store.find_session(&id_hash).await {
        Ok(record) => record,
        Err(StoreError::NotFound) => {
            tracing::info!("request refused: unknown or ended session");
            return Err(ApiError::Unauthenticated);
        }
        Err(e) => return Err(e.into()),
    };
    let settings = &state.config.http.session;
    let now = Utc::now();
    let idle = chrono::Duration::from_std(settings.idle_timeout).unwrap_or(chrono::Duration::MAX);
    let idle_expires_at = record.last_seen_at + idle;
    let reason = if record.expires_at <= now {
        Some("absolute timeout")
    } else if idle_expires_at <= now {
        Some("idle timeout")
    } else if record.user.is_disabled() {
        Some("user disabled")
    } else {
        None
    };
    if let Some(reason) = reason {
        tracing::info!(auth.username = %record.user.username, reason, "session ended");
        state.store.delete_session(&id_hash).await?;
        state
            .security
            .revocations
            .announce(Ended::Session(id_hash.clone()));
        return Err(ApiError::Unauthenticated);
    }
    if !is_safe(&parts.method) && !csrf_matches(&parts.headers, &record) {
        tracing::warn!(auth.username = %record.user.username, client.ip = %client.ip, "request refused: missing or wrong CSRF token");
        return Err(ApiError::CsrfFailed);
    }
    // Activity is written at most every tenth of the idle timeout (and at least every minute),
    // not on every request: the idle end may come up to that much early.
    let touch_every = (idle / 10).min(chrono::Duration::seconds(60));
    let mut last_seen = record.last_seen_at;
    if now - record.last_seen_at >= touch_every {
        state.store.touch_session(&id_hash, now).await?;
        last_seen = now;
    }
    Ok(Principal {
        subject: format!("user:{}", record.user.username),
        role: record.user.role,
        addr: client.ip,
        user_id: Some(record.user.id),
        credential: Some(Credential::Session {
            id_hash: id_hash.clone(),
            user_id: record.user.id,
        }),
        session: Some(SessionInfo {
            id_hash,
            username: record.user.username.clone(),
            expires_at: record.expires_at,
            idle_expires_at: (last_seen + idle).min(record.expires_at),
        }),
    })
}
