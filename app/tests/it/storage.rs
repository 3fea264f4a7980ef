//! The storage conformance suite: the same checks, unchanged, against every backend — SQLite,
//! PostgreSQL from a container (testcontainers) and PostgreSQL as a local process.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use ddms::store::{
    self, DeviceStatus, DeviceVersion, MqttCredentials, NewApiToken, NewAuditEntry, NewDevice,
    NewEvent, NewNotification, NewSession, NewUser, Protocol, Reading, Role, RollupStep, Status,
    Store, StoreError, UserChange,
};
use secrecy::ExposeSecret;
use serde_json::json;

mod accounts;
mod readings;
mod rollup_paths;

use accounts::*;
use readings::*;
use rollup_paths::*;

use crate::support::app::{database_url, Db};
use crate::support::services::Provider;
use crate::support::wait::eventually;

async fn open(db: Db) -> (Arc<dyn Store>, tempfile::TempDir) {
    let (url, dir) = database_url(&db).await;
    let store = store::connect(&url.into(), 8, Duration::from_secs(5))
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    (store, dir)
}

fn ts(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_790_000_000 + secs, 0).unwrap()
}

fn modbus_device(name: &str) -> NewDevice {
    NewDevice {
        name: name.into(),
        protocol: Protocol::Modbus,
        group_id: None,
        config: json!({"host": "10.0.0.5", "port": 502, "unit_id": 1,
                       "registers": [{"metric": "temperature", "kind": "holding", "address": 0, "type": "f32"}]}),
        enabled: true,
    }
}

async fn migrations_are_current_and_idempotent(store: Arc<dyn Store>) {
    let status = store.migration_status().await.unwrap();
    assert!(status.is_current(), "{status:?}");
    assert!(!status.applied.is_empty());
    let again = store.migrate().await.unwrap();
    assert_eq!(again.applied, status.applied);
}

/// Backups hold every table but those left out on purpose: a migration that adds a table
/// must add it to `SNAPSHOT_TABLES` (or to `NOT_IN_SNAPSHOTS`, with the reason).
async fn every_table_is_in_backups_or_left_out_on_purpose(store: Arc<dyn Store>) {
    assert_eq!(
        store.tables_outside_snapshots().await.unwrap(),
        Vec::<String>::new()
    );
    // Partitions are created ahead; they stay part of `readings`.
    store.ensure_partitions(Utc::now(), 2).await.unwrap();
    assert_eq!(
        store.tables_outside_snapshots().await.unwrap(),
        Vec::<String>::new()
    );
}

async fn devices_round_trip_with_groups_and_json_config(store: Arc<dyn Store>) {
    let group = store.create_group("plant-a").await.unwrap();
    let mut new = modbus_device("boiler-1");
    new.group_id = Some(group.id);
    let created = store.create_device(&new).await.unwrap();
    assert_eq!(created.name, "boiler-1");
    assert_eq!(created.config, new.config);
    assert_eq!(created.group_id, Some(group.id));
    assert_eq!(store.get_device(created.id).await.unwrap(), created);

    let mut changed = new.clone();
    changed.name = "boiler-1b".into();
    changed.enabled = false;
    let updated = store.update_device(created.id, &changed).await.unwrap();
    assert_eq!(updated.name, "boiler-1b");
    assert!(!updated.enabled);
    assert!(updated.updated_at >= created.updated_at);

    let mqtt = NewDevice {
        name: "greenhouse-3".into(),
        protocol: Protocol::Mqtt,
        group_id: None,
        config: json!({}),
        enabled: true,
    };
    store.create_device(&mqtt).await.unwrap();
    let names: Vec<String> = store
        .list_devices()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["boiler-1b", "greenhouse-3"]);
    assert_eq!(store.list_groups().await.unwrap(), vec![group]);

    store.delete_device(created.id).await.unwrap();
    assert!(matches!(
        store.get_device(created.id).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.delete_device(created.id).await,
        Err(StoreError::NotFound)
    ));
}

async fn device_versions_follow_every_change_without_the_configuration(store: Arc<dyn Store>) {
    assert_eq!(store.list_device_versions().await.unwrap(), []);
    let boiler = store.create_device(&modbus_device("boiler")).await.unwrap();
    let mqtt = NewDevice {
        name: "greenhouse".into(),
        protocol: Protocol::Mqtt,
        group_id: None,
        config: json!({}),
        enabled: false,
    };
    let greenhouse = store.create_device(&mqtt).await.unwrap();
    let version_of = |device: &ddms::store::Device| DeviceVersion {
        id: device.id,
        protocol: device.protocol,
        enabled: device.enabled,
        updated_at: device.updated_at,
    };
    let mut versions = store.list_device_versions().await.unwrap();
    versions.sort_by_key(|v| v.id);
    let mut expected = vec![version_of(&boiler), version_of(&greenhouse)];
    expected.sort_by_key(|v| v.id);
    assert_eq!(versions, expected);

    let mut changed = modbus_device("boiler");
    changed.config["port"] = json!(1502);
    let updated = store.update_device(boiler.id, &changed).await.unwrap();
    assert_ne!(
        updated.updated_at, boiler.updated_at,
        "an edit moves the version"
    );
    store.delete_device(greenhouse.id).await.unwrap();
    assert_eq!(
        store.list_device_versions().await.unwrap(),
        [version_of(&updated)]
    );
}

async fn duplicate_device_name_is_a_conflict(store: Arc<dyn Store>) {
    store.create_device(&modbus_device("pump")).await.unwrap();
    let err = store
        .create_device(&modbus_device("pump"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
}

async fn notifications_open_once_and_clear_or_acknowledge(store: Arc<dyn Store>) {
    let device = store.create_device(&modbus_device("d")).await.unwrap();
    let new = NewNotification {
        kind: "connection_failure".into(),
        device_id: Some(device.id),
        message: "3 consecutive failures".into(),
    };
    let first = store.open_notification(&new).await.unwrap();
    let second = store.open_notification(&new).await.unwrap();
    assert_eq!(
        first.id, second.id,
        "one open notification per device and kind"
    );
    assert_eq!(
        store
            .list_open_notifications("connection_failure")
            .await
            .unwrap()
            .len(),
        1
    );

    assert!(store
        .clear_notification("connection_failure", device.id)
        .await
        .unwrap());
    assert!(!store
        .clear_notification("connection_failure", device.id)
        .await
        .unwrap());
    assert!(store
        .list_open_notifications("connection_failure")
        .await
        .unwrap()
        .is_empty());

    let reopened = store.open_notification(&new).await.unwrap();
    assert_ne!(reopened.id, first.id);
    let acked = store
        .acknowledge_notification(reopened.id, "user:ada")
        .await
        .unwrap();
    assert_eq!(acked.acknowledged_by.as_deref(), Some("user:ada"));
    assert!(store
        .list_open_notifications("connection_failure")
        .await
        .unwrap()
        .is_empty());
    assert!(matches!(
        store
            .acknowledge_notification(uuid::Uuid::now_v7(), "x")
            .await,
        Err(StoreError::NotFound)
    ));
}

async fn device_status_is_one_row_per_device(store: Arc<dyn Store>) {
    let device = store.create_device(&modbus_device("d")).await.unwrap();
    let mut status = DeviceStatus {
        device_id: device.id,
        status: Status::Online,
        last_error: None,
        last_seen_at: Some(ts(1)),
        consecutive_failures: 0,
        changed_at: ts(1),
    };
    store.put_device_status(&status).await.unwrap();
    status.status = Status::Offline;
    status.last_error = Some("connection refused".into());
    status.consecutive_failures = 3;
    status.changed_at = ts(2);
    store.put_device_status(&status).await.unwrap();
    assert_eq!(store.list_device_status().await.unwrap(), vec![status]);
    store.delete_device(device.id).await.unwrap();
    assert!(store.list_device_status().await.unwrap().is_empty());
}

async fn mqtt_credentials_are_found_by_username_and_replaced(store: Arc<dyn Store>) {
    let device = store.create_device(&modbus_device("d")).await.unwrap();
    let mut creds = MqttCredentials {
        device_id: device.id,
        username: device.id.to_string(),
        secret_hash: "h1".into(),
    };
    store.put_mqtt_credentials(&creds).await.unwrap();
    creds.secret_hash = "h2".into();
    store.put_mqtt_credentials(&creds).await.unwrap();
    assert_eq!(
        store.find_mqtt_credentials(&creds.username).await.unwrap(),
        creds
    );
    assert!(matches!(
        store.find_mqtt_credentials("nobody").await,
        Err(StoreError::NotFound)
    ));
}

async fn leases_have_one_holder_until_expiry_or_release(store: Arc<dyn Store>) {
    let names: Vec<String> = ["poll:a", "poll:b"].iter().map(|s| s.to_string()).collect();
    let ttl = Duration::from_millis(600);
    let a = store
        .acquire_leases(&names, "instance-a", ttl)
        .await
        .unwrap();
    assert_eq!(sorted(a), names);
    assert!(store
        .acquire_leases(&names, "instance-b", ttl)
        .await
        .unwrap()
        .is_empty());
    // Renewal by the holder keeps it.
    assert_eq!(
        sorted(
            store
                .acquire_leases(&names, "instance-a", ttl)
                .await
                .unwrap()
        ),
        names
    );
    // Released leases are free at once.
    store
        .release_leases(&names[..1], "instance-a")
        .await
        .unwrap();
    assert_eq!(
        store
            .acquire_leases(&names, "instance-b", ttl)
            .await
            .unwrap(),
        vec!["poll:a".to_string()]
    );
    // Releasing someone else's lease does nothing.
    store
        .release_leases(&names, "instance-a")
        .await
        .unwrap_or(());
    assert!(store
        .acquire_leases(&names[..1], "instance-a", ttl)
        .await
        .unwrap()
        .is_empty());
    // An expired lease goes to whoever asks next.
    // sleep: the subject is the lease's TTL running out: slept past it with a margin
    tokio::time::sleep(ttl + Duration::from_millis(300)).await;
    assert_eq!(
        sorted(
            store
                .acquire_leases(&names, "instance-c", ttl)
                .await
                .unwrap()
        ),
        names
    );
    assert!(store
        .acquire_leases(&[], "instance-c", ttl)
        .await
        .unwrap()
        .is_empty());
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

async fn the_event_log_keeps_order_reads_ranges_and_prunes_all_but_the_newest(
    store: Arc<dyn Store>,
) {
    assert_eq!(store.event_bounds().await.unwrap(), None);
    let event = |i: i64| NewEvent {
        kind: if i % 2 == 0 {
            "reading"
        } else {
            "notification"
        }
        .into(),
        data: json!({ "i": i, "text": "<script>'; DROP TABLE events; --" }),
    };
    store
        .append_events(&(0..5).map(event).collect::<Vec<_>>())
        .await
        .unwrap();
    store.append_events(&[event(5)]).await.unwrap();
    store.append_events(&[]).await.unwrap();
    let all = store.events_after(0, None, 100).await.unwrap();
    assert_eq!(all.len(), 6);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "ids increase");
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.data["i"], i as i64, "append order is id order");
        assert_eq!(e.kind, event(i as i64).kind);
        assert_eq!(e.data, event(i as i64).data, "payloads are stored as given");
    }
    let (oldest, newest) = store.event_bounds().await.unwrap().unwrap();
    assert_eq!((oldest, newest), (all[0].id, all[5].id));
    let middle = store
        .events_after(all[1].id, Some(all[3].id), 100)
        .await
        .unwrap();
    assert_eq!(
        middle.iter().map(|e| e.id).collect::<Vec<_>>(),
        [all[2].id, all[3].id],
        "(after, upto]"
    );
    let limited = store.events_after(all[0].id, None, 2).await.unwrap();
    assert_eq!(limited.len(), 2);
    assert_eq!(limited[0].id, all[1].id);

    // Pruning everything keeps the newest event, so the log still knows where it stands.
    let pruned = store
        .prune_events(Utc::now() + chrono::Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(pruned, 5);
    assert_eq!(
        store.event_bounds().await.unwrap(),
        Some((all[5].id, all[5].id))
    );
    store.append_events(&[event(6)]).await.unwrap();
    let after = store.events_after(all[5].id, None, 10).await.unwrap();
    assert_eq!(after.len(), 1);
    assert!(after[0].id > all[5].id, "ids are never reused");
    assert_eq!(
        store
            .prune_events(Utc::now() - chrono::Duration::hours(1))
            .await
            .unwrap(),
        0,
        "recent events stay"
    );
}

/// Several instances append at once while one tails with "id > last": a row that commits after
/// a larger id was read would be skipped for good. The tailer must see every event.
async fn a_tailer_never_skips_events_appended_concurrently(store: Arc<dyn Store>) {
    const WRITERS: i64 = 4;
    const EACH: i64 = 150;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..EACH {
                let batch: Vec<NewEvent> = (0..1 + i % 3)
                    .map(|k| NewEvent {
                        kind: "reading".into(),
                        data: json!({ "writer": w, "i": i, "k": k }),
                    })
                    .collect();
                // On SQLite four writers take turns at one lock: on a loaded machine one may
                // wait past the busy timeout and get "database is locked", which the event log
                // writer retries (it is transient); so does this one.
                let mut attempts = 0;
                while let Err(e) = store.append_events(&batch).await {
                    attempts += 1;
                    assert!(e.is_transient() && attempts < 20, "append failed: {e}");
                }
            }
        }));
    }
    let expected: usize = (0..EACH).map(|i| 1 + i as usize % 3).sum::<usize>() * WRITERS as usize;
    let mut seen = Vec::new();
    let mut position = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < expected && tokio::time::Instant::now() < deadline {
        for event in store.events_after(position, None, 50).await.unwrap() {
            position = event.id;
            seen.push(event);
        }
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let all = store.events_after(0, None, 10_000).await.unwrap();
    assert_eq!(all.len(), expected);
    assert_eq!(
        seen.iter().map(|e| e.id).collect::<Vec<_>>(),
        all.iter().map(|e| e.id).collect::<Vec<_>>(),
        "the tailer saw every event, in order"
    );
}

async fn deleting_a_group_keeps_its_devices(store: Arc<dyn Store>) {
    let group = store.create_group("plant-a").await.unwrap();
    let mut device = modbus_device("d");
    device.group_id = Some(group.id);
    let device = store.create_device(&device).await.unwrap();
    store.delete_group(group.id).await.unwrap();
    assert!(store.list_groups().await.unwrap().is_empty());
    assert_eq!(store.get_device(device.id).await.unwrap().group_id, None);
    assert!(matches!(
        store.delete_group(group.id).await,
        Err(StoreError::NotFound)
    ));
}

async fn ping_answers(store: Arc<dyn Store>) {
    store.ping(Duration::from_secs(2)).await.unwrap();
}

/// Instantiates every check above once per backend.
macro_rules! conformance_suite {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $check() {
                    let (store, _dir) = super::open(super::Db::Sqlite).await;
                    super::$check(store).await;
                }
            )*
        }
        mod postgres_container {
            $(
                #[tokio::test]
                async fn $check() {
                    let (store, _dir) = super::open(super::Db::Postgres(super::Provider::Docker)).await;
                    super::$check(store).await;
                }
            )*
        }
        mod postgres_local_process {
            $(
                #[tokio::test]
                async fn $check() {
                    let (store, _dir) = super::open(super::Db::Postgres(super::Provider::Local)).await;
                    super::$check(store).await;
                }
            )*
        }
    };
}

conformance_suite!(
    migrations_are_current_and_idempotent,
    every_table_is_in_backups_or_left_out_on_purpose,
    devices_round_trip_with_groups_and_json_config,
    duplicate_device_name_is_a_conflict,
    device_versions_follow_every_change_without_the_configuration,
    series_are_created_once_per_device_and_metric,
    duplicate_readings_are_ignored,
    a_batch_in_any_order_is_stored_once_with_the_first_duplicate,
    readings_that_cannot_be_stored_are_refused_not_dropped,
    series_ids_are_never_reused_after_a_device_is_deleted,
    range_queries_return_oldest_first_within_bounds,
    rollups_summarise_new_readings_per_minute_and_hour,
    rollups_are_the_same_after_a_plain_insert_and_after_a_refused_duplicate,
    concurrent_writers_of_the_same_readings_count_them_once,
    sub_second_timestamps_keep_microseconds,
    latest_readings_give_the_newest_per_metric,
    deleting_a_device_deletes_its_readings,
    users_and_tokens_are_found_by_name_and_hash,
    settings_and_audit_log_round_trip,
    notifications_open_once_and_clear_or_acknowledge,
    partitions_are_created_ahead_idempotently,
    readers_never_miss_readings_that_move_into_a_new_partition,
    inserts_never_fail_while_partitions_are_created,
    retention_drops_old_readings_and_the_rollup_buckets_wholly_before_the_cutoff,
    device_status_is_one_row_per_device,
    mqtt_credentials_are_found_by_username_and_replaced,
    leases_have_one_holder_until_expiry_or_release,
    the_event_log_keeps_order_reads_ranges_and_prunes_all_but_the_newest,
    a_tailer_never_skips_events_appended_concurrently,
    ping_answers,
    users_are_listed_changed_disabled_and_deleted,
    sessions_are_found_by_hash_touched_pruned_and_end_with_their_user,
    tokens_are_listed_and_revoked,
    deleting_a_group_keeps_its_devices,
    the_audit_log_pages_newest_first,
);
