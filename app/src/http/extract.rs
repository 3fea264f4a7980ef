//! Authentication and role enforcement for `/api/*`, in one extractor: handlers name the least
//! role they need (`Authorized<AdminRole>`) and never check credentials themselves. A request
//! authenticates with `Authorization: Bearer <api token>` (scripts; no CSRF token needed: a
//! browser never adds that header on its own) or with the session cookie of a dashboard login
//! (state-changing methods then also need `X-CSRF-Token`, see `session.rs`).

use std::marker::PhantomData;
use std::net::IpAddr;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::revocation::Credential;
use super::security::ClientInfo;
use super::session::{self, SESSION_COOKIE};
use super::{ApiError, AppState};
use crate::auth::hash_api_token;
use crate::store::{NewAuditEntry, Role, StoreError};

/// Who is making the request.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Principal {
    /// `token:<name>` or `user:<username>`, as written to the audit log.
    pub subject: String,
    pub role: Role,
    /// The client's address (behind a trusted proxy: the one it forwarded).
    #[serde(skip)]
    pub addr: IpAddr,
    /// The user, when the request came with a session.
    #[serde(skip)]
    pub user_id: Option<Uuid>,
    #[serde(skip)]
    pub session: Option<SessionInfo>,
    /// The token or session the request came with (live streams watch it end).
    #[serde(skip)]
    pub credential: Option<Credential>,
}

#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// SHA-256 of the cookie's secret: the stored session's key.
    pub id_hash: String,
    pub username: String,
    pub expires_at: DateTime<Utc>,
    pub idle_expires_at: DateTime<Utc>,
}

impl Principal {
    /// A principal for actions ddms takes on behalf of something that is not a user or token
    /// (device self-registration with the provisioning token).
    pub fn system(subject: &str, addr: IpAddr) -> Principal {
        Principal {
            subject: subject.into(),
            role: Role::Viewer,
            addr,
            user_id: None,
            session: None,
            credential: None,
        }
    }

    /// An audit entry of an action by this principal, from its address.
    pub fn audit(
        &self,
        action: &str,
        target: Option<String>,
        detail: serde_json::Value,
    ) -> NewAuditEntry {
        NewAuditEntry {
            actor: self.subject.clone(),
            action: action.into(),
            target,
            detail,
            remote_addr: Some(self.addr.to_string()),
        }
    }
}

pub trait RequiredRole {
    const ROLE: Role;
}

pub struct OwnerRole;
pub struct AdminRole;
pub struct ViewerRole;

impl RequiredRole for OwnerRole {
    const ROLE: Role = Role::Owner;
}
impl RequiredRole for AdminRole {
    const ROLE: Role = Role::Admin;
}
impl RequiredRole for ViewerRole {
    const ROLE: Role = Role::Viewer;
}

/// A request whose credentials carry at least the role `R`: 401 without valid credentials,
/// 403 with a weaker role (or without the CSRF token a session's state change needs), 429
/// past the per-credential rate limit.
pub struct Authorized<R: RequiredRole> {
    pub principal: Principal,
    _role: PhantomData<R>,
}

impl<R: RequiredRole + Send + Sync> FromRequestParts<AppState> for Authorized<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let principal = authenticate(parts, state).await?;
        state.security.check_api_credential(&principal.subject)?;
        if !principal.role.allows(R::ROLE) {
            tracing::info!(
                auth.subject = %principal.subject,
                auth.role = %principal.role,
                auth.required = %R::ROLE,
                "request refused: role too weak"
            );
            return Err(ApiError::Forbidden(format!(
                "this action needs the {} role",
                R::ROLE
            )));
        }
        Ok(Authorized {
            principal,
            _role: PhantomData,
        })
    }
}

async fn authenticate(parts: &mut Parts, state: &AppState) -> Result<Principal, ApiError> {
    let client = ClientInfo::from_request_parts(parts, state).await?;
    // A request with an Authorization header is judged by it alone, never by a cookie too.
    if let Some(header) = parts.headers.get(AUTHORIZATION) {
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthenticated)?;
        return match state
            .store
            .authenticate_api_token(&hash_api_token(token))
            .await
        {
            Ok(found) => Ok(Principal {
                subject: format!("token:{}", found.name),
                role: found.role,
                addr: client.ip,
                user_id: None,
                session: None,
                credential: Some(Credential::Token {
                    id: found.id,
                    hash: hash_api_token(token),
                }),
            }),
            Err(StoreError::NotFound) => {
                tracing::info!("request refused: unknown or revoked API token");
                Err(ApiError::Unauthenticated)
            }
            Err(other) => Err(other.into()),
        };
    }
    if let Some(secret) = session::cookie(&parts.headers, SESSION_COOKIE) {
        let secret = secret.to_string();
        return session::authenticate(parts, state, &secret, client).await;
    }
    Err(ApiError::Unauthenticated)
}
