//! Backups for owners: `POST /api/system/backup` starts one (it runs in the background, its
//! outcome shows in the list) and `GET /api/system/backups` lists the archives, the run in
//! progress and the last outcome.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use chrono::Utc;
use serde_json::{json, Value};

use super::audit;
use super::extract::{Authorized, OwnerRole};
use super::{ApiError, AppState};
use crate::backup::{BackupError, Schedule, Trigger};

pub async fn trigger(
    State(state): State<AppState>,
    auth: Authorized<OwnerRole>,
) -> Result<impl IntoResponse, ApiError> {
    let run = state.backups.begin(Trigger::Api).map_err(|e| match e {
        BackupError::Busy(_) => ApiError::Conflict(e.to_string()),
        other => ApiError::Internal(other.into()),
    })?;
    let name = run.name().to_string();
    audit::action(
        &state,
        &auth.principal,
        "backup.create",
        Some(format!("backup:{name}")),
        json!({ "trigger": "api" }),
    )
    .await;
    // Longer than a request may take on a big database: the outcome is in the list (and logs).
    state.backups.spawn(run, |_| async {});
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "name": name, "status": "running" })),
    ))
}

pub async fn list(
    State(state): State<AppState>,
    _auth: Authorized<OwnerRole>,
) -> Result<Json<Value>, ApiError> {
    let listing = state
        .backups
        .list()
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    let status = state.backups.status();
    let schedule = state.settings.current().backup_schedule;
    let next_due = schedule
        .parse::<Schedule>()
        .ok()
        .and_then(|s| s.next_after(Utc::now()));
    Ok(Json(json!({
        "backups": listing.backups,
        "running": status.running,
        "last": status.last,
        "schedule": schedule,
        "next_due": next_due,
        "s3": state.backups.s3_bucket().map(|bucket| json!({
            "bucket": bucket,
            "error": listing.s3_error,
        })),
    })))
}
