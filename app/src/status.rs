//! Device status, one board for every protocol: pollers and the MQTT ingester report successes
//! and failures here; the board keeps the status in memory, writes changes to the store,
//! publishes `device_status` and `notification` events, and opens a connection-failure
//! notification after N consecutive failures — clearing it by itself on recovery.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::{IntGaugeVec, Opts, Registry};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::events::{EventHub, LiveEvent, NotificationChanged};
use crate::metrics::registered;
use crate::signals::{SignalSink, SystemCondition};
use crate::store::{DeviceStatus, NewNotification, Status, Store, StoreResult};

pub const CONNECTION_FAILURE: &str = "connection_failure";

/// Last-seen times are written to the store at most this often per device (status changes are
/// written at once): a device reporting every 100 ms must not cost a write each time.
const LAST_SEEN_WRITE_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct StatusBoard {
    inner: Arc<Mutex<HashMap<Uuid, DeviceStatus>>>,
    store: Arc<dyn Store>,
    hub: EventHub,
    devices_by_status: IntGaugeVec,
    failure_threshold: u32,
    /// Told when a connection-failure notification opens or clears (`system` alert rules).
    alerts: Arc<OnceLock<Arc<dyn SignalSink>>>,
}

impl StatusBoard {
    pub fn new(
        store: Arc<dyn Store>,
        hub: EventHub,
        registry: &Registry,
        failure_threshold: u32,
    ) -> Self {
        let devices_by_status = registered(
            registry,
            IntGaugeVec::new(
                Opts::new(
                    "ddms_devices",
                    "Devices by status, as seen by this instance",
                ),
                &["status"],
            ),
        );
        StatusBoard {
            inner: Arc::new(Mutex::new(HashMap::new())),
            store,
            hub,
            devices_by_status,
            failure_threshold: failure_threshold.max(1),
            alerts: Arc::new(OnceLock::new()),
        }
    }

    /// Reports connection failures to alerting from now on (alerting starts after the board).
    pub fn report_to(&self, alerts: Arc<dyn SignalSink>) {
        let _ = self.alerts.set(alerts);
    }

    async fn system_alert(&self, device_id: Uuid, active: bool) {
        let Some(alerts) = self.alerts.get() else {
            return;
        };
        if let Err(e) = alerts
            .system_condition(SystemCondition {
                check: crate::signals::CONNECTION_FAILURE,
                device_id: Some(device_id),
                active,
                detail: None,
            })
            .await
        {
            tracing::warn!(device.id = %device_id, error = %e, "cannot update the connection-failure system alert");
        }
    }

    /// Loads the statuses stored by earlier runs (or other instances).
    pub async fn load(&self) -> StoreResult<()> {
        let stored = self.store.list_device_status().await?;
        let mut inner = self.inner.lock().await;
        for status in stored {
            inner.insert(status.device_id, status);
        }
        self.recount(&inner);
        Ok(())
    }

    pub async fn get(&self, device_id: Uuid) -> Option<DeviceStatus> {
        self.inner.lock().await.get(&device_id).cloned()
    }

    pub async fn all(&self) -> HashMap<Uuid, DeviceStatus> {
        self.inner.lock().await.clone()
    }

    /// The device answered (a poll succeeded, a message arrived).
    pub async fn record_success(&self, device_id: Uuid, at: DateTime<Utc>) {
        self.record_answer(device_id, None, at).await;
    }

    /// The device answered, but refused part of what was asked (Modbus exceptions, values that
    /// cannot be decoded): `Error` with `problem` as the last error. Its connection works, so
    /// this resets the consecutive connection failures and clears an open connection-failure
    /// notification instead of counting toward one.
    pub async fn record_error(&self, device_id: Uuid, problem: &str, at: DateTime<Utc>) {
        self.record_answer(device_id, Some(problem), at).await;
    }

    async fn record_answer(&self, device_id: Uuid, problem: Option<&str>, at: DateTime<Utc>) {
        let new_status = if problem.is_some() {
            Status::Error
        } else {
            Status::Online
        };
        let mut inner = self.inner.lock().await;
        let previous = inner.get(&device_id).cloned();
        let (changed, changed_at) = transition(previous.as_ref(), new_status, at);
        let stale_seen = previous
            .as_ref()
            .and_then(|p| p.last_seen_at)
            .is_none_or(|seen| {
                at - seen
                    >= chrono::Duration::from_std(LAST_SEEN_WRITE_INTERVAL).unwrap_or_default()
            });
        let had_failures = previous
            .as_ref()
            .is_some_and(|p| p.consecutive_failures > 0);
        let last_error = match problem {
            Some(problem) => Some(problem.chars().take(500).collect()),
            None if changed => None,
            None => previous.as_ref().and_then(|p| p.last_error.clone()),
        };
        let new_problem = problem.is_some()
            && previous.as_ref().and_then(|p| p.last_error.as_ref()) != last_error.as_ref();
        let status = DeviceStatus {
            device_id,
            status: new_status,
            last_error,
            last_seen_at: Some(at),
            consecutive_failures: 0,
            changed_at,
        };
        let before = inner.insert(device_id, status.clone()).map(|s| s.status);
        self.count_change(before, Some(new_status));
        drop(inner);
        if changed || stale_seen || had_failures || new_problem {
            self.persist(&status, changed).await;
        }
        if changed || had_failures {
            match self
                .store
                .clear_notification(CONNECTION_FAILURE, device_id)
                .await
            {
                Ok(true) => {
                    tracing::info!(device.id = %device_id, "device recovered; connection-failure notification cleared");
                    self.hub
                        .publish(LiveEvent::Notification(NotificationChanged::cleared(
                            CONNECTION_FAILURE,
                            device_id,
                        )));
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(device.id = %device_id, error = %e, "cannot clear notification");
                }
            }
            self.system_alert(device_id, false).await;
        }
    }

    /// The device did not answer or answered with an error. `status` is `Offline` for
    /// connection failures and timeouts, `Error` for a device that answers wrongly.
    pub async fn record_failure(
        &self,
        device_id: Uuid,
        status: Status,
        error: &str,
        at: DateTime<Utc>,
    ) {
        let mut inner = self.inner.lock().await;
        let previous = inner.get(&device_id).cloned();
        let failures = previous.as_ref().map_or(0, |p| p.consecutive_failures) + 1;
        let (changed, changed_at) = transition(previous.as_ref(), status, at);
        let updated = DeviceStatus {
            device_id,
            status,
            last_error: Some(error.chars().take(500).collect()),
            last_seen_at: previous.as_ref().and_then(|p| p.last_seen_at),
            consecutive_failures: failures,
            changed_at,
        };
        let before = inner.insert(device_id, updated.clone()).map(|s| s.status);
        self.count_change(before, Some(status));
        drop(inner);
        // Repeated failures are only written when the status changes or the threshold is hit.
        if changed || failures == self.failure_threshold {
            self.persist(&updated, changed).await;
        }
        if failures == self.failure_threshold {
            let message = format!("{failures} consecutive failures; last error: {error}");
            match self
                .store
                .open_notification(&NewNotification {
                    kind: CONNECTION_FAILURE.into(),
                    device_id: Some(device_id),
                    message: message.clone(),
                })
                .await
            {
                Ok(notification) => {
                    tracing::warn!(device.id = %device_id, error = %error, "device connection failure");
                    self.hub
                        .publish(LiveEvent::Notification(NotificationChanged::opened(
                            notification,
                        )));
                    self.system_alert(device_id, true).await;
                }
                Err(e) => {
                    tracing::warn!(device.id = %device_id, error = %e, "cannot store notification");
                }
            }
        }
    }

    /// Forgets a deleted device.
    pub async fn remove(&self, device_id: Uuid) {
        let mut inner = self.inner.lock().await;
        let before = inner.remove(&device_id).map(|s| s.status);
        self.count_change(before, None);
    }

    async fn persist(&self, status: &DeviceStatus, changed: bool) {
        if let Err(e) = self.store.put_device_status(status).await {
            tracing::warn!(device.id = %status.device_id, error = %e, "cannot store device status");
        }
        if changed {
            self.hub.publish(LiveEvent::DeviceStatus(status.clone()));
        }
    }

    /// Moves one device between the `ddms_devices` gauges: constant time, since every poll and
    /// every MQTT message reports here (with 10,000 devices, counting them all on each report
    /// cost more than the polls).
    fn count_change(&self, before: Option<Status>, after: Option<Status>) {
        if before == after {
            return;
        }
        if let Some(before) = before {
            self.devices_by_status
                .with_label_values(&[before.as_str()])
                .dec();
        }
        if let Some(after) = after {
            self.devices_by_status
                .with_label_values(&[after.as_str()])
                .inc();
        }
    }

    /// Sets the `ddms_devices` gauges from every status held (after loading them).
    fn recount(&self, inner: &HashMap<Uuid, DeviceStatus>) {
        for status in [
            Status::Unknown,
            Status::Online,
            Status::Offline,
            Status::Error,
        ] {
            let count = inner.values().filter(|s| s.status == status).count();
            self.devices_by_status
                .with_label_values(&[status.as_str()])
                .set(count as i64);
        }
    }
}

/// Whether a device's new `status` differs from its previous one (a device not seen yet: it
/// does), and since when it has had that status.
fn transition(
    previous: Option<&DeviceStatus>,
    status: Status,
    at: DateTime<Utc>,
) -> (bool, DateTime<Utc>) {
    match previous {
        Some(p) if p.status == status => (false, p.changed_at),
        _ => (true, at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewDevice, Protocol, SqliteStore};

    #[tokio::test]
    async fn the_devices_gauges_follow_every_change_of_status_and_removal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.db");
        let store = SqliteStore::open(path.to_str().unwrap(), 2, Duration::from_secs(5))
            .await
            .unwrap();
        let store: Arc<dyn Store> = Arc::new(store);
        store.migrate().await.unwrap();
        let mut ids = Vec::new();
        for name in ["a", "b", "c"] {
            let device = store
                .create_device(&NewDevice {
                    name: name.into(),
                    protocol: Protocol::Mqtt,
                    group_id: None,
                    config: serde_json::json!({}),
                    enabled: true,
                })
                .await
                .unwrap();
            ids.push(device.id);
        }
        let (hub, _outbox) = EventHub::new(10);
        let board = StatusBoard::new(store.clone(), hub, &Registry::new(), 3);
        let counts = || {
            ["online", "offline", "error"]
                .map(|s| board.devices_by_status.with_label_values(&[s]).get())
        };
        let now = Utc::now();
        for id in &ids {
            board.record_success(*id, now).await;
            board.record_success(*id, now).await;
        }
        assert_eq!(counts(), [3, 0, 0]);
        board
            .record_failure(ids[0], Status::Offline, "refused", now)
            .await;
        board
            .record_failure(ids[0], Status::Offline, "refused", now)
            .await;
        board
            .record_error(ids[1], "register 3 unreadable", now)
            .await;
        assert_eq!(counts(), [1, 1, 1]);
        board.remove(ids[0]).await;
        board.remove(ids[0]).await;
        assert_eq!(counts(), [1, 0, 1]);

        // A board loading what another one stored counts the same.
        let (hub, _outbox) = EventHub::new(10);
        let loaded = StatusBoard::new(store, hub, &Registry::new(), 3);
        loaded.load().await.unwrap();
        let loaded_counts = ["online", "offline", "error"]
            .map(|s| loaded.devices_by_status.with_label_values(&[s]).get());
        assert_eq!(
            loaded_counts,
            [1, 1, 1],
            "the removed device's stored status is still there"
        );
    }
}
