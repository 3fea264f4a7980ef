//! `GET /api/stream`: Server-Sent Events. One stream carries every device's events (browsers
//! allow ~6 connections per host). Ids come from the database's event log, so `Last-Event-ID`
//! resumes on any instance; streams end on shutdown with a `retry:` hint so clients reconnect —
//! to another instance during a deploy — and resume there without missing an event.
//!
//! The body is written as SSE text directly: each event is rendered once ([`Event::wire`])
//! and the same bytes go to every subscriber.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, StreamExt};
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::{BroadcastStream, IntervalStream};

use super::extract::{Authorized, ViewerRole};
use super::AppState;
#[cfg(doc)]
use crate::events::Event;

/// How long clients wait before reconnecting after the stream ends.
const RETRY: Duration = Duration::from_millis(1000);
/// A comment this often keeps proxies and NATs from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub async fn stream(
    State(state): State<AppState>,
    _auth: Authorized<ViewerRole>,
    headers: HeaderMap,
) -> Response {
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let subscription = state
        .events
        .subscribe(state.store.as_ref(), last_event_id)
        .await;
    let mut preface = format!("retry: {}\n: ddms event stream\n\n", RETRY.as_millis());
    if subscription.gap {
        // The client missed events that are no longer buffered: it should reload its state.
        preface.push_str("event: reset\ndata: {\"reason\":\"events lost\"}\n\n");
    }
    let replay: Vec<Bytes> = subscription.replay.iter().map(|e| e.wire()).collect();
    let skip_through = subscription.skip_through.unwrap_or(0);
    let live = BroadcastStream::new(subscription.live).filter_map(move |item| {
        futures::future::ready(match item {
            Ok(event) if event.id <= skip_through => None,
            Ok(event) => Some(event.wire()),
            Err(BroadcastStreamRecvError::Lagged(missed)) => Some(Bytes::from(format!(
                "event: reset\ndata: {{\"reason\":\"client too slow\",\"missed\":{missed}}}\n\n"
            ))),
        })
    });
    let mut interval =
        tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let keep_alive = IntervalStream::new(interval).map(|_| Bytes::from_static(b":\n\n"));
    let shutdown = state.shutdown.clone();
    let events = stream::iter(std::iter::once(Bytes::from(preface)))
        .chain(stream::iter(replay))
        .chain(stream::select(live, keep_alive))
        .take_until(async move { shutdown.cancelled().await })
        .map(Ok::<_, Infallible>);
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(events),
    )
        .into_response()
}
