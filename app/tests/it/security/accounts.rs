//! Accounts as owners run them: users, tokens and settings managed, logins and device changes
//! audited, hostile names stored as given, `ddms user add`.

use super::*;

pub(super) async fn logins_and_device_changes_are_audited(db: Db) {
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

pub(super) async fn hostile_device_names_are_stored_as_given(db: Db) {
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

pub(super) async fn owners_manage_users_tokens_and_settings(db: Db) {
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
