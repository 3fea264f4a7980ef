//! The operator dashboard: server-rendered HTML pages, each a fixed shell (navigation, loading,
//! empty and error states) plus one page script, with every asset embedded in the binary. No
//! page holds data of its own: the scripts read the JSON API and insert what it returns as text
//! (`textContent`), never as HTML. No inline script or style, so the CSP can forbid both.
//!
//! Authentication is the API's: a session cookie from `/login` (the scripts send the CSRF
//! cookie back as `X-CSRF-Token` on writes), or an API token from the URL fragment
//! (`/#token=…`, never sent to the server as part of a URL) kept in `sessionStorage`. The
//! navigation hides what the role cannot do; the API enforces it.

use axum::extract::Path;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};

/// Content-Security-Policy of every page: scripts, styles and connections only from here.
pub const PAGE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// One page: its path (for the navigation), title, script and body.
struct Page {
    id: &'static str,
    title: &'static str,
    script: &'static str,
    body: &'static str,
}

const DASHBOARD: Page = Page {
    id: "dashboard",
    title: "Dashboard",
    script: "dashboard.js",
    body: include_str!("../../assets/pages/dashboard.html"),
};
const DEVICE: Page = Page {
    id: "device",
    title: "Device",
    script: "device.js",
    body: include_str!("../../assets/pages/device.html"),
};
const ADMIN_DEVICES: Page = Page {
    id: "admin-devices",
    title: "Devices",
    script: "admin.js",
    body: include_str!("../../assets/pages/admin.html"),
};
const NOTIFICATIONS: Page = Page {
    id: "notifications",
    title: "Notifications",
    script: "notifications.js",
    body: include_str!("../../assets/pages/notifications.html"),
};
const SETTINGS: Page = Page {
    id: "settings",
    title: "Settings",
    script: "settings.js",
    body: include_str!("../../assets/pages/settings.html"),
};
const USERS: Page = Page {
    id: "users",
    title: "Users and tokens",
    script: "users.js",
    body: include_str!("../../assets/pages/users.html"),
};
const AUDIT: Page = Page {
    id: "audit",
    title: "Audit log",
    script: "audit.js",
    body: include_str!("../../assets/pages/audit.html"),
};
const ALERTS: Page = Page {
    id: "alerts",
    title: "Alerts",
    script: "alerts.js",
    body: include_str!("../../assets/pages/alerts.html"),
};
const ALERT_RULES: Page = Page {
    id: "alert-rules",
    title: "Alert rules",
    script: "alert-rules.js",
    body: include_str!("../../assets/pages/alert-rules.html"),
};
const CHANNELS: Page = Page {
    id: "channels",
    title: "Notification channels",
    script: "channels.js",
    body: include_str!("../../assets/pages/channels.html"),
};
const LOGIN: Page = Page {
    id: "login",
    title: "Sign in",
    script: "login.js",
    body: include_str!("../../assets/pages/login.html"),
};

/// Embedded assets: name → (content type, content).
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../assets/style.css"),
    ),
    ("common.js", JS, include_str!("../../assets/common.js")),
    ("chart.js", JS, include_str!("../../assets/chart.js")),
    (
        "dashboard.js",
        JS,
        include_str!("../../assets/dashboard.js"),
    ),
    ("device.js", JS, include_str!("../../assets/device.js")),
    ("admin.js", JS, include_str!("../../assets/admin.js")),
    (
        "notifications.js",
        JS,
        include_str!("../../assets/notifications.js"),
    ),
    ("login.js", JS, include_str!("../../assets/login.js")),
    ("settings.js", JS, include_str!("../../assets/settings.js")),
    ("users.js", JS, include_str!("../../assets/users.js")),
    ("audit.js", JS, include_str!("../../assets/audit.js")),
    ("alerts.js", JS, include_str!("../../assets/alerts.js")),
    (
        "alert-logic.js",
        JS,
        include_str!("../../assets/alert-logic.js"),
    ),
    (
        "alert-rules.js",
        JS,
        include_str!("../../assets/alert-rules.js"),
    ),
    ("channels.js", JS, include_str!("../../assets/channels.js")),
];
const JS: &str = "text/javascript; charset=utf-8";

/// Navigation entries: (page id, href, label, least role that may use the page).
const NAV: &[(&str, &str, &str, &str)] = &[
    ("dashboard", "/", "Dashboard", "viewer"),
    ("notifications", "/notifications", "Notifications", "viewer"),
    ("alerts", "/alerts", "Alerts", "viewer"),
    ("admin-devices", "/admin/devices", "Devices", "admin"),
    ("alert-rules", "/admin/alerts", "Alert rules", "admin"),
    ("channels", "/admin/channels", "Channels", "admin"),
    ("audit", "/admin/audit", "Audit log", "admin"),
    ("users", "/admin/users", "Users and tokens", "owner"),
    ("settings", "/admin/settings", "Settings", "owner"),
];

fn render(page: &Page) -> Response {
    let mut nav = String::new();
    for (id, href, label, role) in NAV {
        let current = if *id == page.id {
            " aria-current=\"page\""
        } else {
            ""
        };
        // Hidden until the script knows the role; a viewer never sees admin entries.
        let hidden = if *role == "viewer" { "" } else { " hidden" };
        // The Alerts entry carries the live count of firing alerts (common.js fills it).
        let count = if *id == "alerts" {
            "<span id=\"nav-alert-count\" class=\"nav-count\" hidden></span>"
        } else {
            ""
        };
        nav.push_str(&format!(
            "<a href=\"{href}\" data-role=\"{role}\"{current}{hidden}>{label}{count}</a>"
        ));
    }
    let html = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title} — ddms</title>\n<link rel=\"stylesheet\" href=\"/assets/style.css\">\n\
         <script src=\"/assets/common.js\" defer></script>\n{chart}\
         <script src=\"/assets/{script}\" defer></script>\n</head>\n\
         <body data-page=\"{id}\">\n<header class=\"top\">\n<a class=\"brand\" href=\"/\">ddms</a>\n\
         <nav id=\"nav\"{nav_hidden}>{nav}</nav>\n\
         <span id=\"connection\" class=\"pill\" data-state=\"idle\" hidden></span>\n\
         <span id=\"whoami\" class=\"who\"></span>\n\
         <button id=\"logout\" type=\"button\" class=\"link\" hidden>Sign out</button>\n\
         </header>\n<main>\n\
         <p id=\"no-eventsource\" class=\"banner warn\" hidden>This browser cannot receive live \
         updates (it lacks EventSource). Values are not updated; reload the page to refresh.</p>\n\
         <p id=\"stream-down\" class=\"banner warn\" role=\"status\" hidden>The live connection \
         to the server is lost; reconnecting…</p>\n\
         <p id=\"page-error\" class=\"banner error\" role=\"alert\" hidden></p>\n\
         <p id=\"firing-banner\" class=\"banner firing\" role=\"status\" hidden>\
         <a id=\"firing-link\" href=\"/alerts\"></a></p>\n\
         {body}\n</main>\n</body>\n</html>\n",
        title = page.title,
        id = page.id,
        script = page.script,
        chart = match page.id {
            "device" => "<script src=\"/assets/chart.js\" defer></script>\n\
                         <script src=\"/assets/alert-logic.js\" defer></script>\n",
            "alert-rules" => "<script src=\"/assets/alert-logic.js\" defer></script>\n",
            _ => "",
        },
        nav_hidden = if page.id == "login" { " hidden" } else { "" },
        body = page.body,
    );
    (
        [
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, PAGE_CSP),
        ],
        Html(html),
    )
        .into_response()
}

pub async fn index() -> Response {
    render(&DASHBOARD)
}

pub async fn device(Path(_id): Path<String>) -> Response {
    render(&DEVICE)
}

pub async fn admin_devices() -> Response {
    render(&ADMIN_DEVICES)
}

pub async fn notifications() -> Response {
    render(&NOTIFICATIONS)
}

pub async fn settings() -> Response {
    render(&SETTINGS)
}

pub async fn users() -> Response {
    render(&USERS)
}

pub async fn audit() -> Response {
    render(&AUDIT)
}

pub async fn alerts() -> Response {
    render(&ALERTS)
}

pub async fn alert_rules() -> Response {
    render(&ALERT_RULES)
}

pub async fn channels() -> Response {
    render(&CHANNELS)
}

pub async fn login() -> Response {
    render(&LOGIN)
}

pub async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                // Assets change with the binary; revalidate rather than cache blindly.
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => super::ApiError::NotFound("asset".into()).into_response(),
    }
}
