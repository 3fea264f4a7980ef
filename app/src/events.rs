//! Live events for `GET /api/stream`, backed by the database's event log so that every instance
//! sharing the database streams the same events under the same ids.
//!
//! Producers call [`EventHub::publish`], which only queues the event. The [`run_log`] task
//! appends queued events to the log (the store's `events` table), tails the log — its own
//! appends at once, other instances' within [`TAIL_INTERVAL`] — and surfaces what it read into
//! an in-memory buffer plus a broadcast channel. A client that reconnects with
//! `Last-Event-ID`, to this instance or another one (blue and green during a deploy), gets
//! exactly the events after that id: from the buffer, or from the log when the buffer no longer
//! (or not yet) holds them.

mod fanout;
mod live;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{broadcast, mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::locks::MutexExt;
use crate::store::{NewEvent, Store, StoreError, StoredEvent};

use fanout::FanoutBuilder;
pub use fanout::{Fanout, FANOUT_BYTES, FANOUT_RING};
pub use live::{
    AlertChanged, LiveEvent, LiveReading, NotificationChanged, NotificationState, ReadingsStored,
};

/// How often the log is read for other instances' events.
pub const TAIL_INTERVAL: Duration = Duration::from_millis(200);
/// Events older than this leave the log: long enough to resume across a reconnect or a deploy.
pub const LOG_RETENTION: Duration = Duration::from_secs(15 * 60);
/// Most events replayed to one reconnecting client (`Last-Event-ID`), from the log and the
/// buffer together; a client further behind gets `reset` and reloads its state instead (a replay
/// is read, held and written per connection: without a cap, reconnecting clients could make
/// every instance read and hold tens of thousands of events each).
pub const MAX_REPLAY: u64 = 5_000;
/// Most events read from the log for one replay (what [`MAX_REPLAY`] allows).
pub const MAX_LOG_REPLAY: u32 = MAX_REPLAY as u32;
/// Replays read and sent at once, across all connections; more wait for a turn.
pub const MAX_CONCURRENT_REPLAYS: usize = 32;
/// The longest a reconnecting client waits for a replay turn before it gets `reset` instead.
pub const REPLAY_WAIT: Duration = Duration::from_secs(2);
/// Most bytes of events the buffer holds (besides its count): devices choose how large a
/// reading event is (up to a payload's worth of metrics), so a count alone would let one device
/// make the buffer hold gigabytes. Replays the buffer no longer holds are read from the log.
pub const MAX_BUFFER_BYTES: usize = 4 << 20;
/// Events leave the buffer this long after they surfaced, whatever the bounds above: memory
/// follows the event rate, not the time since start-up, and a quiet instance gives back what a
/// busy hour filled. A resume from further back reads the log (kept [`LOG_RETENTION`]).
pub const MAX_BUFFER_AGE: Duration = Duration::from_secs(60);
/// Queued events waiting for the log; beyond this, new events are dropped (and counted).
const OUTBOX_CAPACITY: usize = 65_536;
/// Reading where the log ends, at start: retried until the store answers.
const LOG_READ_RETRY: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
/// Appending a batch of events: a few quick retries (seconds), then the batch is dropped from
/// the log (it went live on this instance already).
const LOG_APPEND_RETRY: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
/// Events appended in one transaction.
const APPEND_BATCH: usize = 1_000;
/// Events read from the log per query.
const TAIL_BATCH: u32 = 1_000;
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// The longest [`fan_out_linger`].
pub const MAX_FAN_OUT_LINGER: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Reading,
    DeviceStatus,
    Alert,
    Notification,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Reading => "reading",
            EventKind::DeviceStatus => "device_status",
            EventKind::Alert => "alert",
            EventKind::Notification => "notification",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: u64,
    /// The SSE event type (`reading`, `device_status`, …), as stored in the log.
    pub kind: String,
    /// The event as SSE text, made once when it is read from the log: with thousands of
    /// streams, serialising it per client would cost more than sending it. Only the text is
    /// kept — a parsed JSON value takes several times its text in memory, and the buffer holds
    /// thousands of events.
    wire: axum::body::Bytes,
    /// When this instance read it from the log ([`MAX_BUFFER_AGE`]).
    surfaced: Instant,
}

impl Event {
    /// `id:`, `event:` and `data:` lines and the blank line that ends an SSE event.
    pub fn wire(&self) -> axum::body::Bytes {
        self.wire.clone()
    }

    /// What the event takes in memory, as the buffer's byte bound counts it.
    fn footprint(&self) -> usize {
        std::mem::size_of::<Self>() + self.kind.len() + self.wire.len()
    }
}

impl From<StoredEvent> for Event {
    fn from(stored: StoredEvent) -> Self {
        let id = stored.id.max(0) as u64;
        // serde_json writes no raw newline (they are escaped inside strings), so the data is
        // one SSE `data:` line.
        let wire = format!(
            "id: {id}\nevent: {}\ndata: {}\n\n",
            stored.kind, stored.data
        );
        Event {
            id,
            kind: stored.kind,
            wire: axum::body::Bytes::from(wire),
            surfaced: Instant::now(),
        }
    }
}

struct Inner {
    buffer: VecDeque<Arc<Event>>,
    /// The footprint of the buffered events (bounded by [`MAX_BUFFER_BYTES`]).
    buffer_bytes: usize,
    /// The newest id surfaced; `None` until the log has been read once.
    position: Option<u64>,
}

#[derive(Clone)]
pub struct EventHub {
    inner: Arc<Mutex<Inner>>,
    sender: broadcast::Sender<Arc<Fanout>>,
    capacity: usize,
    max_age: Duration,
    outbox: mpsc::Sender<NewEvent>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
    replays: Arc<Semaphore>,
}

/// The receiving end of the hub's queue, handed to [`run_log`].
pub struct Outbox(mpsc::Receiver<NewEvent>);

/// What a (re)connecting subscriber gets: the events after its last id, then a live receiver
/// that continues exactly where the replay ends.
pub struct Subscription {
    pub replay: Vec<Arc<Event>>,
    pub live: broadcast::Receiver<Arc<Fanout>>,
    /// Live events up to this id were already replayed or seen elsewhere: skip them.
    pub skip_through: Option<u64>,
    /// Some events the client asked for are gone (pruned, or the id is unknown), or more than
    /// [`MAX_REPLAY`]: it should reload its state.
    pub gap: bool,
    /// Held until the replay is written ([`MAX_CONCURRENT_REPLAYS`]).
    pub replay_turn: Option<OwnedSemaphorePermit>,
}

/// A subscription before the log part of its replay was read.
struct Pending {
    last: Option<u64>,
    buffered: Vec<Arc<Event>>,
    live: broadcast::Receiver<Arc<Fanout>>,
    /// Read (after, upto] from the log before the buffered events.
    from_log: Option<(u64, u64)>,
    position: Option<u64>,
    /// More than [`MAX_REPLAY`] events after `last`: none are replayed.
    too_far: bool,
}

impl EventHub {
    pub fn new(capacity: usize) -> (Self, Outbox) {
        let (sender, _) = broadcast::channel(FANOUT_RING);
        let (outbox, receiver) = mpsc::channel(OUTBOX_CAPACITY);
        let hub = EventHub {
            inner: Arc::new(Mutex::new(Inner {
                buffer: VecDeque::with_capacity(capacity),
                buffer_bytes: 0,
                position: None,
            })),
            sender,
            capacity: capacity.max(1),
            max_age: MAX_BUFFER_AGE,
            outbox,
            dropped: Arc::default(),
            replays: Arc::new(Semaphore::new(MAX_CONCURRENT_REPLAYS)),
        };
        (hub, Outbox(receiver))
    }

    /// Queues an event for the log; it reaches subscribers once the log has it.
    pub fn publish(&self, event: LiveEvent) {
        let data = match event.data() {
            Ok(data) => data,
            Err(e) => {
                tracing::error!(error = %e, kind = event.kind().as_str(), "cannot serialise a live event; dropped");
                return;
            }
        };
        let event = NewEvent {
            kind: event.kind().as_str().to_string(),
            data,
        };
        if self.outbox.try_send(event).is_err() {
            let dropped = self
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if dropped.is_multiple_of(10_000) {
                tracing::warn!(
                    events.dropped = dropped + 1,
                    "event log queue full or closed; live events dropped"
                );
            }
        }
    }

    /// Events published but dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Hands events read from the log (in id order) to the buffer and the live subscribers.
    pub fn surface(&self, events: Vec<StoredEvent>) {
        let mut inner = self.inner.lock_unpoisoned();
        let mut fanout = FanoutBuilder::default();
        for stored in events {
            let event = Arc::new(Event::from(stored));
            if inner.position.is_some_and(|p| event.id <= p) {
                continue;
            }
            inner.position = Some(event.id);
            inner.buffer_bytes += event.footprint();
            inner.buffer.push_back(event.clone());
            while inner.buffer.len() > self.capacity
                || (inner.buffer_bytes > MAX_BUFFER_BYTES && inner.buffer.len() > 1)
            {
                let Some(oldest) = inner.buffer.pop_front() else {
                    break;
                };
                inner.buffer_bytes -= oldest.footprint();
            }
            if let Some(full) = fanout.push(&event) {
                let _ = self.sender.send(Arc::new(full));
            }
        }
        // Sent under the lock so that replay + live never miss or repeat an event.
        if let Some(rest) = fanout.finish() {
            let _ = self.sender.send(Arc::new(rest));
        }
        Self::drop_aged(&mut inner, self.max_age);
    }

    /// Lets go of the buffered events older than [`MAX_BUFFER_AGE`] (also when no new events
    /// come to push them out).
    pub fn expire(&self) {
        let mut inner = self.inner.lock_unpoisoned();
        Self::drop_aged(&mut inner, self.max_age);
    }

    fn drop_aged(inner: &mut Inner, max_age: Duration) {
        while let Some(oldest) = inner.buffer.front() {
            if oldest.surfaced.elapsed() < max_age {
                break;
            }
            inner.buffer_bytes -= oldest.footprint();
            inner.buffer.pop_front();
        }
    }

    /// Marks the log as read up to `id` (at start-up: where live events begin).
    pub fn start_at(&self, id: u64) {
        let mut inner = self.inner.lock_unpoisoned();
        if inner.position.is_none_or(|p| p < id) {
            inner.position = Some(id);
        }
    }

    /// The footprint of the buffered events (at most [`MAX_BUFFER_BYTES`], or one event).
    pub fn buffered_bytes(&self) -> usize {
        self.inner.lock_unpoisoned().buffer_bytes
    }

    pub fn position(&self) -> Option<u64> {
        self.inner.lock_unpoisoned().position
    }

    pub fn subscriber_count(&self) -> usize {
        self.sender.receiver_count()
    }

    fn begin(&self, last: Option<u64>) -> Pending {
        let inner = self.inner.lock_unpoisoned();
        let live = self.sender.subscribe();
        let mut pending = Pending {
            last,
            buffered: Vec::new(),
            live,
            from_log: None,
            position: inner.position,
            too_far: false,
        };
        let (Some(last), Some(position)) = (last, inner.position) else {
            return pending;
        };
        if last >= position {
            return pending;
        }
        // Ids increase by one per event (gaps only where a transaction rolled back).
        if position - last > MAX_REPLAY {
            pending.too_far = true;
            return pending;
        }
        let oldest = inner.buffer.front().map(|e| e.id);
        match oldest {
            Some(oldest) if last + 1 >= oldest => {}
            // The buffer starts later (or is empty): the log holds (last, oldest - 1].
            Some(oldest) => pending.from_log = Some((last, oldest - 1)),
            None => pending.from_log = Some((last, position)),
        }
        pending.buffered = inner
            .buffer
            .iter()
            .filter(|e| e.id > last)
            .cloned()
            .collect();
        pending
    }

    /// Subscribes from `last` (the client's `Last-Event-ID`), reading the log for what the
    /// buffer does not hold.
    pub async fn subscribe(&self, store: &dyn Store, last: Option<u64>) -> Subscription {
        let pending = self.begin(last);
        let Some(last) = pending.last else {
            return Subscription {
                replay: Vec::new(),
                live: pending.live,
                skip_through: None,
                gap: false,
                replay_turn: None,
            };
        };
        let mut gap = pending.too_far;
        let replay_turn = if pending.from_log.is_some() || !pending.buffered.is_empty() {
            match self.replay_turn().await {
                Some(turn) => Some(turn),
                None => {
                    tracing::warn!(
                        limit = MAX_CONCURRENT_REPLAYS,
                        "too many live streams resuming at once; this one gets a reset"
                    );
                    return Subscription {
                        replay: Vec::new(),
                        live: pending.live,
                        skip_through: None,
                        gap: true,
                        replay_turn: None,
                    };
                }
            }
        } else {
            None
        };
        let mut replay = Vec::new();
        let mut skip_through = None;
        match pending.position {
            // Not read the log yet (start-up, database down): nothing to compare with.
            None => gap = true,
            Some(position) if last > position => {
                // Another instance may be slightly ahead of this one; an id beyond the whole
                // log, though, is not ours (another database, an older id scheme).
                match store.event_bounds().await {
                    Ok(Some((_, newest))) if last <= newest.max(0) as u64 => {
                        skip_through = Some(last);
                    }
                    _ => gap = true,
                }
            }
            Some(_) => {}
        }
        if let Some((after, upto)) = pending.from_log {
            match read_log(store, after, upto).await {
                Ok((events, complete)) => {
                    gap |= !complete;
                    replay.extend(events.into_iter().map(Arc::new));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the event log to resume a stream");
                    gap = true;
                }
            }
        }
        replay.extend(pending.buffered);
        Subscription {
            replay,
            live: pending.live,
            skip_through,
            gap,
            replay_turn,
        }
    }

    /// A turn to replay, waiting at most [`REPLAY_WAIT`] for one.
    async fn replay_turn(&self) -> Option<OwnedSemaphorePermit> {
        tokio::time::timeout(REPLAY_WAIT, self.replays.clone().acquire_owned())
            .await
            .ok()?
            .ok()
    }
}

/// Events (after, upto] from the log; `complete` is false when some are gone (pruned) or too
/// many to replay.
async fn read_log(
    store: &dyn Store,
    after: u64,
    upto: u64,
) -> Result<(Vec<Event>, bool), StoreError> {
    let oldest = store.event_bounds().await?.map(|(oldest, _)| oldest);
    let pruned = oldest.is_none_or(|oldest| after + 1 < oldest.max(0) as u64);
    let events = store
        .events_after(after as i64, Some(upto as i64), MAX_LOG_REPLAY)
        .await?;
    let truncated = events.len() as u32 == MAX_LOG_REPLAY
        && events.last().is_some_and(|e| (e.id as u64) < upto);
    Ok((
        events.into_iter().map(Event::from).collect(),
        !pruned && !truncated,
    ))
}

/// How long the log task gathers events before the next fan-out: nothing with few streams,
/// growing to [`MAX_FAN_OUT_LINGER`] at 5,000 — so each stream gets at most ~20 writes a second
/// however busy the devices are, and the added lag stays well below what a person notices.
pub fn fan_out_linger(subscribers: usize) -> Duration {
    const PER_SUBSCRIBER: Duration = Duration::from_micros(10);
    if subscribers < 100 {
        return Duration::ZERO;
    }
    PER_SUBSCRIBER
        .saturating_mul(subscribers.min(u32::MAX as usize) as u32)
        .min(MAX_FAN_OUT_LINGER)
}

/// Appends published events to the log and surfaces the log's new events (this instance's and
/// others'), until `stop`; then appends what is still queued.
pub async fn run_log(
    hub: EventHub,
    Outbox(mut outbox): Outbox,
    store: Arc<dyn Store>,
    stop: CancellationToken,
) {
    let mut retries = LOG_READ_RETRY.retries();
    // Where live events start: the log's newest id (history is served on request, by resume).
    while hub.position().is_none() {
        match store.event_bounds().await {
            Ok(bounds) => hub.start_at(bounds.map_or(0, |(_, newest)| newest.max(0) as u64)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the event log; live events wait");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(retries.next_delay()) => {}
                }
            }
        }
    }
    let mut tail = tokio::time::interval(TAIL_INTERVAL);
    tail.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prune = tokio::time::interval(PRUNE_INTERVAL);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(APPEND_BATCH);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            received = outbox.recv_many(&mut batch, APPEND_BATCH) => {
                if received == 0 {
                    break;
                }
                append(store.as_ref(), &mut batch, &stop).await;
                // Our own events go live at once, not at the next tail tick.
                read_new(&hub, store.as_ref()).await;
                // Every fan-out costs one socket write per subscriber. With thousands of
                // streams, the next events gather for a moment and go out in one write each.
                let linger = fan_out_linger(hub.subscriber_count());
                if !linger.is_zero() {
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = tokio::time::sleep(linger) => {}
                    }
                }
            }
            _ = tail.tick() => {
                read_new(&hub, store.as_ref()).await;
                hub.expire();
            }
            _ = prune.tick() => {
                let before = chrono::Utc::now() - LOG_RETENTION;
                match store.prune_events(before).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(events.pruned = n, "event log pruned"),
                    Err(e) => tracing::warn!(error = %e, "cannot prune the event log"),
                }
            }
        }
    }
    // Shutdown: what producers published while stopping still goes to the log, so that
    // clients resuming on another instance see it.
    outbox.close();
    while outbox.recv_many(&mut batch, APPEND_BATCH).await > 0 {
        append(store.as_ref(), &mut batch, &CancellationToken::new()).await;
    }
    read_new(&hub, store.as_ref()).await;
}

async fn append(store: &dyn Store, batch: &mut Vec<NewEvent>, stop: &CancellationToken) {
    let mut retries = LOG_APPEND_RETRY.retries();
    for attempt in 1.. {
        match store.append_events(batch).await {
            Ok(()) => break,
            // Unreachable, busy (SQLite's lock held past the busy timeout), a failover: the
            // same append succeeds later.
            Err(e) if e.is_transient() && attempt < 8 => {
                tracing::warn!(error = %e, "event log unavailable; retrying");
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(retries.next_delay()) => {}
                }
            }
            Err(e) => {
                tracing::error!(error = %e, events = batch.len(), "cannot append to the event log; live events dropped");
                break;
            }
        }
    }
    batch.clear();
}

async fn read_new(hub: &EventHub, store: &dyn Store) {
    let Some(mut position) = hub.position() else {
        return;
    };
    loop {
        match store.events_after(position as i64, None, TAIL_BATCH).await {
            Ok(events) => {
                let full = events.len() as u32 == TAIL_BATCH;
                if let Some(last) = events.last() {
                    position = last.id.max(0) as u64;
                }
                hub.surface(events);
                if !full {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the event log");
                return;
            }
        }
    }
}

#[cfg(test)]
#[path = "events_tests.rs"]
mod tests;
