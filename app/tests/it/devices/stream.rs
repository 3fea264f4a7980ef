//! The live stream: readings with ids, resumed after Last-Event-ID on the same or another
//! instance without a gap, ended at shutdown; the live page and its assets.

use super::*;

/// Reads SSE events (id, event, data) from a response until `count` are seen.
pub(super) async fn read_events(
    response: reqwest::Response,
    count: usize,
) -> Vec<(u64, String, Value)> {
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while events.len() < count {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("events arrive in time")
            .expect("stream open")
            .unwrap();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find(
            "
\n",
        ) {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut id, mut kind, mut data) = (None, String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    kind = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if let Some(id) = id {
                events.push((id, kind, serde_json::from_str(&data).unwrap()));
            }
        }
    }
    events
}

#[tokio::test]
async fn the_stream_carries_readings_with_ids_and_resumes_after_last_event_id() {
    let app = spawn_app(Db::Sqlite, "").await;
    let admin = app.token(Role::Admin).await;
    let device: Uuid = create(&app, &admin, &boiler()).await["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let unauthenticated = app.get("/api/stream").await;
    assert_eq!(unauthenticated.status(), 401);
    let stream = app
        .client
        .get(app.url("/api/stream"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert!(stream.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let sample = |i: i64| Sample {
        device_id: device,
        metric: "temperature".into(),
        unit: None,
        ts: Utc::now() + chrono::Duration::milliseconds(i),
        value: i as f64,
    };
    for i in 0..3 {
        app.ingest.submit("api", vec![sample(i)]).await.unwrap();
    }
    let events = read_events(stream, 3).await;
    assert!(events.iter().all(|(_, kind, _)| kind == "reading"));
    assert!(events.windows(2).all(|w| w[0].0 < w[1].0), "ids increase");
    assert_eq!(events[0].2["device_id"], device.to_string());
    assert_eq!(events[2].2["readings"][0]["value"], 2.0);

    // Reconnecting with the first id replays exactly the two after it.
    let resumed = app
        .client
        .get(app.url("/api/stream"))
        .bearer_auth(&admin)
        .header("last-event-id", events[0].0.to_string())
        .send()
        .await
        .unwrap();
    let replayed = read_events(resumed, 2).await;
    assert_eq!(replayed[0].0, events[1].0);
    assert_eq!(replayed[1].0, events[2].0);
    app.stop().await;
}

/// Blue-green in small: a client reads from one instance, which stops; the events it missed —
/// published by the stopping instance and by the other one — reach it on the other instance
/// after `Last-Event-ID`, each once and in order.
#[tokio::test]
async fn a_stream_resumed_on_another_instance_misses_no_event() {
    let first = spawn_app(Db::Postgres(Provider::from_env().await), "").await;
    let second = spawn_app(Db::Url(first.database_url.clone()), "").await;
    let admin = first.token(Role::Admin).await;
    let device: Uuid = create(&first, &admin, &boiler()).await["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let sample = |i: i64| Sample {
        device_id: device,
        metric: "temperature".into(),
        unit: None,
        ts: Utc::now() + chrono::Duration::milliseconds(i),
        value: i as f64,
    };
    let stream = first
        .client
        .get(first.url("/api/stream"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    for i in 0..2 {
        first.ingest.submit("api", vec![sample(i)]).await.unwrap();
    }
    let seen = read_events(stream, 2).await;
    let last_seen = seen[1].0;
    // The client is gone; both instances keep producing.
    for i in 2..4 {
        first.ingest.submit("api", vec![sample(i)]).await.unwrap();
    }
    first.stop().await;
    for i in 4..6 {
        second.ingest.submit("api", vec![sample(i)]).await.unwrap();
    }
    let resumed = second
        .client
        .get(second.url("/api/stream"))
        .bearer_auth(&admin)
        .header("last-event-id", last_seen.to_string())
        .send()
        .await
        .unwrap();
    let replayed = read_events(resumed, 4).await;
    let values: Vec<f64> = replayed
        .iter()
        .map(|(_, _, data)| data["readings"][0]["value"].as_f64().unwrap())
        .collect();
    assert_eq!(values, [2.0, 3.0, 4.0, 5.0], "{replayed:?}");
    assert!(replayed.iter().all(|(id, _, _)| *id > last_seen));
    assert!(replayed.windows(2).all(|w| w[0].0 < w[1].0), "ids increase");
    second.stop().await;
}

#[tokio::test]
async fn open_streams_end_when_the_server_shuts_down() {
    let app = spawn_app(Db::Sqlite, "").await;
    let viewer = app.token(Role::Viewer).await;
    let stream = app
        .client
        .get(app.url("/api/stream"))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    // The stream is open and under way: its first bytes have come.
    let mut body = stream.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("the stream's first bytes")
        .expect("the stream's first bytes")
        .unwrap();
    let reader = tokio::spawn(async move {
        let mut text = String::from_utf8_lossy(&first).into_owned();
        while let Some(Ok(chunk)) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        text
    });
    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .expect("shutdown is not held up by the open stream");
    let text = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .unwrap()
        .unwrap();
    assert!(
        text.contains("retry: 1000"),
        "clients are told when to reconnect: {text}"
    );
}

#[tokio::test]
async fn the_live_page_is_served_with_its_assets_and_no_inline_script() {
    let app = spawn_app(Db::Sqlite, "").await;
    let page = app.get("/").await;
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(html.contains("<script src=\"/assets/dashboard.js\""));
    assert!(!html.contains("<script>"), "no inline script");
    assert!(!html.contains(" style="), "no inline style");
    let js = app.get("/assets/common.js").await;
    assert!(js.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert!(js.text().await.unwrap().contains("/api/stream"));
    assert_eq!(app.get("/assets/style.css").await.status(), 200);
    for page in [
        "/login",
        "/devices/x",
        "/admin/devices",
        "/notifications",
        "/alerts",
        "/admin/alerts",
        "/admin/channels",
    ] {
        let response = app.get(page).await;
        assert_eq!(response.status(), 200, "{page}");
        let html = response.text().await.unwrap();
        for script in html.split("<script src=\"").skip(1) {
            let src = script.split('"').next().unwrap();
            assert_eq!(app.get(src).await.status(), 200, "{page} loads {src}");
        }
    }
    let missing = app.get("/assets/nope.js").await;
    assert_eq!(missing.status(), 404);
    app.stop().await;
}
