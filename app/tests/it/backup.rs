//! Backups: a snapshot restores to the same contents on SQLite and PostgreSQL; damaged or
//! changed archives, non-empty targets and other backends are refused without touching the
//! database; the CLI, the owner-only API (with its audit entry) and the S3 copy (against
//! moto's S3 server, an independent implementation) work end to end.

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

/// Rewrites an archive, passing each entry through `change` (name, bytes) → bytes.
fn rewrite_archive(from: &Path, to: &Path, change: impl Fn(&str, Vec<u8>) -> Vec<u8>) {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(
        std::fs::File::open(from).unwrap(),
    ));
    let mut out = tar::Builder::new(flate2::write::GzEncoder::new(
        std::fs::File::create(to).unwrap(),
        flate2::Compression::fast(),
    ));
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        let bytes = change(&name, bytes);
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o600);
        header.set_cksum();
        out.append_data(&mut header, &name, bytes.as_slice())
            .unwrap();
    }
    out.into_inner().unwrap().finish().unwrap().flush().unwrap();
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

async fn damaged_archives_are_refused_before_anything_is_restored(db: Db) {
    let (source, _source_dir) = open(&db).await;
    populate(source.as_ref()).await;
    let dir = tempfile::tempdir().unwrap();
    let info = backups(&source, dir.path())
        .await
        .create(Trigger::Cli)
        .await
        .unwrap();
    let original = dir.path().join(&info.name);
    let (target, _target_dir) = open(&db).await;
    let scratch = tempfile::tempdir().unwrap();
    let backups_of_target = backups(&target, scratch.path()).await;
    let data_file = match target.backend() {
        store::Backend::Sqlite => "data/ddms.sqlite",
        store::Backend::Postgres => "data/readings.copy",
    };

    // 1. A changed data file no longer matches its checksum.
    let flipped = scratch.path().join("flipped.tar.gz");
    rewrite_archive(&original, &flipped, |name, mut bytes| {
        if name == data_file {
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x01;
        }
        bytes
    });
    // 2. A data file whose checksum was "fixed" in the manifest, minus a row: the count says so.
    let manifest_of = |bytes: &[u8]| serde_json::from_slice::<Value>(bytes).unwrap();
    let truncated = scratch.path().join("truncated.tar.gz");
    if target.backend() == store::Backend::Postgres {
        let cut = std::cell::RefCell::new(None::<Vec<u8>>);
        rewrite_archive(&original, &truncated, |name, bytes| {
            if name == data_file {
                let text = String::from_utf8(bytes).unwrap();
                let shorter: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
                *cut.borrow_mut() = Some(shorter.clone().into_bytes());
                shorter.into_bytes()
            } else {
                bytes
            }
        });
        let shorter = cut.into_inner().unwrap();
        let refixed = scratch.path().join("refixed.tar.gz");
        rewrite_archive(&truncated, &refixed, |name, bytes| {
            if name == "manifest.json" {
                let mut manifest = manifest_of(&bytes);
                for file in manifest["files"].as_array_mut().unwrap() {
                    if file["path"] == "readings.copy" {
                        file["sha256"] = json!(sha256_hex(&shorter));
                        file["bytes"] = json!(shorter.len());
                    }
                }
                serde_json::to_vec(&manifest).unwrap()
            } else {
                bytes
            }
        });
        std::fs::rename(&refixed, &truncated).unwrap();
    } else {
        // SQLite: a manifest that claims one row more than the file holds.
        rewrite_archive(&original, &truncated, |name, bytes| {
            if name == "manifest.json" {
                let mut manifest = manifest_of(&bytes);
                for table in manifest["snapshot"]["tables"].as_array_mut().unwrap() {
                    if table["name"] == "readings" {
                        table["rows"] = json!(table["rows"].as_u64().unwrap() + 1);
                    }
                }
                serde_json::to_vec(&manifest).unwrap()
            } else {
                bytes
            }
        });
    }
    // 3. An entry that would escape the unpacking directory.
    let escaping = scratch.path().join("escaping.tar.gz");
    rewrite_archive(&original, &escaping, |_, bytes| bytes);
    {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&escaping)
            .unwrap();
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        let mut header = tar::Header::new_gnu();
        // Written raw: the tar crate itself refuses to build such a path.
        let name = b"data/../../x";
        header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        header.set_size(2);
        header.set_mode(0o600);
        header.set_cksum();
        builder.append(&header, &b"{}"[..]).unwrap();
        out.write_all(&builder.into_inner().unwrap().finish().unwrap())
            .unwrap();
    }
    // 4. Not an archive at all.
    let garbage = scratch.path().join("garbage.tar.gz");
    std::fs::write(&garbage, b"this is not a backup").unwrap();

    for (archive, says) in [
        (&flipped, "does not match its checksum"),
        (&truncated, "rows; the manifest says"),
        (&escaping, "unexpected entry"),
        (&garbage, "is damaged"),
    ] {
        let path = archive.display().to_string();
        let err = backups_of_target.verify(&path).await.unwrap_err();
        assert!(matches!(err, BackupError::Damaged { .. }), "{path}: {err}");
        assert!(err.to_string().contains(says), "{path}: {err}");
        let err = backups_of_target.restore(&path, false).await.unwrap_err();
        assert!(matches!(err, BackupError::Damaged { .. }), "{path}: {err}");
        assert_eq!(
            row_count(target.as_ref()).await,
            0,
            "{path}: nothing restored"
        );
    }
    // The untouched archive still restores.
    backups_of_target
        .restore(&original.display().to_string(), false)
        .await
        .unwrap();
    assert_eq!(row_count(target.as_ref()).await, 3);
}

/// A gzip'd tar of `entries` (name, declared size, contents; contents may be shorter than
/// the size only when nothing reads that far).
fn build_archive(to: &Path, entries: Vec<(&str, u64, Box<dyn Read>)>) {
    let mut out = tar::Builder::new(flate2::write::GzEncoder::new(
        std::fs::File::create(to).unwrap(),
        flate2::Compression::fast(),
    ));
    for (name, size, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(size);
        header.set_mode(0o600);
        header.set_cksum();
        out.append_data(&mut header, name, data).unwrap();
    }
    out.into_inner().unwrap().finish().unwrap().flush().unwrap();
}

/// Restore and verify unpack no more than the manifest declares, and no more than the caps
/// allow (`docs/limits.md`): a small archive that would inflate to much more is refused at
/// the entry's header, before its bytes are written.
#[tokio::test]
async fn decompression_bombs_are_refused_before_anything_large_is_unpacked() {
    let (source, _source_dir) = open(&Db::Sqlite).await;
    populate(source.as_ref()).await;
    let dir = tempfile::tempdir().unwrap();
    let made = backups(&source, dir.path()).await;
    let info = made.create(Trigger::Cli).await.unwrap();
    let original = dir.path().join(&info.name);
    let mut manifest = Vec::new();
    let mut data = Vec::new();
    {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(
            std::fs::File::open(&original).unwrap(),
        ));
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let into = if name == "manifest.json" {
                &mut manifest
            } else {
                &mut data
            };
            entry.read_to_end(into).unwrap();
        }
    }
    let declared = |bytes: u64| {
        let mut m: Value = serde_json::from_slice(&manifest).unwrap();
        m["files"][0]["bytes"] = json!(bytes);
        serde_json::to_vec(&m).unwrap()
    };
    let manifest_entry = |bytes: Vec<u8>| {
        let len = bytes.len() as u64;
        (
            "manifest.json",
            len,
            Box::new(std::io::Cursor::new(bytes)) as Box<dyn Read>,
        )
    };
    let zeros = |n: u64| Box::new(std::io::repeat(0).take(n)) as Box<dyn Read>;
    let big: u64 = 64 << 20;
    let work = tempfile::tempdir().unwrap();

    // 1. The manifest's size for the data file, but an entry of 64 MiB of zeros (64 KiB packed).
    let inflating = work.path().join("inflating.tar.gz");
    build_archive(
        &inflating,
        vec![
            manifest_entry(manifest.clone()),
            ("data/ddms.sqlite", big, zeros(big)),
        ],
    );
    // 2. A manifest that declares a petabyte (the entry itself need not be there).
    let petabyte = work.path().join("petabyte.tar.gz");
    build_archive(
        &petabyte,
        vec![
            manifest_entry(declared(1 << 50)),
            (
                "data/ddms.sqlite",
                data.len() as u64,
                Box::new(std::io::Cursor::new(data.clone())),
            ),
        ],
    );
    // 3. A data entry the manifest does not list.
    let unlisted = work.path().join("unlisted.tar.gz");
    build_archive(
        &unlisted,
        vec![
            manifest_entry(manifest.clone()),
            ("data/extra", big, zeros(big)),
        ],
    );
    // 4. Data before the manifest, which could not have been bounded yet.
    let data_first = work.path().join("data-first.tar.gz");
    build_archive(
        &data_first,
        vec![
            ("data/ddms.sqlite", big, zeros(big)),
            manifest_entry(manifest.clone()),
        ],
    );
    let packed = std::fs::metadata(&inflating).unwrap().len();
    assert!(packed < big / 100, "the bomb is small packed: {packed}");

    let (target, _target_dir) = open(&Db::Sqlite).await;
    let restoring = backups(&target, work.path()).await;
    for (archive, says) in [
        (
            &inflating,
            format!(
                "data/ddms.sqlite is {big} bytes in the archive; the manifest says {} bytes",
                data.len()
            ),
        ),
        (
            &petabyte,
            format!(
                "declares {} bytes of data, more than the 274877906944",
                1u64 << 50
            ),
        ),
        (&unlisted, "data/extra is not in the manifest".to_string()),
        (
            &data_first,
            "`data/ddms.sqlite` comes before manifest.json".to_string(),
        ),
    ] {
        let path = archive.display().to_string();
        let err = restoring.verify(&path).await.unwrap_err();
        assert!(matches!(err, BackupError::Damaged { .. }), "{path}: {err}");
        assert!(err.to_string().contains(&says), "{path}: {err}");
        let err = restoring.restore(&path, false).await.unwrap_err();
        assert!(err.to_string().contains(&says), "{path}: {err}");
        assert_eq!(
            row_count(target.as_ref()).await,
            0,
            "{path}: nothing restored"
        );
    }
    // The genuine archive still restores.
    restoring
        .restore(&original.display().to_string(), false)
        .await
        .unwrap();
}

#[tokio::test]
async fn sqlite_damaged_archives_are_refused_before_anything_is_restored() {
    damaged_archives_are_refused_before_anything_is_restored(Db::Sqlite).await;
}

#[tokio::test]
async fn postgres_damaged_archives_are_refused_before_anything_is_restored() {
    damaged_archives_are_refused_before_anything_is_restored(Db::Postgres(
        Provider::from_env().await,
    ))
    .await;
}

async fn ddms(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let output = ddms_command(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run ddms");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_creates_lists_verifies_and_restores_backups() {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    let target = work.path().join("target");
    let source_arg = source.display().to_string();
    let target_arg = target.display().to_string();
    let (ok, _, stderr) = ddms(
        work.path(),
        &[
            "--data-dir",
            &source_arg,
            "user",
            "add",
            "--username",
            "olga",
            "--role",
            "owner",
        ],
    )
    .await;
    assert!(ok, "{stderr}");

    let (ok, stdout, stderr) = ddms(
        work.path(),
        &["--data-dir", &source_arg, "backup", "create"],
    )
    .await;
    assert!(ok, "{stderr}");
    let created: Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    let name = created["name"].as_str().unwrap().to_string();
    let archive = source.join("backups").join(&name);
    assert!(archive.is_file(), "{stdout}");
    assert_eq!(created["locations"], json!(["local"]));

    let (ok, stdout, stderr) =
        ddms(work.path(), &["--data-dir", &source_arg, "backup", "list"]).await;
    assert!(ok, "{stderr}");
    let listing: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listing["backups"][0]["name"], json!(name), "{listing}");

    let (ok, stdout, stderr) = ddms(
        work.path(),
        &["--data-dir", &source_arg, "backup", "verify", &name],
    )
    .await;
    assert!(ok, "{stderr}");
    assert!(stderr.contains("is intact"), "{stderr}");
    let manifest: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(manifest["snapshot"]["backend"], "sqlite");

    // Into another data directory, from the archive's path.
    let archive_arg = archive.display().to_string();
    let (ok, stdout, stderr) = ddms(
        work.path(),
        &["--data-dir", &target_arg, "backup", "restore", &archive_arg],
    )
    .await;
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(&format!("restored backup {name}")),
        "{stdout}"
    );
    let restored = open_sqlite_file(&target.join("ddms.db")).await;
    assert_eq!(restored.find_user("olga").await.unwrap().role, Role::Owner);
    let actions: Vec<String> = restored
        .list_audit(10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    // The restored log (the backup's own entry came after its snapshot) and the restore.
    assert_eq!(actions, ["backup.restore", "user.create"]);
    let source_store = open_sqlite_file(&source.join("ddms.db")).await;
    let created_entry = source_store.list_audit(1).await.unwrap().remove(0);
    assert_eq!(created_entry.action, "backup.create");
    assert_eq!(created_entry.actor, "cli");
    assert_eq!(created_entry.target, Some(format!("backup:{name}")));

    // Not again into a database with contents, unless --force.
    let (ok, _, stderr) = ddms(
        work.path(),
        &["--data-dir", &target_arg, "backup", "restore", &archive_arg],
    )
    .await;
    assert!(!ok);
    assert!(
        stderr.contains("not empty") && stderr.contains("--force"),
        "{stderr}"
    );
    let (ok, _, stderr) = ddms(
        work.path(),
        &[
            "--data-dir",
            &target_arg,
            "backup",
            "restore",
            "--force",
            &archive_arg,
        ],
    )
    .await;
    assert!(ok, "{stderr}");

    // A damaged file is named as such.
    let garbage = work.path().join("ddms-backup-20261203T000000.000Z.tar.gz");
    std::fs::write(&garbage, b"not gzip").unwrap();
    let (ok, _, stderr) = ddms(
        work.path(),
        &[
            "--data-dir",
            &target_arg,
            "backup",
            "verify",
            &garbage.display().to_string(),
        ],
    )
    .await;
    assert!(!ok);
    assert!(stderr.contains("is damaged"), "{stderr}");
}

#[tokio::test]
async fn owners_trigger_and_list_backups_through_the_api_and_the_trigger_is_audited() {
    let app = spawn_app(Db::Sqlite, "").await;
    let owner = app.token(Role::Owner).await;
    let admin = app.token(Role::Admin).await;
    let viewer = app.token(Role::Viewer).await;
    for token in [&admin, &viewer] {
        let denied = app
            .post_json("/api/system/backup", Some(token), &json!({}))
            .await;
        assert_eq!(denied.status(), 403);
        assert_eq!(
            app.get_with_token("/api/system/backups", token)
                .await
                .status(),
            403
        );
    }
    assert_eq!(
        app.post_json("/api/system/backup", None, &json!({}))
            .await
            .status(),
        401
    );

    let started = app
        .post_json("/api/system/backup", Some(&owner), &json!({}))
        .await;
    assert_eq!(started.status(), 202);
    let started: Value = started.json().await.unwrap();
    let name = started["name"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let listing = loop {
        let listing = backup_listing(&app, &owner).await;
        if listing["last"]["name"] == json!(name) || Instant::now() > deadline {
            break listing;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(listing["last"]["ok"], true, "{listing}");
    assert_eq!(listing["running"], Value::Null, "{listing}");
    assert_eq!(listing["backups"][0]["name"], json!(name), "{listing}");
    assert_eq!(listing["backups"][0]["locations"], json!(["local"]));
    assert_eq!(listing["schedule"], "off");
    assert_eq!(listing["next_due"], Value::Null);

    let audit: Value = app
        .get_with_token("/api/audit", &owner)
        .await
        .json()
        .await
        .unwrap();
    let entry = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "backup.create")
        .cloned()
        .expect("the trigger is audited");
    assert_eq!(entry["target"], json!(format!("backup:{name}")), "{entry}");
    assert_eq!(entry["actor"], "token:test-owner", "{entry}");
    assert!(entry["remote_addr"].is_string(), "{entry}");

    let metrics = app.get("/metrics").await.text().await.unwrap();
    let last_success = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ddms_backup_last_success_timestamp_seconds "))
        .expect("backup metric");
    assert_ne!(last_success.trim(), "0", "{metrics}");

    // A schedule shows when the next backup is due.
    let response = app
        .put_json(
            "/api/system/config",
            &owner,
            &json!({"backup_schedule": "daily 02:30"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let listing = backup_listing(&app, &owner).await;
    let due: DateTime<Utc> = serde_json::from_value(listing["next_due"].clone()).unwrap();
    assert_eq!(due.format("%H:%M:%S").to_string(), "02:30:00");
    assert!(due > Utc::now() && due <= Utc::now() + chrono::Duration::days(1));
    app.stop().await;
}

#[tokio::test]
async fn a_scheduled_backup_runs_when_due_and_is_audited() {
    use chrono::{DurationRound, Timelike};
    let app = spawn_app(Db::Sqlite, "").await;
    let owner = app.token(Role::Owner).await;
    // The first whole minute at least 10 s away (a daily schedule due then): 10 to 70 s.
    let due = (Utc::now() + chrono::Duration::seconds(10))
        .duration_trunc(chrono::Duration::minutes(1))
        .unwrap()
        + chrono::Duration::minutes(1);
    let schedule = format!("daily {:02}:{:02}", due.hour(), due.minute());
    let response = app
        .put_json(
            "/api/system/config",
            &owner,
            &json!({ "backup_schedule": schedule }),
        )
        .await;
    assert_eq!(response.status(), 200);
    let listing = backup_listing(&app, &owner).await;
    assert_eq!(listing["next_due"], json!(due), "{listing}");
    assert_eq!(listing["backups"], json!([]), "nothing before it is due");

    let deadline = Instant::now() + (due - Utc::now()).to_std().unwrap() + Duration::from_secs(30);
    let listing = loop {
        let listing = backup_listing(&app, &owner).await;
        if !listing["last"].is_null() || Instant::now() > deadline {
            break listing;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(listing["last"]["trigger"], "schedule", "{listing}");
    assert_eq!(listing["last"]["ok"], true, "{listing}");
    let name = listing["last"]["name"].as_str().unwrap().to_string();
    let created: DateTime<Utc> =
        serde_json::from_value(listing["backups"][0]["created_at"].clone()).unwrap();
    assert!(created >= due, "not before it was due: {created} < {due}");
    assert_eq!(listing["backups"][0]["name"], json!(name));
    // Tomorrow's is next.
    assert_eq!(
        listing["next_due"],
        json!(due + chrono::Duration::days(1)),
        "{listing}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let entry = loop {
        let audit = app.store.list_audit(20).await.unwrap();
        if let Some(entry) = audit.into_iter().find(|e| e.action == "backup.create") {
            break entry;
        }
        assert!(Instant::now() < deadline, "the scheduled backup is audited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(entry.actor, "schedule");
    assert_eq!(entry.target, Some(format!("backup:{name}")));
    assert_eq!(entry.detail["schedule"], json!(schedule));
    app.stop().await;
}

#[tokio::test]
async fn a_backup_in_progress_completes_before_the_process_exits_on_sigterm() {
    use crate::support::app::DdmsProcess;
    let dir = tempfile::tempdir().unwrap();
    let (ok, token, stderr) = ddms(
        dir.path(),
        &["token", "create", "--name", "ops", "--role", "owner"],
    )
    .await;
    assert!(ok, "{stderr}");
    let token = token.trim().to_string();
    {
        // Enough data that the backup outlasts the rest of the shutdown (about half a
        // second): 60 MB that do not compress, to write and to upload.
        let store = open_sqlite_file(&dir.path().join("data/ddms.db")).await;
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let filler: String = (0..60_000_000 / 16)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                format!("{state:016x}")
            })
            .collect();
        store
            .put_setting("test_filler", &json!(filler))
            .await
            .unwrap();
    }
    // The off-host copy is the last step: it too must be done when the process exits.
    let s3 = S3Server::start().await;
    s3.create_bucket("plant-backups").await;
    let mut process = DdmsProcess::serve(
        dir.path(),
        &[
            ("DDMS_BACKUP__S3__BUCKET", "plant-backups"),
            ("DDMS_BACKUP__S3__ENDPOINT", &s3.endpoint),
            ("DDMS_BACKUP__S3__FORCE_PATH_STYLE", "true"),
            ("AWS_ACCESS_KEY_ID", "key"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    )
    .await
    .unwrap();
    let response = reqwest::Client::new()
        .post(process.url("/api/system/backup"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let started: Value = response.json().await.unwrap();
    let name = started["name"].as_str().unwrap().to_string();
    process.signal(nix::sys::signal::Signal::SIGTERM);
    let status = process.wait_exit(Duration::from_secs(60)).await;
    assert!(status.success(), "{status:?}");
    let backups_dir = dir.path().join("data/backups");
    let left: Vec<String> = std::fs::read_dir(&backups_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left,
        std::slice::from_ref(&name),
        "the archive, complete, and nothing else"
    );
    assert_eq!(s3.keys("plant-backups").await, [format!("ddms/{name}")]);
    let (ok, _, stderr) = ddms(dir.path(), &["backup", "verify", &name]).await;
    assert!(ok, "{stderr}");
    assert!(
        process
            .json_logs()
            .iter()
            .any(|l| l["message"] == "shutting down: waiting for the backup in progress"),
        "{:?}",
        process.json_logs()
    );
}

/// moto's S3 server on a free port, stopped when dropped.
struct S3Server {
    child: tokio::process::Child,
    endpoint: String,
}

impl S3Server {
    async fn start() -> S3Server {
        let port = free_port().unwrap();
        let child = tokio::process::Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("moto_server (pip install 'moto[s3,server]'; `cargo xtask setup` installs it)");
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = reqwest::Client::new();
        while client.get(&endpoint).send().await.is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        S3Server { child, endpoint }
    }

    async fn create_bucket(&self, bucket: &str) {
        let response = reqwest::Client::new()
            .put(format!("{}/{bucket}", self.endpoint))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{response:?}");
    }

    async fn keys(&self, bucket: &str) -> Vec<String> {
        let body = reqwest::get(format!("{}/{bucket}?list-type=2", self.endpoint))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        body.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[tokio::test]
async fn backups_are_uploaded_to_s3_and_restored_from_there_when_the_disk_is_lost() {
    let s3 = S3Server::start().await;
    s3.create_bucket("plant-backups").await;
    let s3_config = format!(
        "[backup.s3]\nbucket = \"plant-backups\"\nprefix = \"site-a/\"\nendpoint = {:?}\n\
         force_path_style = true\naccess_key_id = \"test\"\nsecret_access_key = \"test\"\n",
        s3.endpoint
    );
    let (source, _source_dir) = open(&Db::Sqlite).await;
    populate(source.as_ref()).await;
    let expected = contents(source.as_ref()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = ddms::config::from_toml(&format!(
        "data_dir = {data:?}\n[backup]\ndir = {data:?}\nkeep = 2\n{s3_config}",
        data = dir.path().display().to_string(),
    ))
    .unwrap();
    let backups_of_source = Arc::new(Backups::new(source.clone(), &config).await);
    let mut names = Vec::new();
    for _ in 0..3 {
        let info = backups_of_source.create(Trigger::Cli).await.unwrap();
        assert_eq!(info.locations.len(), 2, "{info:?}");
        names.push(info.name);
    }
    // The directory keeps the newest two; the bucket keeps every copy (its lifecycle rule
    // expires them: ddms' role may not delete).
    let mut keys = s3.keys("plant-backups").await;
    keys.sort();
    let expected_keys: Vec<String> = names.iter().map(|n| format!("site-a/{n}")).collect();
    assert_eq!(keys, expected_keys);
    let listing = backups_of_source.list().await.unwrap();
    assert_eq!(listing.s3_error, None);
    let listed: Vec<(String, Value)> = listing
        .backups
        .iter()
        .map(|b| (b.name.clone(), json!(b.locations)))
        .collect();
    assert_eq!(
        listed,
        [
            (names[2].clone(), json!(["local", "s3"])),
            (names[1].clone(), json!(["local", "s3"])),
            (names[0].clone(), json!(["s3"])),
        ]
    );

    // The disk is lost: the bucket still has them, and a restore fetches the archive.
    for name in &names[1..] {
        std::fs::remove_file(dir.path().join(name)).unwrap();
    }
    let listing = backups_of_source.list().await.unwrap();
    assert_eq!(listing.backups[0].locations.len(), 1);
    assert_eq!(json!(listing.backups[0].locations), json!(["s3"]));
    let (target, _target_dir) = open(&Db::Sqlite).await;
    let empty_dir = tempfile::tempdir().unwrap();
    let config = ddms::config::from_toml(&format!(
        "data_dir = {data:?}\n[backup]\ndir = {data:?}\n{s3_config}",
        data = empty_dir.path().display().to_string(),
    ))
    .unwrap();
    let backups_of_target = Backups::new(target.clone(), &config).await;
    let err = backups_of_target
        .verify("ddms-backup-20200101T000000.000Z.tar.gz")
        .await
        .unwrap_err();
    assert!(
        matches!(err, BackupError::NotFound(_)),
        "in neither place: {err}"
    );
    backups_of_target.restore(&names[2], false).await.unwrap();
    assert_eq!(contents(target.as_ref()).await, expected);

    // The binary, configured through the environment, with credentials from the AWS default
    // chain (here its environment variables) rather than from ddms.toml.
    let cli_data = tempfile::tempdir().unwrap();
    let output = ddms_command(cli_data.path())
        .args([
            "--data-dir",
            &cli_data.path().display().to_string(),
            "backup",
            "create",
        ])
        .env("DDMS_BACKUP__S3__BUCKET", "plant-backups")
        .env("DDMS_BACKUP__S3__PREFIX", "from-cli/")
        .env("DDMS_BACKUP__S3__ENDPOINT", &s3.endpoint)
        .env("DDMS_BACKUP__S3__FORCE_PATH_STYLE", "true")
        .env("AWS_ACCESS_KEY_ID", "cli-key")
        .env("AWS_SECRET_ACCESS_KEY", "cli-secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let created: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(created["locations"], json!(["local", "s3"]));
    assert!(s3
        .keys("plant-backups")
        .await
        .contains(&format!("from-cli/{}", created["name"].as_str().unwrap())));

    // A bucket that does not exist: the backup fails with the store's answer, and the local
    // copy stays.
    let config = ddms::config::from_toml(&format!(
        "data_dir = {data:?}\n[backup]\ndir = {data:?}\n{}",
        s3_config.replace("bucket = \"plant-backups\"", "bucket = \"no-such-bucket\""),
        data = empty_dir.path().display().to_string(),
    ))
    .unwrap();
    let failing = Arc::new(Backups::new(source.clone(), &config).await);
    let err = failing.create(Trigger::Cli).await.unwrap_err();
    assert!(matches!(err, BackupError::S3(_)), "{err}");
    assert!(err.to_string().contains("no-such-bucket"), "{err}");
    assert!(!failing.status().last.unwrap().ok);
    let listing = failing.list().await.unwrap();
    assert!(listing.s3_error.is_some());
    assert_eq!(listing.backups.len(), 1, "the local archive is kept");
}
