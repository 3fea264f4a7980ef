//! Evaluation: readings from the ingest path ([`Alerting::evaluate`], called by the batch
//! writer after a commit and before producers are told, so an MQTT message is acknowledged only
//! once its alert state is stored) and time from a ticker ([`Alerting::run`]: `for` timers,
//! repeats, no-data rules, gauges). Every transition is stored with the guarded update (see
//! `store::alerts`): across instances, each is written — and notified — exactly once.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};
use tokio::sync::Notify;
use uuid::Uuid;

use super::channels::Deliverer;
use super::engine::{self, Phase, Step, TimedValue};
use super::metrics::AlertMetrics;
use super::outbox::OutboxWorker;
use super::rule::{Check, Condition};
use crate::config::alerts::AlertsConfig;
use crate::events::{AlertChanged, EventHub, LiveEvent};
use crate::locks::RwLockExt;
use crate::signals::Sample;
use crate::status::CONNECTION_FAILURE;
use crate::store::alerts::{Alert, AlertChange, AlertRule, AlertState, NewDelivery};
use crate::store::{Store, StoreError, StoreResult};

mod batch;
mod ticker;

/// A transition lost to another writer is recomputed from the stored state at most this often.
const MAX_RACE_RETRIES: usize = 3;
/// Resolved alerts (with their history), sent and dead deliveries and expired silences are
/// kept this long, then pruned (hourly, by every instance: deleting is idempotent).
pub const HISTORY_RETENTION: chrono::Duration = chrono::Duration::days(90);
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// An alert's series: (rule, device, metric).
type SeriesKey = (Uuid, Uuid, String);

#[derive(Debug, Clone)]
struct DeviceInfo {
    name: String,
    group_id: Option<Uuid>,
}

/// Enabled rules by metric, and the devices they may target: what the ingest path looks up.
#[derive(Default)]
pub(super) struct RuleIndex {
    /// `system` rules, for `SignalSink::system_condition` (see [`super::system`]).
    pub(super) system: Vec<Arc<AlertRule>>,
    threshold_by_metric: HashMap<String, Vec<Arc<AlertRule>>>,
    no_data: Vec<Arc<AlertRule>>,
    rules: HashMap<Uuid, Arc<AlertRule>>,
    devices: HashMap<Uuid, DeviceInfo>,
}

impl RuleIndex {
    pub(super) fn targets(&self, rule: &AlertRule, device_id: Uuid) -> bool {
        match (rule.rule.device_id, rule.rule.group_id) {
            (Some(device), _) => device == device_id,
            (None, Some(group)) => self
                .devices
                .get(&device_id)
                .is_some_and(|d| d.group_id == Some(group)),
            (None, None) => self.devices.contains_key(&device_id),
        }
    }
}

/// What a transition is about, for its messages.
pub(super) struct Subject<'a> {
    pub(super) rule: &'a AlertRule,
    pub(super) device_id: Option<Uuid>,
    pub(super) metric: Option<&'a str>,
    /// What a system check saw (free space, the error), appended to the summary.
    pub(super) detail: Option<&'a str>,
}

pub struct Alerting {
    pub(super) store: Arc<dyn Store>,
    events: EventHub,
    metrics: AlertMetrics,
    config: AlertsConfig,
    public_url: Option<String>,
    index: RwLock<Arc<RuleIndex>>,
    rules_changed: Notify,
    deliverer: Arc<Deliverer>,
}

impl Alerting {
    pub fn new(
        store: Arc<dyn Store>,
        events: EventHub,
        metrics: AlertMetrics,
        config: AlertsConfig,
        public_url: Option<String>,
    ) -> Self {
        Alerting {
            store,
            events,
            metrics,
            public_url,
            index: RwLock::new(Arc::new(RuleIndex::default())),
            rules_changed: Notify::new(),
            deliverer: Arc::new(Deliverer::new(&config)),
            config,
        }
    }

    pub fn metrics(&self) -> &AlertMetrics {
        &self.metrics
    }

    /// Sends messages (the outbox worker, channel tests).
    pub fn deliverer(&self) -> &Arc<Deliverer> {
        &self.deliverer
    }

    /// This instance's outbox worker.
    pub fn outbox(&self) -> OutboxWorker {
        OutboxWorker::new(
            self.store.clone(),
            self.deliverer.clone(),
            self.config.clone(),
            self.metrics.clone(),
        )
    }

    pub fn config(&self) -> &AlertsConfig {
        &self.config
    }

    /// Rules or channels changed here: reload now, so the next reading is judged by them
    /// (other instances pick the change up at their next tick).
    pub async fn rules_changed(&self) {
        if let Err(e) = self.reload().await {
            tracing::warn!(error = %e, "cannot reload alert rules; the ticker will retry");
            self.rules_changed.notify_one();
        }
    }

    pub(super) fn index(&self) -> Arc<RuleIndex> {
        self.index.read_unpoisoned().clone()
    }

    /// Re-reads rules and devices.
    pub async fn reload(&self) -> StoreResult<()> {
        let rules = self.store.list_alert_rules().await?;
        let devices = self.store.list_devices().await?;
        let mut index = RuleIndex {
            devices: devices
                .into_iter()
                .map(|d| {
                    (
                        d.id,
                        DeviceInfo {
                            name: d.name,
                            group_id: d.group_id,
                        },
                    )
                })
                .collect(),
            ..Default::default()
        };
        for rule in rules.into_iter().filter(|r| r.rule.enabled).map(Arc::new) {
            index.rules.insert(rule.id, rule.clone());
            match (rule.rule.kind.as_str(), rule.rule.metric.clone()) {
                ("no_data", Some(_)) => index.no_data.push(rule),
                ("system", _) => index.system.push(rule),
                ("threshold", Some(metric)) => index
                    .threshold_by_metric
                    .entry(metric)
                    .or_default()
                    .push(rule),
                _ => {}
            }
        }
        *self.index.write_unpoisoned() = Arc::new(index);
        Ok(())
    }

    /// The stored change for one engine step from the alert as it is.
    async fn change_for_step(
        &self,
        index: &RuleIndex,
        subject: &Subject<'_>,
        check: &Check,
        current: Option<&Alert>,
        step: Step,
    ) -> StoreResult<AlertChange> {
        let (alert, event, from) = match (step, current) {
            (Step::Pending { at, value }, _) => {
                let mut alert = self.new_alert(subject, AlertState::Pending, Some(value));
                alert.pending_since = Some(at);
                alert.last_eval_ts = Some(at);
                (alert, "pending", None)
            }
            (Step::Fire { at, value }, Some(open)) => {
                let mut alert = next(open);
                alert.state = AlertState::Firing;
                alert.value = Some(value);
                alert.started_at = Some(at);
                alert.last_notified_at = Some(Utc::now());
                alert.last_eval_ts = alert.last_eval_ts.max(Some(at));
                (alert, "firing", Some(open.state))
            }
            (Step::Fire { at, value }, None) => {
                let mut alert = self.new_alert(subject, AlertState::Firing, Some(value));
                alert.started_at = Some(at);
                alert.last_notified_at = Some(Utc::now());
                alert.last_eval_ts = Some(at);
                (alert, "firing", None)
            }
            (Step::Resolve { at, value, .. }, Some(open)) => {
                let mut alert = next(open);
                alert.state = AlertState::Resolved;
                alert.value = value.or(open.value);
                alert.resolved_at = Some(at);
                alert.last_eval_ts = alert.last_eval_ts.max(Some(at));
                (alert, "resolved", Some(open.state))
            }
            (Step::Resolve { .. }, None) => {
                return Err(StoreError::Corrupt(
                    "the engine resolved an alert that is not open".into(),
                ))
            }
        };
        let notify = step.notifies();
        let threshold = alert.value.map(|v| check.threshold_for(v));
        self.change(index, subject, alert, event, from, notify, threshold, None)
            .await
    }

    pub(super) fn new_alert(
        &self,
        subject: &Subject<'_>,
        state: AlertState,
        value: Option<f64>,
    ) -> Alert {
        Alert {
            id: Uuid::now_v7(),
            rule_id: subject.rule.id,
            device_id: subject.device_id,
            metric: subject.metric.map(str::to_string),
            state,
            value,
            pending_since: None,
            started_at: None,
            resolved_at: None,
            last_notified_at: None,
            last_eval_ts: None,
            acknowledged_by: None,
            acknowledged_at: None,
            ack_comment: None,
            seq: 1,
            created_at: Utc::now(),
        }
    }

    /// Builds the change with its outbox rows (none when it is not notified or is muted).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn change(
        &self,
        index: &RuleIndex,
        subject: &Subject<'_>,
        alert: Alert,
        event: &str,
        from: Option<AlertState>,
        notify: bool,
        threshold: Option<f64>,
        actor: Option<String>,
    ) -> StoreResult<AlertChange> {
        let muted = notify && self.muted(index, subject).await?;
        let at = Utc::now();
        let mut change = AlertChange {
            expected_seq: (alert.seq > 1).then_some(alert.seq - 1),
            alert,
            event: event.into(),
            from_state: from,
            at,
            muted,
            actor,
            deliveries: Vec::new(),
        };
        if notify && !muted {
            let message = self.message(index, subject, &change, threshold);
            let expires_at = at
                + chrono::Duration::from_std(self.config.delivery_expiry)
                    .unwrap_or(chrono::Duration::hours(24));
            change.deliveries = subject
                .rule
                .rule
                .channels
                .iter()
                .map(|channel| {
                    let mut message = message.clone();
                    message["idempotency_key"] = json!(change.idempotency_key(*channel));
                    NewDelivery {
                        channel_id: *channel,
                        message,
                        expires_at,
                    }
                })
                .collect();
        }
        Ok(change)
    }

    /// Under a silence (of the rule, the device or its group) or inhibited (the device has an
    /// open connection-failure notification: its readings say nothing then).
    async fn muted(&self, index: &RuleIndex, subject: &Subject<'_>) -> StoreResult<bool> {
        let now = Utc::now();
        let group = subject
            .device_id
            .and_then(|d| index.devices.get(&d))
            .and_then(|d| d.group_id);
        let silenced = self
            .store
            .list_silences(Some(now))
            .await?
            .iter()
            .map(|s| &s.silence)
            .any(|s| {
                s.starts_at <= now
                    && s.rule_id.is_none_or(|r| r == subject.rule.id)
                    && s.device_id.is_none_or(|d| Some(d) == subject.device_id)
                    && s.group_id.is_none_or(|g| Some(g) == group)
            });
        if silenced {
            return Ok(true);
        }
        if subject.rule.rule.kind == "system" {
            // A system alert reports the problem that inhibits the others (a connection
            // failure among them): it is never inhibited itself.
            return Ok(false);
        }
        let Some(device_id) = subject.device_id else {
            return Ok(false);
        };
        Ok(self
            .store
            .list_open_notifications(CONNECTION_FAILURE)
            .await?
            .iter()
            .any(|n| n.device_id == Some(device_id)))
    }

    /// The notification, in the channel senders' `Message` shape.
    fn message(
        &self,
        index: &RuleIndex,
        subject: &Subject<'_>,
        change: &AlertChange,
        threshold: Option<f64>,
    ) -> Value {
        let rule = &subject.rule.rule;
        let alert = &change.alert;
        let device_name = subject
            .device_id
            .and_then(|d| index.devices.get(&d))
            .map(|d| d.name.clone());
        let device = device_name.clone().unwrap_or_else(|| {
            if subject.device_id.is_none() && rule.kind == "system" {
                // A check of ddms itself, not of a device.
                "ddms".into()
            } else {
                "every device".into()
            }
        });
        let detail = subject.detail.map(|d| format!(": {d}")).unwrap_or_default();
        let metric = subject.metric.unwrap_or("");
        let value = alert.value.map(|v| format!("{v}")).unwrap_or_default();
        let check = rule.system_check.as_deref().unwrap_or("system");
        let summary = match (change.event.as_str(), Condition::parse(&rule.condition)) {
            ("resolved", None) => format!("resolved: {check} on {device}{detail}"),
            ("firing" | "repeat", None) => format!("{check} on {device}{detail}"),
            ("resolved", Some(Condition::NoData)) => format!("{metric} data is back on {device}"),
            ("resolved", _) => format!("resolved: {metric} {value} on {device}"),
            ("acknowledged", _) => format!(
                "acknowledged by {}: {} on {device}",
                alert.acknowledged_by.as_deref().unwrap_or("someone"),
                rule.name
            ),
            (_, Some(Condition::NoData)) => format!(
                "no {metric} data from {device} for {} s",
                rule.no_data_s.unwrap_or(0)
            ),
            (_, _) => format!(
                "{metric} {value} {} {} on {device}",
                rule.condition,
                threshold.map(|t| t.to_string()).unwrap_or_default()
            ),
        };
        json!({
            "idempotency_key": "",
            "alert_id": alert.id,
            "rule_id": subject.rule.id,
            "rule_name": rule.name,
            "state": change.event,
            "severity": rule.severity,
            "device_id": subject.device_id,
            "device_name": device_name,
            "metric": subject.metric,
            "value": alert.value,
            "threshold": threshold,
            "started_at": alert.started_at,
            "at": change.at,
            "summary": summary,
            "link": self.public_url.as_ref().zip(subject.device_id)
                .map(|(base, id)| format!("{}/devices/{id}", base.trim_end_matches('/'))),
            "acknowledged_by": alert.acknowledged_by,
            "comment": alert.ack_comment,
            "grouped": [],
        })
    }

    /// Stores a change; on success counts it and publishes it live. `Ok(false)`: lost the race.
    pub(super) async fn apply(
        &self,
        subject: &Subject<'_>,
        index: &RuleIndex,
        change: &AlertChange,
    ) -> StoreResult<bool> {
        if !self.store.apply_alert_change(change).await? {
            return Ok(false);
        }
        self.metrics
            .transitions
            .with_label_values(&[change.event.as_str()])
            .inc();
        let alert = &change.alert;
        tracing::info!(alert.id = %alert.id, rule.id = %subject.rule.id, event = %change.event, muted = change.muted, "alert transition");
        self.events.publish(LiveEvent::Alert(AlertChanged {
            alert_id: alert.id,
            rule_id: subject.rule.id,
            rule_name: subject.rule.rule.name.clone(),
            severity: subject.rule.rule.severity.clone(),
            event: change.event.clone(),
            state: alert.state,
            device_id: alert.device_id,
            device_name: alert
                .device_id
                .and_then(|d| index.devices.get(&d))
                .map(|d| d.name.clone()),
            metric: alert.metric.clone(),
            value: alert.value,
            at: change.at,
            muted: change.muted,
        }));
        Ok(true)
    }

    /// Acknowledges an open alert (recorded, announced as `acknowledged`). `NotFound` for no
    /// such alert, `Conflict` when it is resolved or already acknowledged.
    pub async fn acknowledge(
        &self,
        alert_id: Uuid,
        by: &str,
        comment: Option<String>,
    ) -> StoreResult<Alert> {
        let index = self.index();
        for _ in 0..MAX_RACE_RETRIES {
            let open = self.store.get_alert(alert_id).await?;
            if open.state == AlertState::Resolved {
                return Err(StoreError::Conflict("the alert is resolved".into()));
            }
            if open.acknowledged_at.is_some() {
                return Err(StoreError::Conflict(
                    "the alert is already acknowledged".into(),
                ));
            }
            let rule = match index.rules.get(&open.rule_id) {
                Some(rule) => rule.clone(),
                None => Arc::new(self.store.get_alert_rule(open.rule_id).await?),
            };
            let mut alert = next(&open);
            alert.acknowledged_by = Some(by.to_string());
            alert.acknowledged_at = Some(Utc::now());
            alert.ack_comment = comment.clone();
            let subject = Subject {
                rule: &rule,
                device_id: open.device_id,
                metric: open.metric.as_deref(),
                detail: None,
            };
            let threshold = Check::of(&rule.rule)
                .zip(open.value)
                .map(|(c, v)| c.threshold_for(v));
            let notify = open.state == AlertState::Firing;
            let change = self
                .change(
                    &index,
                    &subject,
                    alert,
                    "acknowledged",
                    Some(open.state),
                    notify,
                    threshold,
                    Some(by.to_string()),
                )
                .await?;
            if self.apply(&subject, &index, &change).await? {
                return Ok(change.alert);
            }
        }
        Err(StoreError::Conflict(
            "the alert changed meanwhile; try again".into(),
        ))
    }
}

/// The alert row as the next transition starts it: same alert, `seq` one up.
pub(super) fn next(alert: &Alert) -> Alert {
    let mut next = alert.clone();
    next.seq = alert.seq + 1;
    next
}

fn phase_of(alert: Option<&Alert>) -> Phase {
    match alert {
        Some(a) if a.state == AlertState::Firing => Phase::Firing,
        Some(a) if a.state == AlertState::Pending => Phase::Pending {
            since: a.pending_since.unwrap_or(a.created_at),
        },
        _ => Phase::Idle,
    }
}
