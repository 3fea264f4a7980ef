//! One message from a device, start to end, whatever carried it: parse it, check the device,
//! submit its readings and wait for the commit, record that the device was seen. The caller
//! (the embedded broker's publish hook) turns the [`Outcome`] into an acknowledgement: only
//! [`Outcome::Stored`] may be acknowledged as stored, [`Outcome::Refused`] is acknowledged and
//! dropped (resending it would not help), [`Outcome::Retry`] must not be acknowledged at all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::directory::{DeviceDirectory, DeviceState};
use super::payload::{parse_message, Limits, Message};
use crate::ingest::{IngestError, IngestHandle, IngestMetrics, Sample};
use crate::locks::{MutexExt, RwLockExt};
use crate::status::StatusBoard;

/// The metrics' protocol label.
pub const PROTOCOL: &str = "mqtt";

/// What became of a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Telemetry committed to the database, or a heartbeat recorded.
    Stored,
    /// Refused for good: acknowledge and drop. Counted in `ddms_readings_rejected_total`.
    Refused(Refusal),
    /// Not stored this time (database failure, shutdown): do not acknowledge, so the device
    /// sends it again.
    Retry(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The metric's `reason` label.
    pub reason: &'static str,
    pub kind: RefusalKind,
    pub message: String,
    /// Already counted in `ddms_readings_rejected_total` (by the batch writer).
    pub counted: bool,
}

/// What was wrong, for the MQTT v5 reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// Not a topic ddms knows.
    Topic,
    /// The payload cannot be read.
    Payload,
    /// The device may not send (unknown, disabled, or not the topic's device).
    Device,
}

/// The producers' handle, shared by every connection and taken away at shutdown: messages
/// that arrive after that are not acknowledged (the device sends them again, to the next
/// instance), and the pipeline can finish once the submissions already made are committed.
#[derive(Default)]
pub struct IngestGate(RwLock<Option<IngestHandle>>);

impl IngestGate {
    pub fn new(handle: IngestHandle) -> Self {
        IngestGate(RwLock::new(Some(handle)))
    }

    fn handle(&self) -> Option<IngestHandle> {
        self.0.read_unpoisoned().clone()
    }

    pub fn close(&self) {
        self.0.write_unpoisoned().take();
    }
}

pub struct Inbound {
    pub directory: DeviceDirectory,
    pub gate: IngestGate,
    pub status: StatusBoard,
    pub metrics: IngestMetrics,
    pub limits: Limits,
    pub log: Arc<LogThrottle>,
}

impl Inbound {
    /// Handles one message that `device_id` (authenticated) published on `topic`.
    pub async fn handle(&self, device_id: Uuid, topic: &str, payload: &[u8]) -> Outcome {
        let outcome = self.process(device_id, topic, payload).await;
        match &outcome {
            Outcome::Stored => {}
            Outcome::Refused(refusal) => {
                if !refusal.counted {
                    self.metrics.reject(PROTOCOL, refusal.reason);
                }
                if self
                    .log
                    .first_in_a_while(&format!("{device_id}/{}", refusal.reason))
                {
                    tracing::info!(device.id = %device_id, mqtt.topic = %truncate(topic), reason = refusal.reason, error = %refusal.message, "MQTT message refused (more like it from this device are logged at debug for a minute)");
                } else {
                    tracing::debug!(device.id = %device_id, mqtt.topic = %truncate(topic), reason = refusal.reason, error = %refusal.message, "MQTT message refused");
                }
            }
            Outcome::Retry(error) => {
                if self.log.first_in_a_while("retry") {
                    tracing::warn!(device.id = %device_id, error = %error, "MQTT message not stored; not acknowledged, the device will send it again");
                } else {
                    tracing::debug!(device.id = %device_id, error = %error, "MQTT message not stored");
                }
            }
        }
        outcome
    }

    async fn process(&self, device_id: Uuid, topic: &str, payload: &[u8]) -> Outcome {
        let now = Utc::now();
        let message = match parse_message(topic, payload, now, &self.limits) {
            Ok(message) => message,
            Err(rejection) => {
                let kind = match rejection {
                    super::Rejection::UnknownTopic(_) => RefusalKind::Topic,
                    _ => RefusalKind::Payload,
                };
                return Outcome::Refused(Refusal {
                    reason: rejection.reason(),
                    kind,
                    message: rejection.to_string(),
                    counted: false,
                });
            }
        };
        let topic_device = match &message {
            Message::Telemetry { device_id, .. } | Message::Heartbeat { device_id, .. } => {
                device_id.as_str()
            }
        };
        // The broker lets a device publish only under its own id; checked again here so this
        // function is safe with any caller.
        if topic_device != device_id.to_string() {
            return refused(
                "topic_not_allowed",
                RefusalKind::Device,
                format!("device {device_id} may not publish for `{topic_device}`"),
            );
        }
        match self.directory.device(device_id).await {
            Ok(DeviceState::Active) => {}
            Ok(DeviceState::Disabled) => {
                return refused(
                    "device_disabled",
                    RefusalKind::Device,
                    "the device is disabled".into(),
                )
            }
            Ok(DeviceState::Unknown) => {
                return refused(
                    "unknown_device",
                    RefusalKind::Device,
                    "no such MQTT device (deleted?)".into(),
                )
            }
            Err(e) => return Outcome::Retry(format!("cannot look the device up: {e}")),
        }
        match message {
            Message::Heartbeat { .. } => {
                self.status.record_success(device_id, now).await;
                Outcome::Stored
            }
            Message::Telemetry { telemetry, .. } => {
                let samples = telemetry
                    .metrics
                    .into_iter()
                    .map(|(metric, value)| Sample {
                        device_id,
                        metric,
                        unit: None,
                        ts: telemetry.ts,
                        value,
                    })
                    .collect();
                let Some(ingest) = self.gate.handle() else {
                    return Outcome::Retry(IngestError::Closed.to_string());
                };
                let (tx, rx) = oneshot::channel();
                let queued = ingest
                    .submit_then(
                        PROTOCOL,
                        samples,
                        Box::new(move |result| {
                            let _ = tx.send(result);
                        }),
                    )
                    .await;
                // Not held while waiting: the pipeline ends once no producer holds a handle.
                drop(ingest);
                if let Err(e) = queued {
                    return Outcome::Retry(e.to_string());
                }
                let (committed, ()) = tokio::join!(rx, self.status.record_success(device_id, now));
                match committed {
                    Ok(Ok(())) => Outcome::Stored,
                    // Refused for good by the writer: acknowledge, sending it again would fail.
                    Ok(Err(IngestError::Refused { reason, message })) => {
                        Outcome::Refused(Refusal {
                            reason,
                            kind: RefusalKind::Payload,
                            message,
                            counted: true,
                        })
                    }
                    Ok(Err(e)) => Outcome::Retry(e.to_string()),
                    Err(_) => Outcome::Retry(IngestError::Closed.to_string()),
                }
            }
        }
    }
}

fn refused(reason: &'static str, kind: RefusalKind, message: String) -> Outcome {
    Outcome::Refused(Refusal {
        reason,
        kind,
        message,
        counted: false,
    })
}

fn truncate(topic: &str) -> String {
    topic.chars().take(200).collect()
}

/// Keys a [`LogThrottle`] remembers at most (plus one shared by the keys beyond).
const LOG_THROTTLE_KEYS: usize = 10_000;
const LOG_THROTTLE_OVERFLOW: &str = "\0overflow";

/// Lets one line per key through per interval, so a misbehaving device (or a flood of bad
/// logins) leaves one INFO line a minute instead of one per message.
pub struct LogThrottle {
    interval: Duration,
    last: Mutex<HashMap<String, Instant>>,
}

impl Default for LogThrottle {
    fn default() -> Self {
        LogThrottle::new(Duration::from_secs(60))
    }
}

impl LogThrottle {
    pub fn new(interval: Duration) -> Self {
        LogThrottle {
            interval,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// How often [`LogThrottle::prune`] should run: keys are of no use once their interval has
    /// passed.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Forgets the keys whose interval has passed and gives back the map's spare room, so the
    /// keys a flood left behind (up to [`LOG_THROTTLE_KEYS`]) do not stay for the life of the
    /// process once the flood is over.
    pub fn prune(&self) {
        let mut last = self.last.lock_unpoisoned();
        let now = Instant::now();
        let interval = self.interval;
        last.retain(|_, at| now.duration_since(*at) < interval);
        if last.capacity() > 4 * last.len().max(16) {
            last.shrink_to_fit();
        }
    }

    /// How many keys are remembered (for tests and the limits' documentation).
    pub fn len(&self) -> usize {
        self.last.lock_unpoisoned().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn first_in_a_while(&self, key: &str) -> bool {
        let mut last = self.last.lock_unpoisoned();
        let now = Instant::now();
        let mut key = key;
        if last.len() >= LOG_THROTTLE_KEYS && !last.contains_key(key) {
            let interval = self.interval;
            last.retain(|_, at| now.duration_since(*at) < interval);
            // Keys are outsiders' (usernames of failed logins): a flood of new ones inside one
            // interval shares one line instead of growing the map.
            if last.len() >= LOG_THROTTLE_KEYS {
                key = LOG_THROTTLE_OVERFLOW;
            }
        }
        match last.get(key) {
            Some(at) if now.duration_since(*at) < self.interval => false,
            _ => {
                last.insert(key.to_string(), now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_throttle_lets_one_line_per_key_through_per_interval() {
        let throttle = LogThrottle::new(Duration::from_secs(3600));
        assert!(throttle.first_in_a_while("a"));
        assert!(!throttle.first_in_a_while("a"));
        assert!(throttle.first_in_a_while("b"));
        let short = LogThrottle::new(Duration::from_millis(50));
        assert!(short.first_in_a_while("a"));
        std::thread::sleep(Duration::from_millis(100));
        assert!(short.first_in_a_while("a"));
    }

    #[test]
    fn pruning_forgets_the_keys_of_a_flood_once_their_interval_has_passed() {
        // "Inside the interval" is an hour, "past it" is checked only after sleeping past it,
        // so the test holds however slowly it runs.
        let kept = LogThrottle::new(Duration::from_secs(3600));
        for i in 0..100 {
            kept.first_in_a_while(&format!("user-{i}"));
        }
        kept.prune();
        assert_eq!(kept.len(), 100, "keys inside their interval are kept");

        let throttle = LogThrottle::new(Duration::from_millis(50));
        for i in 0..5_000 {
            throttle.first_in_a_while(&format!("user-{i}"));
        }
        std::thread::sleep(Duration::from_millis(100));
        throttle.prune();
        assert!(throttle.is_empty(), "{} keys left", throttle.len());
        let capacity = throttle.last.lock_unpoisoned().capacity();
        assert!(capacity < 1_000, "the map kept room for {capacity} keys");
    }

    #[test]
    fn log_throttle_memory_stays_bounded_under_a_flood_of_new_keys() {
        let throttle = LogThrottle::new(Duration::from_secs(3600));
        let mut let_through = 0;
        for i in 0..(LOG_THROTTLE_KEYS + 5_000) {
            if throttle.first_in_a_while(&format!("user-{i}")) {
                let_through += 1;
            }
        }
        let held = throttle.last.lock_unpoisoned().len();
        assert!(held <= LOG_THROTTLE_KEYS + 1, "{held} keys held");
        // Every key up to the cap got its line, then one line for all the rest.
        assert_eq!(let_through, LOG_THROTTLE_KEYS + 1);
    }
}
