//! The storage conformance suite: the same checks, unchanged, against every backend — SQLite,
//! PostgreSQL from a container (testcontainers) and PostgreSQL as a local process.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use ddms::store::{
    self, DeviceStatus, MqttCredentials, NewApiToken, NewAuditEntry, NewDevice, NewEvent,
    NewNotification, NewSession, NewUser, Protocol, Reading, Role, RollupStep, Status, Store,
    StoreError, UserChange,
};
use secrecy::ExposeSecret;
use serde_json::json;

use crate::support::app::{database_url, Db};
use crate::support::services::Provider;

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

async fn duplicate_device_name_is_a_conflict(store: Arc<dyn Store>) {
    store.create_device(&modbus_device("pump")).await.unwrap();
    let err = store
        .create_device(&modbus_device("pump"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
}

async fn series_are_created_once_per_device_and_metric(store: Arc<dyn Store>) {
    let device = store.create_device(&modbus_device("d")).await.unwrap();
    let a = store
        .ensure_series(device.id, "temperature", Some("°C"))
        .await
        .unwrap();
    let b = store
        .ensure_series(device.id, "temperature", None)
        .await
        .unwrap();
    let c = store
        .ensure_series(device.id, "pressure", None)
        .await
        .unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

async fn duplicate_readings_are_ignored(store: Arc<dyn Store>) {
    let device = store.create_device(&modbus_device("d")).await.unwrap();
    let series = store.ensure_series(device.id, "t", None).await.unwrap();
    let batch: Vec<Reading> = (0..100)
        .map(|i| Reading {
            series,
            ts: ts(i),
            value: i as f64,
        })
        .collect();
    assert_eq!(store.insert_readings(&batch).await.unwrap(), 100);
    // The same batch again (a redelivered MQTT message, a retried poll) stores nothing new, and
    // the first value wins.
    let mut again = batch.clone();
    again[0].value = 999.0;
    assert_eq!(store.insert_readings(&again).await.unwrap(), 0);
    let mut mixed = batch[..10].to_vec();
    mixed.push(Reading {
        series,
        ts: ts(100),
        value: 100.0,
    });
    assert_eq!(store.insert_readings(&mixed).await.unwrap(), 1);
    let points = store
        .query_readings(series, ts(0), ts(1000), 10_000)
        .await
        .unwrap();
    assert_eq!(points.len(), 101);
    assert_eq!(points[0].value, 0.0);
    assert_eq!(store.insert_readings(&[]).await.unwrap(), 0);
}

/// A batch as a fleet's arrives — by time, then by device and metric, with a redelivered
/// reading inside it — is stored whatever order it comes in (the stores insert in key order,
/// PostgreSQL in several statements split by series: 10,000 readings here are four): each
/// reading once, the first of a duplicate, and the rollups count each reading once.
async fn a_batch_in_any_order_is_stored_once_with_the_first_duplicate(store: Arc<dyn Store>) {
    const SECONDS: i64 = 2_500;
    let device = store.create_device(&modbus_device("d")).await.unwrap();
    let mut series = Vec::new();
    for metric in ["a", "b", "c", "d"] {
        series.push(store.ensure_series(device.id, metric, None).await.unwrap());
    }
    let value = |n: usize, second: i64| (n * 10_000) as f64 + second as f64;
    let mut batch = Vec::new();
    for second in (0..SECONDS).rev() {
        for (n, &id) in series.iter().enumerate().rev() {
            batch.push(Reading {
                series: id,
                ts: ts(second),
                value: value(n, second),
            });
        }
    }
    batch.push(Reading {
        series: series[0],
        ts: ts(7),
        value: -1.0,
    });
    assert_eq!(
        store.insert_readings(&batch).await.unwrap(),
        4 * SECONDS as u64
    );
    assert_eq!(store.insert_readings(&batch).await.unwrap(), 0);
    for (n, &id) in series.iter().enumerate() {
        let points = store
            .query_readings(id, ts(0), ts(SECONDS), 10_000)
            .await
            .unwrap();
        let values: Vec<f64> = points.iter().map(|p| p.value).collect();
        let expected: Vec<f64> = (0..SECONDS).map(|s| value(n, s)).collect();
        assert!(
            values == expected,
            "series {id}: oldest first, the first duplicate"
        );
        let hours = store
            .query_rollups(id, RollupStep::Hour, ts(-3600), ts(2 * 3600), 10)
            .await
            .unwrap();
        let (count, sum) = hours.iter().fold((0, 0.0), |(c, s), h| {
            (c + h.count, s + h.avg * h.count as f64)
        });
        assert_eq!(
            count, SECONDS as u64,
            "series {id}: the duplicate is not counted"
        );
        let expected_sum: f64 = expected.iter().sum();
        assert!(
            (sum - expected_sum).abs() < 1e-3,
            "series {id}: sum {sum}, not {expected_sum}"
        );
    }
}

/// A value no reading may hold (NaN, an infinity) is refused with an error the batch writer
/// treats as the rows' own fault, and nothing of that batch is stored. SQLite used to drop a NaN
/// silently: it binds NaN as NULL and `INSERT OR IGNORE` also ignores NOT NULL violations, so
/// the reading vanished while the batch, and its MQTT acknowledgements, succeeded; PostgreSQL
/// stored the NaN and every rollup of its bucket became NaN.
async fn readings_that_cannot_be_stored_are_refused_not_dropped(store: Arc<dyn Store>) {
    let device = store.create_device(&modbus_device("d")).await.unwrap();
    let series = store.ensure_series(device.id, "t", None).await.unwrap();
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let batch = [
            Reading {
                series,
                ts: ts(0),
                value: 1.0,
            },
            Reading {
                series,
                ts: ts(1),
                value: bad,
            },
        ];
        let err = store
            .insert_readings(&batch)
            .await
            .expect_err(&format!("a batch holding {bad} was accepted"));
        assert!(err.is_refusal(), "{bad}: {err} is not a refusal");
        assert!(!err.is_transient(), "{bad}: {err} is called transient");
    }
    let stored = store
        .query_readings(series, ts(0), ts(1000), 10)
        .await
        .unwrap();
    assert!(
        stored.is_empty(),
        "part of a refused batch was stored: {stored:?}"
    );
    let good = Reading {
        series,
        ts: ts(0),
        value: 1.0,
    };
    assert_eq!(store.insert_readings(&[good]).await.unwrap(), 1);
}

/// The batch writer caches series ids, so an id must never come back for another series
/// (SQLite handed out the highest deleted id again before migration 0007).
async fn series_ids_are_never_reused_after_a_device_is_deleted(store: Arc<dyn Store>) {
    let gone = store.create_device(&modbus_device("gone")).await.unwrap();
    let old = store.ensure_series(gone.id, "t", None).await.unwrap();
    store.delete_device(gone.id).await.unwrap();
    let heir = store.create_device(&modbus_device("heir")).await.unwrap();
    let new = store.ensure_series(heir.id, "t", None).await.unwrap();
    assert!(new > old, "series id {old} was handed out again");
}

async fn range_queries_return_oldest_first_within_bounds(store: Arc<dyn Store>) {
    let device = store.create_device(&modbus_device("d")).await.unwrap();
    let series = store.ensure_series(device.id, "t", None).await.unwrap();
    let other = store.ensure_series(device.id, "u", None).await.unwrap();
    // Inserted out of order, across several days (PostgreSQL partitions and the default one).
    let mut batch: Vec<Reading> = [5, 1, 4, 2, 3, 86_400 * 3, -86_400 * 20]
        .iter()
        .map(|&s| Reading {
            series,
            ts: ts(s),
            value: s as f64,
        })
        .collect();
    batch.push(Reading {
        series: other,
        ts: ts(2),
        value: -1.0,
    });
    store.insert_readings(&batch).await.unwrap();
    let points = store
        .query_readings(series, ts(1), ts(5), 100)
        .await
        .unwrap();
    let values: Vec<f64> = points.iter().map(|p| p.value).collect();
    assert_eq!(
        values,
        [1.0, 2.0, 3.0, 4.0],
        "from inclusive, to exclusive, oldest first"
    );
    assert!(points.windows(2).all(|w| w[0].ts < w[1].ts));
    assert_eq!(points[0].ts, ts(1), "timestamps round-trip exactly");
    let limited = store
        .query_readings(series, ts(-86_400 * 30), ts(86_400 * 30), 3)
        .await
        .unwrap();
    let values: Vec<f64> = limited.iter().map(|p| p.value).collect();
    assert_eq!(values, [-86_400.0 * 20.0, 1.0, 2.0]);
    let wide = store
        .query_readings(series, ts(-86_400 * 30), ts(86_400 * 30), 100)
        .await
        .unwrap();
    assert_eq!(wide.len(), 7);
}

/// 2026-09-01T10:00:00Z plus `secs`: on a whole hour, so bucket boundaries are easy to name.
fn at(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 9, 1, 10, 0, 0).unwrap() + chrono::Duration::seconds(secs)
}

async fn rollups_summarise_new_readings_per_minute_and_hour(store: Arc<dyn Store>) {
    let device = store.create_device(&modbus_device("d")).await.unwrap();
    let series = store.ensure_series(device.id, "t", None).await.unwrap();
    let other = store.ensure_series(device.id, "u", None).await.unwrap();
    assert_eq!(
        store.find_series(device.id, "t").await.unwrap(),
        Some(series)
    );
    assert_eq!(store.find_series(device.id, "nope").await.unwrap(), None);
    // One reading a second for 3 minutes (more rows than one SQLite statement carries), value
    // = seconds into its minute, plus a reading of another series in the same minutes.
    let mut batch: Vec<Reading> = (0..180)
        .map(|s| Reading {
            series,
            ts: at(s),
            value: (s % 60) as f64,
        })
        .collect();
    batch.push(Reading {
        series: other,
        ts: at(5),
        value: 1000.0,
    });
    assert_eq!(store.insert_readings(&batch).await.unwrap(), 181);
    let minutes = store
        .query_rollups(series, RollupStep::Minute, at(0), at(3600), 100)
        .await
        .unwrap();
    assert_eq!(minutes.len(), 3);
    for (i, bucket) in minutes.iter().enumerate() {
        assert_eq!(
            bucket.ts,
            at(60 * i as i64),
            "buckets start on the minute, oldest first"
        );
        assert_eq!((bucket.min, bucket.max, bucket.count), (0.0, 59.0, 60));
        assert_eq!(bucket.avg, 29.5);
        assert_eq!(bucket.value, bucket.avg);
    }
    let hours = store
        .query_rollups(series, RollupStep::Hour, at(0), at(3600), 100)
        .await
        .unwrap();
    assert_eq!(hours.len(), 1);
    assert_eq!((hours[0].ts, hours[0].count), (at(0), 180));

    // Redelivered readings (the first value wins) and a mix of old and new: only the new count.
    let mut again = batch.clone();
    again[0].value = -500.0;
    assert_eq!(store.insert_readings(&again).await.unwrap(), 0);
    let mut mixed = batch[..30].to_vec();
    mixed.push(Reading {
        series,
        ts: at(60) + chrono::Duration::milliseconds(500),
        value: 100.0,
    });
    assert_eq!(store.insert_readings(&mixed).await.unwrap(), 1);
    let minutes = store
        .query_rollups(series, RollupStep::Minute, at(0), at(3600), 100)
        .await
        .unwrap();
    assert_eq!((minutes[0].min, minutes[0].count), (0.0, 60));
    assert_eq!((minutes[1].max, minutes[1].count), (100.0, 61));
    assert_eq!(minutes[1].avg, (29.5 * 60.0 + 100.0) / 61.0);

    // A bucket that starts before `from` still overlaps the range; `to` is exclusive.
    let window = store
        .query_rollups(series, RollupStep::Minute, at(90), at(120), 100)
        .await
        .unwrap();
    assert_eq!(window.iter().map(|b| b.ts).collect::<Vec<_>>(), [at(60)]);
    let limited = store
        .query_rollups(series, RollupStep::Minute, at(0), at(3600), 2)
        .await
        .unwrap();
    assert_eq!(limited.len(), 2);
    let others = store
        .query_rollups(other, RollupStep::Hour, at(0), at(3600), 100)
        .await
        .unwrap();
    assert_eq!(
        (others.len(), others[0].max, others[0].count),
        (1, 1000.0, 1)
    );

    store.delete_device(device.id).await.unwrap();
    assert!(store
        .query_rollups(series, RollupStep::Hour, at(0), at(3600), 100)
        .await
        .unwrap()
        .is_empty());
}

async fn concurrent_writers_of_the_same_readings_count_them_once(store: Arc<dyn Store>) {
    // Blue and green (or a retry racing its original) storing the same readings at once.
    let device = store.create_device(&modbus_device("d")).await.unwrap();
    let series = store.ensure_series(device.id, "t", None).await.unwrap();
    let batch: Vec<Reading> = (0..600)
        .map(|s| Reading {
            series,
            ts: at(s),
            value: 1.0,
        })
        .collect();
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            let batch = batch.clone();
            tokio::spawn(async move { store.insert_readings(&batch).await.unwrap() })
        })
        .collect();
    let mut total = 0;
    for writer in writers {
        total += writer.await.unwrap();
    }
    assert_eq!(total, 600, "each reading is new to exactly one writer");
    let hours = store
        .query_rollups(series, RollupStep::Hour, at(0), at(3600), 10)
        .await
        .unwrap();
    assert_eq!((hours.len(), hours[0].count, hours[0].avg), (1, 600, 1.0));
    let minutes = store
        .query_rollups(series, RollupStep::Minute, at(0), at(3600), 100)
        .await
        .unwrap();
    assert_eq!(minutes.len(), 10);
    assert!(minutes.iter().all(|b| b.count == 60));
}

async fn sub_second_timestamps_keep_microseconds(store: Arc<dyn Store>) {
    let device = store.create_device(&modbus_device("d")).await.unwrap();
    let series = store.ensure_series(device.id, "t", None).await.unwrap();
    let t = ts(0) + chrono::Duration::microseconds(123_456);
    store
        .insert_readings(&[Reading {
            series,
            ts: t,
            value: 1.5,
        }])
        .await
        .unwrap();
    let points = store
        .query_readings(series, ts(0), ts(1), 10)
        .await
        .unwrap();
    assert_eq!(points[0].ts, t);
}

async fn latest_readings_give_the_newest_per_metric(store: Arc<dyn Store>) {
    let device = store.create_device(&modbus_device("d")).await.unwrap();
    let temp = store
        .ensure_series(device.id, "temperature", Some("°C"))
        .await
        .unwrap();
    let pressure = store
        .ensure_series(device.id, "pressure", None)
        .await
        .unwrap();
    store
        .ensure_series(device.id, "never-read", None)
        .await
        .unwrap();
    store
        .insert_readings(&[
            Reading {
                series: temp,
                ts: ts(2),
                value: 21.5,
            },
            Reading {
                series: temp,
                ts: ts(1),
                value: 20.0,
            },
            Reading {
                series: pressure,
                ts: ts(3),
                value: 1.2,
            },
        ])
        .await
        .unwrap();
    let latest = store.latest_readings(device.id).await.unwrap();
    let got: Vec<(String, f64)> = latest.iter().map(|l| (l.metric.clone(), l.value)).collect();
    assert_eq!(
        got,
        [
            ("pressure".to_string(), 1.2),
            ("temperature".to_string(), 21.5)
        ]
    );
    assert_eq!(latest[1].unit.as_deref(), Some("°C"));
    assert_eq!(latest[1].ts, ts(2));
}

async fn deleting_a_device_deletes_its_readings(store: Arc<dyn Store>) {
    let device = store.create_device(&modbus_device("d")).await.unwrap();
    let series = store.ensure_series(device.id, "t", None).await.unwrap();
    store
        .insert_readings(&[Reading {
            series,
            ts: ts(0),
            value: 1.0,
        }])
        .await
        .unwrap();
    store.delete_device(device.id).await.unwrap();
    assert!(store
        .query_readings(series, ts(-1), ts(1), 10)
        .await
        .unwrap()
        .is_empty());
}

async fn users_and_tokens_are_found_by_name_and_hash(store: Arc<dyn Store>) {
    assert_eq!(store.count_users().await.unwrap(), 0);
    let user = store
        .create_user(&NewUser {
            username: "ada".into(),
            password_hash: "$argon2id$x".into(),
            role: Role::Admin,
        })
        .await
        .unwrap();
    assert_eq!(store.find_user("ada").await.unwrap().id, user.id);
    assert_eq!(
        store.find_user("ada").await.unwrap().password_hash,
        "$argon2id$x"
    );
    assert!(matches!(
        store.find_user("bob").await,
        Err(StoreError::NotFound)
    ));
    let dup = store
        .create_user(&NewUser {
            username: "ada".into(),
            password_hash: "h".into(),
            role: Role::Viewer,
        })
        .await;
    assert!(matches!(dup, Err(StoreError::Conflict(_))));
    assert_eq!(store.count_users().await.unwrap(), 1);

    let token = store
        .create_api_token(&NewApiToken {
            name: "ci".into(),
            token_hash: "abc".into(),
            role: Role::Viewer,
        })
        .await
        .unwrap();
    assert!(token.last_used_at.is_none());
    let found = store.authenticate_api_token("abc").await.unwrap();
    assert_eq!(found.id, token.id);
    assert_eq!(found.role, Role::Viewer);
    assert!(found.last_used_at.is_some(), "use is recorded");
    assert!(matches!(
        store.authenticate_api_token("abd").await,
        Err(StoreError::NotFound)
    ));
}

async fn settings_and_audit_log_round_trip(store: Arc<dyn Store>) {
    assert_eq!(store.get_setting("retention_days").await.unwrap(), None);
    store
        .put_setting("retention_days", &json!(30))
        .await
        .unwrap();
    store
        .put_setting("retention_days", &json!({"days": 90}))
        .await
        .unwrap();
    assert_eq!(
        store.get_setting("retention_days").await.unwrap(),
        Some(json!({"days": 90}))
    );
    for action in ["user.create", "token.create"] {
        store
            .append_audit(&NewAuditEntry {
                actor: "cli".into(),
                action: action.into(),
                target: Some("x".into()),
                detail: json!({"role": "viewer"}),
                remote_addr: Some("192.0.2.1".into()),
            })
            .await
            .unwrap();
    }
    let entries = store.list_audit(10).await.unwrap();
    let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["token.create", "user.create"], "newest first");
    assert_eq!(entries[0].detail, json!({"role": "viewer"}));
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

/// Readings that reached PostgreSQL's default partition move when their day's partition is
/// created; a query running meanwhile must see each of them, in one partition or the other.
async fn readers_never_miss_readings_that_move_into_a_new_partition(store: Arc<dyn Store>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let device = store.create_device(&modbus_device("d")).await.unwrap();
    let series = store.ensure_series(device.id, "t", None).await.unwrap();
    for round in 0..8 {
        // Days far ahead: no partition exists for them yet.
        let day = Utc::now() + chrono::Duration::days(100 + round * 4);
        let readings: Vec<Reading> = (0..50)
            .map(|i| Reading {
                series,
                ts: day + chrono::Duration::seconds(i),
                value: i as f64,
            })
            .collect();
        assert_eq!(store.insert_readings(&readings).await.unwrap(), 50);
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let (store, stop) = (store.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut fewest = usize::MAX;
                    let mut reads = 0;
                    while !stop.load(Ordering::Relaxed) || reads == 0 {
                        let seen = store
                            .query_readings(
                                series,
                                day - chrono::Duration::hours(1),
                                day + chrono::Duration::hours(1),
                                1000,
                            )
                            .await
                            .unwrap()
                            .len();
                        fewest = fewest.min(seen);
                        reads += 1;
                    }
                    fewest
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        store.ensure_partitions(day, 0).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        stop.store(true, Ordering::Relaxed);
        for reader in readers {
            assert_eq!(
                reader.await.unwrap(),
                50,
                "round {round}: a reader missed readings"
            );
        }
    }
}

/// Inserts for a day whose partition is being created at that moment neither fail (PostgreSQL
/// once refused them with "violates partition constraint" of the default partition) nor make
/// the creation fail, nor lose a reading — over many rounds, since it is a race.
async fn inserts_never_fail_while_partitions_are_created(store: Arc<dyn Store>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let device = store.create_device(&modbus_device("d")).await.unwrap();
    let series = store.ensure_series(device.id, "t", None).await.unwrap();
    for round in 0..40i64 {
        // Three days far ahead, none partitioned yet; `ensure_partitions(day, 0)` creates all
        // three while the writers insert into each of them.
        let day = Utc::now() + chrono::Duration::days(200 + round * 5);
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..3i64)
            .map(|writer| {
                let (store, stop) = (store.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut inserted = 0u64;
                    let mut batch = 0i64;
                    while !stop.load(Ordering::Relaxed) || batch == 0 {
                        let readings: Vec<Reading> = (-1..=1i64)
                            .map(|d| Reading {
                                series,
                                ts: day
                                    + chrono::Duration::days(d)
                                    + chrono::Duration::milliseconds(batch * 10 + writer),
                                value: 1.0,
                            })
                            .collect();
                        inserted += store
                            .insert_readings(&readings)
                            .await
                            .unwrap_or_else(|e| panic!("round {round}: insert failed: {e}"));
                        batch += 1;
                    }
                    inserted
                })
            })
            .collect();
        store
            .ensure_partitions(day, 0)
            .await
            .unwrap_or_else(|e| panic!("round {round}: creating partitions failed: {e}"));
        stop.store(true, Ordering::Relaxed);
        let mut inserted = 0;
        for writer in writers {
            inserted += writer.await.unwrap();
        }
        let stored = store
            .query_readings(
                series,
                day - chrono::Duration::days(2),
                day + chrono::Duration::days(2),
                1_000_000,
            )
            .await
            .unwrap()
            .len() as u64;
        assert_eq!(stored, inserted, "round {round}: readings went missing");
    }
}

async fn partitions_are_created_ahead_idempotently(store: Arc<dyn Store>) {
    let device = store.create_device(&modbus_device("d")).await.unwrap();
    let series = store.ensure_series(device.id, "t", None).await.unwrap();
    let today = Utc::now();
    // A reading that arrived before its partition existed must survive partition creation.
    store
        .insert_readings(&[Reading {
            series,
            ts: today,
            value: 7.0,
        }])
        .await
        .unwrap();
    let created = store.ensure_partitions(today, 3).await.unwrap();
    let again = store.ensure_partitions(today, 3).await.unwrap();
    assert_eq!(again, 0);
    match store.backend() {
        store::Backend::Postgres => assert_eq!(created, 5, "yesterday, today and 3 days ahead"),
        store::Backend::Sqlite => assert_eq!(created, 0),
    }
    let points = store
        .query_readings(
            series,
            today - chrono::Duration::seconds(1),
            today + chrono::Duration::seconds(1),
            10,
        )
        .await
        .unwrap();
    assert_eq!(points.len(), 1);
    store
        .insert_readings(&[Reading {
            series,
            ts: today,
            value: 8.0,
        }])
        .await
        .unwrap();
    let points = store
        .query_readings(
            series,
            today - chrono::Duration::seconds(1),
            today + chrono::Duration::seconds(1),
            10,
        )
        .await
        .unwrap();
    assert_eq!(
        points.len(),
        1,
        "still idempotent after the move into the partition"
    );
}

async fn retention_drops_old_readings_and_the_rollup_buckets_wholly_before_the_cutoff(
    store: Arc<dyn Store>,
) {
    let device = store.create_device(&modbus_device("d")).await.unwrap();
    let series = store.ensure_series(device.id, "t", None).await.unwrap();
    let now = RollupStep::Hour.bucket(Utc::now());
    // Daily partitions for the last week (PostgreSQL), so whole days can go as tables.
    store
        .ensure_partitions(now - chrono::Duration::days(6), 6)
        .await
        .unwrap();
    // One reading every 20 minutes for 6 days, the newest 5 minutes before `now`.
    let readings: Vec<Reading> = (0..6 * 72)
        .map(|i| Reading {
            series,
            ts: now - chrono::Duration::minutes(5 + 20 * i),
            value: i as f64,
        })
        .collect();
    store.insert_readings(&readings).await.unwrap();
    let before = now - chrono::Duration::days(2) + chrono::Duration::minutes(30);
    let old = readings.iter().filter(|r| r.ts < before).count() as u64;
    let kept = readings.len() as u64 - old;

    let counts = store.prune_readings(before).await.unwrap();
    let everything = (
        now - chrono::Duration::days(30),
        now + chrono::Duration::hours(1),
    );
    let left = store
        .query_readings(series, everything.0, everything.1, 10_000)
        .await
        .unwrap();
    assert_eq!(left.len() as u64, kept);
    assert!(left.iter().all(|p| p.ts >= before));
    match store.backend() {
        store::Backend::Postgres => {
            // The days wholly before the cutoff went as partitions, the rest row by row.
            assert!(counts.partitions >= 3, "{counts:?}");
            assert!(counts.readings < old, "{counts:?}");
        }
        store::Backend::Sqlite => {
            assert_eq!((counts.partitions, counts.readings), (0, old), "{counts:?}");
        }
    }
    for (step, deleted) in [
        (RollupStep::Minute, counts.rollups_1m),
        (RollupStep::Hour, counts.rollups_1h),
    ] {
        let buckets = store
            .query_rollups(series, step, everything.0, everything.1, 10_000)
            .await
            .unwrap();
        assert!(deleted > 0, "{step:?}: {counts:?}");
        assert!(
            buckets.iter().all(|b| b.ts >= step.bucket(before)),
            "{step:?}"
        );
        // The bucket the cutoff falls in stays: part of its readings are still kept.
        assert_eq!(
            buckets.iter().map(|b| b.count).sum::<u64>(),
            kept + readings
                .iter()
                .filter(|r| r.ts < before && r.ts >= step.bucket(before))
                .count() as u64,
            "{step:?}"
        );
    }
    let again = store.prune_readings(before).await.unwrap();
    assert_eq!(again, store::PruneCounts::default());
    // New readings for a pruned day land (in the default partition) and go next time.
    store
        .insert_readings(&[Reading {
            series,
            ts: now - chrono::Duration::days(5),
            value: 1.0,
        }])
        .await
        .unwrap();
    assert_eq!(store.prune_readings(before).await.unwrap().readings, 1);
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

async fn users_are_listed_changed_disabled_and_deleted(store: Arc<dyn Store>) {
    let new = |name: &str, role| NewUser {
        username: name.into(),
        password_hash: format!("hash-of-{name}"),
        role,
    };
    let ada = store.create_user(&new("ada", Role::Owner)).await.unwrap();
    let bob = store.create_user(&new("bob", Role::Viewer)).await.unwrap();
    assert!(ada.disabled_at.is_none());
    let names: Vec<String> = store
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.username)
        .collect();
    assert_eq!(names, ["ada", "bob"]);
    assert_eq!(store.get_user(bob.id).await.unwrap().username, "bob");

    let promoted = store
        .update_user(
            bob.id,
            &UserChange {
                role: Some(Role::Admin),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(promoted.role, Role::Admin);
    assert_eq!(
        promoted.password_hash, "hash-of-bob",
        "unchanged fields stay"
    );
    let disabled = store
        .update_user(
            bob.id,
            &UserChange {
                disabled: Some(true),
                password_hash: Some("new".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(disabled.is_disabled());
    assert_eq!(disabled.password_hash, "new");
    assert_eq!(disabled.role, Role::Admin);
    assert!(store.find_user("bob").await.unwrap().is_disabled());
    let enabled = store
        .update_user(
            bob.id,
            &UserChange {
                disabled: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(!enabled.is_disabled());
    assert!(matches!(
        store
            .update_user(uuid::Uuid::now_v7(), &UserChange::default())
            .await,
        Err(StoreError::NotFound)
    ));
    store.delete_user(bob.id).await.unwrap();
    assert!(matches!(
        store.get_user(bob.id).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.delete_user(bob.id).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(store.count_users().await.unwrap(), 1);
}

async fn sessions_are_found_by_hash_touched_pruned_and_end_with_their_user(store: Arc<dyn Store>) {
    let user = store
        .create_user(&NewUser {
            username: "ada".into(),
            password_hash: "h".into(),
            role: Role::Admin,
        })
        .await
        .unwrap();
    let session = |id: &str, created: DateTime<Utc>, expires: DateTime<Utc>| NewSession {
        id_hash: id.into(),
        user_id: user.id,
        csrf_hash: format!("csrf-{id}"),
        created_at: created,
        expires_at: expires,
        remote_addr: Some("192.0.2.1".into()),
    };
    let now = Utc::now();
    let hour = chrono::Duration::hours(1);
    store
        .create_session(&session("live", now, now + hour))
        .await
        .unwrap();
    store
        .create_session(&session("idle", now - hour, now + hour))
        .await
        .unwrap();
    store
        .create_session(&session(
            "over",
            now - hour,
            now - chrono::Duration::seconds(1),
        ))
        .await
        .unwrap();
    let found = store.find_session("live").await.unwrap();
    assert_eq!(found.user.id, user.id);
    assert_eq!(found.user.role, Role::Admin);
    assert_eq!(found.csrf_hash, "csrf-live");
    assert!((found.last_seen_at - now).num_milliseconds().abs() < 1000);
    assert!((found.expires_at - (now + hour)).num_milliseconds().abs() < 1000);
    assert!(matches!(
        store.find_session("nope").await,
        Err(StoreError::NotFound)
    ));
    // A role change shows in the session at once (it is read with the user).
    store
        .update_user(
            user.id,
            &UserChange {
                role: Some(Role::Viewer),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store.find_session("live").await.unwrap().user.role,
        Role::Viewer
    );
    let later = now + chrono::Duration::seconds(5);
    store.touch_session("live", later).await.unwrap();
    let touched = store.find_session("live").await.unwrap().last_seen_at;
    assert!((touched - later).num_milliseconds().abs() < 1000);
    // Pruning: past its absolute end ("over") or idle since before the cut ("idle").
    let pruned = store
        .prune_sessions(Utc::now(), now - chrono::Duration::minutes(30))
        .await
        .unwrap();
    assert_eq!(pruned, 2);
    assert!(store.find_session("live").await.is_ok());
    assert!(store.delete_session("live").await.unwrap());
    assert!(!store.delete_session("live").await.unwrap());
    store
        .create_session(&session("a", now, now + hour))
        .await
        .unwrap();
    store
        .create_session(&session("b", now, now + hour))
        .await
        .unwrap();
    assert_eq!(store.delete_user_sessions(user.id).await.unwrap(), 2);
    store
        .create_session(&session("c", now, now + hour))
        .await
        .unwrap();
    store.delete_user(user.id).await.unwrap();
    assert!(
        matches!(store.find_session("c").await, Err(StoreError::NotFound)),
        "sessions go with their user"
    );
}

async fn tokens_are_listed_and_revoked(store: Arc<dyn Store>) {
    let token = store
        .create_api_token(&NewApiToken {
            name: "ci".into(),
            token_hash: "abc".into(),
            role: Role::Admin,
        })
        .await
        .unwrap();
    assert!(token.revoked_at.is_none());
    let listed = store.list_api_tokens().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "ci");
    // A lookup first, so the in-process lookup cache holds the token: revoking must drop it.
    assert_eq!(
        store.authenticate_api_token("abc").await.unwrap().id,
        token.id
    );
    let revoked = store.revoke_api_token(token.id).await.unwrap();
    assert!(revoked.revoked_at.is_some());
    assert!(matches!(
        store.authenticate_api_token("abc").await,
        Err(StoreError::NotFound)
    ));
    assert!(
        matches!(
            store.revoke_api_token(token.id).await,
            Err(StoreError::NotFound)
        ),
        "once"
    );
    assert!(
        store.list_api_tokens().await.unwrap()[0]
            .revoked_at
            .is_some(),
        "kept for the record"
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

async fn the_audit_log_pages_newest_first(store: Arc<dyn Store>) {
    for i in 0..5 {
        store
            .append_audit(&NewAuditEntry {
                actor: "user:ada".into(),
                action: format!("a{i}"),
                target: None,
                detail: json!({ "i": i }),
                remote_addr: None,
            })
            .await
            .unwrap();
    }
    let first = store.list_audit_before(None, 2).await.unwrap();
    assert_eq!(
        first.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["a4", "a3"]
    );
    let next = store.list_audit_before(Some(first[1].id), 2).await.unwrap();
    assert_eq!(
        next.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["a2", "a1"]
    );
}

async fn ping_answers(store: Arc<dyn Store>) {
    store.ping(Duration::from_secs(2)).await.unwrap();
}

/// Runs one statement on its own connection, as another process would.
async fn execute_elsewhere(url: &str, sql: &str) {
    use sqlx::Connection;
    if url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(url).await.expect("connect");
        sqlx::query(sql).execute(&mut conn).await.expect(sql);
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
        sqlx::query(sql).execute(&mut conn).await.expect(sql);
    }
}

/// Two instances on one database, as blue and green are: a token's use is written once per
/// resolution, not per request, and a revocation made elsewhere is seen within the cache TTL.
async fn token_use_is_recorded_coarsely_and_revocation_is_seen_within_the_cache_ttl(db: Db) {
    let (url, _dir) = database_url(&db).await;
    let url: secrecy::SecretString = url.into();
    let blue = store::connect(&url, 4, Duration::from_secs(5))
        .await
        .unwrap();
    blue.migrate().await.unwrap();
    let green = store::connect(&url, 4, Duration::from_secs(5))
        .await
        .unwrap();
    blue.create_api_token(&NewApiToken {
        name: "ci".into(),
        token_hash: "abc".into(),
        role: Role::Admin,
    })
    .await
    .unwrap();
    let first = blue.authenticate_api_token("abc").await.unwrap();
    assert!(first.last_used_at.is_some(), "the first use is recorded");
    // The other instance has no cached lookup: it reads the row, and finds the use recent
    // enough not to write it again.
    let seen = green.authenticate_api_token("abc").await.unwrap();
    assert_eq!(seen.last_used_at, first.last_used_at);

    execute_elsewhere(
        url.expose_secret(),
        "UPDATE api_tokens SET revoked_at = created_at WHERE token_hash = 'abc'",
    )
    .await;
    let fresh = store::connect(&url, 2, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(matches!(
        fresh.authenticate_api_token("abc").await,
        Err(StoreError::NotFound)
    ));
    tokio::time::sleep(store::TOKEN_CACHE_TTL).await;
    for instance in [&blue, &green] {
        assert!(matches!(
            instance.authenticate_api_token("abc").await,
            Err(StoreError::NotFound)
        ));
    }
}

#[tokio::test]
async fn sqlite_token_use_is_recorded_coarsely_and_revocation_is_seen_within_the_cache_ttl() {
    token_use_is_recorded_coarsely_and_revocation_is_seen_within_the_cache_ttl(Db::Sqlite).await;
}

#[tokio::test]
async fn postgres_token_use_is_recorded_coarsely_and_revocation_is_seen_within_the_cache_ttl() {
    token_use_is_recorded_coarsely_and_revocation_is_seen_within_the_cache_ttl(Db::Postgres(
        Provider::Local,
    ))
    .await;
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
    series_are_created_once_per_device_and_metric,
    duplicate_readings_are_ignored,
    a_batch_in_any_order_is_stored_once_with_the_first_duplicate,
    readings_that_cannot_be_stored_are_refused_not_dropped,
    series_ids_are_never_reused_after_a_device_is_deleted,
    range_queries_return_oldest_first_within_bounds,
    rollups_summarise_new_readings_per_minute_and_hour,
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
