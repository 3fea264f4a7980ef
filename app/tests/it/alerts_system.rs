//! System alerts about ddms itself reach a real channel (the independent webhook receiver),
//! each from a real condition: a full file system (`disk_space`), ddms not ready
//! (`not_ready`: the MQTT broker gone, or PostgreSQL stopped), a failed scheduled backup
//! (`backup_failed`), no recent backup (`backup_stale`), and a shortened retention waiting to
//! delete data (`retention_pending`), on SQLite and PostgreSQL.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::Utc;
use ddms::store::{NewDevice, Protocol, Reading, Role};
use serde_json::{json, Value};

use crate::support::app::{spawn_app, Db, TestApp};
use crate::support::services::{Mosquitto, Postgres, Provider};
use crate::support::wait::eventually;
use crate::support::webhook::WebhookReceiver as Receiver;

/// The webhook channel's HMAC key; the receiver verifies signatures with it.
const SECRET: &str = "hmac-key-5c2e";
/// The receiver listens on loopback; the checks run every 0.2 s.
const ALERTS: &str = "[alerts]\nallow_private_targets = true\nevaluation_interval = 0.2\n";

/// A webhook channel to `receiver` and a system rule for `check` (ddms itself: no device)
/// notifying it.
async fn system_rule(app: &TestApp, receiver: &Receiver, check: &str) {
    let admin = app.token(Role::Admin).await;
    let response = app
        .post_json(
            "/api/channels",
            Some(&admin),
            &json!({"name": "ops", "kind": "webhook", "settings": {"url": receiver.url("/ok")},
                    "secret": SECRET, "allow_private": true}),
        )
        .await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let channel: Value = response.json().await.unwrap();
    let response = app
        .post_json(
            "/api/alert-rules",
            Some(&admin),
            &json!({"name": format!("ddms {check}"), "condition": "system",
                    "system_check": check, "severity": "critical",
                    "channels": [channel["id"]]}),
        )
        .await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
}

/// What the receiver got, in order: (state, summary), every signature checked.
fn received(receiver: &Receiver) -> Vec<(String, String)> {
    receiver
        .requests()
        .iter()
        .map(|r| {
            assert_eq!(r["signature_valid"], true, "{r}");
            (
                r["body"]["state"].as_str().unwrap().to_string(),
                r["body"]["summary"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Waits until the receiver got exactly `states` (in order) and returns the messages.
async fn wait_for(receiver: &Receiver, states: &[&str], limit: Duration) -> Vec<(String, String)> {
    eventually(
        &format!("the receiver to get {states:?}"),
        limit,
        || async {
            let got = received(receiver);
            assert!(
                got.len() <= states.len(),
                "more notifications than expected: {got:?}"
            );
            got.iter()
                .map(|(s, _)| s.as_str())
                .eq(states.iter().copied())
        },
    )
    .await;
    received(receiver)
}

// ------------------------------------------------------------------------------ disk_space

/// A small tmpfs, unmounted on drop. Mounting needs root (the test environment runs as root
/// in a container); a failure says so.
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs failed ({status}): this test needs root (CAP_SYS_ADMIN)"
        );
        Tmpfs { path, _dir: dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

async fn a_full_backup_disk_fires_disk_space_and_freeing_it_resolves(db: Db) {
    let receiver = Receiver::start(SECRET).await;
    // 1 MiB: a 960 KiB file leaves about 6 % free, under the default floor of 10 %.
    let tmpfs = Tmpfs::mount("1m");
    let backups = tmpfs.path.join("backups");
    let app = spawn_app(db, &format!("{ALERTS}[backup]\ndir = {backups:?}\n")).await;
    system_rule(&app, &receiver, "disk_space").await;
    let free = ddms::alerts::watch::free_percent(&backups).unwrap();
    assert!(free > 90.0, "the empty tmpfs is free: {free}");
    let filler = tmpfs.path.join("filler");
    std::fs::write(&filler, vec![7u8; 960 * 1024]).unwrap();
    let free = ddms::alerts::watch::free_percent(&backups).unwrap();
    assert!(free < 10.0, "the tmpfs is full: {free}");

    let got = wait_for(&receiver, &["firing"], Duration::from_secs(30)).await;
    let summary = &got[0].1;
    // Both directories are named, the full one marked.
    assert!(
        summary.contains(&format!("backup.dir {}", backups.display())),
        "{summary}"
    );
    assert!(summary.contains("data_dir "), "{summary}");
    assert!(summary.contains("% free (low)"), "{summary}");
    assert!(summary.contains("floor 10 %"), "{summary}");

    std::fs::remove_file(&filler).unwrap();
    let got = wait_for(&receiver, &["firing", "resolved"], Duration::from_secs(30)).await;
    assert!(
        got[1].1.starts_with("resolved: disk_space on ddms"),
        "{got:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn sqlite_a_full_backup_disk_fires_disk_space_and_freeing_it_resolves() {
    a_full_backup_disk_fires_disk_space_and_freeing_it_resolves(Db::Sqlite).await;
}

#[tokio::test]
async fn postgres_a_full_backup_disk_fires_disk_space_and_freeing_it_resolves() {
    a_full_backup_disk_fires_disk_space_and_freeing_it_resolves(Db::Postgres(
        Provider::from_env().await,
    ))
    .await;
}

// ------------------------------------------------------------------------------- not_ready

/// `/ready` answers `status` (polled).
async fn wait_ready_status(app: &TestApp, status: u16, limit: Duration) {
    eventually(&format!("/ready to answer {status}"), limit, || async {
        app.get("/ready").await.status() == status
    })
    .await;
}

/// Keeps the outage going for `hold` after /ready first said so: longer than the grace.
async fn not_ready_for(app: &TestApp, hold: Duration) {
    wait_ready_status(app, 503, Duration::from_secs(30)).await;
    let since = Instant::now();
    while since.elapsed() < hold {
        assert_eq!(app.get("/ready").await.status(), 503, "still not ready");
        // sleep: the subject is time passing: the outage must last `hold`, longer than the grace,
        // and /ready is sampled through it
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn sqlite_the_mqtt_broker_gone_fires_not_ready_while_it_lasts() {
    let receiver = Receiver::start(SECRET).await;
    let broker = Mosquitto::start(Provider::from_env().await, "")
        .await
        .unwrap();
    let app = spawn_app(
        Db::Sqlite,
        &format!(
            "{ALERTS}not_ready_grace = 1\n[mqtt]\nmode = \"external\"\n\
             url = \"mqtt://127.0.0.1:{}\"\nclient_id = \"ddms-sysalerts\"\n",
            broker.port()
        ),
    )
    .await;
    wait_ready_status(&app, 200, Duration::from_secs(30)).await;
    system_rule(&app, &receiver, "not_ready").await;

    broker.stop().await.unwrap();
    // Fires while the broker is still down: the database is fine, so it is stored and sent.
    let got = wait_for(&receiver, &["firing"], Duration::from_secs(30)).await;
    assert_eq!(app.get("/ready").await.status(), 503);
    let summary = &got[0].1;
    assert!(
        summary.starts_with("not_ready on ddms: not ready since "),
        "{summary}"
    );
    assert!(summary.contains("mqtt: not connected"), "{summary}");

    broker.restart().await.unwrap();
    let got = wait_for(&receiver, &["firing", "resolved"], Duration::from_secs(60)).await;
    assert!(got[1].1.contains("ready again at"), "{got:?}");
    app.stop().await;
}

#[tokio::test]
async fn postgres_stopped_is_reported_as_not_ready_once_it_is_back() {
    let receiver = Receiver::start(SECRET).await;
    // Its own server: stopping the shared one would break the other tests.
    let server: &'static Postgres = Box::leak(Box::new(
        Postgres::start(Provider::from_env().await).await.unwrap(),
    ));
    let app = spawn_app(
        Db::PostgresOn(server),
        &format!("{ALERTS}not_ready_grace = 1\n"),
    )
    .await;
    wait_ready_status(&app, 200, Duration::from_secs(30)).await;
    system_rule(&app, &receiver, "not_ready").await;

    server.stop().await.unwrap();
    // Three times the grace: the outage is long enough to be reported.
    not_ready_for(&app, Duration::from_secs(3)).await;
    // Nothing can be stored, so nothing is sent while the database is down.
    assert!(received(&receiver).is_empty());
    server.restart().await.unwrap();
    let got = wait_for(&receiver, &["firing", "resolved"], Duration::from_secs(60)).await;
    let summary = &got[0].1;
    // Stored on the first tick the database takes writes: "was not ready from … to …" when
    // /ready already said ready then, else "not ready since …" (the ping, with its own
    // timeout, may still fail while the pool reconnects) and the resolve a tick later.
    assert!(
        summary.starts_with("not_ready on ddms: was not ready from ")
            || summary.starts_with("not_ready on ddms: not ready since "),
        "{summary}"
    );
    assert!(
        summary.contains("database: database unreachable"),
        "{summary}"
    );
    assert!(got[1].1.contains("ready again at"), "{got:?}");
    app.stop().await;
}

// ---------------------------------------------------------------------------------- backups

/// The first whole minute at least 10 s away, as a daily schedule due then (10 to 70 s).
fn due_soon() -> (String, chrono::DateTime<Utc>) {
    use chrono::{DurationRound, Timelike};
    let due = (Utc::now() + chrono::Duration::seconds(10))
        .duration_trunc(chrono::Duration::minutes(1))
        .unwrap()
        + chrono::Duration::minutes(1);
    (format!("daily {:02}:{:02}", due.hour(), due.minute()), due)
}

async fn a_failed_scheduled_backup_fires_and_the_next_success_resolves(db: Db) {
    let receiver = Receiver::start(SECRET).await;
    // backup.dir under a regular file: it cannot be created, so the backup fails.
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let backups = blocker.join("backups");
    let app = spawn_app(db, &format!("{ALERTS}[backup]\ndir = {backups:?}\n")).await;
    let owner = app.token(Role::Owner).await;
    system_rule(&app, &receiver, "backup_failed").await;
    let (schedule, due) = due_soon();
    let response = app
        .put_json(
            "/api/system/config",
            &owner,
            &json!({ "backup_schedule": schedule }),
        )
        .await;
    assert_eq!(response.status(), 200);

    let wait = (due - Utc::now()).to_std().unwrap() + Duration::from_secs(30);
    let got = wait_for(&receiver, &["firing"], wait).await;
    let summary = &got[0].1;
    assert!(
        summary.starts_with("backup_failed on ddms: scheduled backup failed: "),
        "{summary}"
    );
    assert!(
        summary.contains(&backups.display().to_string()),
        "{summary}"
    );

    // Fixed: the next backup (here the owner's) succeeds and resolves it.
    std::fs::remove_file(&blocker).unwrap();
    let response = app
        .post_json("/api/system/backup", Some(&owner), &json!({}))
        .await;
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    let got = wait_for(&receiver, &["firing", "resolved"], Duration::from_secs(60)).await;
    assert!(got[1].1.contains("written"), "{got:?}");
    app.stop().await;
}

#[tokio::test]
async fn sqlite_a_failed_scheduled_backup_fires_and_the_next_success_resolves() {
    a_failed_scheduled_backup_fires_and_the_next_success_resolves(Db::Sqlite).await;
}

#[tokio::test]
async fn postgres_a_failed_scheduled_backup_fires_and_the_next_success_resolves() {
    a_failed_scheduled_backup_fires_and_the_next_success_resolves(Db::Postgres(
        Provider::from_env().await,
    ))
    .await;
}

async fn no_recent_backup_fires_backup_stale_and_a_backup_resolves_it(db: Db) {
    let receiver = Receiver::start(SECRET).await;
    let app = spawn_app(db, &format!("{ALERTS}backup_stale_after = 2\n")).await;
    let owner = app.token(Role::Owner).await;
    system_rule(&app, &receiver, "backup_stale").await;
    let response = app
        .put_json(
            "/api/system/config",
            &owner,
            &json!({ "backup_schedule": "weekly sun 03:00" }),
        )
        .await;
    assert_eq!(response.status(), 200);
    // 2 s after the schedule was set, with no backup at all.
    let got = wait_for(&receiver, &["firing"], Duration::from_secs(30)).await;
    let summary = &got[0].1;
    assert!(
        summary.contains("no successful backup since ever (schedule `weekly sun 03:00`"),
        "{summary}"
    );
    let response = app
        .post_json("/api/system/backup", Some(&owner), &json!({}))
        .await;
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    wait_for(&receiver, &["firing", "resolved"], Duration::from_secs(30)).await;
    app.stop().await;
}

#[tokio::test]
async fn sqlite_no_recent_backup_fires_backup_stale_and_a_backup_resolves_it() {
    no_recent_backup_fires_backup_stale_and_a_backup_resolves_it(Db::Sqlite).await;
}

#[tokio::test]
async fn postgres_no_recent_backup_fires_backup_stale_and_a_backup_resolves_it() {
    no_recent_backup_fires_backup_stale_and_a_backup_resolves_it(Db::Postgres(
        Provider::from_env().await,
    ))
    .await;
}

// -------------------------------------------------------------------------------- retention

async fn readings_left(app: &TestApp, series: ddms::store::SeriesId) -> usize {
    let now = Utc::now();
    app.store
        .query_readings(
            series,
            now - chrono::Duration::days(60),
            now + chrono::Duration::hours(1),
            1000,
        )
        .await
        .unwrap()
        .len()
}

async fn shortening_retention_warns_and_waits_for_the_owner(db: Db) {
    let receiver = Receiver::start(SECRET).await;
    let app = spawn_app(db, ALERTS).await;
    let owner = app.token(Role::Owner).await;
    let admin = app.token(Role::Admin).await;
    let viewer = app.token(Role::Viewer).await;
    system_rule(&app, &receiver, "retention_pending").await;
    let device = app
        .store
        .create_device(&NewDevice {
            name: "archive-me".into(),
            protocol: Protocol::Mqtt,
            group_id: None,
            config: json!({}),
            enabled: true,
        })
        .await
        .unwrap();
    let series = app.store.ensure_series(device.id, "t", None).await.unwrap();
    let now = Utc::now();
    // Three readings 20 and 10 days old (each in its own whole hour), two recent ones.
    let readings: Vec<Reading> = [(20, 0.0), (10, 1.0), (10, 2.0), (1, 3.0), (0, 4.0)]
        .iter()
        .enumerate()
        .map(|(i, (days, value))| Reading {
            series,
            ts: now - chrono::Duration::days(*days) - chrono::Duration::hours(2)
                + chrono::Duration::seconds(i as i64),
            value: *value,
        })
        .collect();
    app.store.insert_readings(&readings).await.unwrap();

    // Keeping 7 days where everything was kept: pending, nothing deleted, warned at once.
    let response = app
        .put_json(
            "/api/system/config",
            &owner,
            &json!({ "retention_days": 7 }),
        )
        .await;
    assert_eq!(response.status(), 200);
    let settings: Value = response.json().await.unwrap();
    assert_eq!(settings["retention_days"], Value::Null, "{settings}");
    let pending = &settings["retention_pending"];
    assert_eq!(pending["retention_days"], 7, "{settings}");
    assert_eq!(pending["readings"], 3, "{settings}");
    let due: chrono::DateTime<Utc> = serde_json::from_value(pending["due_at"].clone()).unwrap();
    let delay = due - Utc::now();
    assert!(
        delay > chrono::Duration::hours(23) && delay <= chrono::Duration::hours(24),
        "due a day later: {due}"
    );
    let got = wait_for(&receiver, &["firing"], Duration::from_secs(30)).await;
    let summary = &got[0].1;
    assert!(
        summary.contains("keep everything -> 7 days asked by token:"),
        "{summary}"
    );
    assert!(
        summary.contains("about 3 readings older than 7 days"),
        "{summary}"
    );
    assert!(
        summary.contains(&due.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
        "{summary}"
    );
    assert_eq!(readings_left(&app, series).await, 5, "nothing deleted yet");
    // The pending state is in the database: a restarted (or another) instance sees it.
    let reloaded = ddms::settings::Settings::load(
        app.store.clone(),
        ddms::settings::RuntimeSettings {
            retention_days: None,
            offline_after: Duration::from_secs(90),
            backup_schedule: "off".into(),
            retention_pending: None,
        },
    )
    .await;
    assert_eq!(
        reloaded
            .current()
            .retention_pending
            .map(|p| p.retention_days),
        Some(7)
    );

    // Only owners may delete now; a cookie session would also need the CSRF token.
    for token in [&viewer, &admin] {
        let response = app
            .post_json(
                "/api/system/retention/apply",
                Some(token.as_str()),
                &json!({}),
            )
            .await;
        assert_eq!(response.status(), 403);
    }
    assert_eq!(readings_left(&app, series).await, 5);
    let response = app
        .post_json("/api/system/retention/apply", Some(&owner), &json!({}))
        .await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let settings: Value = response.json().await.unwrap();
    assert_eq!(settings["retention_days"], 7, "{settings}");
    assert_eq!(settings["retention_pending"], Value::Null, "{settings}");
    eventually(
        "the old readings to go",
        Duration::from_secs(30),
        || async { readings_left(&app, series).await == 2 },
    )
    .await;
    let got = wait_for(&receiver, &["firing", "resolved"], Duration::from_secs(30)).await;
    assert!(got[1].1.contains("retention_days 7 in effect"), "{got:?}");
    let again = app
        .post_json("/api/system/retention/apply", Some(&owner), &json!({}))
        .await;
    assert_eq!(again.status(), 409, "nothing pending any more");
    let audit = app.store.list_audit(50).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.action == "retention.apply_now" && e.detail["retention_days"] == 7),
        "{audit:?}"
    );

    // Shortening again, then lengthening: the longer one applies at once and cancels.
    let response = app
        .put_json(
            "/api/system/config",
            &owner,
            &json!({ "retention_days": 1 }),
        )
        .await;
    let settings: Value = response.json().await.unwrap();
    assert_eq!(settings["retention_days"], 7, "{settings}");
    assert_eq!(settings["retention_pending"]["retention_days"], 1);
    wait_for(
        &receiver,
        &["firing", "resolved", "firing"],
        Duration::from_secs(30),
    )
    .await;
    let response = app
        .put_json(
            "/api/system/config",
            &owner,
            &json!({ "retention_days": 30 }),
        )
        .await;
    let settings: Value = response.json().await.unwrap();
    assert_eq!(settings["retention_days"], 30, "{settings}");
    assert_eq!(settings["retention_pending"], Value::Null, "{settings}");
    let got = wait_for(
        &receiver,
        &["firing", "resolved", "firing", "resolved"],
        Duration::from_secs(30),
    )
    .await;
    assert!(
        got[3].1.contains("cancelled: retention_days set to 30"),
        "{got:?}"
    );
    assert_eq!(readings_left(&app, series).await, 2);
    app.stop().await;
}

#[tokio::test]
async fn sqlite_shortening_retention_warns_and_waits_for_the_owner() {
    shortening_retention_warns_and_waits_for_the_owner(Db::Sqlite).await;
}

#[tokio::test]
async fn postgres_shortening_retention_warns_and_waits_for_the_owner() {
    shortening_retention_warns_and_waits_for_the_owner(Db::Postgres(Provider::from_env().await))
        .await;
}
