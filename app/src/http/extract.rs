//! Authentication and role enforcement for `/api/*`, in one extractor: handlers name the least
//! role they need (`Authorized<AdminRole>`) and never check credentials themselves.

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::{ApiError, AppState};
use crate::auth::hash_api_token;
use crate::store::{Role, StoreError};

/// Who is making the request.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Principal {
    /// `token:<name>` or `user:<username>`, as written to the audit log.
    pub subject: String,
    pub role: Role,
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
/// 403 with a weaker role.
pub struct Authorized<R: RequiredRole> {
    pub principal: Principal,
    _role: PhantomData<R>,
}

impl<R: RequiredRole + Send + Sync> FromRequestParts<AppState> for Authorized<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let principal = authenticate(parts, state).await?;
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

async fn authenticate(parts: &Parts, state: &AppState) -> Result<Principal, ApiError> {
    let Some(header) = parts.headers.get(AUTHORIZATION) else {
        return Err(ApiError::Unauthenticated);
    };
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(ApiError::Unauthenticated)?;
    match state
        .store
        .authenticate_api_token(&hash_api_token(token))
        .await
    {
        Ok(found) => Ok(Principal {
            subject: format!("token:{}", found.name),
            role: found.role,
        }),
        Err(StoreError::NotFound) => {
            tracing::info!("request refused: unknown or revoked API token");
            Err(ApiError::Unauthenticated)
        }
        Err(other) => Err(other.into()),
    }
}
