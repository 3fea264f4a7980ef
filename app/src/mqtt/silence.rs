//! Silent devices on the embedded broker: an MQTT device that sent nothing for the
//! `offline_after` setting counts one connection failure per elapsed `offline_after`, so its
//! status turns `offline` and the status board opens a connection-failure notification after
//! `devices.failure_threshold` of them — as the external-broker ingester does for its devices.
//! Silence is judged from when this broker started: devices cannot have reached it before.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::settings::RuntimeSettings;
use crate::status::StatusBoard;
use crate::store::{Protocol, Status, Store};

/// The devices (and how long each was silent) that are due a failure at `now`.
pub fn due_silent(
    devices: &[Uuid],
    last_seen: &HashMap<Uuid, DateTime<Utc>>,
    last_failure: &HashMap<Uuid, DateTime<Utc>>,
    listening_since: DateTime<Utc>,
    offline_after: Duration,
    now: DateTime<Utc>,
) -> Vec<(Uuid, chrono::Duration)> {
    let limit = chrono::Duration::from_std(offline_after).unwrap_or(chrono::Duration::MAX);
    devices
        .iter()
        .filter_map(|id| {
            let heard = last_seen
                .get(id)
                .map_or(listening_since, |seen| (*seen).max(listening_since));
            let since = last_failure
                .get(id)
                .map_or(heard, |failure| (*failure).max(heard));
            (now - since >= limit).then(|| (*id, now - heard))
        })
        .collect()
}

/// Silence is checked four times per `offline_after`, within bounds (here and by the external
/// broker's ingester).
pub fn check_interval(offline_after: Duration) -> tokio::time::Interval {
    let every = (offline_after / 4).clamp(Duration::from_millis(250), Duration::from_secs(15));
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

/// Checks every [`check_interval`] until `cancel`.
pub async fn watch(
    store: Arc<dyn Store>,
    status: StatusBoard,
    mut runtime: watch::Receiver<RuntimeSettings>,
    cancel: CancellationToken,
) {
    let listening_since = Utc::now();
    let mut last_failure: HashMap<Uuid, DateTime<Utc>> = HashMap::new();
    let mut check = check_interval(runtime.borrow_and_update().offline_after);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = check.tick() => {}
            Ok(()) = runtime.changed() => {
                check = check_interval(runtime.borrow_and_update().offline_after);
                continue;
            }
        }
        let devices: Vec<Uuid> = match store.list_device_versions().await {
            Ok(devices) => devices
                .into_iter()
                .filter(|d| d.enabled && d.protocol == Protocol::Mqtt)
                .map(|d| d.id)
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list devices to check for silent ones");
                continue;
            }
        };
        last_failure.retain(|id, _| devices.contains(id));
        let last_seen: HashMap<Uuid, DateTime<Utc>> = status
            .all()
            .await
            .into_iter()
            .filter_map(|(id, s)| Some((id, s.last_seen_at?)))
            .collect();
        let offline_after = runtime.borrow().offline_after;
        let now = Utc::now();
        for (id, silent) in due_silent(
            &devices,
            &last_seen,
            &last_failure,
            listening_since,
            offline_after,
            now,
        ) {
            last_failure.insert(id, now);
            let error = format!("no message for {} s", silent.num_seconds());
            tracing::debug!(device.id = %id, %error, "MQTT device silent");
            status
                .record_failure(id, Status::Offline, &error, now)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_is_due_once_per_elapsed_offline_after() {
        let start = Utc::now();
        let (quiet, chatty, never) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let devices = [quiet, chatty, never];
        let minute = Duration::from_secs(60);
        let at = |s: i64| start + chrono::Duration::seconds(s);
        let mut seen = HashMap::from([(quiet, at(10)), (chatty, at(50))]);
        let mut failed = HashMap::new();
        // 70 s in: the quiet one was last heard at 10 s, the one never heard counts from start.
        let due = due_silent(&devices, &seen, &failed, start, minute, at(70));
        assert_eq!(
            due,
            vec![
                (quiet, chrono::Duration::seconds(60)),
                (never, chrono::Duration::seconds(70))
            ]
        );
        failed.insert(quiet, at(70));
        failed.insert(never, at(70));
        seen.insert(chatty, at(120));
        // Not again until another minute of silence has passed since the failure.
        assert!(due_silent(&devices, &seen, &failed, start, minute, at(129)).is_empty());
        let due = due_silent(&devices, &seen, &failed, start, minute, at(130));
        assert_eq!(
            due.iter().map(|d| d.0).collect::<Vec<_>>(),
            vec![quiet, never]
        );
    }

    #[test]
    fn silence_before_the_broker_listened_does_not_count() {
        let start = Utc::now();
        let device = Uuid::now_v7();
        let seen = HashMap::from([(device, start - chrono::Duration::hours(5))]);
        let minute = Duration::from_secs(60);
        let at = start + chrono::Duration::seconds(59);
        assert!(due_silent(&[device], &seen, &HashMap::new(), start, minute, at).is_empty());
    }
}
