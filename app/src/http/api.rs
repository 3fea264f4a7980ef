//! The `/api` router, built from one table so that the OpenAPI document can be checked
//! against it: [`routes`] lists every (method, path) the router serves, and a test fails when
//! `openapi.json` and that list disagree. To add a route: add a line here, then its operation
//! to `openapi.json` (with `x-required-role`, or `"security": []` when it is public).

use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{on, MethodFilter};
use axum::Router;

use super::{
    admin, alerts, audit, backups, devices, openapi, routes as base, session, stream, AppState,
};

struct Table {
    router: Router<AppState>,
    routes: Vec<(Method, &'static str)>,
}

impl Table {
    fn add<H, T>(mut self, method: Method, path: &'static str, handler: H) -> Table
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).expect("a routable method");
        self.router = self.router.route(path, on(filter, handler));
        self.routes.push((method, path));
        self
    }
}

fn table() -> Table {
    use Method as M;
    Table {
        router: Router::new(),
        routes: Vec::new(),
    }
    .add(M::GET, "/version", base::version)
    .add(M::GET, "/openapi.json", openapi::document)
    .add(M::GET, "/me", base::me)
    .add(M::POST, "/auth/login", session::login)
    .add(M::POST, "/auth/logout", session::logout)
    .add(M::GET, "/auth/session", session::session)
    .add(M::POST, "/auth/password", session::change_password)
    .add(M::GET, "/users", admin::list_users)
    .add(M::POST, "/users", admin::create_user)
    .add(M::PATCH, "/users/{id}", admin::update_user)
    .add(M::DELETE, "/users/{id}", admin::delete_user)
    .add(M::GET, "/tokens", admin::list_tokens)
    .add(M::POST, "/tokens", admin::create_token)
    .add(M::DELETE, "/tokens/{id}", admin::revoke_token)
    .add(M::GET, "/system/config", admin::get_settings)
    .add(M::PUT, "/system/config", admin::put_settings)
    .add(M::POST, "/system/retention/apply", admin::apply_retention)
    .add(M::POST, "/system/backup", backups::trigger)
    .add(M::GET, "/system/backups", backups::list)
    .add(M::GET, "/audit", audit::list)
    .add(M::GET, "/groups", admin::list_groups)
    .add(M::POST, "/groups", admin::create_group)
    .add(M::DELETE, "/groups/{id}", admin::delete_group)
    .add(M::GET, "/devices", devices::list)
    .add(M::POST, "/devices", devices::create)
    .add(M::POST, "/devices/register", devices::register)
    .add(M::GET, "/devices/{id}", devices::get)
    .add(M::PUT, "/devices/{id}", devices::update)
    .add(M::DELETE, "/devices/{id}", devices::delete)
    .add(M::GET, "/devices/{id}/latest", devices::latest)
    .add(M::GET, "/devices/{id}/readings", devices::readings)
    .add(
        M::GET,
        "/notifications/connection-failures",
        devices::connection_failures,
    )
    .add(
        M::DELETE,
        "/notifications/connection-failures/{id}",
        devices::acknowledge,
    )
    .add(M::GET, "/stream", stream::stream)
    .add(M::GET, "/alert-rules", alerts::list_rules)
    .add(M::POST, "/alert-rules", alerts::create_rule)
    .add(M::GET, "/alert-rules/{id}", alerts::get_rule)
    .add(M::PUT, "/alert-rules/{id}", alerts::update_rule)
    .add(M::DELETE, "/alert-rules/{id}", alerts::delete_rule)
    .add(M::GET, "/channels", alerts::list_channels)
    .add(M::POST, "/channels", alerts::create_channel)
    .add(M::PUT, "/channels/{id}", alerts::update_channel)
    .add(M::DELETE, "/channels/{id}", alerts::delete_channel)
    .add(M::POST, "/channels/{id}/test", alerts::test_channel)
    .add(M::GET, "/alerts", alerts::list_alerts)
    .add(M::POST, "/alerts/{id}/ack", alerts::acknowledge)
    .add(M::GET, "/silences", alerts::list_silences)
    .add(M::POST, "/silences", alerts::create_silence)
    .add(M::DELETE, "/silences/{id}", alerts::delete_silence)
    .add(M::GET, "/deliveries", alerts::list_deliveries)
}

/// The router to nest under `/api`.
pub fn router() -> Router<AppState> {
    table().router
}

/// Every (method, path) served under `/api`, paths as in the router (`/api/devices/{id}`).
pub fn routes() -> Vec<(Method, String)> {
    table()
        .routes
        .into_iter()
        .map(|(m, p)| (m, format!("/api{p}")))
        .collect()
}
