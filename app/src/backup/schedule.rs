//! The `backup_schedule` setting: `off`, `hourly` (on the hour), `daily HH:MM` or
//! `weekly <mon…sun> HH:MM`, all in UTC; [`Schedule`] is the pure parsing and next due time,
//! [`run_schedule`] the task that takes the due backups.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Datelike, Duration, NaiveTime, Timelike, Utc, Weekday};
use tokio_util::sync::CancellationToken;

use super::{Backups, Trigger};
use crate::settings::Settings;
use crate::store::NewAuditEntry;

const SCHEDULE_LEASE: &str = "backup";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    Off,
    Hourly,
    Daily(NaiveTime),
    Weekly(Weekday, NaiveTime),
}

#[derive(Debug, thiserror::Error)]
#[error("must be `off`, `hourly`, `daily HH:MM` or `weekly mon..sun HH:MM` (UTC)")]
pub struct InvalidSchedule;

const DAYS: [(&str, Weekday); 7] = [
    ("mon", Weekday::Mon),
    ("tue", Weekday::Tue),
    ("wed", Weekday::Wed),
    ("thu", Weekday::Thu),
    ("fri", Weekday::Fri),
    ("sat", Weekday::Sat),
    ("sun", Weekday::Sun),
];

fn time_of_day(text: &str) -> Result<NaiveTime, InvalidSchedule> {
    let (h, m) = text.split_once(':').ok_or(InvalidSchedule)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(InvalidSchedule);
    }
    let (h, m) = (
        h.parse::<u32>().map_err(|_| InvalidSchedule)?,
        m.parse::<u32>().map_err(|_| InvalidSchedule)?,
    );
    NaiveTime::from_hms_opt(h, m, 0).ok_or(InvalidSchedule)
}

impl FromStr for Schedule {
    type Err = InvalidSchedule;

    fn from_str(text: &str) -> Result<Schedule, InvalidSchedule> {
        let parts: Vec<&str> = text.split_whitespace().collect();
        match parts.as_slice() {
            ["off"] => Ok(Schedule::Off),
            ["hourly"] => Ok(Schedule::Hourly),
            ["daily", t] => Ok(Schedule::Daily(time_of_day(t)?)),
            ["weekly", day, t] => {
                let (_, day) = DAYS
                    .iter()
                    .find(|(name, _)| name == day)
                    .ok_or(InvalidSchedule)?;
                Ok(Schedule::Weekly(*day, time_of_day(t)?))
            }
            _ => Err(InvalidSchedule),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Off => f.write_str("off"),
            Schedule::Hourly => f.write_str("hourly"),
            Schedule::Daily(t) => write!(f, "daily {}", t.format("%H:%M")),
            Schedule::Weekly(day, t) => {
                let name = DAYS.iter().find(|(_, d)| d == day).map_or("?", |(n, _)| n);
                write!(f, "weekly {name} {}", t.format("%H:%M"))
            }
        }
    }
}

impl Schedule {
    /// The first time strictly after `after` a backup is due; `None` when off.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start_of_minute = after.with_second(0)?.with_nanosecond(0)?;
        match *self {
            Schedule::Off => None,
            Schedule::Hourly => Some(start_of_minute.with_minute(0)? + Duration::hours(1)),
            Schedule::Daily(time) => {
                let today = after.date_naive().and_time(time).and_utc();
                Some(if today > after {
                    today
                } else {
                    today + Duration::days(1)
                })
            }
            Schedule::Weekly(day, time) => {
                let ahead = (7 + i64::from(day.num_days_from_monday())
                    - i64::from(after.weekday().num_days_from_monday()))
                    % 7;
                let candidate = (after.date_naive() + Duration::days(ahead))
                    .and_time(time)
                    .and_utc();
                Some(if candidate > after {
                    candidate
                } else {
                    candidate + Duration::days(7)
                })
            }
        }
    }
}

/// The `backup_schedule` runner, until `cancel`. With several instances on one database only
/// the holder of the `backup` lease takes a due backup; the lease is kept after the run (it
/// expires on its own), so an instance whose clock lags a little takes no second one.
pub async fn run_schedule(
    backups: Arc<Backups>,
    settings: Settings,
    holder: String,
    cancel: CancellationToken,
) {
    const LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(30 * 60);
    let mut changes = settings.subscribe();
    loop {
        let text = settings.current().backup_schedule;
        let schedule = text.parse::<Schedule>().unwrap_or_else(|_| {
            tracing::warn!(backup_schedule = %text, "unreadable backup schedule; no scheduled backups");
            Schedule::Off
        });
        let wait = schedule
            .next_after(Utc::now())
            .map(|due| (due - Utc::now()).to_std().unwrap_or_default());
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
            () = async {
                match wait {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        let names = [SCHEDULE_LEASE.to_string()];
        match backups
            .store
            .acquire_leases(&names, &holder, LEASE_TTL)
            .await
        {
            Ok(held) if held.is_empty() => continue,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the backup lease; skipping this scheduled backup");
                continue;
            }
        }
        let run = match backups.begin(Trigger::Schedule) {
            Ok(run) => run,
            Err(e) => {
                tracing::warn!(error = %e, "scheduled backup skipped");
                continue;
            }
        };
        let name = run.name().to_string();
        let store = backups.store.clone();
        let schedule = schedule.to_string();
        backups.spawn(run, move |result| async move {
            let detail = match &result {
                Ok(info) => serde_json::json!({
                    "trigger": "schedule", "schedule": schedule, "bytes": info.bytes, "ok": true,
                }),
                Err(e) => serde_json::json!({
                    "trigger": "schedule", "schedule": schedule, "ok": false, "error": e.to_string(),
                }),
            };
            let entry = NewAuditEntry {
                actor: "schedule".into(),
                action: "backup.create".into(),
                target: Some(format!("backup:{name}")),
                detail,
                remote_addr: None,
            };
            if let Err(e) = store.append_audit(&entry).await {
                tracing::warn!(error = %e, "cannot audit the scheduled backup");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    fn next(schedule: &str, after: &str) -> Option<DateTime<Utc>> {
        schedule.parse::<Schedule>().unwrap().next_after(at(after))
    }

    #[test]
    fn schedules_parse_and_print_back() {
        for text in [
            "off",
            "hourly",
            "daily 02:30",
            "weekly sun 23:59",
            "daily 00:00",
        ] {
            assert_eq!(text.parse::<Schedule>().unwrap().to_string(), text);
        }
        for bad in [
            "",
            "never",
            "daily",
            "daily 2:30",
            "daily 24:00",
            "daily 12:60",
            "weekly 02:30",
            "weekly sunday 02:30",
            "hourly 05",
            "daily 02:30 extra",
        ] {
            assert!(bad.parse::<Schedule>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn off_is_never_due() {
        assert_eq!(next("off", "2026-12-03T10:00:00Z"), None);
    }

    #[test]
    fn hourly_is_due_on_the_next_full_hour() {
        assert_eq!(
            next("hourly", "2026-12-03T10:17:45.5Z"),
            Some(at("2026-12-03T11:00:00Z"))
        );
        // Exactly on the hour: that one has been taken, the next is due.
        assert_eq!(
            next("hourly", "2026-12-03T10:00:00Z"),
            Some(at("2026-12-03T11:00:00Z"))
        );
        assert_eq!(
            next("hourly", "2026-12-31T23:59:59Z"),
            Some(at("2027-01-01T00:00:00Z"))
        );
    }

    #[test]
    fn daily_is_due_today_until_its_time_then_tomorrow() {
        assert_eq!(
            next("daily 02:30", "2026-12-03T01:00:00Z"),
            Some(at("2026-12-03T02:30:00Z"))
        );
        assert_eq!(
            next("daily 02:30", "2026-12-03T02:30:00Z"),
            Some(at("2026-12-04T02:30:00Z"))
        );
        assert_eq!(
            next("daily 02:30", "2026-12-31T02:31:00Z"),
            Some(at("2027-01-01T02:30:00Z"))
        );
    }

    #[test]
    fn weekly_is_due_on_its_day_and_time() {
        // 2026-12-03 is a Thursday.
        assert_eq!(
            next("weekly thu 12:00", "2026-12-03T11:00:00Z"),
            Some(at("2026-12-03T12:00:00Z"))
        );
        assert_eq!(
            next("weekly thu 12:00", "2026-12-03T12:00:00Z"),
            Some(at("2026-12-10T12:00:00Z"))
        );
        assert_eq!(
            next("weekly mon 03:00", "2026-12-03T11:00:00Z"),
            Some(at("2026-12-07T03:00:00Z"))
        );
        assert_eq!(
            next("weekly wed 03:00", "2026-12-03T11:00:00Z"),
            Some(at("2026-12-09T03:00:00Z"))
        );
    }
}
