//! Modbus polling across instances: each device polled once by two instances sharing a database,
//! handed over at once on a graceful stop and within the lease TTL when an instance dies.

use super::*;

/// Devices polled by this instance, from its metrics.
pub(super) async fn devices_polled(app: &TestApp) -> f64 {
    metric(&metrics_text(app).await, "ddms_modbus_devices_polled")
}

#[tokio::test]
async fn two_instances_on_one_database_poll_each_device_once_and_hand_over_at_once_on_graceful_stop(
) {
    let lease = "[modbus]
lease_ttl_s = 10\n";
    let first = spawn_app(Db::Postgres(Provider::from_env().await), lease).await;
    let second = spawn_app(Db::Url(first.database_url.clone()), lease).await;
    let admin = first.token(Role::Admin).await;
    let interval_ms = 500;
    let mut devices = Vec::new();
    for index in 0..4 {
        let simulator = ModbusSimulator::start(cadence_device(index)).await.unwrap();
        let body = device_body(
            &format!("shared-{index}"),
            simulator.addr(),
            interval_ms,
            register_map(&cadence_device(index)),
        );
        devices.push((create_device(&first, &admin, &body).await, simulator));
    }
    for &(id, _) in &devices {
        eventually_some(
            "every device to be polled",
            Duration::from_secs(20),
            || async { latest(&first, &admin, id).await.get("level").map(|_| ()) },
        )
        .await;
    }
    let polled = (devices_polled(&first).await, devices_polled(&second).await);
    assert_eq!(
        polled.0 + polled.1,
        4.0,
        "each device by exactly one instance: {polled:?}"
    );

    // Over a window of 3 s a device polled twice would show about twice the readings.
    let window_start = Utc::now();
    let requests_before: Vec<u64> = devices.iter().map(|(_, s)| s.requests()).collect();
    // sleep: the subject is a length of time: polls are counted over a 3 s window
    tokio::time::sleep(Duration::from_secs(3)).await;
    let polls_in_window = 3_000 / interval_ms as usize;
    for (index, (id, simulator)) in devices.iter().enumerate() {
        let points = readings(&first, &admin, *id, "level", window_start).await;
        assert!(
            points.len() <= polls_in_window + 1,
            "shared-{index}: {} readings in 3 s",
            points.len()
        );
        let requests = simulator.requests() - requests_before[index];
        assert!(
            requests <= polls_in_window as u64 + 1,
            "shared-{index}: {requests} requests in 3 s"
        );
    }

    // Stop whichever instance polls (all of them, usually); the other takes over.
    let (stopping, staying) = if polled.0 > 0.0 {
        (first, second)
    } else {
        (second, first)
    };
    let handed_over: Vec<Uuid> = devices.iter().map(|(id, _)| *id).collect();
    stopping.stop().await;
    let stopped_at = Utc::now();
    let admin = staying.token(Role::Admin).await;
    let mut widest = chrono::Duration::zero();
    for id in handed_over {
        let points = eventually_some(
            "the other instance to take over",
            Duration::from_secs(20),
            || async {
                let points = readings(&staying, &admin, id, "level", window_start).await;
                let resumed = points.iter().any(|(ts, _)| *ts > stopped_at);
                resumed.then_some(points)
            },
        )
        .await;
        for pair in points.windows(2) {
            widest = widest.max(pair[1].0 - pair[0].0);
        }
    }
    // A lease left to expire would leave a gap of several seconds (TTL 10 s).
    assert!(
        widest < chrono::Duration::milliseconds(2 * interval_ms as i64 + 1000),
        "handover left a gap of {widest}"
    );
    assert_eq!(devices_polled(&staying).await, 4.0);
    staying.stop().await;
}

#[tokio::test]
async fn an_instance_that_dies_without_releasing_its_leases_is_replaced_within_the_lease_ttl() {
    let (url, dir) = database_url(&Db::Postgres(Provider::from_env().await)).await;
    let ttl_s = 3;
    let interval_ms = 300;
    let mut dying = DdmsProcess::serve(
        dir.path(),
        &[
            ("DDMS_DATABASE__URL", url.as_str()),
            ("DDMS_MODBUS__LEASE_TTL_S", &ttl_s.to_string()),
        ],
    )
    .await
    .expect("ddms serves");
    let store = ddms::store::connect(&url.clone().into(), 2, Duration::from_secs(5))
        .await
        .unwrap();
    let simulator = ModbusSimulator::start(cadence_device(5)).await.unwrap();
    let body = device_body(
        "orphan",
        simulator.addr(),
        interval_ms,
        register_map(&cadence_device(5)),
    );
    let device = store
        .create_device(&NewDevice {
            name: "orphan".into(),
            protocol: Protocol::Modbus,
            group_id: None,
            config: body["modbus"].clone(),
            enabled: true,
        })
        .await
        .unwrap();
    // The only instance running finds it on its periodic scan and takes its lease.
    eventually_some(
        "the first instance to poll",
        Duration::from_secs(20),
        || async {
            let latest = store.latest_readings(device.id).await.unwrap();
            (!latest.is_empty()).then_some(())
        },
    )
    .await;

    let survivor = spawn_app(
        Db::Url(url.clone()),
        &format!("[modbus]\nlease_ttl_s = {ttl_s}\n"),
    )
    .await;
    let admin = survivor.token(Role::Admin).await;
    // sleep: a window, shorter than the lease TTL (3 s), in which the survivor must not poll;
    // nothing marks its scan finding the lease taken
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        devices_polled(&survivor).await,
        0.0,
        "the lease is held by the other instance"
    );

    let started = Utc::now();
    dying.signal(nix::sys::signal::Signal::SIGKILL);
    let killed_at = Utc::now();
    dying.wait_exit(Duration::from_secs(10)).await;
    let points = eventually_some(
        "the survivor to take over",
        Duration::from_secs(20),
        || async {
            let points = readings(
                &survivor,
                &admin,
                device.id,
                "level",
                started - chrono::Duration::seconds(5),
            )
            .await;
            points
                .iter()
                .any(|(ts, _)| *ts > killed_at)
                .then_some(points)
        },
    )
    .await;
    let last_before = points
        .iter()
        .rev()
        .find(|(ts, _)| *ts <= killed_at)
        .expect("readings before the kill")
        .0;
    let first_after = points.iter().find(|(ts, _)| *ts > killed_at).unwrap().0;
    let gap = first_after - last_before;
    // The lease was renewed at most a third of the TTL before the kill: the survivor waits for
    // it to expire (no release happened), and not much longer.
    assert!(
        gap >= chrono::Duration::milliseconds(1000),
        "took over before the lease expired: {gap}"
    );
    assert!(
        gap <= chrono::Duration::seconds(ttl_s + 3),
        "took over late: {gap}"
    );
    assert_eq!(devices_polled(&survivor).await, 1.0);
    survivor.stop().await;
}
