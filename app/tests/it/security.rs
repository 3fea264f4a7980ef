//! Web security: logins and sessions (cookies, expiry, logout, new ids), CSRF double-submit,
//! role boundaries, login throttling and rate limits, the hardening headers on every kind of
//! response, in-process TLS, the audit log, and hostile input stored as given.

mod accounts;

mod transport;

use transport::assert_hardened;

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
    let check = |session: &Session| {
        let request = with_session(app.client.get(app.url("/api/auth/session")), session, false);
        async move { request.send().await.unwrap().status() }
    };
    // Activity keeps it alive past the idle timeout: six requests 300 ms apart. Activity is
    // written at most every tenth of the timeout, so a request that comes less than 0.9 s after
    // the one before must find the session alive. On a busy machine two may come further apart
    // than that; then the session may rightly have ended, and the round starts over.
    let idle = Duration::from_secs(1);
    let resolution = idle / 10;
    let mut rounds = 0;
    let session = 'round: loop {
        rounds += 1;
        assert!(
            rounds <= 5,
            "no round of six requests without a stall of {idle:?}"
        );
        let mut previous = std::time::Instant::now();
        let session = app.login("alice").await;
        for _ in 0..6 {
            let sent = std::time::Instant::now();
            let status = check(&session).await;
            let apart = previous.elapsed() + resolution;
            if status != 200 && apart >= idle {
                continue 'round;
            }
            assert_eq!(status, 200, "{apart:?} after the previous activity");
            previous = sent;
            // sleep: the pace of the activity, under the idle timeout.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        break session;
    };
    // …and a pause longer than it ends it.
    // sleep: the subject is the idle timeout (1 s) running out: slept past it with a margin.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(check(&session).await, 401);
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
        // sleep: sampling the session every 250 ms across its absolute timeout (2 s): the
        // first sample comes right after the login, the last well past the timeout.
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
