//! `GET /login`: the login form (`app/assets/login.html`, `login.js`; no inline script, so the
//! CSP forbids all of it). It posts to `POST /api/auth/login` and goes to `?next=` (same-origin
//! paths only) or `/`. Pages read the `ddms_csrf` cookie and send it as `X-CSRF-Token`.

use axum::http::header;
use axum::response::{Html, IntoResponse};

const PAGE: &str = include_str!("../../assets/login.html");
const SCRIPT: &str = include_str!("../../assets/login.js");

pub async fn page() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-cache")], Html(PAGE))
}

pub async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SCRIPT,
    )
}
