//! The one error type of the HTTP boundary: each variant maps to a status and a stable code in
//! one place, is logged once, and never leaks internals to the client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("authentication required")]
    Unauthenticated,
    /// Wrong username or password (which of the two is not said).
    #[error("wrong username or password")]
    LoginFailed,
    /// A state change with a session cookie but without the matching `X-CSRF-Token`.
    #[error("missing or wrong X-CSRF-Token header; reload the page")]
    CsrfFailed,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// Semantic validation failed; `field` names the offending input.
    #[error("{field}: {message}")]
    Validation { field: String, message: String },
    /// Several fields are invalid at once (e.g. a register map); the first is named in `field`.
    #[error("{}", .0.iter().map(|(f, m)| format!("{f}: {m}")).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<(String, String)>),
    #[error("too many requests; retry in {retry_after_s} s")]
    RateLimited { retry_after_s: u64 },
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// Too much work of one kind in flight (password hashing, live streams); try again soon.
    #[error("{reason}; retry in {retry_after_s} s")]
    Busy {
        reason: &'static str,
        retry_after_s: u64,
    },
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// A 422 naming the offending input `field`.
pub fn validation(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::Validation {
        field: field.into(),
        message: message.into(),
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated | ApiError::LoginFailed => StatusCode::UNAUTHORIZED,
            ApiError::CsrfFailed => StatusCode::FORBIDDEN,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Validation { .. } | ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) | ApiError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthenticated => "unauthenticated",
            ApiError::LoginFailed => "login_failed",
            ApiError::CsrfFailed => "csrf_failed",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::Validation { .. } | ApiError::Invalid(_) => "validation_failed",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Busy { .. } => "busy",
            ApiError::Internal(_) => "internal",
        }
    }
}

/// The contract's error body, `{"error": {"code", "message"}}`, for any status.
pub fn error_body(status: StatusCode, code: &str, message: &str, field: Option<&str>) -> Response {
    let mut error = json!({ "code": code, "message": message });
    if let Some(field) = field {
        error["field"] = json!(field);
    }
    let mut response = (status, axum::Json(json!({ "error": error }))).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(err) => tracing::error!(error = ?err, "request failed"),
            ApiError::Unavailable(msg) => tracing::warn!(error = %msg, "dependency unavailable"),
            _ => tracing::debug!(error = %self, "request rejected"),
        }
        let field = match &self {
            ApiError::Validation { field, .. } => Some(field.as_str()),
            ApiError::Invalid(errors) => errors.first().map(|(f, _)| f.as_str()),
            _ => None,
        };
        let mut response = error_body(self.status(), self.code(), &self.to_string(), field);
        match &self {
            ApiError::Invalid(errors) => {
                // Every invalid field, so a form can mark them all at once.
                let details: Vec<serde_json::Value> = errors
                    .iter()
                    .map(|(field, message)| json!({ "field": field, "message": message }))
                    .collect();
                let body = json!({ "error": {
                    "code": self.code(), "message": self.to_string(),
                    "field": field, "errors": details,
                }});
                let headers = response.headers().clone();
                response = (self.status(), axum::Json(body)).into_response();
                response.headers_mut().extend(headers);
            }
            ApiError::RateLimited { retry_after_s } | ApiError::Busy { retry_after_s, .. } => {
                if let Ok(value) = HeaderValue::from_str(&retry_after_s.to_string()) {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
            }
            _ => {}
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => ApiError::NotFound("resource".into()),
            // The database's own words name tables, constraints and values: logged, not sent.
            StoreError::Conflict(detail) => {
                tracing::info!(error = %detail, "request conflicts with stored data");
                ApiError::Conflict("the change conflicts with existing data".into())
            }
            StoreError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "database unavailable");
                ApiError::Unavailable("the database is unavailable; try again later".into())
            }
            other => ApiError::Internal(other.into()),
        }
    }
}

/// Maps a bare status produced outside our handlers (router fallback, 405, body limit, timeout,
/// extractor rejections) to the contract's codes.
pub fn code_for_status(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "validation_failed",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::UNAUTHORIZED => "unauthenticated",
        StatusCode::FORBIDDEN => "forbidden",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_text_stays_out_of_api_answers() {
        let raw = "duplicate key value violates unique constraint \"users_username_key\"";
        let conflict = ApiError::from(StoreError::Conflict(raw.into()));
        assert_eq!(conflict.status(), StatusCode::CONFLICT);
        assert!(!conflict.to_string().contains("constraint"), "{conflict}");
        let raw = "error connecting to server: Connection refused (os error 111) at 10.0.0.5:5432";
        let unavailable = ApiError::from(StoreError::Unavailable(raw.into()));
        assert_eq!(unavailable.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            !unavailable.to_string().contains("10.0.0.5"),
            "{unavailable}"
        );
    }
}
