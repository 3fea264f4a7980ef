//! Backups: a snapshot restores to the same contents on SQLite and PostgreSQL; damaged or
//! changed archives, non-empty targets and other backends are refused without touching the
//! database; the CLI, the owner-only API (with its audit entry) and the S3 copy (against
//! moto's S3 server, an independent implementation) work end to end.

mod service;

mod archives;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ddms::backup::{BackupError, Backups, Trigger};
use ddms::store::{
    self, DeviceStatus, MqttCredentials, NewApiToken, NewAuditEntry, NewDevice, NewEvent,
    NewNotification, NewUser, Protocol, Reading, Role, RollupStep, Status, Store,
};
use serde_json::{json, Value};

use crate::support::app::{database_url, ddms_command, spawn_app, Db};
use crate::support::services::{free_port, Provider};

async fn open(db: &Db) -> (Arc<dyn Store>, tempfile::TempDir) {
    let (url, dir) = database_url(db).await;
    let store = store::connect(&url.into(), 4, Duration::from_secs(5))
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    (store, dir)
}

/// A store on an existing SQLite file (a data directory the binary under test uses).
async fn open_sqlite_file(path: &Path) -> Arc<dyn Store> {
    store::connect(
        &format!("sqlite://{}", path.display()).into(),
        2,
        Duration::from_secs(5),
    )
    .await
    .unwrap()
}

/// `GET /api/system/backups` as the owner.
async fn backup_listing(app: &crate::support::app::TestApp, owner: &str) -> Value {
    app.get_with_token("/api/system/backups", owner)
        .await
        .json()
        .await
        .unwrap()
}

async fn backups(store: &Arc<dyn Store>, backup_dir: &Path) -> Arc<Backups> {
    let config = ddms::config::from_toml(&format!(
        "data_dir = {data:?}\n[backup]\ndir = {dir:?}\n",
        data = backup_dir.display().to_string(),
        dir = backup_dir.display().to_string(),
    ))
    .expect("backup test config");
    Arc::new(Backups::new(store.clone(), &config).await)
}

/// Something in every table, with values that test the formats: quotes, tabs, newlines and
/// backslashes (COPY's escapes), non-ASCII units, sub-second timestamps, old readings that
/// lie outside PostgreSQL's partitions.
async fn populate(store: &dyn Store) {
    let group = store.create_group("plant-a").await.unwrap();
    let device = store
        .create_device(&NewDevice {
            name: "boiler-1'; DROP TABLE devices;--".into(),
            protocol: Protocol::Modbus,
            group_id: Some(group.id),
            config: json!({"host": "10.0.0.5", "port": 502, "unit_id": 1,
                "note": "tab\there\nnew line \\ backslash \"quoted\"",
                "registers": [{"metric": "temperature", "kind": "holding", "address": 0, "type": "f32"}]}),
            enabled: true,
        })
        .await
        .unwrap();
    let mqtt = store
        .create_device(&NewDevice {
            name: "greenhouse-3".into(),
            protocol: Protocol::Mqtt,
            group_id: None,
            config: json!({}),
            enabled: false,
        })
        .await
        .unwrap();
    let temperature = store
        .ensure_series(device.id, "temperature", Some("°C"))
        .await
        .unwrap();
    let humidity = store
        .ensure_series(mqtt.id, "humidity", None)
        .await
        .unwrap();
    let now = Utc::now();
    let mut readings: Vec<Reading> = (0..300)
        .map(|i| Reading {
            series: if i % 2 == 0 { temperature } else { humidity },
            ts: now - chrono::Duration::milliseconds(i * 61_001),
            value: 20.0 + i as f64 / 7.0,
        })
        .collect();
    readings.push(Reading {
        series: temperature,
        ts: now - chrono::Duration::days(40),
        value: -3.25,
    });
    store.insert_readings(&readings).await.unwrap();
    let user = store
        .create_user(&NewUser {
            username: "olga".into(),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
            role: Role::Owner,
        })
        .await
        .unwrap();
    store
        .create_api_token(&NewApiToken {
            name: "scada-export".into(),
            token_hash: "f".repeat(64),
            role: Role::Viewer,
        })
        .await
        .unwrap();
    store
        .create_session(&ddms::store::NewSession {
            id_hash: "a".repeat(64),
            user_id: user.id,
            csrf_hash: "c".repeat(64),
            created_at: now,
            expires_at: now + chrono::Duration::hours(1),
            remote_addr: Some("10.1.2.3".into()),
        })
        .await
        .unwrap();
    store
        .put_setting("retention_days", &json!(30))
        .await
        .unwrap();
    for action in ["user.create", "device.create"] {
        store
            .append_audit(&NewAuditEntry {
                actor: "olga".into(),
                action: action.into(),
                target: Some(format!("device:{}", device.id)),
                detail: json!({"name": device.name}),
                remote_addr: Some("10.1.2.3".into()),
            })
            .await
            .unwrap();
    }
    store
        .open_notification(&NewNotification {
            kind: "connection_failure".into(),
            device_id: Some(device.id),
            message: "connection refused (3 attempts)".into(),
        })
        .await
        .unwrap();
    store
        .put_device_status(&DeviceStatus {
            device_id: device.id,
            status: Status::Offline,
            last_error: Some("connection refused".into()),
            last_seen_at: Some(now),
            consecutive_failures: 3,
            changed_at: now,
        })
        .await
        .unwrap();
    store
        .put_mqtt_credentials(&MqttCredentials {
            device_id: mqtt.id,
            username: format!("device-{}", mqtt.id),
            secret_hash: "b".repeat(64),
        })
        .await
        .unwrap();
    store
        .append_events(&[
            NewEvent {
                kind: "reading".into(),
                data: json!({"device_id": device.id, "value": 21.5}),
            },
            NewEvent {
                kind: "device_status".into(),
                data: json!({"device_id": device.id, "status": "offline"}),
            },
        ])
        .await
        .unwrap();
    store
        .acquire_leases(&["retention".into()], "instance-a", Duration::from_secs(60))
        .await
        .unwrap();
}

/// Everything a restore must bring back, as comparable JSON.
async fn contents(store: &dyn Store) -> Value {
    let from = Utc::now() - chrono::Duration::days(400);
    let to = Utc::now() + chrono::Duration::days(1);
    let mut series = Vec::new();
    let mut latest = Vec::new();
    for device in store.list_devices().await.unwrap() {
        latest.push(json!(store.latest_readings(device.id).await.unwrap()));
        for metric in ["temperature", "humidity"] {
            if let Some(id) = store.find_series(device.id, metric).await.unwrap() {
                series.push(json!({
                    "device": device.name,
                    "metric": metric,
                    "raw": store.query_readings(id, from, to, 10_000).await.unwrap(),
                    "1m": store.query_rollups(id, RollupStep::Minute, from, to, 10_000).await.unwrap(),
                    "1h": store.query_rollups(id, RollupStep::Hour, from, to, 10_000).await.unwrap(),
                }));
            }
        }
    }
    let events: Vec<Value> = store
        .events_after(0, None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| json!({"id": e.id, "kind": e.kind, "data": e.data}))
        .collect();
    let credentials = match store
        .list_devices()
        .await
        .unwrap()
        .iter()
        .find(|d| d.protocol == Protocol::Mqtt)
    {
        Some(d) => store
            .find_mqtt_credentials(&format!("device-{}", d.id))
            .await
            .ok()
            .map(|c| json!({"username": c.username, "hash": c.secret_hash})),
        None => None,
    };
    let session = store
        .find_session(&"a".repeat(64))
        .await
        .ok()
        .map(|s| json!(s.user.username));
    json!({
        "groups": store.list_groups().await.unwrap(),
        "devices": store.list_devices().await.unwrap(),
        "series": series,
        "latest": latest,
        "users": store.list_users().await.unwrap(),
        "tokens": store.list_api_tokens().await.unwrap(),
        "session": session,
        "retention_days": store.get_setting("retention_days").await.unwrap(),
        "audit": store.list_audit(100).await.unwrap(),
        "notifications": store.list_open_notifications("connection_failure").await.unwrap(),
        "device_status": store.list_device_status().await.unwrap(),
        "mqtt_credentials": credentials,
        "events": events,
    })
}

async fn row_count(store: &dyn Store) -> usize {
    store.list_devices().await.unwrap().len() + store.list_users().await.unwrap().len()
}

async fn a_backup_restores_the_same_contents_and_refuses_a_non_empty_database(db: Db, other: Db) {
    let (source, _source_dir) = open(&db).await;
    populate(source.as_ref()).await;
    let expected = contents(source.as_ref()).await;
    let dir = tempfile::tempdir().unwrap();
    let backups_of_source = backups(&source, dir.path()).await;

    // One run at a time.
    let claim = backups_of_source.begin(Trigger::Cli).unwrap();
    assert!(matches!(
        backups_of_source.begin(Trigger::Api),
        Err(BackupError::Busy(_))
    ));
    let info = backups_of_source.run(claim).await.unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(&info.name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the archive is for its owner only");
    }
    assert!(info.bytes > 0);
    let listing = backups_of_source.list().await.unwrap();
    assert_eq!(listing.backups.len(), 1);
    assert_eq!(listing.backups[0].name, info.name);
    assert_eq!(listing.backups[0].bytes, info.bytes);
    let status = backups_of_source.status();
    assert_eq!(status.running, None);
    assert!(status
        .last
        .as_ref()
        .is_some_and(|l| l.ok && l.name == info.name));
    // Nothing but the archive is left in the directory.
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, std::slice::from_ref(&info.name));

    let verified = backups_of_source.verify(&info.name).await.unwrap();
    let readings = verified
        .manifest
        .snapshot
        .tables
        .iter()
        .find(|t| t.name == "readings")
        .unwrap();
    assert_eq!(readings.rows, 301, "{:?}", verified.manifest.snapshot);
    assert!(
        !verified
            .manifest
            .snapshot
            .tables
            .iter()
            .any(|t| t.name == "leases"),
        "leases are not backed up"
    );

    // Into a fresh database of the same backend: the same contents.
    let (target, _target_dir) = open(&db).await;
    let backups_of_target = backups(&target, dir.path()).await;
    let manifest = backups_of_target.restore(&info.name, false).await.unwrap();
    assert_eq!(manifest.name, info.name);
    assert_eq!(contents(target.as_ref()).await, expected);
    // Restored ids are not handed out again.
    target
        .append_audit(&NewAuditEntry {
            actor: "cli".into(),
            action: "backup.restore".into(),
            target: None,
            detail: json!({}),
            remote_addr: None,
        })
        .await
        .unwrap();
    let audit = target.list_audit(10).await.unwrap();
    assert_eq!(audit.len(), 3);
    assert!(audit[0].id > audit[1].id, "{audit:?}");
    let device = target.list_devices().await.unwrap()[0].clone();
    let mut restored_series = Vec::new();
    for d in target.list_devices().await.unwrap() {
        for metric in ["temperature", "humidity"] {
            restored_series.extend(target.find_series(d.id, metric).await.unwrap());
        }
    }
    let new_series = target
        .ensure_series(device.id, "pressure", None)
        .await
        .unwrap();
    assert!(!restored_series.contains(&new_series), "{new_series:?}");
    let stored = target
        .insert_readings(&[Reading {
            series: new_series,
            ts: Utc::now(),
            value: 1.0,
        }])
        .await
        .unwrap();
    assert_eq!(stored, 1);
    target
        .append_events(&[NewEvent {
            kind: "reading".into(),
            data: json!({}),
        }])
        .await
        .unwrap();
    let (_, newest) = target.event_bounds().await.unwrap().unwrap();
    assert_eq!(newest, 3, "event ids go on from the restored ones");
    // The restored lease table is empty: no instance holds anything after a restore.
    assert_eq!(
        target
            .acquire_leases(&["retention".into()], "instance-b", Duration::from_secs(60))
            .await
            .unwrap(),
        ["retention".to_string()]
    );

    // A database with contents is refused, and stays as it was…
    let before = contents(target.as_ref()).await;
    let err = backups_of_target
        .restore(&info.name, false)
        .await
        .unwrap_err();
    assert!(matches!(err, BackupError::NotEmpty(_)), "{err}");
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(contents(target.as_ref()).await, before);
    // …unless its contents are to be replaced.
    backups_of_target.restore(&info.name, true).await.unwrap();
    assert_eq!(contents(target.as_ref()).await, expected);

    // A backup of one backend is refused by the other, which stays empty.
    let (foreign, _foreign_dir) = open(&other).await;
    let err = backups(&foreign, dir.path())
        .await
        .restore(&info.name, false)
        .await
        .unwrap_err();
    assert!(matches!(err, BackupError::Incompatible(_)), "{err}");
    assert_eq!(row_count(foreign.as_ref()).await, 0);

    // A name that is not there.
    let err = backups_of_target
        .verify("ddms-backup-20200101T000000.000Z.tar.gz")
        .await
        .unwrap_err();
    assert!(matches!(err, BackupError::NotFound(_)), "{err}");
}

#[tokio::test]
async fn sqlite_backup_restores_the_same_contents_and_refuses_a_non_empty_database() {
    a_backup_restores_the_same_contents_and_refuses_a_non_empty_database(
        Db::Sqlite,
        Db::Postgres(Provider::from_env().await),
    )
    .await;
}

#[tokio::test]
async fn postgres_backup_restores_the_same_contents_and_refuses_a_non_empty_database() {
    a_backup_restores_the_same_contents_and_refuses_a_non_empty_database(
        Db::Postgres(Provider::from_env().await),
        Db::Sqlite,
    )
    .await;
}
