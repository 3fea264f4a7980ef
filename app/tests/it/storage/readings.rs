//! Conformance checks of readings: series, duplicates and batch order, refusals, ranges,
//! rollups, latest values, partitions and retention.

use super::*;

pub(super) async fn series_are_created_once_per_device_and_metric(store: Arc<dyn Store>) {
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

pub(super) async fn duplicate_readings_are_ignored(store: Arc<dyn Store>) {
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
/// reading once, the first of a duplicate, and the rollups count each reading once. Readings
/// 30 s apart make 5,000 minute buckets: several full multi-row statements on SQLite.
pub(super) async fn a_batch_in_any_order_is_stored_once_with_the_first_duplicate(
    store: Arc<dyn Store>,
) {
    const READINGS: i64 = 2_500;
    const APART: i64 = 30;
    let device = store.create_device(&modbus_device("d")).await.unwrap();
    let mut series = Vec::new();
    for metric in ["a", "b", "c", "d"] {
        series.push(store.ensure_series(device.id, metric, None).await.unwrap());
    }
    let value = |n: usize, i: i64| (n * 10_000) as f64 + i as f64;
    let mut batch = Vec::new();
    for i in (0..READINGS).rev() {
        for (n, &id) in series.iter().enumerate().rev() {
            batch.push(Reading {
                series: id,
                ts: ts(i * APART),
                value: value(n, i),
            });
        }
    }
    batch.push(Reading {
        series: series[0],
        ts: ts(7 * APART),
        value: -1.0,
    });
    assert_eq!(
        store.insert_readings(&batch).await.unwrap(),
        4 * READINGS as u64
    );
    assert_eq!(store.insert_readings(&batch).await.unwrap(), 0);
    let (first, last) = (ts(-3600), ts(READINGS * APART + 3600));
    for (n, &id) in series.iter().enumerate() {
        let points = store.query_readings(id, first, last, 10_000).await.unwrap();
        let values: Vec<f64> = points.iter().map(|p| p.value).collect();
        let expected: Vec<f64> = (0..READINGS).map(|i| value(n, i)).collect();
        assert!(
            values == expected,
            "series {id}: oldest first, the first duplicate"
        );
        let expected_sum: f64 = expected.iter().sum();
        for step in [RollupStep::Minute, RollupStep::Hour] {
            let buckets = store
                .query_rollups(id, step, first, last, 10_000)
                .await
                .unwrap();
            let (count, sum) = buckets.iter().fold((0, 0.0), |(c, s), b| {
                (c + b.count, s + b.avg * b.count as f64)
            });
            assert_eq!(
                count, READINGS as u64,
                "series {id}, {step:?}: the duplicate is not counted"
            );
            assert!(
                (sum - expected_sum).abs() < 1e-3,
                "series {id}, {step:?}: sum {sum}, not {expected_sum}"
            );
        }
    }
}

/// A value no reading may hold (NaN, an infinity) is refused with an error the batch writer
/// treats as the rows' own fault, and nothing of that batch is stored. SQLite used to drop a NaN
/// silently: it binds NaN as NULL and `INSERT OR IGNORE` also ignores NOT NULL violations, so
/// the reading vanished while the batch, and its MQTT acknowledgements, succeeded; PostgreSQL
/// stored the NaN and every rollup of its bucket became NaN.
pub(super) async fn readings_that_cannot_be_stored_are_refused_not_dropped(store: Arc<dyn Store>) {
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
pub(super) async fn series_ids_are_never_reused_after_a_device_is_deleted(store: Arc<dyn Store>) {
    let gone = store.create_device(&modbus_device("gone")).await.unwrap();
    let old = store.ensure_series(gone.id, "t", None).await.unwrap();
    store.delete_device(gone.id).await.unwrap();
    let heir = store.create_device(&modbus_device("heir")).await.unwrap();
    let new = store.ensure_series(heir.id, "t", None).await.unwrap();
    assert!(new > old, "series id {old} was handed out again");
}

pub(super) async fn range_queries_return_oldest_first_within_bounds(store: Arc<dyn Store>) {
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
pub(super) fn at(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 9, 1, 10, 0, 0).unwrap() + chrono::Duration::seconds(secs)
}

pub(super) async fn rollups_summarise_new_readings_per_minute_and_hour(store: Arc<dyn Store>) {
    let device = store.create_device(&modbus_device("d")).await.unwrap();
    let series = store.ensure_series(device.id, "t", None).await.unwrap();
    let other = store.ensure_series(device.id, "u", None).await.unwrap();
    assert_eq!(
        store.find_series(device.id, "t").await.unwrap(),
        Some(series)
    );
    assert_eq!(store.find_series(device.id, "nope").await.unwrap(), None);
    // One reading a second for 3 minutes, value = seconds into its minute, plus a reading of
    // another series in the same minutes.
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

pub(super) async fn concurrent_writers_of_the_same_readings_count_them_once(store: Arc<dyn Store>) {
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

pub(super) async fn sub_second_timestamps_keep_microseconds(store: Arc<dyn Store>) {
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

pub(super) async fn latest_readings_give_the_newest_per_metric(store: Arc<dyn Store>) {
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

pub(super) async fn deleting_a_device_deletes_its_readings(store: Arc<dyn Store>) {
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

/// Readings that reached PostgreSQL's default partition move when their day's partition is
/// created; a query running meanwhile must see each of them, in one partition or the other.
pub(super) async fn readers_never_miss_readings_that_move_into_a_new_partition(
    store: Arc<dyn Store>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::sync::Barrier;
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
        // Every reader has read once when the partition is created, and its last read starts
        // after (once it sees `stop`).
        let (stop, read) = (Arc::new(AtomicBool::new(false)), Arc::new(Barrier::new(5)));
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let (store, stop, read) = (store.clone(), stop.clone(), read.clone());
                tokio::spawn(async move {
                    let mut fewest = usize::MAX;
                    for reads in 1.. {
                        let last = stop.load(Ordering::Relaxed);
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
                        if reads == 1 {
                            read.wait().await;
                        }
                        if last {
                            break;
                        }
                    }
                    fewest
                })
            })
            .collect();
        read.wait().await;
        store.ensure_partitions(day, 0).await.unwrap();
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
pub(super) async fn inserts_never_fail_while_partitions_are_created(store: Arc<dyn Store>) {
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

pub(super) async fn partitions_are_created_ahead_idempotently(store: Arc<dyn Store>) {
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

pub(super) async fn retention_drops_old_readings_and_the_rollup_buckets_wholly_before_the_cutoff(
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
