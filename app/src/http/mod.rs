//! The HTTP service: router, shared state, and the middleware every request passes through
//! (request id → hardening headers and client address → [CORS] → span → metrics and access
//! log → JSON errors → body limit → timeout; `/api/*` adds the per-address rate limit).

mod admin;
mod alerts;
pub mod api;
mod audit;
mod backups;
mod body;
pub(crate) mod devices;
mod error;
pub mod extract;
mod hashing;
pub mod keyed_limit;
mod metrics;
mod openapi;
mod page;
pub mod revocation;
mod routes;
pub mod runtime;

pub(crate) use routes::readiness;
pub mod security;
pub mod serve;
pub mod session;
mod stream;
pub mod tls;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderName};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tracing::Instrument;

pub use devices::{readings_window, ReadingsQuery, ReadingsWindow};
pub(crate) use error::validation;
pub use error::{error_body, ApiError};
pub use metrics::Metrics;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::events::EventHub;
use crate::status::StatusBoard;
use crate::store::Store;

pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Per-IP limiter for unauthenticated, state-changing endpoints (self-registration).
pub type IpRateLimiter = keyed_limit::BoundedLimiter<std::net::IpAddr>;

#[derive(Clone)]
pub struct AppState {
    /// This process among the instances sharing the database and broker.
    pub instance_id: String,
    pub store: Arc<dyn Store>,
    pub config: Arc<Config>,
    pub metrics: Metrics,
    pub events: EventHub,
    pub status: StatusBoard,
    /// Backups of the database (`POST /api/system/backup`, the schedule).
    pub backups: Arc<crate::backup::Backups>,
    /// Runtime settings (retention, offline threshold, backup schedule) as they apply now.
    pub settings: crate::settings::Settings,
    pub register_limiter: Arc<IpRateLimiter>,
    /// Client resolution, API rate limits, login throttling.
    pub security: Arc<security::Security>,
    /// Woken when devices are created, changed or deleted (pollers re-read their assignment).
    pub devices_changed: Arc<Notify>,
    /// Woken when MQTT credentials change (brokers re-read their credentials).
    pub credentials_changed: Arc<Notify>,
    /// Cancelled when the server shuts down: long-lived responses (SSE) end.
    pub shutdown: CancellationToken,
    /// Whether the MQTT ingester is connected to its broker; `None` when ddms runs no broker
    /// connection. `/ready` reports it as component `mqtt`.
    pub mqtt_connected: Option<tokio::sync::watch::Receiver<bool>>,
    /// Per-device broker accounts (Mosquitto dynsec), when configured.
    pub broker_accounts: Option<Arc<dyn crate::mqtt::BrokerAccounts>>,
    /// Whether the embedded MQTT broker accepts connections (`/ready`, mode `embedded`).
    pub broker_ready: Arc<std::sync::atomic::AtomicBool>,
    /// Alert rules, evaluation and acknowledgement.
    pub alerts: Arc<crate::alerts::Alerting>,
}

pub fn router(state: AppState) -> Router {
    let body_limit = state.config.http.body_limit;
    let request_timeout = state.config.http.request_timeout;
    let api = api::router().layer(middleware::from_fn_with_state(
        state.clone(),
        security::limit_api,
    ));
    let cors = security::cors(&state.config);
    Router::new()
        .route("/", get(page::index))
        .route("/login", get(page::login))
        .route("/devices/{id}", get(page::device))
        .route("/admin/devices", get(page::admin_devices))
        .route("/notifications", get(page::notifications))
        .route("/admin/settings", get(page::settings))
        .route("/admin/users", get(page::users))
        .route("/admin/audit", get(page::audit))
        .route("/alerts", get(page::alerts))
        .route("/admin/alerts", get(page::alert_rules))
        .route("/admin/channels", get(page::channels))
        .route("/assets/{name}", get(page::asset))
        .route("/health", get(routes::health))
        .route("/ready", get(routes::ready))
        .route("/metrics", get(routes::metrics))
        .nest("/api", api)
        .fallback(fallback)
        .layer(
            // Outermost first: the request id exists before the span that records it.
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(REQUEST_ID_HEADER, MakeRequestUuid))
                .layer(PropagateRequestIdLayer::new(REQUEST_ID_HEADER))
                .layer(middleware::from_fn_with_state(
                    state.clone(),
                    security::harden,
                ))
                .option_layer(cors)
                .layer(middleware::from_fn(request_span))
                .layer(middleware::from_fn_with_state(state.clone(), observe))
                .layer(middleware::from_fn(json_errors))
                .layer(axum::extract::DefaultBodyLimit::max(body_limit))
                .layer(tower_http::limit::RequestBodyLimitLayer::new(body_limit))
                .layer(TimeoutLayer::with_status_code(
                    axum::http::StatusCode::REQUEST_TIMEOUT,
                    request_timeout,
                )),
        )
        .with_state(state)
}

async fn fallback() -> ApiError {
    ApiError::NotFound("route".into())
}

/// Every log line written while handling a request carries its id through this span.
async fn request_span(request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        http.method = %request.method(),
        http.path = %request.uri().path(),
    );
    next.run(request).instrument(span).await
}

/// Request count and latency by route template (never the raw path: ids would explode the
/// label set), plus one access-log line.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    state.metrics.request_arrived();
    let method = metrics::method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    let status = response.status();
    state
        .metrics
        .observe_request(method, &route, status.as_u16(), elapsed);
    let duration_ms = elapsed.as_secs_f64() * 1000.0;
    // Probes and scrapes arrive every few seconds; they are only worth a debug line.
    let probe = matches!(route.as_str(), "/health" | "/ready" | "/metrics");
    if status.is_server_error() {
        tracing::error!(http.status = status.as_u16(), http.route = %route, duration_ms, "request failed");
    } else if probe {
        tracing::debug!(http.status = status.as_u16(), http.route = %route, duration_ms, "request completed");
    } else {
        tracing::info!(http.status = status.as_u16(), http.route = %route, duration_ms, "request completed");
    }
    response
}

/// Errors produced outside our handlers (404 fallback, 405, 413 from the body limit, 408 from
/// the timeout, extractor rejections) are plain text; rewrite them to the JSON error shape so
/// clients see one format.
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let message = match String::from_utf8_lossy(&text).trim() {
        "" => status.canonical_reason().unwrap_or("error").to_string(),
        m => m.to_string(),
    };
    let mut rewritten = error_body(status, error::code_for_status(status), &message, None);
    // Keep headers such as Allow (405) and Retry-After (429).
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rewritten.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rewritten
}
