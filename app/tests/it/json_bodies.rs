//! Every JSON body of the API is an object. serde reads a struct from an array of its fields in
//! order too, so before `http::body::JsonBody` `PUT /api/system/config` with `[null, null]`
//! answered 200 and `POST /api/auth/login` took `["name", "password"]`. Each route that takes
//! a body refuses an array, a number and `null` with 422 naming `body`, and changes nothing.

use ddms::store::Role;
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::app::{spawn_app, Db};

#[tokio::test]
async fn every_json_body_must_be_an_object() {
    let app = spawn_app(Db::Sqlite, "").await;
    let owner = app.token(Role::Owner).await;
    let before: Value = app
        .get_with_token("/api/system/config", &owner)
        .await
        .json()
        .await
        .unwrap();
    let id = Uuid::now_v7();
    let routes = [
        (Method::POST, "/api/auth/login".to_string()),
        (Method::POST, "/api/auth/password".to_string()),
        (Method::POST, "/api/users".to_string()),
        (Method::PATCH, format!("/api/users/{id}")),
        (Method::POST, "/api/tokens".to_string()),
        (Method::PUT, "/api/system/config".to_string()),
        (Method::POST, "/api/groups".to_string()),
        (Method::POST, "/api/devices".to_string()),
        (Method::POST, "/api/devices/register".to_string()),
        (Method::PUT, format!("/api/devices/{id}")),
        (Method::POST, "/api/alert-rules".to_string()),
        (Method::PUT, format!("/api/alert-rules/{id}")),
        (Method::POST, "/api/channels".to_string()),
        (Method::PUT, format!("/api/channels/{id}")),
        (Method::POST, format!("/api/alerts/{id}/ack")),
        (Method::POST, "/api/silences".to_string()),
    ];
    let client = reqwest::Client::new();
    for (method, path) in &routes {
        for body in [
            json!([null, null]),
            json!(["owner", "a password long enough"]),
            json!(7),
            json!(null),
        ] {
            let response = client
                .request(method.clone(), app.url(path))
                .bearer_auth(&owner)
                .header("X-Provisioning-Token", "not checked before the body")
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = response.status();
            let answer: Value = response.json().await.unwrap();
            assert_eq!(status, 422, "{method} {path} with {body}: {answer}");
            assert_eq!(
                answer["error"]["field"], "body",
                "{method} {path}: {answer}"
            );
        }
    }
    let after: Value = app
        .get_with_token("/api/system/config", &owner)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(before, after);
    // An object still works.
    let changed = app
        .put_json(
            "/api/system/config",
            &owner,
            &json!({ "offline_after_s": 120 }),
        )
        .await;
    assert_eq!(changed.status(), 200);
    app.stop().await;
}
