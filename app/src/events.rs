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

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{broadcast, mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::store::{NewEvent, Store, StoreError, StoredEvent};

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
    sender: broadcast::Sender<Arc<Event>>,
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
    pub live: broadcast::Receiver<Arc<Event>>,
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
    live: broadcast::Receiver<Arc<Event>>,
    /// Read (after, upto] from the log before the buffered events.
    from_log: Option<(u64, u64)>,
    position: Option<u64>,
    /// More than [`MAX_REPLAY`] events after `last`: none are replayed.
    too_far: bool,
}

impl EventHub {
    pub fn new(capacity: usize) -> (Self, Outbox) {
        let (sender, _) = broadcast::channel(capacity.max(16));
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
    pub fn publish(&self, kind: EventKind, data: serde_json::Value) {
        let event = NewEvent {
            kind: kind.as_str().to_string(),
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
        let mut inner = self.inner.lock().expect("event hub lock");
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
            // Sent under the lock so that replay + live never miss or repeat an event.
            let _ = self.sender.send(event);
        }
        Self::drop_aged(&mut inner, self.max_age);
    }

    /// Lets go of the buffered events older than [`MAX_BUFFER_AGE`] (also when no new events
    /// come to push them out).
    pub fn expire(&self) {
        let mut inner = self.inner.lock().expect("event hub lock");
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
        let mut inner = self.inner.lock().expect("event hub lock");
        if inner.position.is_none_or(|p| p < id) {
            inner.position = Some(id);
        }
    }

    /// The footprint of the buffered events (at most [`MAX_BUFFER_BYTES`], or one event).
    pub fn buffered_bytes(&self) -> usize {
        self.inner.lock().expect("event hub lock").buffer_bytes
    }

    pub fn position(&self) -> Option<u64> {
        self.inner.lock().expect("event hub lock").position
    }

    pub fn subscriber_count(&self) -> usize {
        self.sender.receiver_count()
    }

    fn begin(&self, last: Option<u64>) -> Pending {
        let inner = self.inner.lock().expect("event hub lock");
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
    let mut backoff = Duration::from_millis(100);
    // Where live events start: the log's newest id (history is served on request, by resume).
    while hub.position().is_none() {
        match store.event_bounds().await {
            Ok(bounds) => hub.start_at(bounds.map_or(0, |(_, newest)| newest.max(0) as u64)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the event log; live events wait");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
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
    let mut backoff = Duration::from_millis(50);
    for attempt in 1.. {
        match store.append_events(batch).await {
            Ok(()) => break,
            // Unreachable, busy (SQLite's lock held past the busy timeout), a failover: the
            // same append succeeds later.
            Err(e) if e.is_transient() && attempt < 8 => {
                tracing::warn!(error = %e, "event log unavailable; retrying");
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
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
mod tests {
    use super::*;
    use crate::store::EventLogStore;
    use serde_json::json;

    fn stored(id: i64) -> StoredEvent {
        StoredEvent {
            id,
            kind: "reading".into(),
            data: json!({ "i": id }),
        }
    }

    #[test]
    fn fan_out_waits_only_with_many_streams_and_never_long() {
        assert_eq!(fan_out_linger(0), Duration::ZERO);
        assert_eq!(fan_out_linger(99), Duration::ZERO);
        assert_eq!(fan_out_linger(1_000), Duration::from_millis(10));
        assert_eq!(fan_out_linger(5_000), MAX_FAN_OUT_LINGER);
        assert_eq!(fan_out_linger(usize::MAX), MAX_FAN_OUT_LINGER);
    }

    #[test]
    fn surfaced_events_reach_live_subscribers_once_and_in_order() {
        let (hub, _outbox) = EventHub::new(10);
        hub.start_at(0);
        let pending = hub.begin(None);
        let mut live = pending.live;
        hub.surface(vec![stored(1), stored(2)]);
        hub.surface(vec![stored(2), stored(3)]);
        let ids: Vec<u64> = std::iter::from_fn(|| live.try_recv().ok().map(|e| e.id)).collect();
        assert_eq!(ids, [1, 2, 3]);
    }

    #[test]
    fn resume_within_the_buffer_replays_only_later_events() {
        let (hub, _outbox) = EventHub::new(10);
        hub.start_at(0);
        hub.surface((1..=5).map(stored).collect());
        let pending = hub.begin(Some(3));
        let ids: Vec<u64> = pending.buffered.iter().map(|e| e.id).collect();
        assert_eq!(ids, [4, 5]);
        assert_eq!(pending.from_log, None);
    }

    #[test]
    fn resume_from_before_the_buffer_reads_the_gap_from_the_log() {
        let (hub, _outbox) = EventHub::new(3);
        hub.start_at(0);
        hub.surface((1..=10).map(stored).collect());
        let pending = hub.begin(Some(2));
        assert_eq!(pending.from_log, Some((2, 7)));
        let ids: Vec<u64> = pending.buffered.iter().map(|e| e.id).collect();
        assert_eq!(ids, [8, 9, 10]);
    }

    #[test]
    fn events_leave_the_buffer_with_age_and_resumes_before_them_read_the_log() {
        // Each assertion holds however slowly the test runs: "young" is an hour, "aged" is
        // checked only after sleeping past the age.
        let (mut young, _outbox) = EventHub::new(10_000);
        young.max_age = Duration::from_secs(3600);
        young.start_at(0);
        young.surface((1..=5).map(stored).collect());
        young.expire();
        assert_eq!(
            young.inner.lock().unwrap().buffer.len(),
            5,
            "young events stay"
        );

        let (mut hub, _outbox) = EventHub::new(10_000);
        hub.max_age = Duration::from_millis(50);
        hub.start_at(0);
        hub.surface((1..=5).map(stored).collect());
        std::thread::sleep(Duration::from_millis(100));
        hub.surface(vec![stored(6)]);
        let held: Vec<u64> = hub
            .inner
            .lock()
            .unwrap()
            .buffer
            .iter()
            .map(|e| e.id)
            .collect();
        assert!(
            held.iter().all(|&id| id == 6),
            "the aged events left as a new one came: {held:?}"
        );
        let from_log = hub.begin(Some(2)).from_log;
        assert!(
            matches!(from_log, Some((2, 5 | 6))),
            "a resume from before the buffer reads the log: {from_log:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
        hub.expire();
        assert_eq!(
            hub.buffered_bytes(),
            0,
            "with no new events, expire empties the buffer"
        );
        assert_eq!(hub.begin(Some(2)).from_log, Some((2, 6)));
        assert_eq!(
            hub.position(),
            Some(6),
            "the position stays where the log was read"
        );
    }

    #[test]
    fn large_events_are_bounded_by_bytes_and_resumes_before_them_read_the_log() {
        let (hub, _outbox) = EventHub::new(10_000);
        hub.start_at(0);
        // 100 readings of 100 KiB each (what one device can send): 10 MiB by count alone.
        let big = |id: i64| StoredEvent {
            id,
            kind: "reading".into(),
            data: json!({ "metrics": "x".repeat(100 << 10) }),
        };
        hub.surface((1..=100).map(big).collect());
        let held = hub.inner.lock().unwrap().buffer.len();
        assert!(
            hub.buffered_bytes() <= DOCUMENTED_MAX_BUFFER_BYTES,
            "{}",
            hub.buffered_bytes()
        );
        assert!((30..100).contains(&held), "{held} events held");
        let pending = hub.begin(Some(1));
        assert_eq!(pending.from_log, Some((1, 100 - held as u64)));
        // Small events after them push the large ones out: the bytes go back down.
        hub.surface((101..=10_100).map(stored).collect());
        assert!(hub.buffered_bytes() < 2 << 20, "{}", hub.buffered_bytes());
        // An event larger than the whole bound is still buffered (alone).
        hub.surface(vec![StoredEvent {
            id: 10_101,
            kind: "reading".into(),
            data: json!({ "metrics": "x".repeat(5 << 20) }),
        }]);
        let inner = hub.inner.lock().unwrap();
        assert_eq!(inner.buffer.len(), 1);
        assert_eq!(inner.buffer[0].id, 10_101);
    }

    /// A real (empty) store: the replays below come from the buffer, so it is never read.
    async fn store() -> (tempfile::TempDir, crate::store::SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let store =
            crate::store::SqliteStore::open(path.to_str().unwrap(), 2, Duration::from_secs(5))
                .await
                .unwrap();
        (dir, store)
    }

    /// SQLite answers "database is locked" when another connection holds the write lock past
    /// the busy timeout (5 s): a passing state, so the append is retried, not dropped.
    #[tokio::test]
    async fn an_append_waits_out_a_locked_database_instead_of_dropping_the_events() {
        use sqlx::Connection;
        let (dir, store) = store().await;
        store.migrate().await.unwrap();
        let store = std::sync::Arc::new(store);
        let url = format!("sqlite://{}", dir.path().join("events.db").display());
        let mut holder = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut holder)
            .await
            .unwrap();
        let appending = {
            let store = store.clone();
            tokio::spawn(async move {
                let mut batch = vec![NewEvent {
                    kind: "reading".into(),
                    data: json!({ "seq": 1 }),
                }];
                append(&*store, &mut batch, &CancellationToken::new()).await;
            })
        };
        // Held past the busy timeout, so the first attempt fails with SQLITE_BUSY.
        tokio::time::sleep(Duration::from_secs(7)).await;
        sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
        appending.await.unwrap();
        let stored = store.events_after(0, None, 10).await.unwrap();
        assert_eq!(stored.len(), 1, "the event was dropped");
    }

    /// The documented limit (docs/limits.md), spelled out so that the test holds the code to it.
    const DOCUMENTED_MAX_REPLAY: u64 = 5_000;
    const DOCUMENTED_MAX_BUFFER_BYTES: usize = 4 << 20;
    const DOCUMENTED_MAX_CONCURRENT_REPLAYS: usize = 32;

    #[tokio::test]
    async fn a_client_too_far_behind_gets_a_reset_instead_of_a_replay() {
        let (_dir, store) = store().await;
        // A buffer large enough to replay everything: only the cap may refuse.
        let (hub, _outbox) = EventHub::new(10_000);
        hub.start_at(0);
        hub.surface((1..=DOCUMENTED_MAX_REPLAY as i64 + 2).map(stored).collect());
        let behind = hub.subscribe(&store, Some(1)).await;
        assert!(behind.gap, "more than the cap behind: reset");
        assert!(
            behind.replay.is_empty(),
            "{} events replayed past the cap",
            behind.replay.len()
        );
        drop(behind);
        let within = hub.subscribe(&store, Some(2)).await;
        assert!(!within.gap);
        assert_eq!(within.replay.len() as u64, DOCUMENTED_MAX_REPLAY);
        assert_eq!(MAX_REPLAY, DOCUMENTED_MAX_REPLAY);
    }

    #[tokio::test]
    async fn replays_at_once_are_bounded_and_the_next_one_gets_a_reset() {
        let (_dir, store) = store().await;
        let (hub, _outbox) = EventHub::new(100);
        hub.start_at(0);
        hub.surface((1..=50).map(stored).collect());
        // Subscriptions whose replays are not written yet hold their turns.
        let mut replaying = Vec::new();
        for _ in 0..DOCUMENTED_MAX_CONCURRENT_REPLAYS {
            let subscription = hub.subscribe(&store, Some(10)).await;
            assert!(!subscription.gap);
            assert_eq!(subscription.replay.len(), 40);
            replaying.push(subscription);
        }
        let one_more = hub.subscribe(&store, Some(10)).await;
        assert!(one_more.gap, "no turn within the wait: reset");
        assert!(
            one_more.replay.is_empty(),
            "a replay beyond the concurrent limit: {} events",
            one_more.replay.len()
        );
        // A client that is up to date needs no turn.
        let current = hub.subscribe(&store, Some(50)).await;
        assert!(!current.gap);
        replaying.pop();
        let next = hub.subscribe(&store, Some(10)).await;
        assert!(!next.gap, "a finished replay frees its turn");
        assert_eq!(next.replay.len(), 40);
        assert_eq!(MAX_CONCURRENT_REPLAYS, DOCUMENTED_MAX_CONCURRENT_REPLAYS);
    }

    #[test]
    fn a_fresh_instance_reads_everything_before_its_start_from_the_log() {
        let (hub, _outbox) = EventHub::new(3);
        hub.start_at(40);
        let pending = hub.begin(Some(25));
        assert_eq!(pending.from_log, Some((25, 40)));
        assert!(pending.buffered.is_empty());
    }
}
