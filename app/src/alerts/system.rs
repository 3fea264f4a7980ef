//! System alerts: problems of ddms itself or of a device's connection, reported through the
//! same rules, channels, silences and lifecycle as threshold alerts. A `system` rule names its
//! `system_check`; the part of ddms that sees the problem calls
//! [`SignalSink::system_condition`] when it starts and when it ends; `Alerting` implements
//! [`SignalSink`] here, for the parts below `alerts` (status, backup, retention; ingest for
//! [`Alerting::evaluate`]) and for `alerts::watch`.

use async_trait::async_trait;
use chrono::Utc;

use super::evaluator::{next, Subject};
use super::Alerting;
use crate::signals::Sample;
use crate::signals::{SignalSink, SystemCondition};
use crate::store::alerts::AlertState;
use crate::store::StoreResult;

/// The check names live with [`SignalSink`], through which the parts of ddms below alerting
/// report them; a rule's `system_check` must be one of [`CHECKS`].
pub use crate::signals::{
    BACKUP_FAILED, BACKUP_STALE, CHECKS, CONNECTION_FAILURE, DISK_SPACE, NOT_READY,
    RETENTION_PENDING,
};

/// How many times a transition lost to another instance is recomputed.
const MAX_RACE_RETRIES: usize = 3;

/// What ingest, the status board, backups and retention see of alerting (they hold an
/// `Arc<dyn SignalSink>` so that their imports point downward); `alerts::watch` calls it too.
#[async_trait]
impl SignalSink for Alerting {
    async fn evaluate(&self, samples: &[&Sample]) -> StoreResult<()> {
        Alerting::evaluate(self, samples).await
    }

    /// Every enabled system rule of `check` targeting the device fires or resolves its alert;
    /// `detail` (what was seen: free space, an error) is appended to the notification's
    /// summary.
    async fn system_condition(&self, condition: SystemCondition<'_>) -> StoreResult<()> {
        let SystemCondition {
            check,
            device_id,
            active,
            detail,
        } = condition;
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
