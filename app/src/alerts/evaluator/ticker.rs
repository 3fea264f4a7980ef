//! The evaluation ticker of [`Alerting`]: time-driven transitions (`for` timers, repeats,
//! no-data rules), gauges and history pruning.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::*;

impl Alerting {
    /// The ticker: reloads rules, fires pending alerts whose `for` has passed, repeats, runs
    /// no-data rules, updates gauges. Every instance runs it; the guarded update keeps each
    /// transition single.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut interval = tokio::time::interval(self.config.evaluation_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pruned_at: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = interval.tick() => {}
                () = self.rules_changed.notified() => {}
            }
            if pruned_at.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                pruned_at = Some(tokio::time::Instant::now());
                match self
                    .store
                    .prune_alert_history(Utc::now() - HISTORY_RETENTION)
                    .await
                {
                    Ok(counts) if counts.alerts + counts.deliveries > 0 => tracing::info!(
                        alerts.pruned = counts.alerts,
                        deliveries.pruned = counts.deliveries,
                        "old alert history pruned"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot prune alert history; will retry"),
                }
            }
            if let Err(e) = self.tick(Utc::now()).await {
                tracing::warn!(error = %e, "alert evaluation tick failed; will retry");
            }
        }
    }

    pub async fn tick(&self, now: DateTime<Utc>) -> StoreResult<()> {
        self.reload().await?;
        let index = self.index();
        let open = self.store.list_open_alerts().await?;
        for alert in &open {
            let Some(rule) = index.rules.get(&alert.rule_id) else {
                continue;
            };
            if let Err(e) = self.tick_alert(&index, rule, alert, now).await {
                tracing::warn!(error = %e, alert.id = %alert.id, "alert tick failed");
            }
        }
        for rule in &index.no_data {
            if let Err(e) = self.tick_no_data(&index, rule, &open, now).await {
                tracing::warn!(error = %e, rule.id = %rule.id, "no-data check failed");
            }
        }
        self.update_gauges(&index).await
    }

    async fn tick_alert(
        &self,
        index: &RuleIndex,
        rule: &AlertRule,
        alert: &Alert,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let subject = Subject {
            rule,
            device_id: alert.device_id,
            metric: alert.metric.as_deref(),
            detail: None,
        };
        let check = Check::of(&rule.rule);
        let threshold = check.zip(alert.value).map(|(c, v)| c.threshold_for(v));
        let phase = phase_of(Some(alert));
        let value = alert.value.unwrap_or(f64::NAN);
        let repeat = rule.rule.repeat_interval_s.filter(|r| *r > 0);
        let last = alert.last_notified_at.or(alert.started_at);
        let notified = if let Some(Step::Fire { at, .. }) =
            engine::on_tick(rule.rule.for_s, phase, now, value)
        {
            let mut firing = next(alert);
            firing.state = AlertState::Firing;
            // It fired when the condition had held for `for_s`, whenever the tick noticed.
            let due = alert
                .pending_since
                .map(|s| s + chrono::Duration::seconds(rule.rule.for_s));
            firing.started_at = due.or(Some(at)).map(|d| d.min(at));
            firing.last_notified_at = Some(now);
            Some((firing, "firing"))
        } else if let (AlertState::Firing, Some(repeat), Some(last)) = (alert.state, repeat, last) {
            (now - last >= chrono::Duration::seconds(repeat) && alert.acknowledged_at.is_none())
                .then(|| {
                    let mut again = next(alert);
                    again.last_notified_at = Some(now);
                    (again, "repeat")
                })
        } else {
            None
        };
        if let Some((updated, event)) = notified {
            let from = Some(alert.state);
            let change = self
                .change(index, &subject, updated, event, from, true, threshold, None)
                .await?;
            self.apply(&subject, index, &change).await?;
        }
        Ok(())
    }

    async fn tick_no_data(
        &self,
        index: &RuleIndex,
        rule: &AlertRule,
        open: &[Alert],
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let (Some(metric), Some(silence_s)) = (rule.rule.metric.as_deref(), rule.rule.no_data_s)
        else {
            return Ok(());
        };
        let explicit = rule.rule.device_id.is_some() || rule.rule.group_id.is_some();
        for device_id in index.devices.keys().copied() {
            if !index.targets(rule, device_id) {
                continue;
            }
            let last_seen = self
                .store
                .latest_readings(device_id)
                .await?
                .into_iter()
                .find(|r| r.metric == metric)
                .map(|r| r.ts);
            // A device that never sent the metric counts as silent only when the rule names it
            // (or its group); an every-device rule watches series that exist.
            let since = match last_seen {
                Some(ts) => ts.max(rule.updated_at),
                None if explicit => rule.updated_at,
                None => continue,
            };
            let subject = Subject {
                rule,
                device_id: Some(device_id),
                metric: Some(metric),
                detail: None,
            };
            let current = open.iter().find(|a| {
                a.rule_id == rule.id
                    && a.device_id == Some(device_id)
                    && a.metric.as_deref() == Some(metric)
            });
            let silent = engine::no_data_due(since, silence_s, now);
            let change = match (silent, current) {
                (true, None) => {
                    let mut alert = self.new_alert(&subject, AlertState::Firing, None);
                    alert.started_at = Some(now);
                    alert.last_notified_at = Some(now);
                    alert.last_eval_ts = last_seen;
                    Some((alert, "firing", None))
                }
                (false, Some(open)) if last_seen.is_some_and(|t| open.started_at < Some(t)) => {
                    let mut alert = next(open);
                    alert.state = AlertState::Resolved;
                    alert.resolved_at = last_seen;
                    alert.last_eval_ts = last_seen;
                    Some((alert, "resolved", Some(open.state)))
                }
                _ => None,
            };
            if let Some((alert, event, from)) = change {
                let change = self
                    .change(index, &subject, alert, event, from, true, None, None)
                    .await?;
                self.apply(&subject, index, &change).await?;
            }
        }
        Ok(())
    }

    async fn update_gauges(&self, index: &RuleIndex) -> StoreResult<()> {
        let open = self.store.list_open_alerts().await?;
        for severity in ["info", "warning", "critical"] {
            let firing = open
                .iter()
                .filter(|a| a.state == AlertState::Firing)
                .filter(|a| {
                    index
                        .rules
                        .get(&a.rule_id)
                        .is_some_and(|r| r.rule.severity == severity)
                })
                .count();
            self.metrics
                .firing
                .with_label_values(&[severity])
                .set(firing as i64);
        }
        let stats = self.store.outbox_stats().await?;
        self.metrics.outbox_depth.set(stats.pending as i64);
        let age = stats
            .oldest_pending
            .map(|t| (Utc::now() - t).num_seconds().max(0))
            .unwrap_or(0);
        self.metrics.outbox_oldest_age.set(age);
        Ok(())
    }
}
