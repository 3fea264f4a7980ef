//! The outbox worker: every instance runs one. It claims due deliveries (a lease, and on
//! PostgreSQL `FOR UPDATE SKIP LOCKED`, so instances never send one row at the same time),
//! sends each through the [`Deliverer`], and records the outcome: delivered; retried with
//! exponential back-off and jitter (or when the receiver asked); dead-lettered when refused for
//! good or past `expires_at`. Delivery is at least once — a crash between sending and recording
//! sends again — and receivers dedupe on the idempotency key.
//!
//! Grouping: more than `alerts.group_threshold` firing notifications of one rule for one
//! channel, due together and queued within `alerts.group_window`, go out as one message.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::RngExt;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::channels::{
    Channel, ChannelKind, Deliverer, GroupedAlert, Message, MessageState, Outcome,
};
use super::metrics::AlertMetrics;
use crate::backoff::{equal_jitter, Backoff};
use crate::config::alerts::AlertsConfig;
use crate::store::alerts::Delivery;
use crate::store::{Store, StoreError, StoreResult};

/// Deliveries claimed per round.
const CLAIM_BATCH: u32 = 50;
/// How often an idle worker looks for due deliveries.
const IDLE_POLL: Duration = Duration::from_millis(500);
/// Retry back-off: from 1 s, doubling, at most 5 min (before jitter).
const RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
/// A claim outlives the attempt it covers by this much.
const LEASE_MARGIN: Duration = Duration::from_secs(30);

pub struct OutboxWorker {
    store: Arc<dyn Store>,
    deliverer: Arc<Deliverer>,
    config: AlertsConfig,
    metrics: AlertMetrics,
}

/// One message to send and the deliveries it settles.
struct Send {
    channel_id: Uuid,
    message: Message,
    deliveries: Vec<Delivery>,
}

impl OutboxWorker {
    pub fn new(
        store: Arc<dyn Store>,
        deliverer: Arc<Deliverer>,
        config: AlertsConfig,
        metrics: AlertMetrics,
    ) -> Self {
        OutboxWorker {
            store,
            deliverer,
            config,
            metrics,
        }
    }

    /// Sends until cancelled; a send in progress is finished first.
    pub async fn run(self, cancel: CancellationToken) {
        loop {
            let busy = match self.round(Utc::now()).await {
                Ok(sent) => sent > 0,
                Err(e) => {
                    tracing::warn!(error = %e, "notification outbox round failed; will retry");
                    false
                }
            };
            if busy && !cancel.is_cancelled() {
                continue;
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(IDLE_POLL) => {}
            }
        }
    }

    /// Claims and sends one batch; returns how many deliveries it settled.
    pub async fn round(&self, now: DateTime<Utc>) -> StoreResult<usize> {
        let lease = self.config.delivery_timeout + LEASE_MARGIN;
        let claimed = self.store.claim_deliveries(now, lease, CLAIM_BATCH).await?;
        if claimed.is_empty() {
            return Ok(0);
        }
        let count = claimed.len();
        let mut live = Vec::with_capacity(count);
        for delivery in claimed {
            if delivery.expires_at <= now {
                let reason = delivery
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "not attempted".into());
                self.dead(&delivery, None, &format!("expired; last error: {reason}"))
                    .await?;
            } else {
                live.push(delivery);
            }
        }
        let mut channels: HashMap<Uuid, Option<Channel>> = HashMap::new();
        let sends = self.group(live);
        let mut attempts = Vec::with_capacity(sends.len());
        for send in &sends {
            if let std::collections::hash_map::Entry::Vacant(entry) =
                channels.entry(send.channel_id)
            {
                entry.insert(self.channel(send.channel_id).await?);
            }
        }
        for send in sends {
            let channel = channels.get(&send.channel_id).cloned().flatten();
            let deliverer = self.deliverer.clone();
            attempts.push(async move {
                let outcome = match &channel {
                    Some(channel) => deliverer.deliver(channel, &send.message).await,
                    None => Outcome::Permanent {
                        reason: "the channel no longer exists".into(),
                    },
                };
                (send, channel.map(|c| c.kind), outcome)
            });
        }
        // Each attempt is bounded by `delivery_timeout`: the batch takes about one.
        for (send, kind, outcome) in futures::future::join_all(attempts).await {
            self.settle(send, kind, outcome, Utc::now()).await?;
        }
        Ok(count)
    }

    async fn channel(&self, id: Uuid) -> StoreResult<Option<Channel>> {
        let info = match self.store.get_channel(id).await {
            Ok(info) => info,
            Err(StoreError::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        let kind: ChannelKind = match serde_json::from_value(serde_json::json!(info.kind)) {
            Ok(kind) => kind,
            Err(_) => return Ok(None),
        };
        Ok(Some(Channel {
            id: info.id,
            name: info.name,
            kind,
            settings: info.settings,
            secret: self.store.channel_secret(id).await?,
            allow_private: info.allow_private,
        }))
    }

    /// One message per delivery, except firing notifications of one rule for one channel
    /// beyond the threshold: those become one grouped message.
    fn group(&self, deliveries: Vec<Delivery>) -> Vec<Send> {
        let window = chrono::Duration::from_std(self.config.group_window)
            .unwrap_or(chrono::Duration::seconds(60));
        let mut groups: HashMap<(Uuid, Uuid), Vec<Delivery>> = HashMap::new();
        let mut sends = Vec::new();
        for delivery in deliveries {
            match (delivery.event.as_str(), delivery.rule_id) {
                ("firing", Some(rule)) => groups
                    .entry((rule, delivery.channel_id))
                    .or_default()
                    .push(delivery),
                _ => sends.extend(single(delivery)),
            }
        }
        for ((_, channel_id), mut members) in groups {
            members.sort_by_key(|d| d.created_at);
            let first = members[0].created_at;
            let (within, later): (Vec<_>, Vec<_>) = members
                .into_iter()
                .partition(|d| d.created_at - first <= window);
            sends.extend(later.into_iter().filter_map(single));
            if within.len() > self.config.group_threshold as usize {
                sends.extend(grouped(channel_id, within));
            } else {
                sends.extend(within.into_iter().filter_map(single));
            }
        }
        sends
    }

    async fn settle(
        &self,
        send: Send,
        kind: Option<ChannelKind>,
        outcome: Outcome,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let kind = kind.map(ChannelKind::as_str).unwrap_or("unknown");
        match outcome {
            Outcome::Delivered => {
                let ids: Vec<Uuid> = send.deliveries.iter().map(|d| d.id).collect();
                self.store.mark_delivered(&ids, now).await?;
                self.metrics
                    .deliveries
                    .with_label_values(&[kind, "delivered"])
                    .inc_by(ids.len() as u64);
            }
            Outcome::Retry { after, reason } => {
                for delivery in &send.deliveries {
                    let wait = after.unwrap_or_else(|| backoff(delivery.attempts));
                    let next = now
                        + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::seconds(1));
                    if next >= delivery.expires_at {
                        self.dead(
                            delivery,
                            Some(kind),
                            &format!("expired; last error: {reason}"),
                        )
                        .await?;
                    } else {
                        self.store
                            .reschedule_delivery(delivery.id, next, &reason)
                            .await?;
                        self.metrics
                            .deliveries
                            .with_label_values(&[kind, "retry"])
                            .inc();
                    }
                }
            }
            Outcome::Permanent { reason } => {
                for delivery in &send.deliveries {
                    self.dead(delivery, Some(kind), &reason).await?;
                }
            }
        }
        Ok(())
    }

    async fn dead(&self, delivery: &Delivery, kind: Option<&str>, reason: &str) -> StoreResult<()> {
        tracing::warn!(delivery.id = %delivery.id, key = %delivery.idempotency_key, %reason, "notification dead-lettered");
        self.store.mark_dead(delivery.id, reason).await?;
        self.metrics
            .deliveries
            .with_label_values(&[kind.unwrap_or("unknown"), "dead"])
            .inc();
        Ok(())
    }
}

/// The retry delay after `attempts` attempts: 1 s doubling, capped at 5 min, with "equal
/// jitter" (between half and all of it) so that instances retrying one receiver spread out.
pub fn backoff(attempts: i32) -> Duration {
    let failures_beyond_the_first = attempts.saturating_sub(1).max(0).unsigned_abs();
    equal_jitter(
        RETRY.nominal(failures_beyond_the_first),
        rand::rng().random_range(0.0..=1.0),
    )
}

fn single(delivery: Delivery) -> Option<Send> {
    match serde_json::from_value::<Message>(delivery.message.clone()) {
        Ok(message) => Some(Send {
            channel_id: delivery.channel_id,
            message,
            deliveries: vec![delivery],
        }),
        Err(e) => {
            tracing::error!(delivery.id = %delivery.id, error = %e, "stored notification is unreadable; skipped until it expires");
            None
        }
    }
}

fn grouped(channel_id: Uuid, members: Vec<Delivery>) -> Option<Send> {
    let messages: Vec<Message> = members
        .iter()
        .filter_map(|d| serde_json::from_value(d.message.clone()).ok())
        .collect();
    let first = messages.first()?.clone();
    let mut keys: Vec<&str> = members.iter().map(|d| d.idempotency_key.as_str()).collect();
    keys.sort_unstable();
    // Stable for the same members, so a retried group carries the same key.
    let digest = Sha256::digest(keys.join("\n").as_bytes());
    let message = Message {
        idempotency_key: format!("group:{}", hex::encode(&digest[..16])),
        alert_id: None,
        rule_id: first.rule_id,
        rule_name: first.rule_name.clone(),
        state: MessageState::Firing,
        severity: first.severity,
        device_id: None,
        device_name: None,
        metric: first.metric.clone(),
        value: None,
        threshold: first.threshold,
        started_at: messages.iter().filter_map(|m| m.started_at).min(),
        at: messages.iter().map(|m| m.at).max().unwrap_or(first.at),
        summary: format!("{}: {} alerts firing", first.rule_name, messages.len()),
        link: None,
        acknowledged_by: None,
        comment: None,
        grouped: messages
            .iter()
            .map(|m| GroupedAlert {
                alert_id: m.alert_id.unwrap_or_default(),
                device_id: m.device_id,
                device_name: m.device_name.clone(),
                metric: m.metric.clone(),
                value: m.value,
            })
            .collect(),
    };
    Some(Send {
        channel_id,
        message,
        deliveries: members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_to_five_minutes_with_jitter() {
        for (attempts, full) in [(1, 1.0), (2, 2.0), (3, 4.0), (10, 300.0), (40, 300.0)] {
            for _ in 0..20 {
                let wait = backoff(attempts).as_secs_f64();
                assert!(wait >= full / 2.0 && wait <= full, "{attempts}: {wait}");
            }
        }
    }
}
