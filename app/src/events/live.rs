//! What the dashboard's live stream carries: one type per event, built where the event happens
//! and serialised here only, into the `data` of its row in the event log (and from there into
//! the SSE `data:` line). The shapes are the stream's contract (docs/operating.md, the dashboard
//! scripts): a field renamed here is a field the dashboard no longer finds.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::EventKind;
use crate::store::alerts::AlertState;
use crate::store::{DeviceStatus, Notification};

/// One event for the live stream. Serialised untagged: the variant is the event's
/// [`kind`](LiveEvent::kind), stored beside the `data`, which is the inner value alone.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum LiveEvent {
    /// Readings of one device that were just committed.
    Reading(ReadingsStored),
    /// A device's status changed.
    DeviceStatus(DeviceStatus),
    /// A notification opened, cleared or was acknowledged.
    Notification(NotificationChanged),
    /// An alert moved in its lifecycle.
    Alert(AlertChanged),
}

/// `reading`: readings of one device, committed together.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReadingsStored {
    pub device_id: Uuid,
    pub readings: Vec<LiveReading>,
    /// The device's oldest reading in the batch, for charts that only append.
    pub oldest_ts: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveReading {
    pub metric: String,
    pub ts: DateTime<Utc>,
    pub value: f64,
    pub unit: Option<String>,
}

/// `notification`: what happened to a notification. An opened or acknowledged one carries the
/// notification; a cleared one only its device.
#[derive(Debug, Clone, Serialize)]
pub struct NotificationChanged {
    pub kind: String,
    pub state: NotificationState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notification: Option<Notification>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationState {
    Open,
    Cleared,
    Acknowledged,
}

impl NotificationChanged {
    pub fn opened(notification: Notification) -> Self {
        Self {
            kind: notification.kind.clone(),
            state: NotificationState::Open,
            device_id: None,
            notification: Some(notification),
        }
    }

    pub fn cleared(kind: &str, device_id: Uuid) -> Self {
        Self {
            kind: kind.to_owned(),
            state: NotificationState::Cleared,
            device_id: Some(device_id),
            notification: None,
        }
    }

    pub fn acknowledged(notification: Notification) -> Self {
        Self {
            kind: notification.kind.clone(),
            state: NotificationState::Acknowledged,
            device_id: None,
            notification: Some(notification),
        }
    }
}

/// `alert`: one transition of an alert (`pending`, `firing`, `resolved`, `repeat`,
/// `acknowledged`), with what the dashboard shows of its rule and device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertChanged {
    pub alert_id: Uuid,
    pub rule_id: Uuid,
    pub rule_name: String,
    /// The rule's severity as the API names it (`critical`, `warning`, `info`).
    pub severity: String,
    pub event: String,
    pub state: AlertState,
    pub device_id: Option<Uuid>,
    pub device_name: Option<String>,
    pub metric: Option<String>,
    pub value: Option<f64>,
    pub at: DateTime<Utc>,
    pub muted: bool,
}

impl LiveEvent {
    pub fn kind(&self) -> EventKind {
        match self {
            LiveEvent::Reading(_) => EventKind::Reading,
            LiveEvent::DeviceStatus(_) => EventKind::DeviceStatus,
            LiveEvent::Notification(_) => EventKind::Notification,
            LiveEvent::Alert(_) => EventKind::Alert,
        }
    }

    /// The event's `data`, as stored in the log and sent to the streams.
    pub fn data(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::to_value(self)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::Status;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    /// The shapes the dashboard reads, field by field.
    #[test]
    fn each_event_keeps_the_shape_the_stream_promises() {
        let device = Uuid::from_u128(7);
        let reading = LiveEvent::Reading(ReadingsStored {
            device_id: device,
            readings: vec![LiveReading {
                metric: "temp".into(),
                ts: at("2026-12-06T10:00:00Z"),
                value: 21.5,
                unit: None,
            }],
            oldest_ts: Some(at("2026-12-06T09:59:59Z")),
        });
        assert_eq!(reading.kind().as_str(), "reading");
        assert_eq!(
            reading.data().unwrap(),
            json!({"device_id": device, "oldest_ts": "2026-12-06T09:59:59Z", "readings": [
                {"metric": "temp", "ts": "2026-12-06T10:00:00Z", "value": 21.5, "unit": null}]})
        );

        let cleared =
            LiveEvent::Notification(NotificationChanged::cleared("connection_failure", device));
        assert_eq!(cleared.kind().as_str(), "notification");
        assert_eq!(
            cleared.data().unwrap(),
            json!({"kind": "connection_failure", "device_id": device, "state": "cleared"})
        );
        let notification = Notification {
            id: Uuid::from_u128(1),
            kind: "connection_failure".into(),
            device_id: Some(device),
            message: "no answer".into(),
            created_at: at("2026-12-06T10:00:00Z"),
            cleared_at: None,
            acknowledged_at: None,
            acknowledged_by: None,
        };
        let opened = LiveEvent::Notification(NotificationChanged::opened(notification.clone()));
        assert_eq!(
            opened.data().unwrap(),
            json!({"kind": "connection_failure", "state": "open",
                   "notification": serde_json::to_value(&notification).unwrap()})
        );
        let acknowledged = NotificationChanged::acknowledged(notification);
        assert_eq!(
            serde_json::to_value(acknowledged).unwrap()["state"],
            "acknowledged"
        );

        let status = DeviceStatus {
            device_id: device,
            status: Status::Offline,
            last_error: Some("timeout".into()),
            last_seen_at: None,
            consecutive_failures: 3,
            changed_at: at("2026-12-06T10:00:00Z"),
        };
        let changed = LiveEvent::DeviceStatus(status.clone());
        assert_eq!(changed.kind().as_str(), "device_status");
        assert_eq!(
            changed.data().unwrap(),
            serde_json::to_value(status).unwrap()
        );

        let alert = LiveEvent::Alert(AlertChanged {
            alert_id: Uuid::from_u128(2),
            rule_id: Uuid::from_u128(3),
            rule_name: "hot".into(),
            severity: "critical".into(),
            event: "firing".into(),
            state: AlertState::Firing,
            device_id: Some(device),
            device_name: Some("boiler".into()),
            metric: Some("temp".into()),
            value: Some(99.0),
            at: at("2026-12-06T10:00:00Z"),
            muted: false,
        });
        assert_eq!(alert.kind().as_str(), "alert");
        assert_eq!(
            alert.data().unwrap(),
            json!({"alert_id": Uuid::from_u128(2), "rule_id": Uuid::from_u128(3),
                   "rule_name": "hot", "severity": "critical", "event": "firing",
                   "state": "firing", "device_id": device, "device_name": "boiler",
                   "metric": "temp", "value": 99.0, "at": "2026-12-06T10:00:00Z",
                   "muted": false})
        );
    }
}
