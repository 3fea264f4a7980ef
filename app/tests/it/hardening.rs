//! Limits on what outsiders can grow or hold: metric series, concurrent password hashing,
//! connections and streams, and the end of streams whose credentials ended; and what
//! anonymous or low-privileged callers may learn (device names, the last owner's fate).

use ddms::store::{NewUser, Role};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::app::{spawn_app, Db, TestApp};
use crate::support::services::Provider;

const PASSWORD: &str = "correct horse battery staple";

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

#[tokio::test]
async fn self_registration_does_not_tell_which_device_names_exist() {
    let app = spawn_app(Db::Sqlite, "[provisioning]\ntoken = \"prov-secret-42\"\n").await;
    let admin = app.token(Role::Admin).await;
    let existing = app
        .post_json(
            "/api/devices",
            Some(&admin),
            &json!({ "name": "boiler-room-7", "protocol": "mqtt" }),
        )
        .await;
    assert_eq!(existing.status(), StatusCode::CREATED);
    let register = |name: &'static str| {
        app.client
            .post(app.url("/api/devices/register"))
            .header("x-provisioning-token", "prov-secret-42")
            .json(&json!({ "name": name }))
            .send()
    };
    let taken = register("boiler-room-7").await.unwrap();
    let free = register("boiler-room-8").await.unwrap();
    // The same answer whether the name was taken or not.
    assert_eq!(taken.status(), StatusCode::CREATED);
    assert_eq!(free.status(), StatusCode::CREATED);
    let taken: Value = taken.json().await.unwrap();
    let name = taken["name"].as_str().unwrap();
    assert!(
        name.starts_with("boiler-room-7-") && name.len() == "boiler-room-7-".len() + 8,
        "{taken}"
    );
    let free: Value = free.json().await.unwrap();
    assert_eq!(free["name"], "boiler-room-8");
    app.stop().await;
}

/// Two owners demote each other's last fellow owner at the same moment: one change wins, the
/// other is refused, and an enabled owner always remains.
async fn the_last_owner_survives_concurrent_demotions_and_deletions(db: Db) {
    let app = spawn_app(db, "").await;
    let owner_token = app.token(Role::Owner).await;
    for round in 0..10 {
        let (a, b) = (format!("owner-a{round}"), format!("owner-b{round}"));
        add_user(&app, &a, Role::Owner).await;
        add_user(&app, &b, Role::Owner).await;
        // Earlier rounds' survivors step down first (the pre-check allows it: two owners).
        for user in app.store.list_users().await.unwrap() {
            if user.role == Role::Owner && user.username != a && user.username != b {
                app.store.delete_user(user.id).await.unwrap();
            }
        }
        let id = |name: &str| {
            let store = app.store.clone();
            let name = name.to_string();
            async move { store.find_user(&name).await.unwrap().id }
        };
        let (a_id, b_id) = (id(&a).await, id(&b).await);
        let change = |user: uuid::Uuid, delete: bool| {
            let request = if delete {
                app.client.delete(app.url(&format!("/api/users/{user}")))
            } else {
                app.client
                    .patch(app.url(&format!("/api/users/{user}")))
                    .json(&json!({ "role": "admin" }))
            };
            request.bearer_auth(&owner_token).send()
        };
        let delete = round % 2 == 1;
        let (first, second) = tokio::join!(change(a_id, false), change(b_id, delete));
        let statuses = [first.unwrap().status(), second.unwrap().status()];
        let owners = app
            .store
            .list_users()
            .await
            .unwrap()
            .into_iter()
            .filter(|u| u.role == Role::Owner && !u.is_disabled())
            .count();
        assert_eq!(
            owners, 1,
            "round {round}: {statuses:?} left {owners} owners"
        );
        assert!(
            statuses.contains(&StatusCode::CONFLICT),
            "round {round}: {statuses:?}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn the_last_owner_survives_concurrent_demotions_and_deletions_on_sqlite() {
    the_last_owner_survives_concurrent_demotions_and_deletions(Db::Sqlite).await;
}

#[tokio::test]
async fn the_last_owner_survives_concurrent_demotions_and_deletions_on_postgres() {
    the_last_owner_survives_concurrent_demotions_and_deletions(Db::Postgres(
        Provider::from_env().await,
    ))
    .await;
}
