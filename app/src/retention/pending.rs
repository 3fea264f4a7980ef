//! Shortening retention deletes data, so it does not happen at once: a shorter
//! `retention_days` (or a first one, where everything was kept) is stored as the
//! `retention_pending` setting and takes effect [`DELAY_HOURS`] later. Meanwhile the
//! `retention_pending` system alert says how much will go and when, and an owner may confirm
//! "delete now" (`POST /api/system/retention/apply`). Lengthening retention or turning it off
//! applies at once and cancels a pending shortening. The pending state lives in the settings
//! table, so it survives restarts and is shared by every instance; the retention job of each
//! instance applies it when due (idempotent: it only writes settings).

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::settings::{PendingRetention, RuntimeSettings, Settings, RETENTION_DAYS};
use crate::signals::{SignalSink, SystemCondition, RETENTION_PENDING};
use crate::store::{Store, StoreResult};

/// How long a shortening of `retention_days` waits before it deletes anything.
pub const DELAY_HOURS: i64 = 24;

/// What a change of `retention_days` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Keeps at least as much as now (or everything): applies at once.
    Now,
    /// Would delete data: waits [`DELAY_HOURS`].
    Delayed,
}

/// Whether going from `current` to `requested` days (`None`: keep everything) deletes data.
pub fn classify(current: Option<u32>, requested: Option<u32>) -> Change {
    match (current, requested) {
        (_, None) => Change::Now,
        (None, Some(_)) => Change::Delayed,
        (Some(current), Some(requested)) if requested < current => Change::Delayed,
        _ => Change::Now,
    }
}

/// When a shortening asked for at `requested_at` takes effect.
pub fn due_at(requested_at: DateTime<Utc>) -> DateTime<Utc> {
    requested_at + chrono::Duration::hours(DELAY_HOURS)
}

/// Stores a change of `retention_days` from an owner: a shortening becomes pending and its
/// warning fires; anything else applies at once and cancels what was pending. Returns the
/// settings now in effect.
pub async fn request(
    settings: &Settings,
    store: &dyn Store,
    alerts: &dyn SignalSink,
    requested: Option<u32>,
    by: &str,
) -> StoreResult<RuntimeSettings> {
    let current = settings.refresh().await?;
    if let Some(pending) = &current.retention_pending {
        if requested == Some(pending.retention_days) {
            // Asked again (the Settings page sends every field): it stays as it was, due at
            // the same time.
            return Ok(current);
        }
    }
    match classify(current.retention_days, requested) {
        Change::Now => {
            let after = settings
                .store(&[
                    (RETENTION_DAYS, json!(requested)),
                    (crate::settings::RETENTION_PENDING, Value::Null),
                ])
                .await?;
            if current.retention_pending.is_some() {
                let detail = match requested {
                    Some(days) => format!("cancelled: retention_days set to {days} by {by}"),
                    None => format!("cancelled: retention turned off by {by}"),
                };
                warn(alerts, false, &detail).await;
            }
            Ok(after)
        }
        Change::Delayed => {
            let days = requested.expect("a shortening names its days");
            let now = Utc::now();
            let cutoff = now
                .checked_sub_signed(chrono::Duration::days(i64::from(days)))
                .unwrap_or(DateTime::<Utc>::MIN_UTC);
            let pending = PendingRetention {
                retention_days: days,
                from_days: current.retention_days,
                requested_by: by.to_string(),
                requested_at: now,
                due_at: due_at(now),
                readings: store.count_readings_before(cutoff).await?,
            };
            let after = settings
                .store(&[(
                    crate::settings::RETENTION_PENDING,
                    serde_json::to_value(&pending).expect("serializes"),
                )])
                .await?;
            if current
                .retention_pending
                .as_ref()
                .is_some_and(|old| old.retention_days != days)
            {
                // The open warning names the old value: close it, and warn about this one.
                warn(alerts, false, &format!("replaced by {days} days")).await;
            }
            warn(alerts, true, &pending.describe()).await;
            Ok(after)
        }
    }
}

/// Puts the pending shortening into effect (the retention job then deletes). `due_only`:
/// only when its time has come (the job); otherwise at once (an owner's "delete now").
/// `Ok(None)`: nothing pending (or not due yet).
pub async fn apply(
    settings: &Settings,
    alerts: &dyn SignalSink,
    due_only: bool,
    by: &str,
) -> StoreResult<Option<PendingRetention>> {
    let current = settings.refresh().await?;
    let Some(pending) = current.retention_pending else {
        return Ok(None);
    };
    if due_only && !pending.is_due(Utc::now()) {
        return Ok(None);
    }
    settings
        .store(&[
            (RETENTION_DAYS, json!(pending.retention_days)),
            (crate::settings::RETENTION_PENDING, Value::Null),
        ])
        .await?;
    tracing::info!(
        retention_days = pending.retention_days,
        by,
        "pending retention applied"
    );
    let detail = format!(
        "retention_days {} in effect (applied by {by}); older readings are being deleted",
        pending.retention_days
    );
    warn(alerts, false, &detail).await;
    Ok(Some(pending))
}

/// The warning is best effort: the setting is what counts, and alerting logs its own trouble.
async fn warn(alerts: &dyn SignalSink, active: bool, detail: &str) {
    if let Err(e) = alerts
        .system_condition(SystemCondition {
            check: RETENTION_PENDING,
            device_id: None,
            active,
            detail: Some(detail),
        })
        .await
    {
        tracing::warn!(error = %e, "cannot update the retention_pending system alert");
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn only_a_change_that_deletes_waits() {
        assert_eq!(classify(Some(30), Some(7)), Change::Delayed);
        assert_eq!(classify(None, Some(365)), Change::Delayed);
        assert_eq!(classify(Some(7), Some(30)), Change::Now);
        assert_eq!(classify(Some(30), Some(30)), Change::Now);
        assert_eq!(classify(Some(30), None), Change::Now);
        assert_eq!(classify(None, None), Change::Now);
    }

    #[test]
    fn a_shortening_is_due_a_day_after_it_was_asked_for() {
        let asked = Utc.with_ymd_and_hms(2026, 12, 5, 15, 0, 0).unwrap();
        let pending = PendingRetention {
            retention_days: 7,
            from_days: Some(30),
            requested_by: "owner".into(),
            requested_at: asked,
            due_at: due_at(asked),
            readings: 1234,
        };
        assert_eq!(
            pending.due_at,
            Utc.with_ymd_and_hms(2026, 12, 6, 15, 0, 0).unwrap()
        );
        assert!(!pending.is_due(pending.due_at - chrono::Duration::seconds(1)));
        assert!(pending.is_due(pending.due_at));
        let text = pending.describe();
        assert!(text.contains("30 days -> 7 days"), "{text}");
        assert!(text.contains("about 1234 readings"), "{text}");
        assert!(text.contains("2026-12-06T15:00:00Z"), "{text}");
    }
}
