//! Web security: logins and sessions (cookies, expiry, logout, new ids), CSRF double-submit,
//! role boundaries, login throttling and rate limits, the hardening headers on every kind of
//! response, in-process TLS, the audit log, and hostile input stored as given.

use std::time::Duration;

use ddms::store::Role;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::app::{spawn_app, Db, TestApp};
use crate::support::on_each_backend;
use crate::support::session::{cookie_value, set_cookies, with_session, Session, PASSWORD};

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
    app.add_user("alice", Role::Admin).await;
    let session = app.login("alice").await;

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

on_each_backend!(session_state_changes_need_the_csrf_header);

#[tokio::test]
async fn a_csrf_token_of_another_session_is_refused() {
    let app = spawn_app(Db::Sqlite, "").await;
    app.add_user("alice", Role::Admin).await;
    app.add_user("mallory", Role::Admin).await;
    let alice = app.login("alice").await;
    let mallory = app.login("mallory").await;
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
    app.add_user("alice", Role::Viewer).await;
    let session = app.login("alice").await;
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
    app.add_user("alice", Role::Viewer).await;
    let wrong = app.try_login("alice", "not the password at all").await;
    assert_eq!(wrong.status(), 401);
    assert!(set_cookies(wrong.headers()).is_empty());
    let wrong: Value = wrong.json().await.unwrap();
    let unknown: Value = app
        .try_login("nobody", PASSWORD)
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
    app.add_user("alice", Role::Viewer).await;
    let first = app.login("alice").await;
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
    app.add_user("alice", Role::Viewer).await;
    let session = app.login("alice").await;
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

on_each_backend!(logout_ends_the_session);

async fn idle_sessions_expire(db: Db) {
    let app = spawn_app(
        db,
        "[http.session]\nidle_timeout = 1\nabsolute_timeout = 60\n",
    )
    .await;
    app.add_user("alice", Role::Viewer).await;
    let session = app.login("alice").await;
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

on_each_backend!(idle_sessions_expire);

async fn sessions_end_at_the_absolute_timeout_however_active(db: Db) {
    let app = spawn_app(
        db,
        "[http.session]\nidle_timeout = 2\nabsolute_timeout = 2\n",
    )
    .await;
    app.add_user("alice", Role::Viewer).await;
    let session = app.login("alice").await;
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

on_each_backend!(sessions_end_at_the_absolute_timeout_however_active);

#[tokio::test]
async fn repeated_bad_logins_from_one_address_get_429_with_retry_after() {
    let app = spawn_app(
        Db::Sqlite,
        "[http.login]\nattempts_per_minute_per_ip = 3\nattempts_per_minute_per_username = 100\n",
    )
    .await;
    app.add_user("alice", Role::Viewer).await;
    for name in ["a", "b", "c"] {
        assert_eq!(app.try_login(name, "guess guess guess").await.status(), 401);
    }
    let throttled = app.try_login("d", "guess guess guess").await;
    assert_eq!(throttled.status(), 429);
    let retry: u64 = throttled.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(error_code(throttled).await, "rate_limited");
    // Even the right password waits: the throttle comes before the password is looked at.
    assert_eq!(app.try_login("alice", PASSWORD).await.status(), 429);
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
    app.add_user("alice", Role::Viewer).await;
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
    assert_eq!(app.try_login("a", "b c d e f g h").await.status(), 401);
    let throttled = app.try_login("a", "b c d e f g h").await;
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

/// A CA and a server certificate for `ddms.test` in `dir`; returns (CA PEM, cert path, key path).
fn test_certificates(dir: &std::path::Path) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ddms test CA");
    let ca = ca_params.clone().self_signed(&ca_key).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_params = rcgen::CertificateParams::new(vec!["ddms.test".to_string()]).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
    let cert_path = dir.join("server.crt");
    let key_path = dir.join("server.key");
    std::fs::write(&cert_path, server_cert.pem()).unwrap();
    std::fs::write(&key_path, server_key.serialize_pem()).unwrap();
    (
        ca.pem(),
        cert_path.display().to_string(),
        key_path.display().to_string(),
    )
}

#[tokio::test]
async fn over_in_process_tls_cookies_are_secure_and_hsts_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_certificates(dir.path());
    let app = spawn_app(
        Db::Sqlite,
        &format!("[http.tls]\ncert = {cert:?}\nkey = {key:?}\n"),
    )
    .await;
    app.add_user("alice", Role::Admin).await;
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .resolve("ddms.test", app.addr)
        .build()
        .unwrap();
    let url = |path: &str| format!("https://ddms.test:{}{path}", app.addr.port());

    let page = client.get(url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_hardened("page over TLS", page.headers(), true);
    assert_eq!(
        page.headers()["strict-transport-security"],
        "max-age=31536000"
    );
    let login = client
        .post(url("/api/auth/login"))
        .json(&json!({ "username": "alice", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    assert_hardened("login over TLS", login.headers(), true);
    let cookies = set_cookies(login.headers());
    for name in ["ddms_session", "ddms_csrf"] {
        let cookie = cookies
            .iter()
            .find(|c| c.starts_with(&format!("{name}=")))
            .unwrap();
        assert!(cookie.contains("; Secure"), "{cookie}");
        assert!(cookie.contains("; SameSite=Strict"), "{cookie}");
    }
    let session = Session {
        secret: cookie_value(&cookies, "ddms_session").unwrap(),
        csrf: cookie_value(&cookies, "ddms_csrf").unwrap(),
        set_cookies: cookies,
    };
    let created = with_session(client.post(url("/api/devices")), &session, true)
        .json(&mqtt_device("over-tls"))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let not_found = client.get(url("/nope")).send().await.unwrap();
    assert_eq!(not_found.status(), 404);
    assert_hardened("404 over TLS", not_found.headers(), true);

    // Plain HTTP on the TLS port gets no answer a browser would take.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/health", app.addr))
        .send()
        .await;
    assert!(plain.map(|r| r.status() != 200).unwrap_or(true));
    // And shutdown is still graceful.
    app.stop().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_forwarded_https_gets_hsts_and_secure_cookies() {
    let app = spawn_app(Db::Sqlite, "[http]\ntrusted_proxies = [\"127.0.0.1\"]\n").await;
    app.add_user("alice", Role::Viewer).await;
    let response = app
        .client
        .post(app.url("/api/auth/login"))
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-for", "192.0.2.10")
        .json(&json!({ "username": "alice", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_hardened("forwarded https", response.headers(), true);
    let cookies = set_cookies(response.headers());
    assert!(
        cookies.iter().all(|c| c.contains("; Secure")),
        "{cookies:?}"
    );
    app.stop().await;

    // The same headers from an untrusted peer change nothing.
    let app = spawn_app(Db::Sqlite, "").await;
    app.add_user("alice", Role::Viewer).await;
    let response = app
        .client
        .post(app.url("/api/auth/login"))
        .header("x-forwarded-proto", "https")
        .json(&json!({ "username": "alice", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_hardened("spoofed https", response.headers(), false);
    assert!(set_cookies(response.headers())
        .iter()
        .all(|c| !c.contains("Secure")));
    app.stop().await;
}

async fn logins_and_device_changes_are_audited(db: Db) {
    let app = spawn_app(db, "").await;
    app.add_user("alice", Role::Admin).await;
    app.add_user("victor", Role::Viewer).await;
    assert_eq!(app.try_login("ghost", PASSWORD).await.status(), 401);
    assert_eq!(
        app.try_login("alice", "wrong wrong wrong").await.status(),
        401
    );
    let session = app.login("alice").await;
    let created: Value = with_session(app.client.post(app.url("/api/devices")), &session, true)
        .json(&mqtt_device("audited"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let updated = with_session(
        app.client.put(app.url(&format!("/api/devices/{id}"))),
        &session,
        true,
    )
    .json(&json!({ "name": "audited-renamed", "protocol": "mqtt" }))
    .send()
    .await
    .unwrap();
    assert_eq!(updated.status(), 200);
    let deleted = with_session(
        app.client.delete(app.url(&format!("/api/devices/{id}"))),
        &session,
        true,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(deleted.status(), 204);
    let group = with_session(app.client.post(app.url("/api/groups")), &session, true)
        .json(&json!({ "name": "plant-a" }))
        .send()
        .await
        .unwrap();
    assert_eq!(group.status(), 201);

    let audit: Vec<Value> = with_session(app.client.get(app.url("/api/audit")), &session, false)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let find =
        |action: &str| -> Vec<&Value> { audit.iter().filter(|e| e["action"] == action).collect() };
    let failed = find("auth.login_failed");
    assert_eq!(failed.len(), 2, "{audit:#?}");
    let ghost = failed
        .iter()
        .find(|e| e["detail"]["username"] == "ghost")
        .expect("the attempted username is recorded");
    assert_eq!(ghost["detail"]["reason"], "unknown_user");
    assert_eq!(ghost["remote_addr"], "127.0.0.1");
    assert!(failed
        .iter()
        .any(|e| e["detail"]["reason"] == "wrong_password"));
    let logins = find("auth.login");
    assert_eq!(logins.len(), 1);
    assert_eq!(logins[0]["actor"], "user:alice");
    for action in [
        "device.create",
        "device.update",
        "device.delete",
        "group.create",
    ] {
        let entries = find(action);
        assert_eq!(entries.len(), 1, "{action}: {audit:#?}");
        assert_eq!(entries[0]["actor"], "user:alice", "{action}");
        assert_eq!(entries[0]["remote_addr"], "127.0.0.1", "{action}");
        assert!(entries[0]["at"].is_string(), "{action}");
    }
    assert_eq!(
        find("device.update")[0]["detail"]["name"],
        "audited-renamed"
    );
    // Nothing secret in the log.
    let text = serde_json::to_string(&audit).unwrap();
    assert!(!text.contains(PASSWORD) && !text.contains(&session.secret));
    // Viewers do not read the audit log.
    let viewer = app.login("victor").await;
    let refused = with_session(app.client.get(app.url("/api/audit")), &viewer, false)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    app.stop().await;
}

on_each_backend!(logins_and_device_changes_are_audited);

async fn hostile_device_names_are_stored_as_given(db: Db) {
    let app = spawn_app(db, "").await;
    let admin = app.token(Role::Admin).await;
    for name in [
        "Robert'); DROP TABLE devices;--",
        "<script>alert('x')</script>",
        "\" OR 1=1 -- <img src=x onerror=alert(1)>",
    ] {
        let created = app
            .post_json(
                "/api/devices",
                Some(&admin),
                &json!({ "name": name, "protocol": "mqtt", "group": name }),
            )
            .await;
        assert_eq!(created.status(), 201, "{name}");
        let created: Value = created.json().await.unwrap();
        assert_eq!(created["name"], name);
        let id = created["id"].as_str().unwrap();
        let fetched: Value = app
            .get_with_token(&format!("/api/devices/{id}"), &admin)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(fetched["name"], name);
        assert_eq!(fetched["group"], name);
    }
    let all: Vec<Value> = app
        .get_with_token("/api/devices", &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all.len(), 3, "the table is still there, with every device");
    let response = app.get_with_token("/api/devices", &admin).await;
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    app.stop().await;
}

on_each_backend!(hostile_device_names_are_stored_as_given);

#[tokio::test]
async fn a_user_created_with_ddms_user_add_can_log_in() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ddms.db").display());
    let mut child = crate::support::app::ddms_command(dir.path())
        .args(["user", "add", "--username", "carol", "--role", "admin"])
        .env("DDMS_DATABASE__URL", &url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let app = spawn_app(Db::Url(url), "").await;
    let session = app.login("carol").await;
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
    assert_eq!(me["role"], "admin");
    assert_eq!(me["subject"], "user:carol");
    app.stop().await;
}

async fn owners_manage_users_tokens_and_settings(db: Db) {
    let app = spawn_app(db, "").await;
    app.add_user("olga", Role::Owner).await;
    app.add_user("adam", Role::Admin).await;
    let owner = app.login("olga").await;
    let admin = app.login("adam").await;
    let send = |method: reqwest::Method, path: &str, session: &Session, body: Option<Value>| {
        let mut request = with_session(app.client.request(method, app.url(path)), session, true);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send()
    };
    use reqwest::Method as M;

    // Users: created with a generated password, which works once shown.
    let created = send(
        M::POST,
        "/api/users",
        &owner,
        Some(json!({"username": "vera", "role": "viewer"})),
    )
    .await
    .unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let password = created["password"].as_str().unwrap().to_string();
    let vera_id = created["id"].as_str().unwrap().to_string();
    assert_eq!(app.try_login("vera", &password).await.status(), 200);
    let users: Value = send(M::GET, "/api/users", &owner, None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = users.to_string();
    assert!(
        !text.contains("argon2") && !text.contains("password"),
        "{text}"
    );
    assert_eq!(users.as_array().unwrap().len(), 3);
    // Admins do not manage users.
    assert_eq!(
        send(M::GET, "/api/users", &admin, None)
            .await
            .unwrap()
            .status(),
        403
    );
    // Promote, then disable: the disabled user can no longer log in.
    let promoted = send(
        M::PATCH,
        &format!("/api/users/{vera_id}"),
        &owner,
        Some(json!({"role": "admin"})),
    )
    .await
    .unwrap();
    assert_eq!(promoted.status(), 200);
    let vera = {
        let r = app.try_login("vera", &password).await;
        assert_eq!(r.status(), 200);
        let cookies = set_cookies(r.headers());
        Session {
            secret: cookie_value(&cookies, "ddms_session").unwrap(),
            csrf: cookie_value(&cookies, "ddms_csrf").unwrap(),
            set_cookies: cookies,
        }
    };
    let disabled = send(
        M::PATCH,
        &format!("/api/users/{vera_id}"),
        &owner,
        Some(json!({"disabled": true})),
    )
    .await
    .unwrap();
    assert_eq!(disabled.status(), 200);
    assert!(disabled.json::<Value>().await.unwrap()["disabled_at"].is_string());
    assert_eq!(app.try_login("vera", &password).await.status(), 401);
    assert_eq!(
        send(M::GET, "/api/me", &vera, None).await.unwrap().status(),
        401
    );
    // The last enabled owner stays.
    let olga_id = app.store.find_user("olga").await.unwrap().id;
    let demote = send(
        M::PATCH,
        &format!("/api/users/{olga_id}"),
        &owner,
        Some(json!({"role": "viewer"})),
    )
    .await
    .unwrap();
    assert_eq!(demote.status(), 409);
    assert_eq!(
        send(M::DELETE, &format!("/api/users/{olga_id}"), &owner, None)
            .await
            .unwrap()
            .status(),
        409
    );
    assert_eq!(
        send(M::DELETE, &format!("/api/users/{vera_id}"), &owner, None)
            .await
            .unwrap()
            .status(),
        204
    );

    // Tokens: listed without secrets, revoked tokens stop working.
    let token: Value = send(
        M::POST,
        "/api/tokens",
        &owner,
        Some(json!({"name": "script", "role": "viewer"})),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let secret = token["token"].as_str().unwrap();
    assert_eq!(app.get_with_token("/api/me", secret).await.status(), 200);
    let listed: Value = send(M::GET, "/api/tokens", &owner, None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!listed.to_string().contains(secret));
    assert_eq!(listed[0]["name"], "script");
    let revoked = send(
        M::DELETE,
        &format!("/api/tokens/{}", token["id"].as_str().unwrap()),
        &owner,
        None,
    )
    .await
    .unwrap();
    assert_eq!(revoked.status(), 204);
    assert_eq!(app.get_with_token("/api/me", secret).await.status(), 401);

    // Settings: admins read, owners change, every field validated.
    let settings: Value = send(M::GET, "/api/system/config", &admin, None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(settings["backup_schedule"], "off");
    assert_eq!(
        send(
            M::PUT,
            "/api/system/config",
            &admin,
            Some(json!({"retention_days": 30}))
        )
        .await
        .unwrap()
        .status(),
        403
    );
    let invalid = send(
        M::PUT,
        "/api/system/config",
        &owner,
        Some(json!({"retention_days": 0, "offline_after_s": 5, "backup_schedule": "sometimes"})),
    )
    .await
    .unwrap();
    assert_eq!(invalid.status(), 422);
    let invalid: Value = invalid.json().await.unwrap();
    let fields: Vec<&str> = invalid["error"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        vec!["retention_days", "offline_after_s", "backup_schedule"]
    );
    let changed = send(
        M::PUT,
        "/api/system/config",
        &owner,
        Some(
            json!({"retention_days": 30, "offline_after_s": 120, "backup_schedule": "daily 02:30"}),
        ),
    )
    .await
    .unwrap();
    assert_eq!(changed.status(), 200);
    let changed: Value = changed.json().await.unwrap();
    assert_eq!(changed["offline_after_s"], 120, "{changed}");
    assert_eq!(changed["backup_schedule"], "daily 02:30", "{changed}");
    // Keeping 30 days where everything was kept deletes data: pending for a day.
    assert_eq!(changed["retention_days"], Value::Null, "{changed}");
    assert_eq!(
        changed["retention_pending"]["retention_days"], 30,
        "{changed}"
    );
    assert_eq!(changed["retention_pending"]["requested_by"], "user:olga");
    assert_eq!(app.store.get_setting("retention_days").await.unwrap(), None);
    let audit = app.store.list_audit(50).await.unwrap();
    let settings_entry = audit
        .iter()
        .find(|e| e.action == "settings.update")
        .unwrap();
    assert_eq!(settings_entry.actor, "user:olga");
    assert_eq!(settings_entry.detail["retention_days"]["to"], 30);
    for action in [
        "user.create",
        "user.update",
        "user.delete",
        "token.create",
        "token.revoke",
    ] {
        assert!(audit.iter().any(|e| e.action == action), "{action} audited");
    }
    app.stop().await;
}

on_each_backend!(owners_manage_users_tokens_and_settings);

#[tokio::test]
async fn a_streamed_body_without_length_past_the_limit_gets_the_json_413_too() {
    let app = spawn_app(Db::Sqlite, "[http]\nbody_limit = 2048\n").await;
    let admin = app.token(Role::Admin).await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        std::iter::once(Ok(br#"{"name": ""#.to_vec()))
            .chain((0..8).map(|_| Ok(vec![b'x'; 1024])))
            .chain(std::iter::once(Ok(br#"", "protocol": "mqtt"}"#.to_vec())))
            .collect();
    let response = app
        .client
        .post(app.url("/api/devices"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_hardened("streamed 413", response.headers(), false);
    assert_eq!(error_code(response).await, "payload_too_large");
    assert!(app.store.list_devices().await.unwrap().is_empty());
    app.stop().await;
}

#[tokio::test]
async fn one_credential_is_rate_limited_from_every_address() {
    let app = spawn_app(
        Db::Sqlite,
        "[http]\ntrusted_proxies = [\"127.0.0.1\"]\n[http.rate_limit]\nrequests_per_second = 1\nburst = 3\n",
    )
    .await;
    let token = app.token(Role::Viewer).await;
    let mut statuses = Vec::new();
    for i in 0..6 {
        // A new client address each time: only the token's own bucket can run dry.
        let response = app
            .client
            .get(app.url("/api/devices"))
            .bearer_auth(&token)
            .header("x-forwarded-for", format!("10.9.0.{i}"))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            assert!(response.headers().contains_key("retry-after"));
        }
    }
    assert_eq!(&statuses[..3], &[200, 200, 200], "{statuses:?}");
    assert!(statuses[3..].contains(&429), "{statuses:?}");
    app.stop().await;
}
