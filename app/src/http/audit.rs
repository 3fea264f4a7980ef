//! The audit log: who did what, when, from which address. Append-only — the store has no
//! method to change or delete an entry — and readable by admins and owners.

use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

use super::extract::{AdminRole, Authorized, Principal};
use super::{ApiError, AppState};
use crate::store::{AuditEntry, NewAuditEntry};

const MAX_LIMIT: u32 = 1000;

/// Appends an entry. A failure is logged, not returned: the action it records has happened.
pub async fn record(state: &AppState, entry: NewAuditEntry) {
    if let Err(e) = state.store.append_audit(&entry).await {
        tracing::error!(error = %e, audit.action = %entry.action, audit.actor = %entry.actor, "cannot write the audit log");
    }
}

/// Appends the entry of an `action` that `principal` took (on `target`, with `detail`): how
/// every authenticated handler audits, so that each names only what it did.
pub async fn action(
    state: &AppState,
    principal: &Principal,
    action: &str,
    target: Option<String>,
    detail: Value,
) {
    record(state, principal.audit(action, target, detail)).await;
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    limit: Option<u32>,
    /// Only entries older than this id (the `id` of the last entry of the previous page).
    before: Option<i64>,
}

pub async fn list(
    State(state): State<AppState>,
    _auth: Authorized<AdminRole>,
    Query(query): Query<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::BadRequest(format!(
            "`limit` must be between 1 and {MAX_LIMIT}"
        )));
    }
    Ok(Json(
        state.store.list_audit_before(query.before, limit).await?,
    ))
}
