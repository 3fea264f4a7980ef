//! System alerts: problems of ddms itself or of a device's connection, reported through the
//! same rules, channels, silences and lifecycle as threshold alerts. A `system` rule names its
//! `system_check`; the part of ddms that sees the problem calls
//! [`Alerting::system_condition`] when it starts and when it ends.

use chrono::Utc;
use uuid::Uuid;

use super::evaluator::{next, Subject};
use super::Alerting;
use crate::store::alerts::AlertState;
use crate::store::StoreResult;

/// A device's connection failed `devices.failure_threshold` times in a row (the status
/// board's connection-failure notification is open).
pub const CONNECTION_FAILURE: &str = "connection_failure";
/// Free space of `data_dir` or `backup.dir` below `alerts.disk_free_floor_percent`
/// (checked by [`super::watch`]).
pub const DISK_SPACE: &str = "disk_space";
/// `/ready` has said "not ready" for longer than `alerts.not_ready_grace` (see
/// [`super::watch`] for what can be delivered when the database is the reason).
pub const NOT_READY: &str = "not_ready";
/// The last scheduled backup of this instance failed; the next successful backup resolves it.
pub const BACKUP_FAILED: &str = "backup_failed";
/// No successful backup within `alerts.backup_stale_after` (default: twice the schedule's
/// interval) while a schedule is set.
pub const BACKUP_STALE: &str = "backup_stale";
/// An owner shortened `retention_days`: data will be deleted when the change takes effect
/// (see `retention::pending`). Resolves when it took effect or was cancelled.
pub const RETENTION_PENDING: &str = "retention_pending";
/// The `system_check` values a rule may name.
pub const CHECKS: &[&str] = &[
    CONNECTION_FAILURE,
    DISK_SPACE,
    NOT_READY,
    BACKUP_FAILED,
    BACKUP_STALE,
    RETENTION_PENDING,
];

/// How many times a transition lost to another instance is recomputed.
const MAX_RACE_RETRIES: usize = 3;

impl Alerting {
    /// The condition `check` started (`active`) or ended for `device_id` (`None`: ddms itself):
    /// every enabled system rule of that check targeting the device fires or resolves its
    /// alert. Idempotent: reporting a state the alert is already in changes nothing, so every
    /// instance may report what it sees. `detail` (what was seen: free space, an error) is
    /// appended to the notification's summary.
    pub async fn system_condition(
        &self,
        check: &str,
        device_id: Option<Uuid>,
        active: bool,
        detail: Option<&str>,
    ) -> StoreResult<()> {
        let index = self.index();
        let rules = index.system.iter().filter(|r| {
            r.rule.system_check.as_deref() == Some(check)
                && match device_id {
                    Some(device) => index.targets(r, device),
                    None => r.rule.device_id.is_none() && r.rule.group_id.is_none(),
                }
        });
        for rule in rules {
            let subject = Subject {
                rule,
                device_id,
                metric: None,
                detail,
            };
            for _ in 0..MAX_RACE_RETRIES {
                let open = self
                    .store
                    .latest_alert(rule.id, device_id, None)
                    .await?
                    .filter(|a| a.state != AlertState::Resolved);
                let (alert, event, from) = match (open, active) {
                    (None, true) => {
                        let mut alert = self.new_alert(&subject, AlertState::Firing, None);
                        alert.started_at = Some(Utc::now());
                        alert.last_notified_at = alert.started_at;
                        (alert, "firing", None)
                    }
                    (Some(open), false) => {
                        let mut alert = next(&open);
                        alert.state = AlertState::Resolved;
                        alert.resolved_at = Some(Utc::now());
                        (alert, "resolved", Some(open.state))
                    }
                    // Already so.
                    _ => break,
                };
                let change = self
                    .change(&index, &subject, alert, event, from, true, None, None)
                    .await?;
                if self.apply(&subject, &index, &change).await? {
                    break;
                }
            }
        }
        Ok(())
    }
}
