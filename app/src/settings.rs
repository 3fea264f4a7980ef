//! Runtime settings: what owners change on the Settings page (`PUT /api/system/config`)
//! without a restart. They live in the database, shared by every instance; each instance keeps
//! its current copy in a watch channel that the jobs acting on them (the MQTT silence check,
//! retention) follow. The copy is refreshed at once when this instance writes a change and
//! every [`REFRESH_INTERVAL`] for changes another instance wrote.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::{Store, StoreResult};

pub const RETENTION_DAYS: &str = "retention_days";
pub const OFFLINE_AFTER_S: &str = "offline_after_s";
pub const BACKUP_SCHEDULE: &str = "backup_schedule";
/// A shortening of `retention_days` waiting to take effect (`retention::pending`).
pub const RETENTION_PENDING: &str = "retention_pending";

/// How soon a change written by another instance takes effect here.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// A shorter retention waiting to take effect (`retention::pending` decides and applies it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRetention {
    /// The retention asked for.
    pub retention_days: u32,
    /// The retention in effect when it was asked for (`None`: everything was kept).
    pub from_days: Option<u32>,
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    /// When it takes effect by itself.
    pub due_at: DateTime<Utc>,
    /// About how many readings were older than the new retention when it was asked for.
    pub readings: u64,
}

impl PendingRetention {
    pub fn is_due(&self, now: DateTime<Utc>) -> bool {
        now >= self.due_at
    }

    /// The alert's detail: what goes, and when.
    pub fn describe(&self) -> String {
        let from = self
            .from_days
            .map_or("keep everything".to_string(), |d| format!("{d} days"));
        format!(
            "retention_days {from} -> {} days asked by {}: about {} readings older than {} days will be deleted at {} (an owner can delete now)",
            self.retention_days,
            self.requested_by,
            self.readings,
            self.retention_days,
            self.due_at.format("%Y-%m-%dT%H:%M:%SZ"),
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeSettings {
    /// Days of readings (and their rollups) kept; `None` keeps everything.
    pub retention_days: Option<u32>,
    /// An MQTT device that sent nothing for this long counts as silent (offline).
    pub offline_after: Duration,
    /// `off`, `hourly`, `daily HH:MM` or `weekly <day> HH:MM` (UTC).
    pub backup_schedule: String,
    /// A shorter `retention_days` that takes effect at its `due_at` (or when an owner says so).
    pub retention_pending: Option<PendingRetention>,
}

impl RuntimeSettings {
    /// What applies before an owner changed anything: the configuration's values.
    pub fn defaults(config: &crate::config::Config) -> Self {
        RuntimeSettings {
            retention_days: None,
            offline_after: config.mqtt.offline_after,
            backup_schedule: "off".to_string(),
            retention_pending: None,
        }
    }

    /// Stored values over `defaults`; a stored value of the wrong shape is ignored (and logged)
    /// rather than stopping the jobs that read it.
    fn from_stored(defaults: &RuntimeSettings, stored: &[(&str, Option<Value>)]) -> Self {
        let mut settings = defaults.clone();
        for (key, value) in stored {
            let Some(value) = value else { continue };
            let understood = match *key {
                RETENTION_DAYS => match value {
                    Value::Null => {
                        settings.retention_days = None;
                        true
                    }
                    v => v
                        .as_u64()
                        .and_then(|d| u32::try_from(d).ok())
                        .filter(|d| *d > 0)
                        .map(|d| settings.retention_days = Some(d))
                        .is_some(),
                },
                OFFLINE_AFTER_S => value
                    .as_u64()
                    .filter(|s| *s > 0)
                    .map(|s| settings.offline_after = Duration::from_secs(s))
                    .is_some(),
                BACKUP_SCHEDULE => value
                    .as_str()
                    .map(|s| settings.backup_schedule = s.to_string())
                    .is_some(),
                RETENTION_PENDING if value.is_null() => {
                    settings.retention_pending = None;
                    true
                }
                RETENTION_PENDING => serde_json::from_value::<PendingRetention>(value.clone())
                    .map(|p| settings.retention_pending = Some(p))
                    .is_ok(),
                _ => true,
            };
            if !understood {
                tracing::warn!(setting = key, value = %value, "stored setting not understood; using the default");
            }
        }
        settings
    }

    /// The settings as `GET /api/system/config` shows them.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            RETENTION_DAYS: self.retention_days,
            OFFLINE_AFTER_S: self.offline_after.as_secs(),
            BACKUP_SCHEDULE: self.backup_schedule,
            RETENTION_PENDING: self.retention_pending,
        })
    }
}

/// This instance's view of the runtime settings.
#[derive(Clone)]
pub struct Settings {
    store: Arc<dyn Store>,
    defaults: Arc<RuntimeSettings>,
    current: Arc<watch::Sender<RuntimeSettings>>,
}

impl Settings {
    /// Starts from `defaults` and reads the store once. A database that cannot answer yet is
    /// not fatal: the defaults apply until [`follow`] reads the stored values.
    pub async fn load(store: Arc<dyn Store>, defaults: RuntimeSettings) -> Self {
        let (current, _) = watch::channel(defaults.clone());
        let settings = Settings {
            store,
            defaults: Arc::new(defaults),
            current: Arc::new(current),
        };
        if let Err(e) = settings.refresh().await {
            tracing::warn!(error = %e, "cannot read runtime settings; the configured defaults apply for now");
        }
        settings
    }

    pub fn current(&self) -> RuntimeSettings {
        self.current.borrow().clone()
    }

    /// Follows changes: `changed()` wakes when a setting's value changes.
    pub fn subscribe(&self) -> watch::Receiver<RuntimeSettings> {
        self.current.subscribe()
    }

    /// Reads the stored settings; subscribers wake only when something changed.
    pub async fn refresh(&self) -> StoreResult<RuntimeSettings> {
        let mut stored = Vec::new();
        for key in [
            RETENTION_DAYS,
            OFFLINE_AFTER_S,
            BACKUP_SCHEDULE,
            RETENTION_PENDING,
        ] {
            stored.push((key, self.store.get_setting(key).await?));
        }
        let fresh = RuntimeSettings::from_stored(&self.defaults, &stored);
        self.current.send_if_modified(|current| {
            let changed = *current != fresh;
            if changed {
                tracing::info!(
                    retention_days = ?fresh.retention_days,
                    offline_after_s = fresh.offline_after.as_secs(),
                    backup_schedule = %fresh.backup_schedule,
                    "runtime settings in effect"
                );
                *current = fresh.clone();
            }
            changed
        });
        Ok(fresh)
    }

    /// Writes changed values, then applies them here at once.
    pub async fn store(&self, changes: &[(&'static str, Value)]) -> StoreResult<RuntimeSettings> {
        for (key, value) in changes {
            self.store.put_setting(key, value).await?;
        }
        self.refresh().await
    }
}

/// Picks up changes other instances wrote, until `cancel`.
pub async fn follow(settings: Settings, cancel: CancellationToken) {
    let mut interval = tokio::time::interval(REFRESH_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.reset();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = interval.tick() => {}
        }
        if let Err(e) = settings.refresh().await {
            tracing::warn!(error = %e, "cannot read runtime settings; keeping the current ones");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn defaults() -> RuntimeSettings {
        RuntimeSettings {
            retention_days: None,
            offline_after: Duration::from_secs(90),
            backup_schedule: "off".into(),
            retention_pending: None,
        }
    }

    #[test]
    fn stored_values_override_the_defaults() {
        let settings = RuntimeSettings::from_stored(
            &defaults(),
            &[
                (RETENTION_DAYS, Some(json!(30))),
                (OFFLINE_AFTER_S, Some(json!(20))),
                (BACKUP_SCHEDULE, Some(json!("daily 02:30"))),
            ],
        );
        assert_eq!(settings.retention_days, Some(30));
        assert_eq!(settings.offline_after, Duration::from_secs(20));
        assert_eq!(settings.backup_schedule, "daily 02:30");
    }

    #[test]
    fn a_pending_retention_is_read_back_and_a_malformed_one_ignored() {
        let pending = json!({"retention_days": 7, "from_days": 30, "requested_by": "user:olga",
                             "requested_at": "2026-12-05T15:00:00Z",
                             "due_at": "2026-12-06T15:00:00Z", "readings": 12});
        let settings =
            RuntimeSettings::from_stored(&defaults(), &[(RETENTION_PENDING, Some(pending))]);
        let read = settings
            .retention_pending
            .clone()
            .expect("pending read back");
        assert_eq!((read.retention_days, read.from_days), (7, Some(30)));
        assert_eq!(settings.to_json()[RETENTION_PENDING]["readings"], 12);
        for stored in [Value::Null, json!({"retention_days": "soon"})] {
            let settings =
                RuntimeSettings::from_stored(&defaults(), &[(RETENTION_PENDING, Some(stored))]);
            assert_eq!(settings.retention_pending, None);
        }
    }

    #[test]
    fn absent_null_and_malformed_values_keep_what_applies() {
        let settings = RuntimeSettings::from_stored(
            &defaults(),
            &[
                (RETENTION_DAYS, Some(Value::Null)),
                (OFFLINE_AFTER_S, Some(json!("soon"))),
                (BACKUP_SCHEDULE, None),
            ],
        );
        assert_eq!(settings, defaults());
        let zero = RuntimeSettings::from_stored(
            &defaults(),
            &[
                (RETENTION_DAYS, Some(json!(0))),
                (OFFLINE_AFTER_S, Some(json!(0))),
            ],
        );
        assert_eq!(zero, defaults());
    }
}
