//! The ingest path of [`Alerting`]: a committed batch of readings evaluated against the rules
//! that target its series.
//!
//! Most series in a batch have no transition: their readings only move the open alert's
//! `value` and `last_eval_ts` on. Those stamps are collected and written together at the end
//! of the batch ([`AlertStore::record_evaluations`](crate::store::alerts::AlertStore)), one
//! transaction for the batch: a stamp per series in a transaction of its own cost SQLite an
//! fsync each and held ingest at 84 % of its rate with 1,000 rules firing.

use chrono::{DateTime, Utc};

use super::*;
use crate::store::alerts::EvaluationStamp;

/// A series' readings, sorted by time with one reading per timestamp.
type Readings = Vec<TimedValue>;

/// A stamp waiting for the batch's write, with what it takes to evaluate the series again if
/// its alert moved on meanwhile (another instance stored a transition).
struct Deferred<'a> {
    stamp: EvaluationStamp,
    rule: Arc<AlertRule>,
    device_id: Uuid,
    metric: &'a str,
    readings: &'a [TimedValue],
}

impl Alerting {
    /// Evaluates committed samples against the rules targeting their series. Cheap when no rule
    /// names a sample's metric (one hash lookup per sample), and when rules do: the open alerts
    /// are read once per batch, a series without one whose readings would not start one (the
    /// usual case: values inside their thresholds) is settled without a query of its own, and
    /// the series without a transition are stamped together in one write.
    ///
    /// Returns the first transient store error (the database blipped): the caller holds the
    /// batch and evaluates it again, which is safe because a series skips readings at or before
    /// its `last_eval_ts`. Any other error (one rule the store refuses) is logged and counted in
    /// `ddms_alert_evaluation_errors_total`, and the rest is evaluated: one bad rule must never
    /// hold up ingest.
    pub async fn evaluate(&self, samples: &[&Sample]) -> StoreResult<()> {
        let index = self.index();
        if index.threshold_by_metric.is_empty() {
            return Ok(());
        }
        let mut by_series: HashMap<(Uuid, &str), Readings> = HashMap::new();
        for sample in samples {
            if index.threshold_by_metric.contains_key(&sample.metric) {
                by_series
                    .entry((sample.device_id, sample.metric.as_str()))
                    .or_default()
                    .push((sample.ts, sample.value));
            }
        }
        if by_series.is_empty() {
            return Ok(());
        }
        for readings in by_series.values_mut() {
            readings.sort_by_key(|(ts, _)| *ts);
            readings.dedup_by_key(|(ts, _)| *ts);
        }
        let open = self.open_alerts().await?;
        let mut deferred = Vec::new();
        for (&(device_id, metric), readings) in &by_series {
            let key_metric = metric.to_string();
            let rules = index.threshold_by_metric.get(metric).into_iter().flatten();
            for rule in rules.filter(|r| index.targets(r, device_id)) {
                let Some(check) = Check::of(&rule.rule) else {
                    continue;
                };
                let known = match &open {
                    Some(open) => match open.get(&(rule.id, device_id, key_metric.clone())) {
                        Some(alert) => Some(alert.clone()),
                        // What the store would say from an idle phase: nothing to do.
                        None if !readings.iter().any(|(_, v)| check.fires(*v)) => continue,
                        None => None,
                    },
                    None => None,
                };
                let outcome = self
                    .evaluate_series(&index, rule, &check, device_id, metric, readings, known)
                    .await;
                if let Some(stamp) = settle(outcome, rule, device_id, metric, self)? {
                    deferred.push(Deferred {
                        stamp,
                        rule: rule.clone(),
                        device_id,
                        metric,
                        readings,
                    });
                }
            }
        }
        self.record_stamps(&index, deferred).await
    }

    /// Writes the batch's stamps; a series whose alert moved on meanwhile is evaluated again
    /// from the stored state and stamped on its own.
    async fn record_stamps(
        &self,
        index: &RuleIndex,
        deferred: Vec<Deferred<'_>>,
    ) -> StoreResult<()> {
        let stamps: Vec<EvaluationStamp> = deferred.iter().map(|d| d.stamp).collect();
        let moved = match self.store.record_evaluations(&stamps).await {
            Ok(moved) => moved,
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => {
                // The readings were evaluated and no transition is lost; only the alerts'
                // latest values are stale until the next batch.
                self.metrics.evaluation_errors.inc();
                tracing::error!(error = %e, "cannot record the evaluated readings on their open alerts");
                return Ok(());
            }
        };
        for again in deferred
            .iter()
            .filter(|d| moved.contains(&d.stamp.alert_id))
        {
            let Some(check) = Check::of(&again.rule.rule) else {
                continue;
            };
            for _ in 0..MAX_RACE_RETRIES {
                let outcome = self
                    .evaluate_series(
                        index,
                        &again.rule,
                        &check,
                        again.device_id,
                        again.metric,
                        again.readings,
                        None,
                    )
                    .await;
                let Some(stamp) =
                    settle(outcome, &again.rule, again.device_id, again.metric, self)?
                else {
                    break;
                };
                if self.store.record_evaluations(&[stamp]).await?.is_empty() {
                    break;
                }
            }
        }
        Ok(())
    }

    /// The open alerts by (rule, device, metric), for [`Alerting::evaluate`]; `None` when they
    /// cannot be read for a reason other than a blip (every series then asks the store itself).
    async fn open_alerts(&self) -> StoreResult<Option<HashMap<SeriesKey, Alert>>> {
        match self.store.list_open_alerts().await {
            Ok(alerts) => Ok(Some(
                alerts
                    .into_iter()
                    .filter_map(|a| Some(((a.rule_id, a.device_id?, a.metric.clone()?), a)))
                    .collect(),
            )),
            Err(e) if e.is_transient() => Err(e),
            Err(e) => {
                self.metrics.evaluation_errors.inc();
                tracing::error!(error = %e, "cannot read the open alerts; every series asks the store itself");
                Ok(None)
            }
        }
    }

    /// Evaluates one series against one rule and stores its transitions. `known` is the
    /// series' open alert as the batch read it, if any (it saves the first read; a lost race
    /// reads again). Returns the stamp for readings evaluated on an alert that stays open, for
    /// the caller to write: `None` when there is none (no open alert, or nothing newer).
    #[allow(clippy::too_many_arguments)]
    async fn evaluate_series(
        &self,
        index: &RuleIndex,
        rule: &AlertRule,
        check: &Check,
        device_id: Uuid,
        metric: &str,
        readings: &[TimedValue],
        mut known: Option<Alert>,
    ) -> StoreResult<Option<EvaluationStamp>> {
        'race: for _ in 0..MAX_RACE_RETRIES {
            let latest = match known.take() {
                Some(alert) => Some(alert),
                None => {
                    self.store
                        .latest_alert(rule.id, Some(device_id), Some(metric))
                        .await?
                }
            };
            // A redelivered reading (at or before the last one evaluated) changes nothing.
            let after = latest.as_ref().and_then(|a| a.last_eval_ts);
            let fresh: Vec<_> = readings
                .iter()
                .copied()
                .filter(|(ts, _)| after.is_none_or(|after| *ts > after))
                .collect();
            let Some(&(last_ts, last_value)) = fresh.last() else {
                return Ok(None);
            };
            let mut current = latest.filter(|a| a.state != AlertState::Resolved);
            let phase = phase_of(current.as_ref());
            let (_, steps) = engine::on_readings(check, rule.rule.for_s, phase, &fresh);
            let subject = Subject {
                rule,
                device_id: Some(device_id),
                metric: Some(metric),
                detail: None,
            };
            for step in steps {
                let change = self
                    .change_for_step(index, &subject, check, current.as_ref(), step)
                    .await?;
                if !self.apply(&subject, index, &change).await? {
                    continue 'race;
                }
                current = Some(change.alert).filter(|a| a.state != AlertState::Resolved);
            }
            return Ok(current
                .filter(|open| open.last_eval_ts.is_none_or(|t| t < last_ts))
                .map(|open| stamp_of(&open, last_value, last_ts)));
        }
        tracing::debug!(rule.id = %rule.id, device.id = %device_id, "alert kept changing under evaluation; other instances are on it");
        Ok(None)
    }
}

fn stamp_of(open: &Alert, value: f64, last_eval_ts: DateTime<Utc>) -> EvaluationStamp {
    EvaluationStamp {
        alert_id: open.id,
        seq: open.seq,
        value,
        last_eval_ts,
    }
}

/// A series' outcome for the batch: transient errors go up (the batch is evaluated again),
/// others are logged and counted and the series is left (one bad rule must not hold up ingest).
fn settle(
    outcome: StoreResult<Option<EvaluationStamp>>,
    rule: &AlertRule,
    device_id: Uuid,
    metric: &str,
    alerting: &Alerting,
) -> StoreResult<Option<EvaluationStamp>> {
    match outcome {
        Ok(stamp) => Ok(stamp),
        Err(e) if e.is_transient() => Err(e),
        Err(e) => {
            alerting.metrics.evaluation_errors.inc();
            tracing::error!(error = %e, rule.id = %rule.id, device.id = %device_id, metric, "alert evaluation failed; these readings are not evaluated by this rule");
            Ok(None)
        }
    }
}
