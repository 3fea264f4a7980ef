//! Handlers of the walking skeleton: probes, metrics, version, and the auth base.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::extract::{Authorized, Principal, ViewerRole};
use super::AppState;

/// Readiness checks answer quickly even when the database hangs.
const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn health() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let (ready, components) = readiness(&state, true).await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({
            "status": if ready { "ready" } else { "not_ready" },
            "components": components,
        })),
    )
}

/// What `/ready` reports: whether ddms is ready, and each component's verdict. Also the
/// `not_ready` system alert's probe (`log` false: it asks every few seconds, and says what
/// it saw in the alert).
pub async fn readiness(state: &AppState, log: bool) -> (bool, serde_json::Value) {
    let backend = state.store.backend().name();
    let database = match state.store.ping(READY_CHECK_TIMEOUT).await {
        Ok(()) => json!({ "status": "ok", "backend": backend }),
        // Anonymous callers get the verdict; the database's own words (hosts, users) go to
        // the log below.
        Err(e) => {
            if log {
                tracing::warn!(error = %e, "readiness: database unreachable");
            }
            json!({ "status": "error", "backend": backend, "error": "database unreachable" })
        }
    };
    let migrations = if database["status"] == "ok" {
        match tokio::time::timeout(READY_CHECK_TIMEOUT, state.store.probe_migrations()).await {
            Ok(Ok(status)) if status.is_current() => {
                json!({ "status": "ok", "applied": status.applied.len() })
            }
            Ok(Ok(status)) => json!({ "status": "error", "pending": status.pending,
                                     "error": "migrations pending; run `ddms migrate`" }),
            Ok(Err(e)) => {
                if log {
                    tracing::warn!(error = %e, "readiness: cannot read the migration status");
                }
                json!({ "status": "error", "error": "cannot read the migration status" })
            }
            Err(_) => json!({ "status": "error", "error": "timed out" }),
        }
    } else {
        json!({ "status": "unknown", "error": "database unreachable" })
    };
    let config = &state.config.mqtt;
    let mqtt = match config.mode {
        crate::config::MqttMode::Embedded => Some({
            let listen = config.embedded.listen.to_string();
            let tls_listen = config.embedded.tls_listen.map(|a| a.to_string());
            if state.broker_ready.load(std::sync::atomic::Ordering::SeqCst) {
                json!({ "status": "ok", "mode": "embedded", "listen": listen, "tls_listen": tls_listen })
            } else {
                json!({ "status": "error", "mode": "embedded", "listen": listen, "tls_listen": tls_listen,
                        "error": "the embedded MQTT broker is not listening" })
            }
        }),
        _ => state.mqtt_connected.as_ref().map(|connected| {
            if *connected.borrow() {
                json!({ "status": "ok", "mode": "external", "connected": true })
            } else {
                json!({ "status": "error", "mode": "external", "connected": false, "error": "not connected and subscribed to the MQTT broker" })
            }
        }),
    };
    let ready = database["status"] == "ok"
        && migrations["status"] == "ok"
        && mqtt.as_ref().is_none_or(|m| m["status"] == "ok");
    if !ready && log {
        tracing::warn!(%database, %migrations, mqtt = ?mqtt, "not ready");
    }
    let mut components = json!({ "database": database, "migrations": migrations });
    if let Some(mqtt) = mqtt {
        components["mqtt"] = mqtt;
    }
    (ready, components)
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

pub async fn version(State(state): State<AppState>) -> impl IntoResponse {
    Json(json!({
        "version": crate::VERSION,
        "git_sha": crate::GIT_SHA,
        "slot": state.config.slot,
    }))
}

pub async fn me(auth: Authorized<ViewerRole>) -> Json<Principal> {
    Json(auth.principal)
}
