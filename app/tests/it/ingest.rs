//! The ingest pipeline against every backend: one bad submission (a value that would overflow
//! the rollups, readings the database refuses) is refused alone while every other submission of
//! its batch is stored; the per-device series quota; series ids of deleted devices.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use ddms::events::EventHub;
use ddms::ingest::{self, IngestConfig, IngestError, IngestHandle, IngestMetrics, Sample};
use ddms::store::{self, NewDevice, Protocol, RollupStep, Store};
use serde_json::json;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::support::app::{database_url, Db};
use crate::support::services::Provider;

struct Setup {
    store: Arc<dyn Store>,
    url: String,
    _dir: tempfile::TempDir,
}

async fn open(db: Db) -> Setup {
    let (url, dir) = database_url(&db).await;
    let store = store::connect(&url.clone().into(), 8, Duration::from_secs(5))
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    Setup {
        store,
        url,
        _dir: dir,
    }
}

/// A minute boundary in the past, within every retention and partition.
fn minute(offset_s: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_790_000_040 + offset_s, 0).unwrap()
}

async fn device(store: &Arc<dyn Store>, name: &str) -> Uuid {
    store
        .create_device(&NewDevice {
            name: name.into(),
            protocol: Protocol::Mqtt,
            group_id: None,
            config: json!({}),
            enabled: true,
        })
        .await
        .unwrap()
        .id
}

fn sample(device_id: Uuid, metric: &str, at: i64, value: f64) -> Sample {
    Sample {
        device_id,
        metric: metric.into(),
        unit: None,
        ts: minute(at),
        value,
    }
}

struct Pipeline {
    handle: IngestHandle,
    metrics: IngestMetrics,
    writer: Option<ingest::BatchWriter>,
    abort: CancellationToken,
}

fn pipeline(store: &Arc<dyn Store>, config: IngestConfig) -> Pipeline {
    let registry = prometheus::Registry::new();
    let metrics = IngestMetrics::register(&registry);
    let (hub, _outbox) = EventHub::new(64);
    let (handle, writer) = ingest::pipeline(store.clone(), hub, metrics.clone(), config);
    Pipeline {
        handle,
        metrics,
        writer: Some(writer),
        abort: CancellationToken::new(),
    }
}

impl Pipeline {
    /// Queues a submission; its result arrives on the receiver once the writer ran.
    async fn queue(&self, samples: Vec<Sample>) -> oneshot::Receiver<Result<(), IngestError>> {
        let (tx, rx) = oneshot::channel();
        self.handle
            .submit_then(
                "test",
                samples,
                Box::new(move |result| {
                    let _ = tx.send(result);
                }),
            )
            .await
            .unwrap();
        rx
    }

    /// Starts the writer: everything queued so far is one batch.
    fn start(&mut self) {
        let writer = self.writer.take().expect("started once");
        tokio::spawn(writer.run(self.abort.clone()));
    }

    fn rejected(&self, reason: &str) -> u64 {
        self.metrics
            .rejected
            .with_label_values(&["test", reason])
            .get()
    }
}

async fn avg_of_minute(store: &Arc<dyn Store>, device_id: Uuid, metric: &str) -> Option<f64> {
    let series = store.find_series(device_id, metric).await.unwrap()?;
    let buckets = store
        .query_rollups(series, RollupStep::Minute, minute(0), minute(60), 10)
        .await
        .unwrap();
    buckets.first().map(|b| b.avg)
}

/// `{"big": 1e308}` twice in one minute overflowed PostgreSQL's float8 rollup sum, failing the
/// whole batch (SQLite stored an infinite sum and a null average).
async fn a_value_beyond_the_reading_range_is_refused_alone(setup: Setup) {
    let store = &setup.store;
    let (good, other, bad) = (
        device(store, "good").await,
        device(store, "other").await,
        device(store, "bad").await,
    );
    let mut pipeline = pipeline(store, IngestConfig::default());
    let first = pipeline
        .queue(vec![sample(good, "t", 1, 1.0), sample(good, "t", 2, 3.0)])
        .await;
    let poison = pipeline
        .queue(vec![
            sample(bad, "big", 1, 1e308),
            sample(bad, "big", 2, 1e308),
        ])
        .await;
    let last = pipeline.queue(vec![sample(other, "t", 1, 5.0)]).await;
    pipeline.start();

    assert_eq!(first.await.unwrap(), Ok(()));
    assert_eq!(last.await.unwrap(), Ok(()));
    match poison.await.unwrap() {
        Err(IngestError::Refused { reason, message }) => {
            assert_eq!(reason, "value_out_of_range");
            assert!(message.contains("`big`"), "{message}");
        }
        other => panic!("the poison submission was not refused: {other:?}"),
    }
    assert_eq!(
        pipeline.rejected("value_out_of_range"),
        2,
        "readings refused"
    );
    assert_eq!(avg_of_minute(store, good, "t").await, Some(2.0));
    assert_eq!(avg_of_minute(store, other, "t").await, Some(5.0));
    assert_eq!(avg_of_minute(store, bad, "big").await, None);
}

/// Installs a trigger that refuses readings of value 666, the way a database refuses a row
/// for good (a constraint, a value its type cannot hold).
async fn refuse_value_666(url: &str) {
    use sqlx::Connection;
    if url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query(
            "CREATE TRIGGER poison BEFORE INSERT ON readings WHEN NEW.value = 666 \
             BEGIN SELECT RAISE(ABORT, 'poison reading'); END",
        )
        .execute(&mut conn)
        .await
        .unwrap();
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        for sql in [
            "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
               IF NEW.value = 666 THEN RAISE EXCEPTION 'poison reading'; END IF; RETURN NEW; END $$",
            "CREATE TRIGGER poison BEFORE INSERT ON readings FOR EACH ROW EXECUTE FUNCTION poison()",
        ] {
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
    }
}

/// A batch the database refuses is split until the refused submission stands alone; every
/// other submission is stored and acknowledged, and the rollups count each reading once.
async fn a_submission_the_database_refuses_fails_alone(setup: Setup) {
    let store = &setup.store;
    refuse_value_666(&setup.url).await;
    let mut devices = Vec::new();
    for i in 0..7 {
        devices.push(device(store, &format!("d{i}")).await);
    }
    let mut pipeline = pipeline(store, IngestConfig::default());
    let mut results = Vec::new();
    for (i, &device_id) in devices.iter().enumerate() {
        let value = if i == 4 { 666.0 } else { i as f64 };
        results.push(
            pipeline
                .queue(vec![
                    sample(device_id, "t", 1, value),
                    sample(device_id, "t", 2, value),
                ])
                .await,
        );
    }
    pipeline.start();
    for (i, result) in results.into_iter().enumerate() {
        let result = result.await.unwrap();
        if i == 4 {
            assert!(
                matches!(
                    &result,
                    Err(IngestError::Refused {
                        reason: "store_refused",
                        ..
                    })
                ),
                "{result:?}"
            );
        } else {
            assert_eq!(result, Ok(()), "submission {i}");
            assert_eq!(
                avg_of_minute(store, devices[i], "t").await,
                Some(i as f64),
                "submission {i}"
            );
            let series = store.find_series(devices[i], "t").await.unwrap().unwrap();
            let buckets = store
                .query_rollups(series, RollupStep::Minute, minute(0), minute(60), 10)
                .await
                .unwrap();
            assert_eq!(buckets[0].count, 2, "submission {i} counted once");
        }
    }
    assert_eq!(pipeline.rejected("store_refused"), 2, "readings refused");
}

/// A device may create at most `max_series_per_device` series; readings of further metrics are
/// refused and counted, its existing series and other devices are unaffected.
async fn a_device_cannot_create_more_series_than_its_quota(setup: Setup) {
    let store = &setup.store;
    let (greedy, modest) = (device(store, "greedy").await, device(store, "modest").await);
    let mut pipeline = pipeline(
        store,
        IngestConfig {
            max_series_per_device: 3,
            ..IngestConfig::default()
        },
    );
    pipeline.start();
    let metrics: Vec<Sample> = (0..5)
        .map(|i| sample(greedy, &format!("m{i}"), 1, 1.0))
        .collect();
    assert_eq!(pipeline.handle.submit("test", metrics).await, Ok(()));
    assert_eq!(pipeline.rejected("series_quota"), 2);
    let mut names: Vec<String> = store
        .device_series(greedy)
        .await
        .unwrap()
        .into_iter()
        .map(|(metric, _, _)| metric)
        .collect();
    names.sort();
    assert_eq!(names, ["m0", "m1", "m2"]);
    // Known series keep being stored; new ones stay refused; other devices are not limited by
    // this one.
    let again = vec![sample(greedy, "m0", 2, 3.0), sample(greedy, "m9", 2, 3.0)];
    assert_eq!(pipeline.handle.submit("test", again).await, Ok(()));
    assert_eq!(pipeline.rejected("series_quota"), 3);
    assert_eq!(avg_of_minute(store, greedy, "m0").await, Some(2.0));
    let others: Vec<Sample> = (0..3)
        .map(|i| sample(modest, &format!("m{i}"), 1, 1.0))
        .collect();
    assert_eq!(pipeline.handle.submit("test", others).await, Ok(()));
    assert_eq!(store.device_series(modest).await.unwrap().len(), 3);
    assert_eq!(pipeline.rejected("series_quota"), 3);
}

/// SQLite reused the id of a deleted device's series (no AUTOINCREMENT), and the writer's cache
/// still mapped the deleted device's metric to it: a late reading of the deleted device landed
/// in another device's series.
async fn a_deleted_device_s_readings_never_reach_another_device(setup: Setup) {
    let store = &setup.store;
    let gone = device(store, "gone").await;
    let devices_changed = Arc::new(tokio::sync::Notify::new());
    let mut pipeline = pipeline(store, IngestConfig::default());
    pipeline.writer = pipeline
        .writer
        .take()
        .map(|writer| writer.forgetting_deleted_devices(devices_changed.clone()));
    pipeline.start();
    let first = vec![sample(gone, "t", 1, 1.0)];
    assert_eq!(pipeline.handle.submit("test", first).await, Ok(()));

    store.delete_device(gone).await.unwrap();
    devices_changed.notify_waiters();
    let heir = device(store, "heir").await;
    store.ensure_series(heir, "t", None).await.unwrap();

    let late = vec![sample(gone, "t", 2, 99.0)];
    let result = pipeline.handle.submit("test", late).await;
    assert!(
        matches!(
            &result,
            Err(IngestError::Refused {
                reason: "store_refused",
                ..
            })
        ),
        "a reading of a deleted device: {result:?}"
    );
    assert_eq!(
        avg_of_minute(store, heir, "t").await,
        None,
        "heir has no readings"
    );
}

/// While the database is unavailable the writer holds the batch; readings it finally gives up
/// on (shutdown) fail with a retryable error and are counted, never dropped silently.
#[tokio::test]
async fn readings_given_up_at_shutdown_fail_retryably_and_are_counted() {
    // Nothing listens on port 1: every connection attempt fails at once.
    let store = store::connect(
        &"postgres://ddms@127.0.0.1:1/ddms".to_string().into(),
        2,
        Duration::from_millis(200),
    )
    .await
    .expect("lazy pool");
    let mut pipeline = pipeline(&store, IngestConfig::default());
    let device = Uuid::now_v7();
    let result = pipeline
        .queue(vec![
            sample(device, "t", 1, 1.0),
            sample(device, "t", 2, 2.0),
        ])
        .await;
    pipeline.start();
    // Held, not failed: wait until the writer has retried a few times, then shut it down.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while pipeline.metrics.channel_depth.get() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer took nothing"
        );
        // sleep: the poll interval of this wait with a deadline (the writer takes from the channel)
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pipeline.abort.cancel();
    let result = result.await.unwrap();
    assert!(
        matches!(&result, Err(IngestError::Store(_))),
        "retryable: {result:?}"
    );
    assert_eq!(
        pipeline.metrics.failed.with_label_values(&["test"]).get(),
        2
    );
}

/// A failure the writer does not recognise as a refusal of the rows (here SQLSTATE XX000, an
/// internal error, for the first three attempts) holds the batch until it passes: nothing is
/// refused — a refusal would let MQTT acknowledge the message away — and everything is stored.
#[tokio::test]
async fn a_failure_not_known_to_refuse_the_rows_holds_the_batch_until_it_passes() {
    use sqlx::Connection;
    let setup = open(Db::Postgres(Provider::Local)).await;
    let store = &setup.store;
    let mut conn = sqlx::PgConnection::connect(&setup.url).await.unwrap();
    for sql in [
        // A sequence, not a table, counts the attempts: a failed insert rolls a table back.
        "CREATE SEQUENCE attempts",
        "CREATE FUNCTION flaky() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF nextval('attempts') <= 3 THEN \
             RAISE EXCEPTION 'internal hiccup' USING ERRCODE = 'XX000'; \
           END IF; RETURN NEW; END $$",
        "CREATE TRIGGER flaky BEFORE INSERT ON readings FOR EACH STATEMENT EXECUTE FUNCTION flaky()",
    ] {
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }
    let devices = [device(store, "a").await, device(store, "b").await];
    let mut pipeline = pipeline(store, IngestConfig::default());
    let mut results = Vec::new();
    for (i, &device_id) in devices.iter().enumerate() {
        results.push(
            pipeline
                .queue(vec![sample(device_id, "t", 1, i as f64)])
                .await,
        );
    }
    pipeline.start();
    for (i, result) in results.into_iter().enumerate() {
        assert_eq!(result.await.unwrap(), Ok(()), "submission {i}");
        assert_eq!(
            avg_of_minute(store, devices[i], "t").await,
            Some(i as f64),
            "submission {i} stored"
        );
    }
    let attempts: i64 = sqlx::query_scalar("SELECT last_value FROM attempts")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(attempts > 3, "the failure was hit ({attempts} attempts)");
    assert_eq!(pipeline.rejected("store_refused"), 0, "nothing refused");
}

macro_rules! ingest_suite {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $check() {
                    super::$check(super::open(super::Db::Sqlite).await).await;
                }
            )*
        }
        mod postgres_container {
            $(
                #[tokio::test]
                async fn $check() {
                    super::$check(super::open(super::Db::Postgres(super::Provider::Docker)).await).await;
                }
            )*
        }
        mod postgres_local_process {
            $(
                #[tokio::test]
                async fn $check() {
                    super::$check(super::open(super::Db::Postgres(super::Provider::Local)).await).await;
                }
            )*
        }
    };
}

ingest_suite!(
    a_value_beyond_the_reading_range_is_refused_alone,
    a_submission_the_database_refuses_fails_alone,
    a_device_cannot_create_more_series_than_its_quota,
    a_deleted_device_s_readings_never_reach_another_device,
);
