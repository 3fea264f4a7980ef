//! A Modbus device edited, disabled and enabled through the API while it is polled: the
//! supervisor notices each change (by the device's version) and its poller follows.

use std::time::Duration;

use ddms::modbus::{ModbusSimulator, RegisterKind, ValueType};
use ddms::store::Role;
use serde_json::Value;
use uuid::Uuid;

use super::{create_device, device_body, latest, register, register_map, simulated};
use crate::support::app::{spawn_app, Db, TestApp};
use crate::support::wait::eventually;

#[tokio::test]
async fn an_edited_device_is_polled_at_its_new_address_and_a_disabled_one_not_at_all() {
    let app = spawn_app(Db::Sqlite, "").await;
    let admin = app.token(Role::Admin).await;
    let registers = |value| {
        vec![simulated(
            register("level", RegisterKind::Holding, 0, ValueType::U16),
            value,
        )]
    };
    let first = ModbusSimulator::start(registers(11.0)).await.unwrap();
    let second = ModbusSimulator::start(registers(22.0)).await.unwrap();
    let map = register_map(&registers(0.0));
    let id = create_device(
        &app,
        &admin,
        &device_body("tank", first.addr(), 200, map.clone()),
    )
    .await;
    eventually(
        "the first address's value",
        Duration::from_secs(20),
        || async { level(&app, &admin, id).await == Some(11.0) },
    )
    .await;

    put(
        &app,
        &admin,
        id,
        device_body("tank", second.addr(), 200, map.clone()),
    )
    .await;
    eventually(
        "the new address's value",
        Duration::from_secs(20),
        || async { level(&app, &admin, id).await == Some(22.0) },
    )
    .await;
    eventually(
        "the poller to leave the old address",
        Duration::from_secs(20),
        || async { first.open_connections() == 0 },
    )
    .await;

    let mut disabled = device_body("tank", second.addr(), 200, map.clone());
    disabled["enabled"] = Value::Bool(false);
    put(&app, &admin, id, disabled).await;
    eventually(
        "the disabled device's connection to close",
        Duration::from_secs(20),
        || async { second.open_connections() == 0 },
    )
    .await;

    let before = second.requests();
    put(
        &app,
        &admin,
        id,
        device_body("tank", second.addr(), 200, map),
    )
    .await;
    eventually(
        "the enabled device to be polled again",
        Duration::from_secs(20),
        || async { second.requests() > before },
    )
    .await;
}

async fn level(app: &TestApp, admin: &str, id: Uuid) -> Option<f64> {
    latest(app, admin, id).await["level"]["value"].as_f64()
}

async fn put(app: &TestApp, admin: &str, id: Uuid, body: Value) {
    let response = app
        .put_json(&format!("/api/devices/{id}"), admin, &body)
        .await;
    let status = response.status();
    assert_eq!(status, 200, "{}", response.text().await.unwrap());
}
