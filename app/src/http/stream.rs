//! `GET /api/stream`: Server-Sent Events. One stream carries every device's events (browsers
//! allow ~6 connections per host). Ids come from the database's event log, so `Last-Event-ID`
//! resumes on any instance; streams end on shutdown with a `retry:` hint so clients reconnect —
//! to another instance during a deploy — and resume there without missing an event.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::stream::{self, Stream, StreamExt};
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

use super::extract::{Authorized, ViewerRole};
use super::AppState;

/// How long clients wait before reconnecting after the stream ends.
const RETRY: Duration = Duration::from_millis(1000);

fn to_sse(event: &crate::events::Event) -> Event {
    Event::default()
        .id(event.id.to_string())
        .event(&event.kind)
        .data(event.data.to_string())
}

pub async fn stream(
    State(state): State<AppState>,
    _auth: Authorized<ViewerRole>,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let subscription = state
        .events
        .subscribe(state.store.as_ref(), last_event_id)
        .await;
    let mut preface = vec![Event::default().retry(RETRY).comment("ddms event stream")];
    if subscription.gap {
        // The client missed events that are no longer buffered: it should reload its state.
        preface.push(
            Event::default()
                .event("reset")
                .data("{\"reason\":\"events lost\"}"),
        );
    }
    let replay: Vec<Event> = subscription.replay.iter().map(|e| to_sse(e)).collect();
    let skip_through = subscription.skip_through.unwrap_or(0);
    let live = BroadcastStream::new(subscription.live).filter_map(move |item| {
        futures::future::ready(match item {
            Ok(event) if event.id <= skip_through => None,
            Ok(event) => Some(to_sse(&event)),
            Err(BroadcastStreamRecvError::Lagged(missed)) => {
                Some(Event::default().event("reset").data(format!(
                    "{{\"reason\":\"client too slow\",\"missed\":{missed}}}"
                )))
            }
        })
    });
    let shutdown = state.shutdown.clone();
    let events = stream::iter(preface)
        .chain(stream::iter(replay))
        .chain(live)
        .take_until(async move { shutdown.cancelled().await })
        .map(Ok);
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
