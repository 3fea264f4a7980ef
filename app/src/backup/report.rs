//! Backups as system alerts: a failed scheduled run fires `backup_failed` (the next successful
//! run of any trigger resolves it), and the newest archive's time is what the `backup_stale`
//! check (`alerts::watch`) measures. Alerting is reached through [`SignalSink`].

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{created_at_of, local_archives, BackupError, BackupInfo, Backups, Trigger};
use crate::signals::{SignalSink, SystemCondition, BACKUP_FAILED};

impl Backups {
    /// Reports runs to alerting from now on (the serving process; the CLI does not).
    pub fn with_alerts(mut self, alerts: Arc<dyn SignalSink>) -> Backups {
        self.alerts = Some(alerts);
        self
    }

    /// When the newest archive in `backup.dir` was taken: the last successful backup on this
    /// host, surviving restarts (every archive is written here first, also with S3).
    pub fn newest_local(&self) -> Option<DateTime<Utc>> {
        local_archives(&self.dir)
            .ok()?
            .iter()
            .filter_map(|(name, _)| created_at_of(name))
            .max()
    }

    pub(super) async fn report(&self, trigger: Trigger, result: &Result<BackupInfo, BackupError>) {
        let Some(alerts) = &self.alerts else {
            return;
        };
        let (failed, detail) = match result {
            // An owner who asked for a backup sees its failure; an unattended one must be told.
            Err(e) if trigger == Trigger::Schedule => {
                (true, format!("scheduled backup failed: {e}"))
            }
            Err(_) => return,
            Ok(info) => (false, format!("backup {} written", info.name)),
        };
        let outcome = alerts
            .system_condition(SystemCondition {
                check: BACKUP_FAILED,
                device_id: None,
                active: failed,
                detail: Some(&detail),
            })
            .await;
        if let Err(e) = outcome {
            tracing::warn!(error = %e, "cannot update the backup_failed system alert");
        }
    }
}
