//! `GET /api/openapi.json` in step with the router, and the roles it documents enforced on
//! every route: each documented operation is tried with no credentials, with a session
//! lacking the CSRF token, with the role just below the one it needs, and with that role.

use std::collections::BTreeSet;

use ddms::store::Role;
use serde_json::{json, Value};

use crate::support::app::{spawn_app, Db, TestApp};
use crate::support::session::{with_session, Session};

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

fn document() -> Value {
    let text = include_str!("../../src/http/openapi.json");
    serde_json::from_str(text).expect("openapi.json is JSON")
}

/// (METHOD, path) of every operation in the document.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if item.get(method).is_some() {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

#[tokio::test]
async fn the_openapi_document_lists_exactly_the_routes_of_the_router() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let router: BTreeSet<(String, String)> = ddms::http::api::routes()
        .into_iter()
        .map(|(m, p)| (m.as_str().to_string(), p))
        .collect();
    let in_doc: BTreeSet<(String, String)> = documented(&doc)
        .into_iter()
        .filter(|(_, p)| p.starts_with("/api/"))
        .collect();
    let undocumented: Vec<_> = router.difference(&in_doc).collect();
    let not_routed: Vec<_> = in_doc.difference(&router).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from app/src/http/openapi.json: {undocumented:?}"
    );
    assert!(
        not_routed.is_empty(),
        "documented but not routed: {not_routed:?}"
    );
    // Every operation says who may call it.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if let Some(op) = item.get(method) {
                let public = op.get("security") == Some(&json!([]));
                let role = op.get("x-required-role").and_then(Value::as_str);
                assert!(
                    public != role.is_some(),
                    "{method} {path}: either `\"security\": []` or `x-required-role`"
                );
                if let Some(role) = role {
                    role.parse::<Role>().unwrap();
                }
                assert!(op["summary"].is_string(), "{method} {path}: summary");
            }
        }
    }
    // Every $ref resolves.
    let text = doc.to_string();
    for part in text.split("\"$ref\":\"#/").skip(1) {
        let pointer = format!("/{}", part.split('"').next().unwrap());
        assert!(doc.pointer(&pointer).is_some(), "dangling $ref {pointer}");
    }
    // The served document is this one.
    let app = spawn_app(Db::Sqlite, "").await;
    let served: Value = app.get("/api/openapi.json").await.json().await.unwrap();
    assert_eq!(served, doc);
    // The documented probes outside /api answer.
    for (_, path) in documented(&doc)
        .iter()
        .filter(|(_, p)| !p.starts_with("/api/"))
    {
        assert_eq!(app.get(path).await.status(), 200, "{path}");
    }
    app.stop().await;
}

/// A user of `role` ("u-<role>"), logged in.
async fn login(app: &TestApp, role: Role) -> Session {
    let username = format!("u-{role}");
    app.add_user(&username, role).await;
    app.login(&username).await
}

fn concrete(path: &str) -> String {
    path.replace("{id}", "0190b5a0-0000-7000-8000-000000000000")
}

async fn call(
    app: &TestApp,
    method: &str,
    path: &str,
    login: Option<&Session>,
    csrf: bool,
) -> (u16, String) {
    let method: reqwest::Method = method.to_uppercase().parse().unwrap();
    let mut request = app.client.request(method.clone(), app.url(&concrete(path)));
    if let Some(login) = login {
        request = with_session(request, login, csrf);
    }
    if method != reqwest::Method::GET && method != reqwest::Method::DELETE {
        request = request.json(&json!({}));
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    // `/api/stream` never ends: read the body only of answers that are errors.
    let code = if status >= 400 {
        let body: Value = response.json().await.unwrap_or(Value::Null);
        format!("{} {}", body["error"]["code"], body["error"]["message"])
    } else {
        String::new()
    };
    (status, code)
}

#[tokio::test]
async fn every_documented_route_enforces_its_role_and_the_csrf_token() {
    let app = spawn_app(Db::Sqlite, "[http.rate_limit]\nrequests_per_second = 0\n").await;
    let owner = login(&app, Role::Owner).await;
    let admin = login(&app, Role::Admin).await;
    let viewer = login(&app, Role::Viewer).await;
    let session = |role: Role| match role {
        Role::Owner => &owner,
        Role::Admin => &admin,
        Role::Viewer => &viewer,
    };
    let doc = document();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/api/") {
            continue;
        }
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            let what = format!("{method} {path}");
            let Some(role) = op.get("x-required-role").and_then(Value::as_str) else {
                // Public: no credentials needed to be heard (logout, login, register, …).
                let (status, code) = call(&app, method, path, None, false).await;
                assert_ne!(status, 401, "{what}: {code}");
                continue;
            };
            let role: Role = role.parse().unwrap();
            let (status, code) = call(&app, method, path, None, false).await;
            assert_eq!(status, 401, "{what} without credentials: {code}");
            let weaker = match role {
                Role::Owner => Some(Role::Admin),
                Role::Admin => Some(Role::Viewer),
                Role::Viewer => None,
            };
            if let Some(weaker) = weaker {
                let (status, code) = call(&app, method, path, Some(session(weaker)), true).await;
                assert_eq!(status, 403, "{what} as {weaker}: {code}");
                assert!(code.contains("forbidden"), "{what} as {weaker}: {code}");
            }
            let (status, code) = call(&app, method, path, Some(session(role)), true).await;
            assert!(
                ![401, 403, 405].contains(&status) && !code.contains("route not found"),
                "{what} as {role}: {status} {code}"
            );
            if method != "get" {
                let (status, code) = call(&app, method, path, Some(session(role)), false).await;
                assert_eq!(status, 403, "{what} as {role} without X-CSRF-Token: {code}");
                assert!(code.contains("csrf_failed"), "{what}: {code}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "{checked} operations checked");
    app.stop().await;
}
