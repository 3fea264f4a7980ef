//! Tests of the event hub: the buffer's bounds (count, bytes, age), resumes from the buffer or the log, and the log task.

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
    let fanouts: Vec<_> = std::iter::from_fn(|| live.try_recv().ok()).collect();
    let ids: Vec<Vec<u64>> = fanouts.iter().map(|f| f.ids().collect()).collect();
    assert_eq!(ids, [vec![1, 2], vec![3]], "one message per surfacing");
}

/// What a stream resuming after event `after` is given by a hub that holds at most `capacity`
/// events and has surfaced events 1 to `newest`: the span to read from the log, and the ids
/// replayed from the buffer.
fn resume(capacity: usize, newest: i64, after: u64) -> (Option<(u64, u64)>, Vec<u64>) {
    let (hub, _outbox) = EventHub::new(capacity);
    hub.start_at(0);
    hub.surface((1..=newest).map(stored).collect());
    let pending = hub.begin(Some(after));
    let ids = pending.buffered.iter().map(|e| e.id).collect();
    (pending.from_log, ids)
}

#[test]
fn resume_within_the_buffer_replays_only_later_events() {
    assert_eq!(resume(10, 5, 3), (None, vec![4, 5]));
}

#[test]
fn resume_from_before_the_buffer_reads_the_gap_from_the_log() {
    assert_eq!(resume(3, 10, 2), (Some((2, 7)), vec![8, 9, 10]));
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
        young.inner.lock_unpoisoned().buffer.len(),
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
        .lock_unpoisoned()
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
    let held = hub.inner.lock_unpoisoned().buffer.len();
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
    let inner = hub.inner.lock_unpoisoned();
    assert_eq!(inner.buffer.len(), 1);
    assert_eq!(inner.buffer[0].id, 10_101);
}

/// A real (empty) store: the replays below come from the buffer, so it is never read.
async fn store() -> (tempfile::TempDir, crate::store::SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let store = crate::store::SqliteStore::open(path.to_str().unwrap(), 2, Duration::from_secs(5))
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

/// A subscription told to start over (a `reset` event) instead of given a replay.
fn assert_reset(subscription: &Subscription, why: &str) {
    assert!(subscription.gap, "{why}: no reset");
    assert!(
        subscription.replay.is_empty(),
        "{why}: {} events replayed",
        subscription.replay.len()
    );
}

#[tokio::test]
async fn a_client_too_far_behind_gets_a_reset_instead_of_a_replay() {
    let (_dir, store) = store().await;
    // A buffer large enough to replay everything: only the cap may refuse.
    let (hub, _outbox) = EventHub::new(10_000);
    hub.start_at(0);
    hub.surface((1..=DOCUMENTED_MAX_REPLAY as i64 + 2).map(stored).collect());
    let behind = hub.subscribe(&store, Some(1)).await;
    assert_reset(&behind, "more than the cap behind");
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
    assert_reset(&one_more, "no turn within the wait");
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
