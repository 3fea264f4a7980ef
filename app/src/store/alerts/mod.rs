//! Alerting persistence: rules, channels, alerts and their transitions, the delivery outbox and
//! silences. [`AlertStore`] is a supertrait of [`super::Store`], so `Arc<dyn Store>` reaches it.
//!
//! The invariant everything here serves: exactly one notification per transition. A transition
//! is an UPDATE of the alert row guarded by the `seq` it was computed from, in one transaction
//! with its history row and one outbox row per channel (idempotency key
//! `{alert_id}:{seq}:{channel_id}`, UNIQUE). Two instances computing the same transition: one
//! writes, the other updates nothing and writes nothing ([`AlertStore::apply_alert_change`]
//! returns `false`).

mod postgres;
mod rows;
mod shared;
mod sqlite;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::common::{Id, Micros, Nullable};
use super::{StoreError, StoreResult};

/// A rule as validated by `crate::alerts::rule` (what is stored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct NewAlertRule {
    pub name: String,
    /// `threshold` | `no_data` | `system` (derived from the condition).
    pub kind: String,
    #[sqlx(try_from = "Nullable<Id>")]
    pub device_id: Option<Uuid>,
    #[sqlx(try_from = "Nullable<Id>")]
    pub group_id: Option<Uuid>,
    pub metric: Option<String>,
    /// `above` | `below` | `outside` | `inside` | `no_data`
    pub condition: String,
    pub threshold: Option<f64>,
    pub threshold_high: Option<f64>,
    pub clear_threshold: Option<f64>,
    pub clear_threshold_high: Option<f64>,
    pub for_s: i64,
    pub repeat_interval_s: Option<i64>,
    pub no_data_s: Option<i64>,
    /// What a `system` rule watches (`alerts::system::CHECKS`); `None` for other kinds.
    #[serde(default)]
    pub system_check: Option<String>,
    /// `info` | `warning` | `critical`
    pub severity: String,
    /// In their own table: read apart from the rule's row.
    #[sqlx(skip)]
    pub channels: Vec<Uuid>,
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct AlertRule {
    #[sqlx(try_from = "Id")]
    pub id: Uuid,
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub rule: NewAlertRule,
    #[sqlx(try_from = "Micros")]
    pub created_at: DateTime<Utc>,
    #[sqlx(try_from = "Micros")]
    pub updated_at: DateTime<Utc>,
}

/// A notification channel as created or changed through the API.
#[derive(Debug, Clone)]
pub struct NewChannel {
    pub name: String,
    /// `webhook` | `discord` | `slack` | `email`
    pub kind: String,
    pub settings: serde_json::Value,
    /// On update, `None` keeps the stored secret.
    pub secret: Option<SecretString>,
    pub allow_private: bool,
}

/// A channel as listed: never its secret, only whether it has one.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct ChannelInfo {
    #[sqlx(try_from = "Id")]
    pub id: Uuid,
    pub name: String,
    pub kind: String,
    pub settings: serde_json::Value,
    pub has_secret: bool,
    pub allow_private: bool,
    #[sqlx(try_from = "Micros")]
    pub created_at: DateTime<Utc>,
    #[sqlx(try_from = "Micros")]
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Pending,
    Firing,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> StoreResult<Self> {
        match s {
            "pending" => Ok(AlertState::Pending),
            "firing" => Ok(AlertState::Firing),
            "resolved" => Ok(AlertState::Resolved),
            other => Err(StoreError::Corrupt(format!("alert state `{other}`"))),
        }
    }
}

/// A transition's `from_state`, which a new alert has not.
impl TryFrom<Nullable<String>> for Option<AlertState> {
    type Error = StoreError;
    fn try_from(text: Nullable<String>) -> StoreResult<Self> {
        text.0.as_deref().map(AlertState::parse).transpose()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Alert {
    #[sqlx(try_from = "Id")]
    pub id: Uuid,
    #[sqlx(try_from = "Id")]
    pub rule_id: Uuid,
    #[sqlx(try_from = "Nullable<Id>")]
    pub device_id: Option<Uuid>,
    pub metric: Option<String>,
    #[sqlx(try_from = "String")]
    pub state: AlertState,
    pub value: Option<f64>,
    #[sqlx(try_from = "Nullable<Micros>")]
    pub pending_since: Option<DateTime<Utc>>,
    #[sqlx(try_from = "Nullable<Micros>")]
    pub started_at: Option<DateTime<Utc>>,
    #[sqlx(try_from = "Nullable<Micros>")]
    pub resolved_at: Option<DateTime<Utc>>,
    #[sqlx(try_from = "Nullable<Micros>")]
    pub last_notified_at: Option<DateTime<Utc>>,
    #[sqlx(try_from = "Nullable<Micros>")]
    pub last_eval_ts: Option<DateTime<Utc>>,
    pub acknowledged_by: Option<String>,
    #[sqlx(try_from = "Nullable<Micros>")]
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub ack_comment: Option<String>,
    pub seq: i64,
    #[sqlx(try_from = "Micros")]
    pub created_at: DateTime<Utc>,
}

/// One entry of an alert's history.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct AlertTransition {
    #[sqlx(try_from = "Id")]
    pub alert_id: Uuid,
    pub seq: i64,
    /// `pending` | `firing` | `resolved` | `repeat` | `acknowledged`
    pub event: String,
    #[sqlx(try_from = "Nullable<String>")]
    pub from_state: Option<AlertState>,
    #[sqlx(try_from = "String")]
    pub to_state: AlertState,
    #[sqlx(try_from = "Micros")]
    pub at: DateTime<Utc>,
    pub value: Option<f64>,
    /// Recorded under a silence or an inhibition: nothing was sent.
    pub muted: bool,
    pub actor: Option<String>,
}

/// One outbox row to write with a transition.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub channel_id: Uuid,
    /// The notification as the channel senders take it (`alerts::channels::Message`).
    pub message: serde_json::Value,
    pub expires_at: DateTime<Utc>,
}

/// Readings evaluated without a transition, for [`AlertStore::record_evaluations`]: the open
/// alert as the evaluation saw it (`alert_id`, `seq`) and the newest reading evaluated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvaluationStamp {
    pub alert_id: Uuid,
    pub seq: i64,
    pub value: f64,
    pub last_eval_ts: DateTime<Utc>,
}

/// A transition to store: the alert row as it becomes (its `seq` one above `expected_seq`, or
/// 1 for a new alert), the history row and the outbox rows.
#[derive(Debug, Clone)]
pub struct AlertChange {
    pub alert: Alert,
    /// `None`: the alert is new (inserted; another open alert for the key means we lost).
    pub expected_seq: Option<i64>,
    pub event: String,
    pub from_state: Option<AlertState>,
    pub at: DateTime<Utc>,
    pub muted: bool,
    pub actor: Option<String>,
    pub deliveries: Vec<NewDelivery>,
}

impl AlertChange {
    /// `{alert_id}:{seq}:{channel_id}`: stable per transition and channel.
    pub fn idempotency_key(&self, channel_id: Uuid) -> String {
        idempotency_key(self.alert.id, self.alert.seq, channel_id)
    }
}

pub fn idempotency_key(alert_id: Uuid, seq: i64, channel_id: Uuid) -> String {
    format!("{alert_id}:{seq}:{channel_id}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Pending,
    Delivered,
    Dead,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> StoreResult<Self> {
        match s {
            "pending" => Ok(DeliveryState::Pending),
            "delivered" => Ok(DeliveryState::Delivered),
            "dead" => Ok(DeliveryState::Dead),
            other => Err(StoreError::Corrupt(format!("delivery state `{other}`"))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Delivery {
    #[sqlx(try_from = "Id")]
    pub id: Uuid,
    pub idempotency_key: String,
    #[sqlx(try_from = "Id")]
    pub channel_id: Uuid,
    #[sqlx(try_from = "Nullable<Id>")]
    pub alert_id: Option<Uuid>,
    #[sqlx(try_from = "Nullable<Id>")]
    pub rule_id: Option<Uuid>,
    pub event: String,
    pub message: serde_json::Value,
    #[sqlx(try_from = "String")]
    pub state: DeliveryState,
    pub attempts: i32,
    #[sqlx(try_from = "Micros")]
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    #[sqlx(try_from = "Micros")]
    pub created_at: DateTime<Utc>,
    #[sqlx(try_from = "Micros")]
    pub expires_at: DateTime<Utc>,
    #[sqlx(try_from = "Nullable<Micros>")]
    pub delivered_at: Option<DateTime<Utc>>,
}

/// `GET /api/alerts` filters.
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    pub state: Option<AlertState>,
    pub device_id: Option<Uuid>,
    /// Alerts created at or after this.
    pub since: Option<DateTime<Utc>>,
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct NewSilence {
    #[sqlx(try_from = "Nullable<Id>")]
    pub rule_id: Option<Uuid>,
    #[sqlx(try_from = "Nullable<Id>")]
    pub device_id: Option<Uuid>,
    #[sqlx(try_from = "Nullable<Id>")]
    pub group_id: Option<Uuid>,
    #[sqlx(try_from = "Micros")]
    pub starts_at: DateTime<Utc>,
    #[sqlx(try_from = "Micros")]
    pub until: DateTime<Utc>,
    pub comment: Option<String>,
    pub created_by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Silence {
    #[sqlx(try_from = "Id")]
    pub id: Uuid,
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub silence: NewSilence,
    #[sqlx(try_from = "Micros")]
    pub created_at: DateTime<Utc>,
}

/// Outbox gauges.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct OutboxStats {
    pub pending: u64,
    pub oldest_pending: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AlertPruneCounts {
    pub alerts: u64,
    pub deliveries: u64,
}

#[async_trait]
pub trait AlertStore: Send + Sync {
    async fn create_alert_rule(&self, rule: &NewAlertRule) -> StoreResult<AlertRule>;
    async fn get_alert_rule(&self, id: Uuid) -> StoreResult<AlertRule>;
    /// Every rule, by name.
    async fn list_alert_rules(&self) -> StoreResult<Vec<AlertRule>>;
    async fn update_alert_rule(&self, id: Uuid, rule: &NewAlertRule) -> StoreResult<AlertRule>;
    /// Deletes a rule with its alerts (their queued notifications stay and are still sent).
    async fn delete_alert_rule(&self, id: Uuid) -> StoreResult<()>;

    async fn create_channel(&self, channel: &NewChannel) -> StoreResult<ChannelInfo>;
    async fn get_channel(&self, id: Uuid) -> StoreResult<ChannelInfo>;
    /// The channel with its secret, for sending only.
    async fn channel_secret(&self, id: Uuid) -> StoreResult<Option<SecretString>>;
    async fn list_channels(&self) -> StoreResult<Vec<ChannelInfo>>;
    /// Replaces a channel; `channel.secret == None` keeps the stored secret.
    async fn update_channel(&self, id: Uuid, channel: &NewChannel) -> StoreResult<ChannelInfo>;
    /// Deletes a channel: rules lose it, its queued notifications go with it.
    async fn delete_channel(&self, id: Uuid) -> StoreResult<()>;

    async fn get_alert(&self, id: Uuid) -> StoreResult<Alert>;
    /// The open (pending or firing) alert of a rule for a device and metric, if any.
    async fn find_open_alert(
        &self,
        rule_id: Uuid,
        device_id: Option<Uuid>,
        metric: Option<&str>,
    ) -> StoreResult<Option<Alert>>;
    /// The newest alert (open or resolved) of a rule for a device and metric: its state and
    /// `last_eval_ts` are where evaluation of new readings starts.
    async fn latest_alert(
        &self,
        rule_id: Uuid,
        device_id: Option<Uuid>,
        metric: Option<&str>,
    ) -> StoreResult<Option<Alert>>;
    /// Every open alert (the evaluation ticker's work list).
    async fn list_open_alerts(&self) -> StoreResult<Vec<Alert>>;
    /// Open alerts first (newest first), then resolved ones (newest first), filtered.
    async fn list_alerts(&self, filter: &AlertFilter) -> StoreResult<Vec<Alert>>;
    /// The history of these alerts, by alert then seq.
    async fn list_transitions(&self, alert_ids: &[Uuid]) -> StoreResult<Vec<AlertTransition>>;
    /// Stores a transition (see the module docs): `Ok(false)` when another writer got there
    /// first (the row's seq moved on, or an open alert for the key already exists); nothing is
    /// written then.
    async fn apply_alert_change(&self, change: &AlertChange) -> StoreResult<bool>;
    /// Records readings evaluated without a transition (value, `last_eval_ts`) on their open
    /// alerts, all in one transaction: a batch of readings costs one commit, not one per series.
    /// Each stamp is guarded by `seq` like a transition but does not bump it. Returns the alerts
    /// that moved on meanwhile (their seq changed): nothing is written for those.
    async fn record_evaluations(&self, stamps: &[EvaluationStamp]) -> StoreResult<Vec<Uuid>>;

    /// Takes up to `limit` due pending deliveries for `lease` (others skip them meanwhile),
    /// oldest first; each claim counts as an attempt.
    async fn claim_deliveries(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> StoreResult<Vec<Delivery>>;
    async fn mark_delivered(&self, ids: &[Uuid], at: DateTime<Utc>) -> StoreResult<()>;
    async fn reschedule_delivery(
        &self,
        id: Uuid,
        next_attempt_at: DateTime<Utc>,
        error: &str,
    ) -> StoreResult<()>;
    /// Dead letter: kept with its last error for `GET /api/deliveries?state=dead`.
    async fn mark_dead(&self, id: Uuid, error: &str) -> StoreResult<()>;
    /// Newest first.
    async fn list_deliveries(
        &self,
        state: Option<DeliveryState>,
        limit: u32,
    ) -> StoreResult<Vec<Delivery>>;
    async fn outbox_stats(&self) -> StoreResult<OutboxStats>;

    async fn create_silence(&self, silence: &NewSilence) -> StoreResult<Silence>;
    /// Silences not yet over at `now`, or every one when `None`.
    async fn list_silences(&self, active_at: Option<DateTime<Utc>>) -> StoreResult<Vec<Silence>>;
    async fn delete_silence(&self, id: Uuid) -> StoreResult<()>;

    /// Retention: deletes alerts resolved before `before` (with their history), delivered or
    /// dead deliveries created before it, and silences over before it.
    async fn prune_alert_history(&self, before: DateTime<Utc>) -> StoreResult<AlertPruneCounts>;
}

/// Rules may name at most this many channels.
pub const MAX_RULE_CHANNELS: usize = 20;
