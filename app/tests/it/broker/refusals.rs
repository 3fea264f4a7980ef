//! What the embedded broker refuses: wrong credentials, another client id or none, another
//! device's topics, subscriptions, a last will on another device's topic; refused input counted
//! by reason while a good device is unaffected.

use super::*;

#[tokio::test]
async fn connections_with_wrong_credentials_another_client_id_or_none_are_refused() {
    let app = spawn_broker_app(Db::Sqlite, "", "").await;
    let admin = app.token(Role::Admin).await;
    let port = port(&app);
    let device = create_device(&app, &admin, "sensor-a").await;
    let topic = format!("devices/{}/telemetry", device.id);
    let wrong = Device {
        password: "not-the-password".into(),
        ..device.clone()
    };

    // mosquitto_pub exits with the CONNACK return code.
    let refused = publish(port, &wrong, &topic, r#"{"t": 1}"#, &[]).await;
    assert_eq!(
        refused.code, 4,
        "v3.1.1 bad username or password: {}",
        refused.output
    );
    let refused = publish(port, &wrong, &topic, r#"{"t": 1}"#, &["-V", "mqttv5"]).await;
    assert_eq!(
        refused.code, 134,
        "v5 bad username or password: {}",
        refused.output
    );
    let unknown = Device {
        id: Uuid::new_v4().to_string(),
        password: device.password.clone(),
    };
    let refused = publish(port, &unknown, &topic, r#"{"t": 1}"#, &[]).await;
    assert_eq!(refused.code, 4, "unknown username: {}", refused.output);

    // The right password with another client id: it could take over that client's session.
    let mut args = client_args(port, &device, &topic);
    let id_at = args.iter().position(|a| a == "-i").unwrap();
    args[id_at + 1] = "someone-else".into();
    args.extend(["-m".into(), r#"{"t": 1}"#.into()]);
    let refused = run_pub(args).await;
    assert_eq!(refused.code, 5, "client id ≠ username: {}", refused.output);

    let anonymous = run_pub(vec![
        "-h".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
        "-q".into(),
        "1".into(),
        "-t".into(),
        topic.clone(),
        "-m".into(),
        r#"{"t": 1}"#.into(),
    ])
    .await;
    assert_eq!(anonymous.code, 5, "anonymous: {}", anonymous.output);

    let refused_by = |reason: &'static str| {
        let app = &app;
        async move {
            metric(
                app,
                "ddms_mqtt_connects_refused_total",
                &[("reason", reason)],
            )
            .await
        }
    };
    assert_eq!(refused_by("bad_credentials").await, 3.0);
    assert_eq!(refused_by("client_id_mismatch").await, 1.0);
    assert_eq!(refused_by("anonymous").await, 1.0);

    // None of it stored anything; the right credentials still work.
    let sent = publish(port, &device, &topic, r#"{"t": 7}"#, &[]).await;
    assert_eq!(sent.code, 0, "{}", sent.output);
    let viewer = app.token(Role::Viewer).await;
    let stored = readings(&app, &viewer, &device, "t").await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["value"], 7.0);
    app.stop().await;
}

#[tokio::test]
async fn a_device_cannot_publish_into_another_devices_topics_nor_subscribe() {
    let app = spawn_broker_app(Db::Sqlite, "", "").await;
    let admin = app.token(Role::Admin).await;
    let viewer = app.token(Role::Viewer).await;
    let port = port(&app);
    let mallory = create_device(&app, &admin, "mallory").await;
    let victim = create_device(&app, &admin, "victim").await;
    let victims_topic = format!("devices/{}/telemetry", victim.id);

    // MQTT 3.1.1 has no negative PUBACK: the message is acknowledged and dropped.
    let spoof = publish(port, &mallory, &victims_topic, r#"{"t": 666}"#, &["-d"]).await;
    assert_eq!(spoof.code, 0, "{}", spoof.output);
    assert!(spoof.output.contains("received PUBACK"), "{}", spoof.output);
    // MQTT 5 says so: PUBACK 135 Not authorized.
    let spoof = publish(
        port,
        &mallory,
        &format!("devices/{}/heartbeat", victim.id),
        "{}",
        &["-d", "-V", "mqttv5"],
    )
    .await;
    assert!(spoof.output.contains("RC:135"), "{}", spoof.output);
    // Outside devices/ altogether, retained or not.
    let spoof = publish(port, &mallory, "alerts/all", r#"{"t": 1}"#, &["-r"]).await;
    assert_eq!(spoof.code, 0, "{}", spoof.output);

    assert!(readings(&app, &viewer, &victim, "t").await.is_empty());
    assert_eq!(rejected(&app, "topic_not_allowed").await, 3.0);

    // Devices may not subscribe (SUBACK 0x80 = failure).
    let subscribed = tokio::time::timeout(
        Duration::from_secs(10),
        Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-u",
                &mallory.id,
                "-P",
                &mallory.password,
                "-i",
                &mallory.id,
                "-t",
                "devices/#",
                "-d",
                "-W",
                "2",
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    let output = String::from_utf8_lossy(&subscribed.stdout).to_string()
        + &String::from_utf8_lossy(&subscribed.stderr);
    assert!(output.contains("Subscribed (mid: 1): 128"), "{output}");
    assert_eq!(
        metric(&app, "ddms_mqtt_subscriptions_refused_total", &[]).await,
        1.0
    );

    // The victim itself is unaffected.
    let sent = publish(port, &victim, &victims_topic, r#"{"t": 1}"#, &[]).await;
    assert_eq!(sent.code, 0, "{}", sent.output);
    assert_eq!(readings(&app, &viewer, &victim, "t").await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_last_will_on_another_devices_topic_refuses_the_connection() {
    let app = spawn_broker_app(Db::Sqlite, "", "").await;
    let admin = app.token(Role::Admin).await;
    let port = port(&app);
    let mallory = create_device(&app, &admin, "mallory").await;
    let victim = create_device(&app, &admin, "victim").await;
    let own = format!("devices/{}/telemetry", mallory.id);

    let refused = publish(
        port,
        &mallory,
        &own,
        r#"{"t": 1}"#,
        &[
            "--will-topic",
            &format!("devices/{}/heartbeat", victim.id),
            "--will-payload",
            "{}",
        ],
    )
    .await;
    assert_eq!(refused.code, 5, "{}", refused.output);
    assert_eq!(
        metric(
            &app,
            "ddms_mqtt_connects_refused_total",
            &[("reason", "will_topic_not_allowed")]
        )
        .await,
        1.0
    );
    // A will on its own topics is fine.
    let accepted = publish(
        port,
        &mallory,
        &own,
        r#"{"t": 1}"#,
        &[
            "--will-topic",
            &format!("devices/{}/heartbeat", mallory.id),
            "--will-payload",
            "{}",
        ],
    )
    .await;
    assert_eq!(accepted.code, 0, "{}", accepted.output);
    app.stop().await;
}

#[tokio::test]
async fn refused_input_is_counted_by_reason_while_a_good_device_is_unaffected() {
    let app = spawn_broker_app(Db::Sqlite, "", "").await;
    let admin = app.token(Role::Admin).await;
    let viewer = app.token(Role::Viewer).await;
    let port = port(&app);
    let good = create_device(&app, &admin, "good").await;
    let bad = create_device(&app, &admin, "bad").await;
    let bad_topic = format!("devices/{}/telemetry", bad.id);

    let lines = telemetry_lines(200);
    let good_run = tokio::spawn({
        let good = good.clone();
        async move {
            publish_lines(
                port,
                &good,
                &format!("devices/{}/telemetry", good.id),
                &lines,
            )
            .await
        }
    });

    let oversized = format!(r#"{{"t": 1, "pad": "{}"}}"#, "x".repeat(70 * 1024));
    let cases: Vec<(String, String, &str, &str)> = vec![
        (
            bad_topic.clone(),
            "{not json".into(),
            "malformed_json",
            "RC:153",
        ),
        (bad_topic.clone(), oversized, "oversized", "RC:153"),
        (
            bad_topic.clone(),
            r#"{"t": "hot"}"#.into(),
            "non_numeric",
            "RC:153",
        ),
        (
            bad_topic.clone(),
            r#"{"ts": "2999-01-01T00:00:00Z", "t": 1}"#.into(),
            "future_timestamp",
            "RC:153",
        ),
        (
            format!("devices/{}/status", bad.id),
            r#"{"t": 1}"#.into(),
            "unknown_topic",
            "RC:144",
        ),
    ];
    for (topic, payload, reason, v5_code) in &cases {
        // MQTT 3.1.1: acknowledged (so not resent forever) and dropped.
        let sent = publish(port, &bad, topic, payload, &[]).await;
        assert_eq!(sent.code, 0, "{reason}: {}", sent.output);
        // MQTT 5: the PUBACK's reason code says why.
        let sent = publish(port, &bad, topic, payload, &["-V", "mqttv5", "-d"]).await;
        assert!(sent.output.contains(v5_code), "{reason}: {}", sent.output);
        assert_eq!(rejected(&app, reason).await, 2.0, "{reason}");
    }

    // A disabled device may stay connected; what it sends is refused.
    let mut live_bad = LivePublisher::connect(port, &bad, &bad_topic).await;
    let disable = app
        .put_json(
            &format!("/api/devices/{}", bad.id),
            &admin,
            &json!({ "name": "bad", "protocol": "mqtt", "enabled": false }),
        )
        .await;
    assert_eq!(disable.status(), 200);
    let mut mid = 1;
    let taken_before_the_change = send_until_refused(
        &app,
        &mut live_bad,
        &mut mid,
        r#"{"t": 5}"#,
        "device_disabled",
    )
    .await;
    assert_eq!(rejected(&app, "device_disabled").await, 1.0);

    // A device deleted while connected: what it still sends is refused, and it cannot log in again.
    assert_eq!(
        app.delete(&format!("/api/devices/{}", bad.id), &admin)
            .await
            .status(),
        204
    );
    send_until_refused(
        &app,
        &mut live_bad,
        &mut mid,
        r#"{"t": 6}"#,
        "unknown_device",
    )
    .await;
    assert_eq!(live_bad.finish().await, 0);
    assert_eq!(rejected(&app, "unknown_device").await, 1.0);
    let again = publish(port, &bad, &bad_topic, r#"{"t": 1}"#, &[]).await;
    assert_eq!(again.code, 4, "{}", again.output);

    let good_done = good_run.await.unwrap();
    assert_eq!(good_done.code, 0, "{}", good_done.output);
    let stored = readings(&app, &viewer, &good, "seq").await;
    assert_eq!(stored.len(), 200, "every good reading is stored");
    assert_eq!(
        metric(
            &app,
            "ddms_readings_ingested_total",
            &[("protocol", "mqtt")]
        )
        .await,
        200.0 + f64::from(taken_before_the_change),
        "the good device's readings, and the bad one's sent before the broker knew it disabled"
    );
    app.stop().await;
}

/// Sends `line` from `live` until the broker refuses one for `reason`, each message
/// acknowledged (refused ones too, MQTT 3.1.1) before the next: the broker learns of a change
/// the API made moments after the API answers, not at once, and nothing outside it shows when.
/// Returns how many were taken before the refusal; `mid` is the next message id.
async fn send_until_refused(
    app: &TestApp,
    live: &mut LivePublisher,
    mid: &mut u32,
    line: &str,
    reason: &str,
) -> u32 {
    let before = rejected(app, reason).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut taken = 0;
    loop {
        live.send(line).await;
        live.wait_for(
            &format!("received PUBACK (Mid: {mid},"),
            Duration::from_secs(10),
        )
        .await;
        *mid += 1;
        if rejected(app, reason).await > before {
            return taken;
        }
        assert!(
            Instant::now() < deadline,
            "nothing refused for {reason} within 10 s ({taken} messages taken)"
        );
        taken += 1;
    }
}
