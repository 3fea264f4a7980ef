//! The first live page: devices with status and latest values, updated over SSE. Plain HTML
//! from the server, one small script and one stylesheet embedded in the binary; no inline
//! script, so a strict CSP can forbid it. The page holds no data itself: the script reads the
//! API with a bearer token it takes from the URL fragment (never sent to the server) or asks
//! for.

use axum::http::header;
use axum::response::{Html, IntoResponse};

const INDEX: &str = include_str!("../../assets/index.html");
const SCRIPT: &str = include_str!("../../assets/live.js");
const STYLE: &str = include_str!("../../assets/style.css");

pub async fn index() -> impl IntoResponse {
    (
        [
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; frame-ancestors 'none'",
            ),
        ],
        Html(INDEX),
    )
}

pub async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
}

pub async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}
