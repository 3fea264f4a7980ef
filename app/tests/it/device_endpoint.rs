//! The broker address devices are given with their credentials (`mqtt.public_url`, or the
//! host the device used when the broker binds every address).

use serde_json::{json, Value};

use crate::support::app::{spawn_app, Db, TestApp};

const PROVISIONING_TOKEN: &str = "endpoint-test-provisioning-token";

async fn register(app: &TestApp, base: &str, name: &str) -> Value {
    let response = app
        .client
        .post(format!("{base}/api/devices/register"))
        .header("X-Provisioning-Token", PROVISIONING_TOKEN)
        .json(&json!({ "name": name }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    body["mqtt"].clone()
}

#[tokio::test]
async fn devices_are_told_the_public_broker_address_not_the_one_ddms_binds() {
    let app = spawn_app(
        Db::Sqlite,
        &format!(
            "[mqtt]\nmode = \"embedded\"\npublic_url = \"mqtts://mqtt.plant.example:18883\"\n\
             [mqtt.embedded]\nlisten = \"127.0.0.1:0\"\n\
             [provisioning]\ntoken = {PROVISIONING_TOKEN:?}\n"
        ),
    )
    .await;
    let base = app.url("");
    let registered = register(&app, base.trim_end_matches('/'), "registered").await;
    assert_eq!(registered["host"], "mqtt.plant.example", "{registered}");
    assert_eq!(registered["port"], 18883);
    assert_eq!(registered["tls"], true);

    let admin = app.token(ddms::store::Role::Admin).await;
    let created = app
        .post_json(
            "/api/devices",
            Some(&admin),
            &json!({ "name": "created", "protocol": "mqtt" }),
        )
        .await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["mqtt"]["host"], "mqtt.plant.example", "{created}");
    app.stop().await;
}

#[tokio::test]
async fn a_broker_on_every_address_is_named_by_the_host_the_device_used() {
    let port = crate::support::services::free_port().unwrap();
    let app = spawn_app(
        Db::Sqlite,
        &format!(
            "[mqtt]\nmode = \"embedded\"\n[mqtt.embedded]\nlisten = \"0.0.0.0:{port}\"\n\
             [provisioning]\ntoken = {PROVISIONING_TOKEN:?}\n"
        ),
    )
    .await;
    for (base, expected) in [
        (format!("http://localhost:{}", app.addr.port()), "localhost"),
        (format!("http://127.0.0.1:{}", app.addr.port()), "127.0.0.1"),
    ] {
        let mqtt = register(&app, &base, &format!("via-{expected}")).await;
        assert_eq!(mqtt["host"], expected, "{mqtt}");
        assert_eq!(mqtt["port"], port);
        // The answer is an address the device can really connect to.
        tokio::net::TcpStream::connect((expected, port))
            .await
            .unwrap_or_else(|e| panic!("{expected}:{port}: {e}"));
    }
    app.stop().await;
}
