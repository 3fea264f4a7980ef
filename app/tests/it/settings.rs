//! Runtime settings act without a restart: a `retention_days` that deletes data waits a day
//! (pending) unless an owner confirms "delete now", which prunes old readings (and their
//! rollups) at once, on every backend. (The offline threshold's test is with the embedded
//! broker's, in `broker.rs`; the retention warning's, in `alerts_system.rs`.)

use std::time::{Duration, Instant};

use chrono::Utc;
use ddms::store::{NewDevice, Protocol, Reading, Role, RollupStep};
use serde_json::{json, Value};

use crate::support::app::{spawn_app, Db};
use crate::support::services::Provider;

async fn retention_set_through_the_api_waits_until_an_owner_confirms(db: Db) {
    let app = spawn_app(db, "").await;
    let owner = app.token(Role::Owner).await;
    let admin = app.token(Role::Admin).await;
    let device = app
        .store
        .create_device(&NewDevice {
            name: "kept-or-not".into(),
            protocol: Protocol::Mqtt,
            group_id: None,
            config: json!({}),
            enabled: true,
        })
        .await
        .unwrap();
    let series = app.store.ensure_series(device.id, "t", None).await.unwrap();
    let now = Utc::now();
    let days_ago = |d: i64| now - chrono::Duration::days(d);
    let readings: Vec<Reading> = [20, 10, 4, 2, 0]
        .iter()
        .map(|d| Reading {
            series,
            ts: days_ago(*d) - chrono::Duration::minutes(1),
            value: *d as f64,
        })
        .collect();
    app.store.insert_readings(&readings).await.unwrap();

    // Only owners change settings; an out-of-range value is a field error and changes nothing.
    let denied = app
        .put_json(
            "/api/system/config",
            &admin,
            &json!({ "retention_days": 3 }),
        )
        .await;
    assert_eq!(denied.status(), 403);
    let invalid = app
        .put_json(
            "/api/system/config",
            &owner,
            &json!({ "retention_days": 0 }),
        )
        .await;
    assert_eq!(invalid.status(), 422);
    let settings: Value = app
        .get_with_token("/api/system/config", &owner)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(settings["retention_days"], Value::Null, "{settings}");
    let range = (days_ago(60), now + chrono::Duration::hours(1));
    let before: Vec<f64> = app
        .store
        .query_readings(series, range.0, range.1, 100)
        .await
        .unwrap()
        .iter()
        .map(|p| p.value)
        .collect();
    assert_eq!(
        before,
        [20.0, 10.0, 4.0, 2.0, 0.0],
        "nothing pruned while retention is off"
    );

    let response = app
        .put_json(
            "/api/system/config",
            &owner,
            &json!({ "retention_days": 3 }),
        )
        .await;
    assert_eq!(response.status(), 200);
    let settings: Value = response.json().await.unwrap();
    // A shortening is pending for a day: nothing goes yet.
    assert_eq!(settings["retention_days"], Value::Null, "{settings}");
    assert_eq!(
        settings["retention_pending"]["retention_days"], 3,
        "{settings}"
    );
    let kept = app
        .store
        .query_readings(series, range.0, range.1, 100)
        .await
        .unwrap();
    assert_eq!(kept.len(), 5, "nothing pruned while the change is pending");
    let response = app
        .post_json("/api/system/retention/apply", Some(&owner), &json!({}))
        .await;
    assert_eq!(response.status(), 200);
    let settings: Value = response.json().await.unwrap();
    assert_eq!(settings["retention_days"], 3, "{settings}");
    assert_eq!(settings["retention_pending"], Value::Null, "{settings}");
    // A run removes old readings a slice at a time (SQLite: one series-day per transaction),
    // so readings are checked once the run is over: when it stamps its completion metric.
    let deadline = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let metrics = app.get("/metrics").await.text().await.unwrap();
        let finished = metrics
            .lines()
            .filter_map(|l| l.strip_prefix("ddms_retention_last_run_timestamp_seconds "))
            .any(|v| v.trim() != "0");
        if finished || Instant::now() > deadline {
            break metrics;
        }
        // sleep: the poll interval of this wait with a deadline (the metrics are then checked)
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let left = app
        .store
        .query_readings(series, range.0, range.1, 100)
        .await
        .unwrap();
    let values: Vec<f64> = left.iter().map(|p| p.value).collect();
    assert_eq!(values, [2.0, 0.0], "readings older than 3 days are gone");
    let hours = app
        .store
        .query_rollups(series, RollupStep::Hour, range.0, range.1, 100)
        .await
        .unwrap();
    assert_eq!(hours.len(), 2, "and so are their rollups: {hours:?}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ddms_retention_deleted_total{what=\"readings\"}")),
        "{metrics}"
    );
    let audit: Value = app
        .get_with_token("/api/audit", &owner)
        .await
        .json()
        .await
        .unwrap();
    let entry = audit
        .as_array()
        .expect("audit list")
        .iter()
        .find(|e| e["action"] == "settings.update")
        .cloned()
        .expect("the change is audited");
    assert_eq!(entry["detail"]["retention_days"]["to"], 3, "{entry}");
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "retention.apply_now" && e["detail"]["retention_days"] == 3),
        "{audit}"
    );
    app.stop().await;
}

#[tokio::test]
async fn sqlite_retention_set_through_the_api_waits_until_an_owner_confirms() {
    retention_set_through_the_api_waits_until_an_owner_confirms(Db::Sqlite).await;
}

#[tokio::test]
async fn postgres_retention_set_through_the_api_waits_until_an_owner_confirms() {
    retention_set_through_the_api_waits_until_an_owner_confirms(Db::Postgres(
        Provider::from_env().await,
    ))
    .await;
}
