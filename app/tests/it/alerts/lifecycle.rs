//! Alert lifecycles over time: after SIGKILL, no-data alerts, evaluation retried before the
//! acknowledgement, inhibition by an open connection failure, repeats with two instances, system
//! alerts from connection failures.

use super::*;

/// The `for` clock is the stored `pending_since`, and a firing alert is not notified again by
/// the process that takes over: the real binary, killed with SIGKILL while the alert is pending
/// and again while it fires.
#[tokio::test]
async fn after_sigkill_a_pending_alert_fires_on_time_and_a_firing_one_is_not_repeated() {
    use crate::support::app::DdmsProcess;
    use nix::sys::signal::Signal;

    let receiver = Receiver::start(SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ddms.db").display());
    // Set up through an in-process instance: device, channel, a rule with for = 3 s, and a
    // reading that makes the alert pending now.
    let app = spawn_app(Db::Url(url.clone()), PRIVATE_TARGETS).await;
    let admin = app.token(Role::Admin).await;
    let device = mqtt_device(&app, &admin, "boiler-1").await;
    let channel = webhook_channel(&app, &admin, &receiver.url("/ok")).await;
    let response = app
        .post_json(
            "/api/alert-rules",
            Some(&admin),
            &json!({"name": "boiler hot", "device_id": device, "metric": "temperature",
                    "condition": "above", "threshold": 50, "for_s": 3, "channels": [channel]}),
        )
        .await;
    assert_eq!(response.status(), 201);
    app.ingest
        .submit(
            "mqtt",
            vec![Sample {
                device_id: device,
                metric: "temperature".into(),
                unit: None,
                ts: Utc::now(),
                value: 55.0,
            }],
        )
        .await
        .unwrap();
    let store = app.store.clone();
    app.stop().await;
    let pending = store.list_open_alerts().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].state, ddms::store::alerts::AlertState::Pending);
    let pending_since = pending[0].pending_since.unwrap();

    let env = [
        ("DDMS_DATABASE__URL", url.as_str()),
        ("DDMS_ALERTS__ALLOW_PRIVATE_TARGETS", "true"),
        ("DDMS_ALERTS__EVALUATION_INTERVAL", "0.2"),
    ];
    // Killed while pending (if it managed to fire first, the next checks still hold).
    let mut first = DdmsProcess::serve(dir.path(), &env).await.unwrap();
    first.signal(Signal::SIGKILL);
    first.wait_exit(Duration::from_secs(30)).await;
    let mut second = DdmsProcess::serve(dir.path(), &env).await.unwrap();
    let firing = |receiver: &Receiver| {
        receiver
            .requests()
            .into_iter()
            .filter(|r| r["body"]["state"] == "firing")
            .count()
    };
    eventually(
        "the firing notification",
        Duration::from_secs(60),
        || async { firing(&receiver) == 1 },
    )
    .await;
    let alert = store.get_alert(pending[0].id).await.unwrap();
    assert_eq!(alert.state, ddms::store::alerts::AlertState::Firing);
    // On time: the condition held for `for_s` from the stored start, whoever noticed.
    assert_eq!(
        alert.started_at,
        Some(pending_since + chrono::Duration::seconds(3))
    );
    // Killed while firing: the next process does not announce it again.
    second.signal(Signal::SIGKILL);
    second.wait_exit(Duration::from_secs(30)).await;
    let third = DdmsProcess::serve(dir.path(), &env).await.unwrap();
    let client = reqwest::Client::new();
    // Its ticker has run once the firing gauge shows the alert.
    eventually(
        "the new process's ticker",
        Duration::from_secs(60),
        || async {
            let metrics = client
                .get(third.url("/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            metrics.contains("ddms_alerts_firing{severity=\"warning\"} 1")
        },
    )
    .await;
    assert_eq!(firing(&receiver), 1, "{:?}", receiver.requests());
    let history = store.list_transitions(&[alert.id]).await.unwrap();
    let events: Vec<&str> = history.iter().map(|t| t.event.as_str()).collect();
    assert_eq!(events, ["pending", "firing"]);
    third.signal(Signal::SIGKILL);
}

/// A no-data rule fires when the device stays silent for `no_data_s` and resolves with its next
/// reading (the ticker notices both).
#[tokio::test]
async fn a_silent_device_fires_a_no_data_alert_that_its_next_reading_resolves() {
    let receiver = Receiver::start(SECRET).await;
    let app = spawn_app(
        Db::Sqlite,
        "[alerts]\nallow_private_targets = true\nevaluation_interval = 0.2\n",
    )
    .await;
    let admin = app.token(Role::Admin).await;
    let device = mqtt_device(&app, &admin, "boiler-1").await;
    let channel = webhook_channel(&app, &admin, &receiver.url("/ok")).await;
    let response = app
        .post_json(
            "/api/alert-rules",
            Some(&admin),
            &json!({"name": "boiler quiet", "device_id": device, "metric": "temperature",
                    "condition": "no_data", "no_data_s": 1, "channels": [channel]}),
        )
        .await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let states = |receiver: &Receiver| -> Vec<String> {
        receiver
            .requests()
            .iter()
            .map(|r| r["body"]["state"].as_str().unwrap().to_string())
            .collect()
    };
    eventually("the no-data alert", Duration::from_secs(60), || async {
        states(&receiver) == ["firing"]
    })
    .await;
    app.ingest
        .submit(
            "mqtt",
            vec![Sample {
                device_id: device,
                metric: "temperature".into(),
                unit: None,
                ts: Utc::now(),
                value: 20.0,
            }],
        )
        .await
        .unwrap();
    eventually("the resolution", Duration::from_secs(60), || async {
        states(&receiver) == ["firing", "resolved"]
    })
    .await;
    let body = &receiver.requests()[0]["body"];
    assert!(
        body["summary"]
            .as_str()
            .unwrap()
            .contains("no temperature data"),
        "{body}"
    );
    app.stop().await;
}

/// A database blip between the readings' commit and their evaluation must not lose the firing:
/// the evaluation is retried (it is idempotent per series) and the producer is told only once
/// the alert state is stored. The blip is a trigger refusing the first alert writes with
/// `40001` (serialization failure, a transient class); its counter is a sequence, which a
/// rolled-back transaction does not roll back.
#[tokio::test]
pub(super) async fn a_transient_failure_of_the_evaluation_is_retried_before_the_reading_is_acknowledged(
) {
    const REFUSED_WRITES: i64 = 3;
    let receiver = Receiver::start(SECRET).await;
    let app = spawn_app(Db::Postgres(Provider::Local), PRIVATE_TARGETS).await;
    let admin = app.token(Role::Admin).await;
    let device = mqtt_device(&app, &admin, "boiler-1").await;
    let channel = webhook_channel(&app, &admin, &receiver.url("/ok")).await;
    hot_rule(&app, &admin, device, channel).await;
    submit(&app, device, 0, 55.0).await;
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&app.database_url)
        .await
        .unwrap();
    for sql in [
        "CREATE SEQUENCE test_alert_write_attempts".to_string(),
        format!(
            "CREATE FUNCTION test_refuse_alert_writes() RETURNS trigger AS $$ BEGIN \
             IF nextval('test_alert_write_attempts') <= {REFUSED_WRITES} THEN \
             RAISE EXCEPTION 'injected blip' USING ERRCODE = '40001'; END IF; \
             RETURN NEW; END $$ LANGUAGE plpgsql"
        ),
        "CREATE TRIGGER test_refuse_alert_writes BEFORE INSERT OR UPDATE ON alerts \
         FOR EACH ROW EXECUTE FUNCTION test_refuse_alert_writes()"
            .to_string(),
    ] {
        sqlx::query(&sql).execute(&mut conn).await.unwrap();
    }
    // `submit` returns once `on_commit` is called: by then the firing must be stored.
    submit(&app, device, 61, 55.0).await;
    let open = app.store.list_open_alerts().await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].state, ddms::store::alerts::AlertState::Firing);
    let attempts: i64 = sqlx::query_scalar("SELECT last_value FROM test_alert_write_attempts")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(attempts > REFUSED_WRITES, "the blip was hit: {attempts}");
    assert_eq!(notifications(&app).await, ["firing"]);
    drained(&app).await;
    let states: Vec<String> = receiver
        .requests()
        .iter()
        .map(|r| r["body"]["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(states, ["firing"]);
    app.stop().await;
}

/// While a device has an open connection-failure notification its readings say nothing: its
/// threshold transitions are stored muted and not delivered. Once the notification is cleared,
/// the next transition notifies.
#[tokio::test]
async fn an_open_connection_failure_inhibits_notifications_until_cleared() {
    let receiver = Receiver::start(SECRET).await;
    let app = spawn_app(Db::Sqlite, PRIVATE_TARGETS).await;
    let admin = app.token(Role::Admin).await;
    let device = mqtt_device(&app, &admin, "boiler-1").await;
    let channel = webhook_channel(&app, &admin, &receiver.url("/ok")).await;
    hot_rule(&app, &admin, device, channel).await;
    app.store
        .open_notification(&ddms::store::NewNotification {
            kind: ddms::status::CONNECTION_FAILURE.into(),
            device_id: Some(device),
            message: "boiler-1 unreachable".into(),
        })
        .await
        .unwrap();
    fire(&app, device).await;
    let open = app.store.list_open_alerts().await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].state, ddms::store::alerts::AlertState::Firing);
    let transitions = app.store.list_transitions(&[open[0].id]).await.unwrap();
    let firing: Vec<_> = transitions.iter().filter(|t| t.event == "firing").collect();
    assert_eq!(firing.len(), 1, "{transitions:?}");
    assert!(firing[0].muted, "{transitions:?}");
    assert!(notifications(&app).await.is_empty());
    assert!(app
        .store
        .clear_notification(ddms::status::CONNECTION_FAILURE, device)
        .await
        .unwrap());
    submit(&app, device, 120, 40.0).await;
    assert_eq!(notifications(&app).await, ["resolved"]);
    drained(&app).await;
    let states: Vec<String> = receiver
        .requests()
        .iter()
        .map(|r| r["body"]["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(states, ["resolved"]);
    app.stop().await;
}

/// `repeat_interval_s`: a firing alert is notified again (`repeat`) every interval while it
/// fires, by whichever instance's ticker gets there first — once per interval, never twice.
#[tokio::test]
async fn a_firing_alert_is_repeated_once_per_interval_with_two_instances() {
    const REPEATS: usize = 3;
    let config = format!("{PRIVATE_TARGETS}evaluation_interval = 0.2\n");
    let receiver = Receiver::start(SECRET).await;
    let first = spawn_app(Db::Postgres(Provider::Local), &config).await;
    let admin = first.token(Role::Admin).await;
    let device = mqtt_device(&first, &admin, "boiler-1").await;
    let channel = webhook_channel(&first, &admin, &receiver.url("/ok")).await;
    let response = first
        .post_json(
            "/api/alert-rules",
            Some(&admin),
            &json!({"name": "boiler hot", "device_id": device, "metric": "temperature",
                    "condition": "above", "threshold": 50, "severity": "critical",
                    "repeat_interval_s": 1, "channels": [channel]}),
        )
        .await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let second = spawn_app(Db::Url(first.database_url.clone()), &config).await;
    let started = Instant::now();
    submit(&first, device, 0, 55.0).await;
    eventually("repeats", Duration::from_secs(120), || async {
        notifications(&first)
            .await
            .iter()
            .filter(|e| *e == "repeat")
            .count()
            >= REPEATS
    })
    .await;
    // Acknowledging stops the repeats (a ticker that read the alert before loses the race).
    let open = first.store.list_open_alerts().await.unwrap();
    assert_eq!(open.len(), 1);
    let response = first
        .post_json(
            &format!("/api/alerts/{}/ack", open[0].id),
            Some(&admin),
            &json!({}),
        )
        .await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let elapsed = started.elapsed().as_secs_f64();
    let events = notifications(&first).await;
    let repeats = events.iter().filter(|e| *e == "repeat").count();
    assert_eq!(events[0], "firing", "{events:?}");
    assert_eq!(events.last().map(String::as_str), Some("acknowledged"));
    assert!(
        events[1..events.len() - 1].iter().all(|e| e == "repeat"),
        "{events:?}"
    );
    // At most one repeat per elapsed second (the interval): two tickers never both repeat.
    assert!(
        repeats as f64 <= elapsed + 1.0,
        "{repeats} repeats in {elapsed} s"
    );
    let transitions = first.store.list_transitions(&[open[0].id]).await.unwrap();
    let stored = transitions.iter().filter(|t| t.event == "repeat").count();
    assert_eq!(stored, repeats, "one delivery per repeat transition");
    second.stop().await;
    first.stop().await;
}

/// A `system` rule on `connection_failure`: the status board opening the device's
/// connection-failure notification fires the rule's alert (delivered like any other, and not
/// inhibited by that very notification); the device's recovery resolves it.
#[tokio::test]
async fn a_connection_failure_fires_a_system_alert_and_recovery_resolves_it() {
    let receiver = Receiver::start(SECRET).await;
    let app = spawn_app(Db::Sqlite, PRIVATE_TARGETS).await;
    let admin = app.token(Role::Admin).await;
    let device = mqtt_device(&app, &admin, "boiler-1").await;
    let channel = webhook_channel(&app, &admin, &receiver.url("/ok")).await;
    let rule = json!({"name": "boiler unreachable", "device_id": device, "condition": "system",
                      "system_check": "connection_failure", "severity": "critical",
                      "channels": [channel]});
    for (field, value) in [("system_check", json!("weather")), ("metric", json!("t"))] {
        let mut bad = rule.clone();
        bad[field] = value;
        let response = app.post_json("/api/alert-rules", Some(&admin), &bad).await;
        assert_eq!(response.status(), 422);
        let body = response.text().await.unwrap();
        assert!(body.contains(field), "{body}");
    }
    let response = app.post_json("/api/alert-rules", Some(&admin), &rule).await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["system_check"], "connection_failure");
    assert_eq!(created["kind"], "system");
    for _ in 0..3 {
        app.status
            .record_failure(
                device,
                ddms::store::Status::Offline,
                "connection refused",
                Utc::now(),
            )
            .await;
    }
    assert_eq!(notifications(&app).await, ["firing"]);
    app.status.record_success(device, Utc::now()).await;
    assert_eq!(notifications(&app).await, ["firing", "resolved"]);
    drained(&app).await;
    let received = receiver.requests();
    let states: Vec<&str> = received
        .iter()
        .map(|r| r["body"]["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["firing", "resolved"], "{received:?}");
    assert_eq!(received[0]["body"]["device_name"], "boiler-1");
    assert_eq!(received[0]["body"]["rule_name"], "boiler unreachable");
    app.stop().await;
}
