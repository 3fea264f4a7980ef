//! Dashboard sessions in a real browser: an owner logs in and changes settings while readings
//! arrive live, a viewer's writes are all refused, a foreign `next` stays on the site.

use super::*;

#[tokio::test]
async fn an_owner_logs_in_sees_readings_live_over_event_source_and_changes_settings() {
    let app = spawn_app(Db::Sqlite, "").await;
    let admin = app.token(Role::Admin).await;
    app.add_user("ada", Role::Owner).await;
    let device = create_device(
        &app,
        &admin,
        json!({"name": "greenhouse-3", "protocol": "mqtt"}),
    )
    .await;

    let browser = Browser::start().await;
    // A wrong password is refused on the form.
    browser.client.goto(&app.url("/login")).await.unwrap();
    browser.type_into("#username", "ada").await;
    browser.type_into("#password", "wrong").await;
    browser.click("#submit").await;
    let refused = browser
        .wait_js("!document.getElementById('login-error').hidden && document.getElementById('login-error').textContent", Duration::from_secs(10))
        .await;
    assert_eq!(refused, json!("Wrong username or password."));

    log_in(&browser, &app, "ada", "/").await;
    assert_eq!(
        browser.js("return typeof EventSource;").await,
        json!("function")
    );
    browser
        .wait_js(
            "document.getElementById('connection').dataset.state === 'live'",
            Duration::from_secs(10),
        )
        .await;
    let nav = browser
        .js("return [...document.querySelectorAll('#nav a')].filter(a => a.offsetParent !== null).map(a => a.textContent);")
        .await;
    assert_eq!(
        nav,
        json!([
            "Dashboard",
            "Notifications",
            "Alerts",
            "Devices",
            "Alert rules",
            "Channels",
            "Audit log",
            "Users and tokens",
            "Settings"
        ])
    );
    app.ingest
        .submit(
            "api",
            vec![Sample {
                device_id: device,
                metric: "humidity".into(),
                unit: Some("%".into()),
                ts: Utc::now(),
                value: 61.5,
            }],
        )
        .await
        .unwrap();
    let committed = Instant::now();
    browser
        .wait_js(&format!("document.querySelector('#values-{device} [data-metric=\"humidity\"] .metric-value')?.textContent === '61.50 %'"), Duration::from_secs(2))
        .await;
    assert!(committed.elapsed() < Duration::from_secs(2));

    // A write with the session: the page sends the CSRF token, the change is stored.
    browser
        .client
        .goto(&app.url("/admin/settings"))
        .await
        .unwrap();
    browser
        .wait_js(
            "!document.getElementById('settings-content').hidden",
            Duration::from_secs(10),
        )
        .await;
    browser.type_into("[name=retention_days]", "400").await;
    browser
        .type_into("[name=backup_schedule]", "sometimes")
        .await;
    browser.click("#settings-save").await;
    let error = browser
        .wait_js(
            "document.querySelector('[data-error-field=\"backup_schedule\"]')?.textContent",
            Duration::from_secs(10),
        )
        .await;
    assert!(!error.as_str().unwrap().is_empty());
    browser
        .type_into("[name=backup_schedule]", "daily 02:30")
        .await;
    browser.click("#settings-save").await;
    browser
        .wait_js(
            "!document.getElementById('settings-saved').hidden",
            Duration::from_secs(10),
        )
        .await;
    // Keeping 400 days where everything was kept deletes data: pending for a day.
    assert_eq!(app.store.get_setting("retention_days").await.unwrap(), None);
    assert_eq!(
        app.store
            .get_setting("retention_pending")
            .await
            .unwrap()
            .unwrap()["retention_days"],
        json!(400)
    );
    browser
        .wait_js(
            "!document.getElementById('retention-pending').hidden",
            Duration::from_secs(10),
        )
        .await;
    // "Delete now", confirmed: it takes effect at once.
    browser.click("#retention-apply").await;
    browser.client.accept_alert().await.unwrap();
    browser
        .wait_js(
            "document.getElementById('retention-pending').hidden",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        app.store.get_setting("retention_days").await.unwrap(),
        Some(json!(400))
    );
    assert_eq!(
        app.store.get_setting("backup_schedule").await.unwrap(),
        Some(json!("daily 02:30"))
    );
    // Back up now: the archive is listed once written, with the session's CSRF token sent.
    browser
        .wait_js(
            "!document.getElementById('backups-empty').hidden",
            Duration::from_secs(10),
        )
        .await;
    browser.click("#backup-now").await;
    let archive = browser
        .wait_js(
            "document.querySelector('#backup-rows [data-backup]')?.dataset.backup",
            Duration::from_secs(20),
        )
        .await;
    let archive = archive.as_str().unwrap().to_string();
    assert!(archive.starts_with("ddms-backup-"), "{archive}");
    let audit = app.store.list_audit(20).await.unwrap();
    assert!(
        audit.iter().any(|e| e.action == "backup.create"
            && e.target.as_deref() == Some(&format!("backup:{archive}"))),
        "{audit:?}"
    );
    browser.screenshots("settings").await;

    // Users and tokens: a new token is shown once; the audit log lists the changes.
    browser.client.goto(&app.url("/admin/users")).await.unwrap();
    browser
        .wait_js(
            "!document.getElementById('users-content').hidden",
            Duration::from_secs(10),
        )
        .await;
    browser.type_into("#new-token-name", "scada-export").await;
    browser.click("#token-form button").await;
    let secret = browser
        .wait_js("!document.getElementById('secret').hidden && document.getElementById('secret-value').textContent", Duration::from_secs(10))
        .await;
    let me: Value = app
        .get_with_token("/api/me", secret.as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["subject"], "token:scada-export");
    browser.screenshots("users").await;
    browser.client.goto(&app.url("/admin/audit")).await.unwrap();
    browser
        .wait_js(
            "!document.getElementById('audit-content').hidden",
            Duration::from_secs(10),
        )
        .await;
    let actions = browser.js("return [...document.querySelectorAll('#audit-rows tr td:nth-child(3)')].map(td => td.textContent);").await;
    for action in ["auth.login", "token.create"] {
        assert!(
            actions.as_array().unwrap().iter().any(|a| a == action),
            "{action}: {actions}"
        );
    }
    browser.screenshots("audit").await;

    browser.click("#logout").await;
    browser
        .wait_js("location.pathname === '/login'", Duration::from_secs(10))
        .await;
    browser.client.goto(&app.url("/")).await.unwrap();
    browser
        .wait_js("location.pathname === '/login'", Duration::from_secs(10))
        .await;
    browser.close().await;
    app.stop().await;
}

#[tokio::test]
async fn a_viewer_with_a_session_sees_no_settings_and_every_write_is_refused() {
    let app = spawn_app(Db::Sqlite, "").await;
    app.add_user("vic", Role::Viewer).await;
    let browser = Browser::start().await;
    log_in(&browser, &app, "vic", "/").await;
    let nav = browser
        .js("return [...document.querySelectorAll('#nav a')].filter(a => a.offsetParent !== null).map(a => a.textContent);")
        .await;
    assert_eq!(nav, json!(["Dashboard", "Notifications", "Alerts"]));
    browser
        .client
        .goto(&app.url("/admin/settings"))
        .await
        .unwrap();
    browser
        .wait_js(
            "!document.getElementById('settings-empty').hidden",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        browser
            .js("return document.getElementById('settings-content').hidden && document.getElementById('backups-section').hidden;")
            .await,
        json!(true)
    );
    // Even with the CSRF token the viewer's session may change nothing.
    let statuses = browser
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             const csrf = document.cookie.split('; ').find(c => c.startsWith('ddms_csrf=')).split('=')[1];
             const headers = { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf };
             Promise.all([
               fetch('/api/system/config', { method: 'PUT', headers, body: JSON.stringify({ retention_days: 1 }) }),
               fetch('/api/devices', { method: 'POST', headers, body: JSON.stringify({ name: 'x', protocol: 'mqtt' }) }),
               fetch('/api/users', { method: 'GET' }),
             ]).then(rs => done(rs.map(r => r.status)));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(statuses, json!([403, 403, 403]));
    assert_eq!(app.store.get_setting("retention_days").await.unwrap(), None);
    browser.close().await;
    app.stop().await;
}

/// `?next=` after a login never leaves the site, however the URL is disguised (a tab the URL
/// parser drops, a backslash it reads as a slash, a scheme-relative or absolute URL).
#[tokio::test]
async fn a_login_with_a_foreign_next_stays_on_the_site() {
    let app = spawn_app(Db::Sqlite, "").await;
    app.add_user("ann", Role::Viewer).await;
    let browser = Browser::start().await;
    let origin = format!("http://{}", app.addr);
    for next in [
        "%2F%09%2Fevil.example",
        "//evil.example",
        "https://evil.example",
        "/%5Cevil.example",
        "javascript:alert(1)",
    ] {
        browser
            .client
            .goto(&app.url(&format!("/login?next={next}")))
            .await
            .unwrap();
        browser.type_into("#username", "ann").await;
        browser.type_into("#password", PASSWORD).await;
        browser.click("#submit").await;
        // Wait for the navigation the login starts to land somewhere, then look where.
        let deadline = Instant::now() + Duration::from_secs(10);
        let landed = loop {
            let here = browser
                .js("return [location.origin, location.pathname, document.getElementById('whoami')?.textContent || ''];")
                .await;
            let off_site = here[0] != json!(origin);
            let signed_in = here[2] == json!("user:ann");
            if off_site || signed_in {
                break here;
            }
            assert!(
                Instant::now() < deadline,
                "next={next}: no page after login: {here}"
            );
            // sleep: the poll interval of this wait with a deadline (it reports the page)
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            landed[0],
            json!(origin),
            "next={next} left the site: {landed}"
        );
        assert_eq!(landed[1], json!("/"), "next={next}: {landed}");
    }
    browser.close().await;
    app.stop().await;
}
