//! The HTTP surface of the skeleton: probes, metrics, version, errors, request ids, limits, and
//! role enforcement on `/api/*`.

use ddms::store::Role;
use serde_json::{json, Value};

use crate::support::app::{spawn_app, Db};
use crate::support::services::Provider;

#[tokio::test]
async fn health_ready_version_and_metrics_answer_on_sqlite() {
    let app = spawn_app(Db::Sqlite, "").await;
    let health = app.get("/health").await;
    assert_eq!(health.status(), 200);
    assert_eq!(
        health.json::<Value>().await.unwrap(),
        json!({"status": "ok"})
    );

    let ready = app.get("/ready").await;
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["components"]["database"]["status"], "ok");
    assert_eq!(body["components"]["database"]["backend"], "sqlite");
    assert_eq!(body["components"]["migrations"]["status"], "ok");

    let version: Value = app.get("/api/version").await.json().await.unwrap();
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));
    assert!(version["git_sha"].is_string());
    assert_eq!(version["slot"], Value::Null);

    let metrics = app.get("/metrics").await;
    assert_eq!(metrics.status(), 200);
    assert!(metrics.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = metrics.text().await.unwrap();
    assert_prometheus_text(&text);
    assert!(
        text.contains(
            r#"ddms_http_requests_total{method="GET",route="/api/version",status="200"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains("ddms_http_request_duration_seconds_bucket{"),
        "{text}"
    );
    assert!(text.contains("process_resident_memory_bytes"), "{text}");
    app.stop().await;
}

/// A strict reading of the Prometheus text format: every sample line is `name{labels} value`
/// with a known metric family declared by # TYPE, and values parse as floats.
fn assert_prometheus_text(text: &str) {
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let name = parts.next().expect("metric name");
            let kind = parts.next().expect("metric type");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(
                    labels.starts_with('{') && labels.ends_with('}'),
                    "bad labels in {line}"
                );
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "sample without # TYPE: {line}");
    }
    assert!(!typed.is_empty());
}

#[tokio::test]
async fn ready_answers_on_postgres() {
    let app = spawn_app(Db::Postgres(Provider::from_env().await), "").await;
    let ready = app.get("/ready").await;
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["components"]["database"]["backend"], "postgres");
    app.stop().await;
}

#[tokio::test]
async fn request_id_is_taken_from_the_request_or_generated() {
    let app = spawn_app(Db::Sqlite, "").await;
    let given = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "trace-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(given.headers()["x-request-id"], "trace-abc-123");
    let generated = app.get("/health").await;
    let id = generated.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 4);
    let other = app.get("/nope").await;
    assert!(
        other.headers().contains_key("x-request-id"),
        "errors carry it too"
    );
    app.stop().await;
}

#[tokio::test]
async fn errors_use_the_json_error_shape() {
    let app = spawn_app(Db::Sqlite, "").await;
    for (response, status, code) in [
        (app.get("/no/such/route").await, 404, "not_found"),
        (
            app.client.delete(app.url("/health")).send().await.unwrap(),
            405,
            "method_not_allowed",
        ),
        (app.get("/api/me").await, 401, "unauthenticated"),
        (
            app.client
                .post(app.url("/api/tokens"))
                .bearer_auth(app.token(Role::Owner).await)
                .header("content-type", "application/json")
                .body("{not json")
                .send()
                .await
                .unwrap(),
            400,
            "bad_request",
        ),
    ] {
        assert_eq!(response.status(), status);
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn oversized_body_is_refused_with_413() {
    let app = spawn_app(Db::Sqlite, "[http]\nbody_limit = 2048\n").await;
    let owner = app.token(Role::Owner).await;
    let big = json!({"name": "x".repeat(4096), "role": "viewer"});
    let response = app.post_json("/api/tokens", Some(&owner), &big).await;
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");
    // Nothing was created.
    let ok = app
        .post_json(
            "/api/tokens",
            Some(&owner),
            &json!({"name": "small", "role": "viewer"}),
        )
        .await;
    assert_eq!(ok.status(), 201);
    app.stop().await;
}

#[tokio::test]
async fn bearer_tokens_authenticate_and_roles_are_enforced() {
    let app = spawn_app(Db::Sqlite, "").await;
    let viewer = app.token(Role::Viewer).await;
    let admin = app.token(Role::Admin).await;
    let owner = app.token(Role::Owner).await;

    let me: Value = app
        .get_with_token("/api/me", &viewer)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        me,
        json!({"subject": "token:test-viewer", "role": "viewer"})
    );

    assert_eq!(
        app.get_with_token("/api/me", "ddms_wrong").await.status(),
        401
    );
    let malformed = app
        .client
        .get(app.url("/api/me"))
        .header("authorization", "Basic Zm9vOmJhcg==")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 401);

    let body = json!({"name": "script", "role": "viewer"});
    assert_eq!(
        app.post_json("/api/tokens", None, &body).await.status(),
        401
    );
    assert_eq!(
        app.post_json("/api/tokens", Some(&viewer), &body)
            .await
            .status(),
        403
    );
    assert_eq!(
        app.post_json("/api/tokens", Some(&admin), &body)
            .await
            .status(),
        403
    );
    let created = app.post_json("/api/tokens", Some(&owner), &body).await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let secret = created["token"].as_str().unwrap();
    // The new token works, with the role it was given.
    let me: Value = app
        .get_with_token("/api/me", secret)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["role"], "viewer");
    // The creation is in the audit log, without the secret.
    let audit = app.store.list_audit(10).await.unwrap();
    assert_eq!(audit[0].action, "token.create");
    assert_eq!(audit[0].actor, "token:test-owner");
    assert_eq!(audit[0].remote_addr.as_deref(), Some("127.0.0.1"));
    assert!(!serde_json::to_string(&audit).unwrap().contains(secret));

    let invalid = app
        .post_json(
            "/api/tokens",
            Some(&owner),
            &json!({"name": " ", "role": "viewer"}),
        )
        .await;
    assert_eq!(invalid.status(), 422);
    let invalid: Value = invalid.json().await.unwrap();
    assert_eq!(invalid["error"]["field"], "name");
    let bad_role = app
        .post_json(
            "/api/tokens",
            Some(&owner),
            &json!({"name": "x", "role": "root"}),
        )
        .await;
    assert_eq!(bad_role.status(), 422);
    app.stop().await;
}
