//! What the hub broadcasts to live streams: the events of one surfacing, joined into one piece
//! of SSE text. With thousands of streams, each broadcast message costs every stream a wake-up,
//! a receive and a socket write; one message per surfacing instead of one per event makes that
//! cost follow the fan-out rate (at most ~20 a second with many streams, see
//! [`fan_out_linger`](super::fan_out_linger)) rather than the event rate.

use std::sync::Arc;

use axum::body::Bytes;

use super::Event;

/// The most SSE text one fan-out joins; an event larger than this goes alone. With
/// [`FANOUT_RING`], it bounds what the broadcast channel holds (it keeps its last messages
/// until they are overwritten, whether or not anyone still reads them).
pub const FANOUT_BYTES: usize = 64 << 10;
/// Fan-outs the broadcast channel holds for streams that are behind; a stream further behind
/// gets `event: reset` and reloads its state.
pub const FANOUT_RING: usize = 256;

/// Events surfaced together, in id order, as one piece of SSE text.
#[derive(Debug)]
pub struct Fanout {
    /// Each event's id and where its text starts in `wire`.
    starts: Vec<(u64, usize)>,
    wire: Bytes,
}

impl Fanout {
    /// The text of the events after `skip_through` (all of them for 0): a slice of the joined
    /// text, since ids increase along it. `None` when every event is at or before it.
    pub fn wire_after(&self, skip_through: u64) -> Option<Bytes> {
        let first = self.starts.partition_point(|&(id, _)| id <= skip_through);
        let &(_, start) = self.starts.get(first)?;
        Some(self.wire.slice(start..))
    }

    /// The ids of the events, oldest first.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.starts.iter().map(|&(id, _)| id)
    }

    /// What the fan-out takes in memory.
    #[cfg(test)]
    pub fn footprint(&self) -> usize {
        self.wire.len() + self.starts.len() * std::mem::size_of::<(u64, usize)>()
    }
}

/// Gathers surfaced events into fan-outs of at most [`FANOUT_BYTES`] (or one larger event).
#[derive(Default)]
pub struct FanoutBuilder {
    starts: Vec<(u64, usize)>,
    wire: Vec<u8>,
}

impl FanoutBuilder {
    /// Adds `event`; returns the fan-out it completes, if adding it would make the current one
    /// too large (the event then starts the next one).
    pub fn push(&mut self, event: &Arc<Event>) -> Option<Fanout> {
        let text = event.wire();
        let full = !self.starts.is_empty() && self.wire.len() + text.len() > FANOUT_BYTES;
        let done = if full { self.finish() } else { None };
        self.starts.push((event.id, self.wire.len()));
        self.wire.extend_from_slice(&text);
        done
    }

    /// The fan-out of the events pushed since the last one, if any.
    pub fn finish(&mut self) -> Option<Fanout> {
        if self.starts.is_empty() {
            return None;
        }
        Some(Fanout {
            starts: std::mem::take(&mut self.starts),
            wire: Bytes::from(std::mem::take(&mut self.wire)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoredEvent;

    fn event(id: i64, data_len: usize) -> Arc<Event> {
        Arc::new(Event::from(StoredEvent {
            id,
            kind: "reading".into(),
            data: serde_json::Value::String("x".repeat(data_len)),
        }))
    }

    fn text(events: &[Arc<Event>]) -> Vec<u8> {
        events.iter().flat_map(|e| e.wire().to_vec()).collect()
    }

    #[test]
    fn a_fanout_is_the_events_text_joined_and_skips_what_a_stream_has_seen() {
        let events: Vec<_> = (1..=4).map(|id| event(id, 10)).collect();
        let mut builder = FanoutBuilder::default();
        for e in &events {
            assert!(builder.push(e).is_none());
        }
        let fanout = builder.finish().expect("four events pushed");
        assert!(builder.finish().is_none(), "finish takes the events");
        assert_eq!(fanout.ids().collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(fanout.wire_after(0).unwrap(), text(&events));
        assert_eq!(fanout.wire_after(2).unwrap(), text(&events[2..]));
        assert_eq!(fanout.wire_after(3).unwrap(), text(&events[3..]));
        assert!(fanout.wire_after(4).is_none());
        assert!(fanout.wire_after(9).is_none());
    }

    #[test]
    fn fanouts_stay_within_their_byte_bound_and_a_larger_event_goes_alone() {
        let small = FANOUT_BYTES / 4;
        let mut events: Vec<_> = (1..=9).map(|id| event(id, small)).collect();
        events.insert(4, event(100, FANOUT_BYTES * 2));
        let mut builder = FanoutBuilder::default();
        let mut fanouts: Vec<Fanout> = events.iter().filter_map(|e| builder.push(e)).collect();
        fanouts.extend(builder.finish());
        let ids: Vec<u64> = fanouts.iter().flat_map(|f| f.ids()).collect();
        assert_eq!(
            ids,
            events.iter().map(|e| e.id).collect::<Vec<_>>(),
            "all, in order"
        );
        for fanout in &fanouts {
            let single = fanout.ids().count() == 1;
            assert!(single || fanout.wire_after(0).unwrap().len() <= FANOUT_BYTES);
        }
        let alone = fanouts
            .iter()
            .find(|f| f.ids().any(|id| id == 100))
            .unwrap();
        assert_eq!(alone.ids().count(), 1);
        assert!(fanouts.iter().all(|f| f.footprint() < FANOUT_BYTES * 3));
    }
}
