//! The system checks that watch ddms itself, every `alerts.evaluation_interval`: free disk
//! space (`disk_space`), readiness (`not_ready`) and the age of the newest backup
//! (`backup_stale`). Each reports through [`SignalSink::system_condition`], which is idempotent,
//! so reporting the same verdict every tick changes nothing and a rule created later is
//! caught up at the next tick.
//!
//! With several instances on one database, one speaks for ddms: the holder of the
//! `system-checks` lease (renewed every tick, taken over when it lapses), so that two hosts
//! with different disks cannot make an alert flap. The others' problems show in their own
//! `/ready` and metrics.
//!
//! `not_ready` and the database: when the database is what is not ready, no alert can be
//! stored while it is down. The watch remembers the outage; if it lasted longer than the grace
//! period, it reports it once the database answers again — a `firing` ("was not ready from …
//! to …") followed at once by `resolved`. An outage of a component other than the database
//! (the MQTT connection) fires while it lasts. A restart forgets an outage that was never
//! stored.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::system::{BACKUP_STALE, DISK_SPACE, NOT_READY};
use super::Alerting;
use crate::backup::{Backups, Schedule};
use crate::settings::Settings;
use crate::signals::{SignalSink, SystemCondition};

const LEASE: &str = "system-checks";

/// `/ready`'s verdict: `Err` names what is not ready.
pub type ReadyProbe = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

pub struct SystemWatch {
    pub alerts: Arc<Alerting>,
    /// `("data_dir", …)`, `("backup.dir", …)`: the directories whose free space is watched.
    pub disks: Vec<(&'static str, PathBuf)>,
    pub ready: ReadyProbe,
    pub backups: Arc<Backups>,
    pub settings: Settings,
    /// This instance, as the lease holder.
    pub holder: String,
}

/// What the watch carries from one tick to the next.
struct WatchState {
    outage: Outage,
    /// The backup schedule last seen, and since when.
    schedule_seen: (String, DateTime<Utc>),
}

impl SystemWatch {
    /// Checks until `cancel`, then gives the lease back.
    pub async fn run(self, cancel: CancellationToken) {
        let config = self.alerts.config().clone();
        let mut interval = tokio::time::interval(config.evaluation_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut state = WatchState {
            outage: Outage::default(),
            schedule_seen: (self.settings.current().backup_schedule, Utc::now()),
        };
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = interval.tick() => {}
            }
            // A tick waiting on a hung database must not hold up shutdown.
            tokio::select! {
                () = cancel.cancelled() => break,
                () = self.tick(&mut state) => {}
            }
        }
        let names = [LEASE.to_string()];
        let release = self.alerts.store.release_leases(&names, &self.holder);
        match tokio::time::timeout(Duration::from_secs(2), release).await {
            Ok(Ok(())) => {}
            _ => tracing::debug!("cannot release the system-checks lease; it expires"),
        }
    }

    async fn tick(&self, state: &mut WatchState) {
        let config = self.alerts.config();
        // Long enough to survive a slow tick, short enough for a quick take-over.
        let lease_ttl = config.evaluation_interval * 3 + Duration::from_secs(10);
        let grace = chrono::Duration::from_std(config.not_ready_grace)
            .unwrap_or(chrono::Duration::seconds(60));
        let now = Utc::now();
        state.outage.observe((self.ready)().await, now, grace);
        // `None`: the database cannot say (it may be what is down).
        let held = match self
            .alerts
            .store
            .acquire_leases(&[LEASE.to_string()], &self.holder, lease_ttl)
            .await
        {
            Ok(held) => Some(!held.is_empty()),
            Err(_) => None,
        };
        if held == Some(false) {
            // Another instance speaks for ddms; start afresh if this one takes over.
            state.outage = Outage::default();
            return;
        }
        for (active, detail) in state.outage.due(now, grace) {
            match self
                .alerts
                .system_condition(SystemCondition {
                    check: NOT_READY,
                    device_id: None,
                    active,
                    detail: Some(&detail),
                })
                .await
            {
                Ok(()) => state.outage.reported(active),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot report not_ready yet; will retry");
                    break;
                }
            }
        }
        if held.is_none() {
            return;
        }
        let disks = self.disks.clone();
        let floor = config.disk_free_floor_percent;
        // statvfs may block (a hung network file system): not on the runtime's threads.
        match tokio::task::spawn_blocking(move || disk_verdict(&disks, floor)).await {
            Ok((low, detail)) => self.report(DISK_SPACE, low, &detail).await,
            Err(e) => tracing::warn!(error = %e, "the disk space check failed"),
        }

        let text = self.settings.current().backup_schedule;
        if text != state.schedule_seen.0 {
            state.schedule_seen = (text.clone(), now);
        }
        let schedule = text.parse::<Schedule>().unwrap_or(Schedule::Off);
        let (stale, detail) = match stale_limit(&schedule, config.backup_stale_after) {
            Some(limit) => {
                let newest = self.backups.newest_local();
                let stale = is_stale(newest, state.schedule_seen.1, now, limit);
                let since = newest.map_or("ever".to_string(), |t| format!("{}", t.format(TIME)));
                (
                    stale,
                    format!(
                        "no successful backup since {since} (schedule `{schedule}`; stale after {})",
                        span(limit)
                    ),
                )
            }
            None => (false, "backup schedule off".to_string()),
        };
        self.report(BACKUP_STALE, stale, &detail).await;
    }

    async fn report(&self, check: &str, active: bool, detail: &str) {
        if let Err(e) = self
            .alerts
            .system_condition(SystemCondition {
                check,
                device_id: None,
                active,
                detail: Some(detail),
            })
            .await
        {
            tracing::warn!(check, error = %e, "cannot update a system alert; will retry");
        }
    }
}

const TIME: &str = "%Y-%m-%dT%H:%M:%SZ";

/// A duration as people say it: "2 days", "2 h", "90 s".
fn span(d: chrono::Duration) -> String {
    let s = d.num_seconds();
    if s >= 86_400 && s % 86_400 == 0 {
        format!("{} days", s / 86_400)
    } else if s >= 3600 && s % 3600 == 0 {
        format!("{} h", s / 3600)
    } else {
        format!("{s} s")
    }
}

/// Free space of the file system holding `path`, in percent of its size, as unprivileged
/// processes see it. A directory not created yet (`backup.dir` before the first backup) is
/// measured at its nearest existing ancestor.
pub fn free_percent(path: &Path) -> Result<f64, String> {
    let existing = path
        .ancestors()
        .find(|p| p.exists())
        .ok_or_else(|| format!("{} does not exist", path.display()))?;
    let stat = nix::sys::statvfs::statvfs(existing).map_err(|e| e.to_string())?;
    let total = stat.blocks() as f64 * stat.fragment_size() as f64;
    if total <= 0.0 {
        return Ok(100.0);
    }
    Ok(stat.blocks_available() as f64 * stat.fragment_size() as f64 / total * 100.0)
}

/// Whether any of `disks` has less than `floor` percent free (0: never), and what each has.
pub fn disk_verdict(disks: &[(&'static str, PathBuf)], floor: u8) -> (bool, String) {
    let measured: Vec<_> = disks
        .iter()
        .map(|(key, path)| (*key, path.as_path(), free_percent(path)))
        .collect();
    verdict(&measured, floor)
}

fn verdict(measured: &[(&str, &Path, Result<f64, String>)], floor: u8) -> (bool, String) {
    let mut low = false;
    let parts: Vec<String> = measured
        .iter()
        .map(|(key, path, free)| match free {
            Ok(free) => {
                let below = floor > 0 && *free < f64::from(floor);
                low |= below;
                format!(
                    "{key} {}: {free:.1} % free{}",
                    path.display(),
                    if below { " (low)" } else { "" }
                )
            }
            Err(e) => format!("{key} {}: cannot measure ({e})", path.display()),
        })
        .collect();
    (low, format!("{}; floor {floor} %", parts.join("; ")))
}

/// How old the newest backup may get under `schedule` before it is stale: `configured`, or
/// twice the schedule's interval. `None` while backups are not scheduled.
pub fn stale_limit(schedule: &Schedule, configured: Option<Duration>) -> Option<chrono::Duration> {
    let interval = match schedule {
        Schedule::Off => return None,
        Schedule::Hourly => chrono::Duration::hours(1),
        Schedule::Daily(_) => chrono::Duration::days(1),
        Schedule::Weekly(..) => chrono::Duration::days(7),
    };
    Some(
        configured
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .unwrap_or(interval * 2),
    )
}

/// Stale when neither the newest backup nor the moment the schedule was set (or this instance
/// started watching) is within `limit`: a schedule just set gets its full interval.
pub fn is_stale(
    newest: Option<DateTime<Utc>>,
    watching_since: DateTime<Utc>,
    now: DateTime<Utc>,
    limit: chrono::Duration,
) -> bool {
    let from = newest.map_or(watching_since, |n| n.max(watching_since));
    now - from >= limit
}

/// One not-ready spell as the watch saw it, and what of it has been reported.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outage {
    since: Option<DateTime<Utc>>,
    reason: String,
    /// Ready again at.
    back_at: Option<DateTime<Utc>>,
    /// The `firing` is stored.
    fired: bool,
}

impl Outage {
    /// What `/ready` said at `now`.
    pub fn observe(
        &mut self,
        ready: Result<(), String>,
        now: DateTime<Utc>,
        grace: chrono::Duration,
    ) {
        match (ready, self.since) {
            (Err(reason), None) => {
                *self = Outage {
                    since: Some(now),
                    reason,
                    ..Outage::default()
                }
            }
            // Down again before the last spell was reported: one spell.
            (Err(reason), Some(_)) => {
                self.back_at = None;
                self.reason = reason;
            }
            (Ok(()), Some(since)) if self.back_at.is_none() => {
                if !self.fired && now - since < grace {
                    // A blip shorter than the grace period: nothing to say.
                    *self = Outage::default();
                } else {
                    self.back_at = Some(now);
                }
            }
            (Ok(()), _) => {}
        }
    }

    /// The transitions to report now, in order: `(active, detail)`.
    pub fn due(&self, now: DateTime<Utc>, grace: chrono::Duration) -> Vec<(bool, String)> {
        let Some(since) = self.since else {
            return Vec::new();
        };
        let reason = &self.reason;
        let since_text = since.format(TIME);
        match self.back_at {
            None if !self.fired && now - since >= grace => {
                vec![(true, format!("not ready since {since_text}: {reason}"))]
            }
            None => Vec::new(),
            Some(back) => {
                let resolved = (false, format!("ready again at {}", back.format(TIME)));
                if self.fired {
                    vec![resolved]
                } else {
                    // Not stored while it lasted (the database was what was down).
                    vec![
                        (
                            true,
                            format!(
                                "was not ready from {since_text} to {}: {reason} (reported once it could be stored)",
                                back.format(TIME)
                            ),
                        ),
                        resolved,
                    ]
                }
            }
        }
    }

    /// A transition from [`Outage::due`] is stored.
    pub fn reported(&mut self, active: bool) {
        if active {
            self.fired = true;
        } else {
            *self = Outage::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_790_000_000 + secs, 0).unwrap()
    }

    fn events(due: &[(bool, String)]) -> Vec<bool> {
        due.iter().map(|(active, _)| *active).collect()
    }

    /// An outage seen first at t0 for `reason`, and the grace (60 s) the tests give it.
    fn down_since_t0(reason: &str) -> (Outage, chrono::Duration) {
        let grace = chrono::Duration::seconds(60);
        let mut o = Outage::default();
        o.observe(Err(reason.into()), t(0), grace);
        (o, grace)
    }

    #[test]
    fn an_outage_fires_after_the_grace_and_resolves_when_ready() {
        let (mut o, grace) = down_since_t0("mqtt: not connected");
        assert!(o.due(t(59), grace).is_empty());
        let due = o.due(t(60), grace);
        assert_eq!(events(&due), [true]);
        assert!(due[0].1.contains("mqtt: not connected"), "{due:?}");
        o.reported(true);
        o.observe(Err("mqtt: not connected".into()), t(65), grace);
        assert!(o.due(t(70), grace).is_empty(), "fired once");
        o.observe(Ok(()), t(80), grace);
        assert_eq!(events(&o.due(t(80), grace)), [false]);
        o.reported(false);
        assert_eq!(o, Outage::default());
    }

    #[test]
    fn a_blip_shorter_than_the_grace_says_nothing() {
        let (mut o, grace) = down_since_t0("database: unreachable");
        o.observe(Ok(()), t(30), grace);
        assert!(o.due(t(90), grace).is_empty());
        assert_eq!(o, Outage::default());
    }

    #[test]
    fn an_outage_that_could_not_be_stored_is_reported_afterwards() {
        let (mut o, grace) = down_since_t0("database: unreachable");
        // Firing is due but cannot be stored (the caller does not call `reported`).
        assert_eq!(events(&o.due(t(100), grace)), [true]);
        o.observe(Ok(()), t(200), grace);
        let due = o.due(t(205), grace);
        assert_eq!(events(&due), [true, false]);
        assert!(due[0].1.starts_with("was not ready from"), "{due:?}");
        // Storing the firing worked, the resolve not yet: only the resolve is left.
        o.reported(true);
        assert_eq!(events(&o.due(t(210), grace)), [false]);
    }

    #[test]
    fn staleness_counts_from_the_newer_of_the_backup_and_the_schedule() {
        let daily: Schedule = "daily 02:30".parse().unwrap();
        let limit = stale_limit(&daily, None).unwrap();
        assert_eq!(limit, chrono::Duration::days(2));
        assert_eq!(stale_limit(&Schedule::Off, None), None);
        assert_eq!(
            stale_limit(&Schedule::Hourly, Some(Duration::from_secs(600))),
            Some(chrono::Duration::minutes(10))
        );
        let day = 86_400;
        assert!(!is_stale(None, t(0), t(2 * day - 1), limit));
        assert!(is_stale(None, t(0), t(2 * day), limit));
        assert!(!is_stale(Some(t(day)), t(0), t(2 * day), limit));
        assert!(is_stale(Some(t(-10 * day)), t(0), t(2 * day), limit));
    }

    #[test]
    fn the_disk_verdict_names_every_directory() {
        let data = PathBuf::from("/var/lib/ddms");
        let backup = PathBuf::from("/var/backups/ddms");
        let measured = [
            ("data_dir", data.as_path(), Ok(42.0)),
            ("backup.dir", backup.as_path(), Ok(3.08)),
        ];
        let (low, detail) = verdict(&measured, 10);
        assert!(low);
        assert_eq!(
            detail,
            "data_dir /var/lib/ddms: 42.0 % free; backup.dir /var/backups/ddms: 3.1 % free (low); floor 10 %"
        );
        assert!(!verdict(&measured, 0).0, "0 turns the check off");
        assert!(!verdict(&measured, 3).0);
        let failed = [("data_dir", data.as_path(), Err("EIO".to_string()))];
        assert!(!verdict(&failed, 10).0);
        // The real thing answers for a directory that exists and one that does not yet.
        let here = free_percent(Path::new("/")).unwrap();
        assert!((0.0..=100.0).contains(&here));
        let ancestor = free_percent(Path::new("/no/such/dir/yet")).unwrap();
        assert!((0.0..=100.0).contains(&ancestor));
    }
}
