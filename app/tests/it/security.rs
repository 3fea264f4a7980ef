//! Web security: logins and sessions (cookies, expiry, logout, new ids), CSRF double-submit,
//! role boundaries, login throttling and rate limits, the hardening headers on every kind of
//! response, in-process TLS, the audit log, and hostile input stored as given.

use std::time::Duration;

use ddms::store::{NewUser, Role};
use reqwest::header::{HeaderMap, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::app::{spawn_app, Db, TestApp};
use crate::support::services::Provider;

const PASSWORD: &str = "correct horse battery staple";

async fn postgres() -> Db {
    Db::Postgres(Provider::from_env().await)
}

/// Creates a user directly in the store (the CLI path has its own test).
async fn add_user(app: &TestApp, username: &str, role: Role) {
    app.store
        .create_user(&NewUser {
            username: username.into(),
            password_hash: ddms::auth::hash_password(PASSWORD).unwrap(),
            role,
        })
        .await
        .expect("create user");
}

/// The cookies a login set, and what the browser would send back.
#[derive(Debug, Clone)]
struct Session {
    secret: String,
    csrf: String,
    set_cookies: Vec<String>,
}

impl Session {
    fn cookie_header(&self) -> String {
        format!("ddms_session={}; ddms_csrf={}", self.secret, self.csrf)
    }

    fn set_cookie(&self, name: &str) -> &str {
        self.set_cookies
            .iter()
            .find(|c| c.starts_with(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no Set-Cookie for {name}: {:?}", self.set_cookies))
    }
}

fn set_cookies(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

fn cookie_value(set_cookies: &[String], name: &str) -> Option<String> {
    set_cookies.iter().find_map(|c| {
        c.split(';')
            .next()
            .and_then(|kv| kv.strip_prefix(&format!("{name}=")))
            .map(str::to_string)
    })
}

async fn try_login(app: &TestApp, username: &str, password: &str) -> reqwest::Response {
    app.client
        .post(app.url("/api/auth/login"))
        .json(&json!({ "username": username, "password": password }))
        .send()
        .await
        .unwrap()
}

async fn login(app: &TestApp, username: &str) -> Session {
    let response = try_login(app, username, PASSWORD).await;
    assert_eq!(response.status(), 200, "login of {username}");
    let cookies = set_cookies(response.headers());
    let body: Value = response.json().await.unwrap();
    let session = Session {
        secret: cookie_value(&cookies, "ddms_session").expect("session cookie"),
        csrf: cookie_value(&cookies, "ddms_csrf").expect("csrf cookie"),
        set_cookies: cookies,
    };
    assert_eq!(body["csrf_token"], session.csrf.as_str());
    assert_eq!(body["username"], username);
    session
}

/// A request carrying the session's cookies; with `csrf`, also its CSRF header.
fn with_session(
    request: reqwest::RequestBuilder,
    session: &Session,
    csrf: bool,
) -> reqwest::RequestBuilder {
    let request = request.header("cookie", session.cookie_header());
    if csrf {
        request.header("x-csrf-token", &session.csrf)
    } else {
        request
    }
}

fn mqtt_device(name: &str) -> Value {
    json!({ "name": name, "protocol": "mqtt" })
}

async fn error_code(response: reqwest::Response) -> String {
    let body: Value = response.json().await.unwrap();
    body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn session_state_changes_need_the_csrf_header(db: Db) {
    let app = spawn_app(db, "").await;
    add_user(&app, "alice", Role::Admin).await;
    let session = login(&app, "alice").await;

    // Reading needs no CSRF token.
    let read = with_session(app.client.get(app.url("/api/devices")), &session, false)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);

    let post = |csrf: Option<&str>, name: &str| {
        let mut request = app
            .client
            .post(app.url("/api/devices"))
            .header("cookie", session.cookie_header())
            .json(&mqtt_device(name));
        if let Some(csrf) = csrf {
            request = request.header("x-csrf-token", csrf);
        }
        request.send()
    };
    let without = post(None, "no-csrf").await.unwrap();
    assert_eq!(without.status(), 403);
    assert_eq!(error_code(without).await, "csrf_failed");
    let wrong = post(Some("not-the-token"), "wrong-csrf").await.unwrap();
    assert_eq!(wrong.status(), 403);
    // The cookie's value in the header but a cookie of another session: refused too.
    let with = post(Some(&session.csrf), "with-csrf").await.unwrap();
    assert_eq!(with.status(), 201, "{}", with.text().await.unwrap());

    // Nothing was created by the refused requests.
    let names: Vec<String> = app
        .store
        .list_devices()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, vec!["with-csrf".to_string()]);

    // Bearer tokens need no CSRF token: a browser never sends that header by itself.
    let token = app.token(Role::Admin).await;
    let scripted = app
        .post_json("/api/devices", Some(&token), &mqtt_device("scripted"))
        .await;
    assert_eq!(scripted.status(), 201);
    app.stop().await;
}

#[tokio::test]
async fn session_state_changes_need_the_csrf_header_on_sqlite() {
    session_state_changes_need_the_csrf_header(Db::Sqlite).await;
}

#[tokio::test]
async fn session_state_changes_need_the_csrf_header_on_postgres() {
    session_state_changes_need_the_csrf_header(postgres().await).await;
}

#[tokio::test]
async fn a_csrf_token_of_another_session_is_refused() {
    let app = spawn_app(Db::Sqlite, "").await;
    add_user(&app, "alice", Role::Admin).await;
    add_user(&app, "mallory", Role::Admin).await;
    let alice = login(&app, "alice").await;
    let mallory = login(&app, "mallory").await;
    // Header and CSRF cookie agree, but belong to another session.
    let response = app
        .client
        .post(app.url("/api/devices"))
        .header(
            "cookie",
            format!("ddms_session={}; ddms_csrf={}", alice.secret, mallory.csrf),
        )
        .header("x-csrf-token", &mallory.csrf)
        .json(&mqtt_device("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    app.stop().await;
}

#[tokio::test]
async fn session_cookie_is_httponly_and_samesite_strict_and_not_secure_over_plain_http() {
    let app = spawn_app(Db::Sqlite, "").await;
    add_user(&app, "alice", Role::Viewer).await;
    let session = login(&app, "alice").await;
    let cookie = session.set_cookie("ddms_session");
    assert!(cookie.contains("; HttpOnly"), "{cookie}");
    assert!(cookie.contains("; SameSite=Strict"), "{cookie}");
    assert!(cookie.contains("; Path=/"), "{cookie}");
    assert!(!cookie.contains("Secure"), "{cookie}");
    let csrf = session.set_cookie("ddms_csrf");
    assert!(
        !csrf.contains("HttpOnly"),
        "the page's script reads it: {csrf}"
    );
    assert!(csrf.contains("; SameSite=Strict"), "{csrf}");
    // The cookie authenticates, and the session says who is logged in.
    let me: Value = with_session(
        app.client.get(app.url("/api/auth/session")),
        &session,
        false,
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(me["username"], "alice");
    assert_eq!(me["role"], "viewer");
    assert_eq!(me["method"], "session");
    // The store holds only a hash of the cookie's secret.
    let stored = app
        .store
        .find_session(&ddms::auth::hash_api_token(&session.secret))
        .await
        .unwrap();
    assert_ne!(stored.id_hash, session.secret);
    assert_ne!(stored.csrf_hash, session.csrf);
    app.stop().await;
}

#[tokio::test]
async fn wrong_passwords_and_unknown_users_get_the_same_401() {
    let app = spawn_app(Db::Sqlite, "").await;
    add_user(&app, "alice", Role::Viewer).await;
    let wrong = try_login(&app, "alice", "not the password at all").await;
    assert_eq!(wrong.status(), 401);
    assert!(set_cookies(wrong.headers()).is_empty());
    let wrong: Value = wrong.json().await.unwrap();
    let unknown: Value = try_login(&app, "nobody", PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(wrong, unknown, "no hint which of the two was wrong");
    assert_eq!(wrong["error"]["code"], "login_failed");
    app.stop().await;
}

#[tokio::test]
async fn every_login_gets_a_new_session_id_and_ends_the_one_it_replaces() {
    let app = spawn_app(Db::Sqlite, "").await;
    add_user(&app, "alice", Role::Viewer).await;
    let first = login(&app, "alice").await;
    // Logging in again from the same browser (sending the old cookie along).
    let response = with_session(app.client.post(app.url("/api/auth/login")), &first, false)
        .json(&json!({ "username": "alice", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let cookies = set_cookies(response.headers());
    let second = cookie_value(&cookies, "ddms_session").unwrap();
    assert_ne!(second, first.secret);
    assert_ne!(cookie_value(&cookies, "ddms_csrf").unwrap(), first.csrf);
    let old = with_session(app.client.get(app.url("/api/auth/session")), &first, false)
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 401, "the replaced session is gone");
    let new = app
        .client
        .get(app.url("/api/auth/session"))
        .header("cookie", format!("ddms_session={second}"))
        .send()
        .await
        .unwrap();
    assert_eq!(new.status(), 200);
    app.stop().await;
}

async fn logout_ends_the_session(db: Db) {
    let app = spawn_app(db, "").await;
    add_user(&app, "alice", Role::Viewer).await;
    let session = login(&app, "alice").await;
    let logout = |csrf: bool| {
        with_session(app.client.post(app.url("/api/auth/logout")), &session, csrf).send()
    };
    assert_eq!(
        logout(false).await.unwrap().status(),
        403,
        "logout is a state change"
    );
    let done = logout(true).await.unwrap();
    assert_eq!(done.status(), 204);
    let cleared = set_cookies(done.headers());
    for name in ["ddms_session", "ddms_csrf"] {
        let cookie = cleared
            .iter()
            .find(|c| c.starts_with(&format!("{name}=;")))
            .unwrap_or_else(|| panic!("{name} cleared: {cleared:?}"));
        assert!(cookie.contains("Max-Age=0"), "{cookie}");
    }
    let after = with_session(
        app.client.get(app.url("/api/auth/session")),
        &session,
        false,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(after.status(), 401);
    assert!(app
        .store
        .find_session(&ddms::auth::hash_api_token(&session.secret))
        .await
        .is_err());
    app.stop().await;
}

#[tokio::test]
async fn logout_ends_the_session_on_sqlite() {
    logout_ends_the_session(Db::Sqlite).await;
}

#[tokio::test]
async fn logout_ends_the_session_on_postgres() {
    logout_ends_the_session(postgres().await).await;
}

async fn idle_sessions_expire(db: Db) {
    let app = spawn_app(
        db,
        "[http.session]\nidle_timeout = 1\nabsolute_timeout = 60\n",
    )
    .await;
    add_user(&app, "alice", Role::Viewer).await;
    let session = login(&app, "alice").await;
    let check = || async {
        with_session(
            app.client.get(app.url("/api/auth/session")),
            &session,
            false,
        )
        .send()
        .await
        .unwrap()
        .status()
    };
    // Activity keeps it alive past the idle timeout…
    for _ in 0..6 {
        assert_eq!(check().await, 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // …and a pause longer than it ends it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(check().await, 401);
    app.stop().await;
}

#[tokio::test]
async fn idle_sessions_expire_on_sqlite() {
    idle_sessions_expire(Db::Sqlite).await;
}

#[tokio::test]
async fn idle_sessions_expire_on_postgres() {
    idle_sessions_expire(postgres().await).await;
}

async fn sessions_end_at_the_absolute_timeout_however_active(db: Db) {
    let app = spawn_app(
        db,
        "[http.session]\nidle_timeout = 2\nabsolute_timeout = 2\n",
    )
    .await;
    add_user(&app, "alice", Role::Viewer).await;
    let session = login(&app, "alice").await;
    let started = std::time::Instant::now();
    let mut statuses = Vec::new();
    while started.elapsed() < Duration::from_millis(3000) {
        let status = with_session(
            app.client.get(app.url("/api/auth/session")),
            &session,
            false,
        )
        .send()
        .await
        .unwrap()
        .status();
        statuses.push((started.elapsed(), status));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(statuses.first().unwrap().1, 200, "{statuses:?}");
    assert_eq!(statuses.last().unwrap().1, 401, "{statuses:?}");
    // Once ended it stays ended.
    let ended_at = statuses.iter().position(|(_, s)| *s == 401).unwrap();
    assert!(
        statuses[ended_at..].iter().all(|(_, s)| *s == 401),
        "{statuses:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn sessions_end_at_the_absolute_timeout_however_active_on_sqlite() {
    sessions_end_at_the_absolute_timeout_however_active(Db::Sqlite).await;
}

#[tokio::test]
async fn sessions_end_at_the_absolute_timeout_however_active_on_postgres() {
    sessions_end_at_the_absolute_timeout_however_active(postgres().await).await;
}

#[tokio::test]
async fn repeated_bad_logins_from_one_address_get_429_with_retry_after() {
    let app = spawn_app(
        Db::Sqlite,
        "[http.login]\nattempts_per_minute_per_ip = 3\nattempts_per_minute_per_username = 100\n",
    )
    .await;
    add_user(&app, "alice", Role::Viewer).await;
    for name in ["a", "b", "c"] {
        assert_eq!(
            try_login(&app, name, "guess guess guess").await.status(),
            401
        );
    }
    let throttled = try_login(&app, "d", "guess guess guess").await;
    assert_eq!(throttled.status(), 429);
    let retry: u64 = throttled.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(error_code(throttled).await, "rate_limited");
    // Even the right password waits: the throttle comes before the password is looked at.
    assert_eq!(try_login(&app, "alice", PASSWORD).await.status(), 429);
    app.stop().await;
}

#[tokio::test]
async fn repeated_bad_logins_for_one_username_get_429_from_any_address() {
    // Behind a trusted proxy, each request names another client address.
    let app = spawn_app(
        Db::Sqlite,
        "[http]\ntrusted_proxies = [\"127.0.0.1\"]\n\
         [http.login]\nattempts_per_minute_per_ip = 100\nattempts_per_minute_per_username = 2\n",
    )
    .await;
    add_user(&app, "alice", Role::Viewer).await;
    let attempt = |from: &'static str, username: &'static str| {
        app.client
            .post(app.url("/api/auth/login"))
            .header("x-forwarded-for", from)
            .json(&json!({ "username": username, "password": "guess guess guess" }))
            .send()
    };
    assert_eq!(attempt("10.0.0.1", "alice").await.unwrap().status(), 401);
    assert_eq!(attempt("10.0.0.2", "Alice").await.unwrap().status(), 401);
    let throttled = attempt("10.0.0.3", "alice").await.unwrap();
    assert_eq!(throttled.status(), 429);
    assert!(throttled.headers().contains_key("retry-after"));
    // Another username from that address is still heard.
    assert_eq!(attempt("10.0.0.3", "bob").await.unwrap().status(), 401);
    // The audit log has the forwarded addresses, not the proxy's.
    let audit = app.store.list_audit(10).await.unwrap();
    let addrs: Vec<_> = audit.iter().filter_map(|e| e.remote_addr.clone()).collect();
    assert!(addrs.contains(&"10.0.0.2".to_string()), "{addrs:?}");
    assert!(!addrs.contains(&"127.0.0.1".to_string()), "{addrs:?}");
    app.stop().await;
}

#[tokio::test]
async fn api_requests_beyond_the_rate_limit_get_429_with_retry_after() {
    let app = spawn_app(
        Db::Sqlite,
        "[http.rate_limit]\nrequests_per_second = 1\nburst = 3\n",
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let response = app.get("/api/version").await;
        statuses.push(response.status());
        if response.status() == 429 {
            assert!(response.headers().contains_key("retry-after"));
            assert_eq!(error_code(response).await, "rate_limited");
        }
    }
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    assert_eq!(statuses[0], 200);
    // Probes are not rate-limited (they are outside /api).
    assert_eq!(app.get("/health").await.status(), 200);
    app.stop().await;
}

fn assert_hardened(what: &str, headers: &HeaderMap, https: bool) {
    let get = |name: &str| {
        headers
            .get(name)
            .unwrap_or_else(|| panic!("{what}: no {name} in {headers:?}"))
            .to_str()
            .unwrap()
            .to_string()
    };
    let csp = get("content-security-policy");
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    ] {
        assert!(
            csp.contains(directive),
            "{what}: CSP {csp} lacks {directive}"
        );
    }
    assert!(!csp.contains("unsafe-inline"), "{what}: {csp}");
    assert_eq!(get("x-frame-options"), "DENY", "{what}");
    assert_eq!(get("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(get("referrer-policy"), "no-referrer", "{what}");
    assert!(headers.contains_key("x-request-id"), "{what}");
    assert_eq!(
        headers.contains_key("strict-transport-security"),
        https,
        "{what}: HSTS only over HTTPS"
    );
}

#[tokio::test]
async fn hardening_headers_are_on_pages_json_and_every_error() {
    let app = spawn_app(
        Db::Sqlite,
        "[http]\nbody_limit = 2048\n[http.login]\nattempts_per_minute_per_ip = 1\n",
    )
    .await;
    let owner = app.token(Role::Owner).await;
    let page = app.get("/").await;
    assert_eq!(page.status(), 200);
    assert_hardened("page", page.headers(), false);
    let json = app.get("/api/version").await;
    assert_eq!(json.status(), 200);
    assert_hardened("json", json.headers(), false);
    assert_eq!(json.headers()["cache-control"], "no-store");
    let not_found = app.get("/no/such/page").await;
    assert_eq!(not_found.status(), 404);
    assert_hardened("404", not_found.headers(), false);
    let unauthenticated = app.get("/api/devices").await;
    assert_eq!(unauthenticated.status(), 401);
    assert_hardened("401", unauthenticated.headers(), false);
    assert_eq!(unauthenticated.headers()["cache-control"], "no-store");
    let too_large = app
        .post_json(
            "/api/devices",
            Some(&owner),
            &json!({ "name": "x".repeat(4096), "protocol": "mqtt" }),
        )
        .await;
    assert_eq!(too_large.status(), 413);
    assert_hardened("413", too_large.headers(), false);
    assert_eq!(error_code(too_large).await, "payload_too_large");
    assert_eq!(try_login(&app, "a", "b c d e f g h").await.status(), 401);
    let throttled = try_login(&app, "a", "b c d e f g h").await;
    assert_eq!(throttled.status(), 429);
    assert_hardened("429", throttled.headers(), false);
    app.stop().await;
}

#[tokio::test]
async fn cors_is_closed_unless_an_origin_is_configured() {
    let closed = spawn_app(Db::Sqlite, "").await;
    let preflight = |app: &TestApp| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/api/devices"))
            .header("origin", "https://scada.example.net")
            .header("access-control-request-method", "POST")
            .send()
    };
    let refused = preflight(&closed).await.unwrap();
    assert!(!refused
        .headers()
        .contains_key("access-control-allow-origin"));
    let simple = closed
        .client
        .get(closed.url("/api/version"))
        .header("origin", "https://scada.example.net")
        .send()
        .await
        .unwrap();
    assert!(!simple.headers().contains_key("access-control-allow-origin"));
    closed.stop().await;

    let open = spawn_app(
        Db::Sqlite,
        "[http.cors]\nallowed_origins = [\"https://scada.example.net\"]\n",
    )
    .await;
    let allowed = preflight(&open).await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://scada.example.net"
    );
    assert!(!allowed
        .headers()
        .contains_key("access-control-allow-credentials"));
    let other = open
        .client
        .get(open.url("/api/version"))
        .header("origin", "https://evil.example.com")
        .send()
        .await
        .unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"));
    open.stop().await;
}
