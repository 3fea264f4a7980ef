//! Retention: readings (and their rollups) older than the `retention_days` setting leave the
//! database. Runs at start, every [`RUN_INTERVAL`] and whenever the setting changes; with
//! several instances on one database only the holder of the `retention` lease runs it.
//! A shortening waits a day first ([`pending`]).

pub mod pending;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio_util::sync::CancellationToken;

use crate::metrics::registered;
use crate::settings::Settings;
use crate::store::{PruneCounts, Store, StoreResult};

pub const RUN_INTERVAL: Duration = Duration::from_secs(3600);
const LEASE: &str = "retention";
/// Longer than any purge should take; the lease is given back when the run ends.
const LEASE_TTL: Duration = Duration::from_secs(15 * 60);

#[derive(Clone)]
pub struct RetentionMetrics {
    deleted: IntCounterVec,
    last_run: IntGauge,
}

impl RetentionMetrics {
    pub fn register(registry: &Registry) -> Self {
        let deleted = registered(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "ddms_retention_deleted_total",
                    "Rows (and, for `partitions`, whole daily partitions) removed by retention",
                ),
                &["what"],
            ),
        );
        let last_run = registered(
            registry,
            IntGauge::new(
                "ddms_retention_last_run_timestamp_seconds",
                "When this instance last completed a retention run (Unix time)",
            ),
        );
        RetentionMetrics { deleted, last_run }
    }
}

/// One run: prunes when retention is set and this instance holds the lease. `None` when it
/// did nothing (retention off, or another instance runs it).
pub async fn run_once(
    store: &dyn Store,
    retention_days: Option<u32>,
    holder: &str,
) -> StoreResult<Option<PruneCounts>> {
    let Some(days) = retention_days else {
        return Ok(None);
    };
    let names = [LEASE.to_string()];
    if store
        .acquire_leases(&names, holder, LEASE_TTL)
        .await?
        .is_empty()
    {
        return Ok(None);
    }
    // Checked: a setting written to the database by hand could reach past chrono's range.
    let before = Utc::now()
        .checked_sub_signed(chrono::Duration::days(i64::from(days)))
        .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
    let result = store.prune_readings(before).await;
    if let Err(e) = store.release_leases(&names, holder).await {
        tracing::warn!(error = %e, "cannot release the retention lease; it expires on its own");
    }
    result.map(Some)
}

/// The retention job, until `cancel`.
pub async fn run(
    store: Arc<dyn Store>,
    settings: Settings,
    alerts: Arc<dyn crate::signals::SignalSink>,
    holder: String,
    metrics: RetentionMetrics,
    cancel: CancellationToken,
) {
    let mut changes = settings.subscribe();
    let mut interval = tokio::time::interval(RUN_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // A pending shortening wakes the job when it is due.
        let due = settings.current().retention_pending.map(|p| {
            // At least a few seconds: a failing apply must not spin.
            (p.due_at - Utc::now())
                .to_std()
                .unwrap_or_default()
                .max(Duration::from_secs(5))
        });
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = interval.tick() => {}
            () = async {
                match due {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => std::future::pending().await,
                }
            } => {}
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                let days = changes.borrow_and_update().retention_days;
                if days.is_none() {
                    continue;
                }
            }
        }
        if let Err(e) = pending::apply(&settings, alerts.as_ref(), true, "schedule").await {
            tracing::warn!(error = %e, "cannot apply the pending retention; will retry");
        }
        let days = settings.current().retention_days;
        let run = tokio::select! {
            () = cancel.cancelled() => return,
            run = run_once(store.as_ref(), days, &holder) => run,
        };
        match run {
            Ok(None) => {}
            Ok(Some(counts)) => {
                for (what, n) in [
                    ("readings", counts.readings),
                    ("partitions", counts.partitions),
                    ("rollups_1m", counts.rollups_1m),
                    ("rollups_1h", counts.rollups_1h),
                ] {
                    metrics.deleted.with_label_values(&[what]).inc_by(n);
                }
                metrics.last_run.set(Utc::now().timestamp());
                if counts != PruneCounts::default() {
                    tracing::info!(
                        retention_days = days,
                        readings.deleted = counts.readings,
                        partitions.dropped = counts.partitions,
                        rollups_1m.deleted = counts.rollups_1m,
                        rollups_1h.deleted = counts.rollups_1h,
                        "retention: old readings removed"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "retention run failed; will retry"),
        }
    }
}
