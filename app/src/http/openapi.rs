//! `GET /api/openapi.json`: the API description, maintained by hand in `openapi.json` next to
//! this file and held to the router by a test (`tests/it/openapi.rs`): every route in
//! `api::routes()` has its operation in the document, and the document names no other.

use axum::http::header;
use axum::response::IntoResponse;

pub const DOCUMENT: &str = include_str!("openapi.json");

pub async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}
