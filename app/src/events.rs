//! Live events for `GET /api/stream`: a bounded in-memory buffer with increasing ids, so a client
//! that reconnects with `Last-Event-ID` gets what it missed (while it is still buffered), plus a
//! broadcast channel for everyone listening now.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::broadcast;

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

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub id: u64,
    pub kind: EventKind,
    pub data: serde_json::Value,
}

struct Inner {
    buffer: VecDeque<Arc<Event>>,
    next_id: u64,
}

#[derive(Clone)]
pub struct EventHub {
    inner: Arc<Mutex<Inner>>,
    sender: broadcast::Sender<Arc<Event>>,
    capacity: usize,
}

/// What a (re)connecting subscriber gets: the buffered events after its last id, then a live
/// receiver that starts exactly where the replay ends.
pub struct Subscription {
    pub replay: Vec<Arc<Event>>,
    pub live: broadcast::Receiver<Arc<Event>>,
    /// The client asked to resume from an id older than the buffer: some events are lost to it.
    pub gap: bool,
}

impl EventHub {
    pub fn new(capacity: usize) -> Self {
        // Ids start at the start time in microseconds, so they keep increasing across restarts
        // of an instance and a stale Last-Event-ID never replays newer events twice.
        let first_id = chrono::Utc::now().timestamp_micros().max(1) as u64;
        let (sender, _) = broadcast::channel(capacity.max(16));
        EventHub {
            inner: Arc::new(Mutex::new(Inner {
                buffer: VecDeque::with_capacity(capacity),
                next_id: first_id,
            })),
            sender,
            capacity: capacity.max(1),
        }
    }

    pub fn publish(&self, kind: EventKind, data: serde_json::Value) -> u64 {
        let mut inner = self.inner.lock().expect("event hub lock");
        let id = inner.next_id;
        inner.next_id += 1;
        let event = Arc::new(Event { id, kind, data });
        if inner.buffer.len() == self.capacity {
            inner.buffer.pop_front();
        }
        inner.buffer.push_back(event.clone());
        // Sent under the lock so replay + live never miss or repeat an event.
        let _ = self.sender.send(event);
        id
    }

    pub fn subscribe(&self, last_event_id: Option<u64>) -> Subscription {
        let inner = self.inner.lock().expect("event hub lock");
        let live = self.sender.subscribe();
        let Some(last) = last_event_id else {
            return Subscription {
                replay: Vec::new(),
                live,
                gap: false,
            };
        };
        let oldest = inner.buffer.front().map(|e| e.id).unwrap_or(inner.next_id);
        let replay = inner
            .buffer
            .iter()
            .filter(|e| e.id > last)
            .cloned()
            .collect();
        Subscription {
            replay,
            live,
            gap: last + 1 < oldest && last < inner.next_id,
        }
    }

    pub fn subscriber_count(&self) -> usize {
        self.sender.receiver_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resume_replays_only_events_after_the_last_id() {
        let hub = EventHub::new(10);
        let ids: Vec<u64> = (0..5)
            .map(|i| hub.publish(EventKind::Reading, json!({ "i": i })))
            .collect();
        assert!(ids.windows(2).all(|w| w[1] == w[0] + 1));
        let sub = hub.subscribe(Some(ids[2]));
        let replayed: Vec<u64> = sub.replay.iter().map(|e| e.id).collect();
        assert_eq!(replayed, &ids[3..]);
        assert!(!sub.gap);
    }

    #[test]
    fn live_events_follow_the_replay_without_gap_or_repeat() {
        let hub = EventHub::new(10);
        let first = hub.publish(EventKind::Reading, json!(1));
        let mut sub = hub.subscribe(Some(first - 1));
        let next = hub.publish(EventKind::DeviceStatus, json!(2));
        assert_eq!(sub.replay.len(), 1);
        assert_eq!(sub.live.try_recv().unwrap().id, next);
        assert!(sub.live.try_recv().is_err());
    }

    #[test]
    fn resuming_from_before_the_buffer_reports_a_gap() {
        let hub = EventHub::new(3);
        let first = hub.publish(EventKind::Reading, json!(0));
        for i in 1..10 {
            hub.publish(EventKind::Reading, json!(i));
        }
        let sub = hub.subscribe(Some(first));
        assert!(sub.gap);
        assert_eq!(sub.replay.len(), 3);
        let fresh = hub.subscribe(None);
        assert!(fresh.replay.is_empty() && !fresh.gap);
    }
}
