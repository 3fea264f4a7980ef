//! The history chart in a real browser: pan with a drag, zoom with a pinch and the wheel, the
//! point under a tap or the mouse described, live readings folded into rollups.

use super::*;

/// The chart's view as the canvas reports it: (from, to) in ms since the epoch.
pub(super) async fn chart_view(browser: &Browser) -> (f64, f64) {
    let view = browser
        .js("const c = document.getElementById('chart'); return [Number(c.dataset.from), Number(c.dataset.to)];")
        .await;
    (view[0].as_f64().unwrap(), view[1].as_f64().unwrap())
}

#[tokio::test]
async fn the_history_chart_pans_with_a_drag_and_zooms_with_a_pinch_and_the_wheel() {
    use fantoccini::actions::{
        InputSource, PointerAction, TouchActions, WheelAction, WheelActions,
    };
    let app = spawn_app(Db::Sqlite, "").await;
    let admin = app.token(Role::Admin).await;
    let device = create_device(&app, &admin, json!({"name": "kiln-2", "protocol": "mqtt"})).await;
    history(&app, device, "temperature", 6 * 60).await;
    let browser = Browser::start().await;
    browser
        .open_with_token(&app, &format!("/devices/{device}"), &admin)
        .await;
    browser
        .wait_js(
            "document.getElementById('chart-step').textContent.startsWith('Raw readings')",
            Duration::from_secs(10),
        )
        .await;
    let rect = browser
        .js("const r = document.getElementById('chart').getBoundingClientRect(); return [r.left, r.top, r.width, r.height];")
        .await;
    let (left, top, width, height) = (
        rect[0].as_f64().unwrap(),
        rect[1].as_f64().unwrap(),
        rect[2].as_f64().unwrap(),
        rect[3].as_f64().unwrap(),
    );
    let (cx, cy) = (left + width / 2.0, top + height / 2.0);
    let ms = |n| Some(Duration::from_millis(n));

    // One finger dragged to the right shows earlier readings; the span stays.
    let (from, to) = chart_view(&browser).await;
    let drag = TouchActions::new("finger".into())
        .then(PointerAction::MoveTo {
            duration: None,
            x: cx,
            y: cy,
        })
        .then(PointerAction::Down { button: 0 })
        .then(PointerAction::MoveBy {
            duration: ms(200),
            x: width / 4.0,
            y: 0.0,
        })
        .then(PointerAction::Up { button: 0 });
    browser.client.perform_actions(drag).await.unwrap();
    let (dragged_from, dragged_to) = chart_view(&browser).await;
    assert!(
        dragged_from < from - 600e3,
        "panned back: {from} → {dragged_from}"
    );
    assert!(
        ((dragged_to - dragged_from) - (to - from)).abs() < 1e3,
        "same span"
    );

    // Two fingers moving apart zoom in.
    let finger = |id: &str, start: f64, by: f64| {
        TouchActions::new(id.into())
            .then(PointerAction::MoveTo {
                duration: None,
                x: start,
                y: cy,
            })
            .then(PointerAction::Down { button: 0 })
            .then(PointerAction::MoveBy {
                duration: ms(300),
                x: by,
                y: 0.0,
            })
            .then(PointerAction::Up { button: 0 })
    };
    let pinch = fantoccini::actions::Actions::from(finger("a", cx - 60.0, -150.0)).and(finger(
        "b",
        cx + 60.0,
        150.0,
    ));
    browser.client.perform_actions(pinch).await.unwrap();
    let (pinched_from, pinched_to) = chart_view(&browser).await;
    assert!(
        pinched_to - pinched_from < 0.6 * (dragged_to - dragged_from),
        "zoomed in: {} → {} s",
        (dragged_to - dragged_from) / 1e3,
        (pinched_to - pinched_from) / 1e3
    );

    // The wheel zooms out; past 3 hours the chart loads 1-minute buckets with a band.
    for _ in 0..4 {
        let mut wheel = WheelActions::new("wheel".into());
        wheel.push(WheelAction::Scroll {
            duration: None,
            x: cx as i64,
            y: cy as i64,
            delta_x: 0,
            delta_y: 600,
        });
        browser.client.perform_actions(wheel).await.unwrap();
    }
    let (wide_from, wide_to) = chart_view(&browser).await;
    assert!(
        wide_to - wide_from > 3.0 * 3600e3,
        "zoomed out to {} h",
        (wide_to - wide_from) / 3600e3
    );
    browser
        .wait_js(
            "document.getElementById('chart-step').textContent.startsWith('1-minute averages')",
            Duration::from_secs(10),
        )
        .await;
    browser.screenshots("device-rollups").await;
    browser.close().await;
    app.stop().await;
}

#[tokio::test]
async fn the_history_chart_describes_the_point_under_a_tap_or_the_mouse_and_folds_live_readings_into_rollups(
) {
    use fantoccini::actions::{InputSource, MouseActions, PointerAction, TouchActions};
    let app = spawn_app(Db::Sqlite, "").await;
    let admin = app.token(Role::Admin).await;
    let device = create_device(&app, &admin, json!({"name": "kiln-3", "protocol": "mqtt"})).await;
    history(&app, device, "temperature", 90).await;
    let browser = Browser::start().await;
    browser
        .open_with_token(&app, &format!("/devices/{device}"), &admin)
        .await;
    browser
        .wait_js(
            "document.getElementById('chart-step').textContent.startsWith('Raw readings')",
            Duration::from_secs(10),
        )
        .await;
    let rect = browser
        .js("const r = document.getElementById('chart').getBoundingClientRect(); return [r.left, r.top, r.width, r.height];")
        .await;
    let [left, top, width, height] = [0, 1, 2, 3].map(|i| rect[i].as_f64().unwrap());
    let readout = "document.getElementById('chart-readout').textContent";

    // A tap marks the nearest reading: its time and value, with the unit.
    let tap = TouchActions::new("finger".into())
        .then(PointerAction::MoveTo {
            duration: None,
            x: left + width * 0.5,
            y: top + height / 2.0,
        })
        .then(PointerAction::Down { button: 0 })
        .then(PointerAction::Up { button: 0 });
    browser.client.perform_actions(tap).await.unwrap();
    let tapped = browser
        .wait_js(
            &format!("/: \\d+\\.\\d\\d °C$/.test({readout}) && {readout}"),
            Duration::from_secs(5),
        )
        .await;
    // The mouse marks the point under it as it moves, another one further right.
    let hover = MouseActions::new("mouse".into()).then(PointerAction::MoveTo {
        duration: None,
        x: left + width * 0.9,
        y: top + height / 2.0,
    });
    browser.client.perform_actions(hover).await.unwrap();
    let hovered = browser
        .wait_js(
            &format!("{readout} !== {tapped} && / °C$/.test({readout}) && {readout}"),
            Duration::from_secs(5),
        )
        .await;
    assert_ne!(tapped, hovered);

    // The 24 h view shows 1-minute buckets; live readings fold into the newest one (or start
    // the next), without a reload.
    browser.click("[data-range=\"24h\"]").await;
    browser
        .wait_js(
            "document.getElementById('chart-step').textContent.startsWith('1-minute averages')",
            Duration::from_secs(10),
        )
        .await;
    // (Clicking the range button took the mouse off the chart: point at it again.)
    let hover = MouseActions::new("mouse".into()).then(PointerAction::MoveTo {
        duration: None,
        x: left + width * 0.8,
        y: top + height / 2.0,
    });
    browser.client.perform_actions(hover).await.unwrap();
    let described = browser
        .wait_js(
            &format!("/avg .* min .* max .*readings\\)$/.test({readout}) && {readout}"),
            Duration::from_secs(5),
        )
        .await;
    assert!(
        described.as_str().unwrap().contains("(1 minute)"),
        "{described}"
    );
    let before: Value = serde_json::from_str(
        browser
            .js("return document.getElementById('chart').dataset.newest;")
            .await
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let now = Utc::now();
    let minute = now - chrono::Duration::milliseconds(now.timestamp_millis().rem_euclid(60_000));
    let at = |s: i64| minute + chrono::Duration::milliseconds(s * 10);
    let center = (minute.timestamp_millis() + 30_000) as f64;
    let same_bucket = before["t"].as_f64() == Some(center);
    let count = before["count"].as_u64().unwrap();
    // A `reading` event carries each series' newest reading of a batch: one at a time here.
    for (i, value, min, max, expected) in [
        (
            1,
            1000.0,
            if same_bucket { "n.min" } else { "1000" },
            1000.0,
            if same_bucket { count + 1 } else { 1 },
        ),
        (
            2,
            -1000.0,
            "-1000",
            1000.0,
            if same_bucket { count + 2 } else { 2 },
        ),
    ] {
        app.ingest
            .submit(
                "api",
                vec![Sample {
                    device_id: device,
                    metric: "temperature".into(),
                    unit: Some("°C".into()),
                    ts: at(i),
                    value,
                }],
            )
            .await
            .unwrap();
        browser
            .wait_js(
                &format!(
                    "(() => {{ const n = JSON.parse(document.getElementById('chart').dataset.newest); \
                     return n.t === {center} && n.count === {expected} && n.max === {max} && n.min === {min}; }})()"
                ),
                Duration::from_secs(5),
            )
            .await;
    }
    let after: Value = serde_json::from_str(
        browser
            .js("return document.getElementById('chart').dataset.newest;")
            .await
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(after["t"].as_f64(), Some(center), "{before} → {after}");
    browser.close().await;
    app.stop().await;
}
