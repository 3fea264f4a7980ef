//! Ten thousand QoS 1 messages while ddms is killed or stopped, the broker restarts or the
//! database stops mid-stream: each stored exactly once; two instances on a shared subscription
//! split the stream.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Stop {
    Kill,
    Term,
}

/// Streams 10,000 messages while the real binary is stopped (`stop`) mid-stream and started
/// again; returns (readings stored when it stopped, readings the second run processed).
pub(super) async fn stream_across_a_ddms_restart(stop: Stop) -> (usize, usize) {
    let broker = Mosquitto::start(Provider::from_env().await, BROKER_TUNING)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ddms.db").display());
    let store = ddms::store::connect(&SecretString::from(url.clone()), 4, Duration::from_secs(5))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let device = store
        .create_device(&NewDevice {
            name: "meter-1".into(),
            protocol: Protocol::Mqtt,
            group_id: None,
            config: json!({}),
            enabled: true,
        })
        .await
        .unwrap()
        .id;
    let broker_url = format!("mqtt://127.0.0.1:{}", broker.port());
    let env = [
        ("DDMS_DATABASE__URL", url.as_str()),
        ("DDMS_MQTT__MODE", "external"),
        ("DDMS_MQTT__URL", broker_url.as_str()),
    ];
    // No client id configured: the derived one must be the same after the restart.
    let mut ddms = DdmsProcess::serve(dir.path(), &env).await.unwrap();
    wait_ready(&ddms.url("/ready")).await;

    let base = base_ms();
    let publisher = Publisher::start(broker.port(), device, STREAM, 2500, base);
    publisher.wait_acked(3000).await;
    match stop {
        Stop::Kill => ddms.child.start_kill().unwrap(),
        Stop::Term => ddms.signal(nix::sys::signal::Signal::SIGTERM),
    }
    let exit = ddms.wait_exit(Duration::from_secs(30)).await;
    if stop == Stop::Term {
        assert!(exit.success(), "{exit:?}");
        let logs = ddms.json_logs();
        for line in logs.iter().filter(|l| l["level"] != "INFO") {
            println!("ddms (first run): {line}");
        }
        let said = |text: &str| logs.iter().any(|l| l["message"] == text);
        assert!(said("MQTT ingester stopped"), "{logs:?}");
    }
    let stored_at_stop = readings(store.as_ref(), device, "seq").await.len();
    let acked_at_stop = publisher.acked();
    // Messages pile up at the broker while ddms is down.
    publisher
        .wait_acked((acked_at_stop + 1000).min(STREAM))
        .await;

    let ddms = DdmsProcess::serve(dir.path(), &env).await.unwrap();
    publisher.finish().await;
    wait_for_rows(store.as_ref(), device, STREAM, Duration::from_secs(120)).await;
    // Counters move right after the commit that made the rows visible: at least the rows the
    // first run had not stored.
    let ingested = || async {
        let text = reqwest::get(ddms.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metric(&text, "ddms_readings_ingested_total", "protocol=\"mqtt\"") as usize
    };
    eventually(
        "the ingested counter to count the rows stored after the restart",
        Duration::from_secs(10),
        || async { ingested().await >= STREAM - stored_at_stop },
    )
    .await;
    let second_run = ingested().await;
    let points = readings(store.as_ref(), device, "seq").await;
    println!(
        "{stop:?}: publisher acked {acked_at_stop} and {stored_at_stop} readings were stored when ddms stopped; \
         the restarted ddms processed {second_run} ({} of them redelivered but stored already); final rows {}",
        second_run as i64 - (STREAM - stored_at_stop) as i64,
        points.len()
    );
    assert_exactly_once(&points, STREAM, base);
    assert!(stored_at_stop < STREAM, "the stop was mid-stream");
    (stored_at_stop, second_run)
}

#[tokio::test]
async fn ten_thousand_messages_survive_ddms_being_killed_mid_stream_each_stored_once() {
    stream_across_a_ddms_restart(Stop::Kill).await;
}

#[tokio::test]
async fn a_graceful_stop_mid_stream_acknowledges_everything_it_stored() {
    let (stored, second_run) = stream_across_a_ddms_restart(Stop::Term).await;
    // Nothing stored by the first run came back: its acks went out before DISCONNECT.
    assert_eq!(second_run, STREAM - stored);
}

#[tokio::test]
async fn ten_thousand_messages_survive_a_broker_restart_mid_stream_each_stored_once() {
    let broker = Mosquitto::start(Provider::from_env().await, BROKER_TUNING)
        .await
        .unwrap();
    let app = app_on(broker.port(), "ddms-broker-restart", "").await;
    let (device, _) = create_mqtt_device(&app, "meter-2").await;

    let base = base_ms();
    let publisher = Publisher::start(broker.port(), device, STREAM, 2500, base);
    publisher.wait_acked(3000).await;
    broker.stop().await.unwrap();
    let stored_at_stop = readings(app.store.as_ref(), device, "seq").await.len();
    let acked_at_stop = publisher.acked();
    // /ready names the broker while it is away.
    let client = reqwest::Client::new();
    let started = Instant::now();
    let body = loop {
        let (status, body) = ready(&client, &app.url("/ready")).await;
        if status == 503 {
            break body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "/ready stays {status}: {body}"
        );
        // sleep: the poll interval of this wait with a deadline (it reports the last body).
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body["components"]["mqtt"]["status"], "error", "{body}");
    assert_eq!(body["components"]["database"]["status"], "ok", "{body}");

    broker.restart().await.unwrap();
    publisher.finish().await;
    wait_for_rows(app.store.as_ref(), device, STREAM, Duration::from_secs(120)).await;
    wait_ready(&app.url("/ready")).await;
    let points = readings(app.store.as_ref(), device, "seq").await;
    let text = app.get("/metrics").await.text().await.unwrap();
    let processed = metric(&text, "ddms_readings_ingested_total", "protocol=\"mqtt\"");
    println!(
        "broker restart: publisher acked {acked_at_stop} and {stored_at_stop} were stored when the broker stopped; \
         ddms processed {processed} readings in all ({} redelivered duplicates); final rows {}",
        processed as i64 - STREAM as i64,
        points.len()
    );
    assert_exactly_once(&points, STREAM, base);
    assert!(stored_at_stop < STREAM, "the restart was mid-stream");
    app.stop().await;
}

#[tokio::test]
async fn ten_thousand_messages_survive_the_database_stopping_mid_stream_each_stored_once() {
    let broker = Mosquitto::start(Provider::from_env().await, BROKER_TUNING)
        .await
        .unwrap();
    // Its own PostgreSQL: stopping the shared one would break the other tests.
    let database: &'static Postgres = Box::leak(Box::new(
        Postgres::start(Provider::from_env().await).await.unwrap(),
    ));
    let app = spawn_app(
        Db::PostgresOn(database),
        &mqtt_toml(
            &format!("mqtt://127.0.0.1:{}", broker.port()),
            "ddms-db-outage",
            "",
        ),
    )
    .await;
    wait_ready(&app.url("/ready")).await;
    let (device, _) = create_mqtt_device(&app, "meter-3").await;

    let base = base_ms();
    let publisher = Publisher::start(broker.port(), device, STREAM, 2500, base);
    publisher.wait_acked(3000).await;
    database.stop().await.unwrap();
    // sleep: the subject is an outage of some length: ddms takes messages against a stopped
    // database for 3 s (the broker acknowledges the publisher meanwhile, whatever ddms does).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let acked_during_outage = publisher.acked();
    database.restart().await.unwrap();
    publisher.finish().await;
    wait_for_rows(app.store.as_ref(), device, STREAM, Duration::from_secs(120)).await;
    let points = readings(app.store.as_ref(), device, "seq").await;
    println!(
        "database outage: publisher acked {acked_during_outage} by the end of a 3 s outage; final rows {}",
        points.len()
    );
    assert_exactly_once(&points, STREAM, base);
    app.stop().await;
}

#[tokio::test]
async fn with_a_shared_subscription_two_instances_split_the_stream_and_store_each_reading_once() {
    let broker = Mosquitto::start(Provider::from_env().await, BROKER_TUNING)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("shared.db").display());
    let instance = |client_id: &str| {
        mqtt_toml(
            &format!("mqtt://127.0.0.1:{}", broker.port()),
            client_id,
            &format!("shared_subscription = true\n[database]\nurl = {url:?}\n"),
        )
    };
    let a = spawn_app(Db::Sqlite, &instance("ddms-a")).await;
    wait_ready(&a.url("/ready")).await;
    let b = spawn_app(Db::Sqlite, &instance("ddms-b")).await;
    wait_ready(&b.url("/ready")).await;
    // Created through `a`: `b` learns of it from the shared store on its first message.
    let (device, _) = create_mqtt_device(&a, "meter-shared").await;

    let base = base_ms();
    Publisher::start(broker.port(), device, 2000, 1000, base)
        .finish()
        .await;
    wait_for_rows(a.store.as_ref(), device, 2000, Duration::from_secs(60)).await;
    assert_exactly_once(&readings(a.store.as_ref(), device, "seq").await, 2000, base);
    let mut taken = Vec::new();
    for app in [&a, &b] {
        let text = app.get("/metrics").await.text().await.unwrap();
        taken.push(metric(&text, "ddms_mqtt_messages_total", "outcome=\"accepted\"") as usize);
    }
    assert_eq!(
        taken.iter().sum::<usize>(),
        2000,
        "split, not duplicated: {taken:?}"
    );
    assert!(
        taken.iter().all(|n| *n > 0),
        "both instances took a share: {taken:?}"
    );
    b.stop().await;
    a.stop().await;
}
