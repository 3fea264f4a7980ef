//! Transport hardening: security headers on every answer, CORS closed unless configured,
//! Secure cookies and HSTS over in-process TLS or behind a trusted proxy.

use super::*;

pub(super) fn assert_hardened(what: &str, headers: &HeaderMap, https: bool) {
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
pub(super) fn test_certificates(dir: &std::path::Path) -> (String, String, String) {
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
