//! What the rest of ddms tells alerting, and the interface it tells it through: committed
//! readings ([`Sample`]) and system conditions (the [check names](CHECKS)), handed to a
//! [`SignalSink`].
//!
//! Why this module exists: imports between the top-level modules point downward (tidy
//! `module_cycles.rs`). `alerts` sits above ingest, status, backup and retention — it reads
//! their state (`alerts::watch` reads backups and settings, the evaluator the status board's
//! notifications) — yet each of them must report to it. So they hold an `Arc<dyn SignalSink>`
//! handed in by `server`, `alerts::Alerting` implements it, and none of them imports `alerts`.
//! This module imports neither `alerts` nor any module that reports to it.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::store::StoreResult;

/// One reading of one metric of a device, as producers submit it and the batch writer commits
/// it (re-exported as `ingest::Sample`).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub device_id: Uuid,
    pub metric: String,
    pub unit: Option<String>,
    pub ts: DateTime<Utc>,
    pub value: f64,
}

/// A device's connection failed `devices.failure_threshold` times in a row (the status
/// board's connection-failure notification is open).
pub const CONNECTION_FAILURE: &str = "connection_failure";
/// Free space of `data_dir` or `backup.dir` below `alerts.disk_free_floor_percent`
/// (checked by `alerts::watch`).
pub const DISK_SPACE: &str = "disk_space";
/// `/ready` has said "not ready" for longer than `alerts.not_ready_grace` (see
/// `alerts::watch` for what can be delivered when the database is the reason).
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

/// What one part of ddms sees of a system condition now: `check` (one of [`CHECKS`]) for
/// `device_id` (`None`: ddms itself) has started (`active`) or ended; `detail` says what was
/// seen (free space, an error) and is appended to the notification's summary.
#[derive(Debug, Clone, Copy)]
pub struct SystemCondition<'a> {
    pub check: &'a str,
    pub device_id: Option<Uuid>,
    pub active: bool,
    pub detail: Option<&'a str>,
}

/// Where readings and system conditions go to be judged: `alerts::Alerting` in the serving
/// process. The two calls are all that ingest, status, backup and retention need of alerting.
#[async_trait]
pub trait SignalSink: Send + Sync {
    /// Evaluates committed samples against the rules targeting their series. An error is a
    /// store error the caller may retry with the same samples (evaluation resumes where each
    /// series stopped); trouble with one rule is handled inside and not returned.
    async fn evaluate(&self, samples: &[&Sample]) -> StoreResult<()>;

    /// Reports a [`SystemCondition`]. Idempotent: reporting the state the alert is already in
    /// changes nothing, so every instance may report what it sees.
    async fn system_condition(&self, condition: SystemCondition<'_>) -> StoreResult<()>;
}
