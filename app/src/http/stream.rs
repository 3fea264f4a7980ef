//! `GET /api/stream`: Server-Sent Events. One stream carries every device's events (browsers
//! allow ~6 connections per host). Ids come from the database's event log, so `Last-Event-ID`
//! resumes on any instance; streams end on shutdown with a `retry:` hint so clients reconnect —
//! to another instance during a deploy — and resume there without missing an event.
//!
//! At most `http.max_streams` streams are open at once (503 beyond), and a stream ends when
//! the token or session it was opened with ends (see `revocation.rs`).
//!
//! The body is written as SSE text directly: each event is rendered once ([`Event::wire`]),
//! the events surfaced together are joined once ([`Fanout`]), and the same bytes go to every
//! subscriber in one write.

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
use super::revocation;
use super::{ApiError, AppState};
#[cfg(doc)]
use crate::events::{Event, Fanout};

/// How long clients wait before reconnecting after the stream ends.
const RETRY: Duration = Duration::from_millis(1000);
/// A comment this often keeps proxies and NATs from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Seconds a client refused for lack of a stream slot is told to wait.
const BUSY_RETRY_AFTER_S: u64 = 5;

pub async fn stream(
    State(state): State<AppState>,
    auth: Authorized<ViewerRole>,
    headers: HeaderMap,
) -> Response {
    // Each stream holds a connection, a subscription and a re-check timer for hours: bounded.
    let Ok(slot) = state.security.streams.clone().try_acquire_owned() else {
        tracing::warn!(
            limit = state.config.http.max_streams,
            "live stream refused: http.max_streams reached"
        );
        return ApiError::Busy {
            reason: "too many live streams are open (http.max_streams)",
            retry_after_s: BUSY_RETRY_AFTER_S,
        }
        .into_response();
    };
    let open = state.metrics.stream_opened();
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
    // The replay turn goes when the replay has been written (the chain drops it then).
    let turn = subscription.replay_turn;
    let replay = stream::iter(replay).map(move |bytes| {
        let _turn = &turn;
        bytes
    });
    let skip_through = subscription.skip_through.unwrap_or(0);
    let live = BroadcastStream::new(subscription.live).filter_map(move |item| {
        futures::future::ready(match item {
            Ok(fanout) => fanout.wire_after(skip_through),
            // `missed` counts fan-outs (each holds the events surfaced together).
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
    let credential_ended = {
        let state = state.clone();
        let every = state.config.http.stream_recheck_interval;
        async move {
            match auth.principal.credential {
                Some(credential) => revocation::ended(state, credential, every).await,
                None => std::future::pending().await,
            }
        }
    };
    let end = async move {
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = credential_ended => {}
        }
    };
    let events = stream::iter(std::iter::once(Bytes::from(preface)))
        .chain(replay)
        .chain(stream::select(live, keep_alive))
        .take_until(end)
        .map(move |bytes| {
            // The slot and the gauge go when the body does.
            let _held = (&slot, &open);
            Ok::<_, Infallible>(bytes)
        });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(events),
    )
        .into_response()
}
