//! Conformance of the alerting store (`AlertStore`) on every backend: rules and channels, the
//! guarded transition (exactly one writer per transition, outbox rows in the same
//! transaction), claiming the outbox, silences, history pruning.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use ddms::store::alerts::{
    Alert, AlertChange, AlertFilter, AlertState, DeliveryState, EvaluationStamp, NewAlertRule,
    NewChannel, NewDelivery, NewSilence,
};
use ddms::store::{self, NewDevice, Protocol, Store, StoreError};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use uuid::Uuid;

use crate::support::app::{database_url, Db};
use crate::support::services::Provider;

async fn open(db: Db) -> (Arc<dyn Store>, tempfile::TempDir) {
    let (url, dir) = database_url(&db).await;
    let store = store::connect(&url.into(), 8, Duration::from_secs(5))
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    (store, dir)
}

fn ts(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_790_000_000 + secs, 0).unwrap()
}

async fn device(store: &dyn Store, name: &str) -> Uuid {
    store
        .create_device(&NewDevice {
            name: name.into(),
            protocol: Protocol::Mqtt,
            group_id: None,
            config: json!({}),
            enabled: true,
        })
        .await
        .unwrap()
        .id
}

async fn channel(store: &dyn Store, name: &str) -> Uuid {
    store
        .create_channel(&NewChannel {
            name: name.into(),
            kind: "webhook".into(),
            settings: json!({"url": "http://127.0.0.1:9/hook"}),
            secret: Some(SecretString::from("s3cret")),
            allow_private: true,
        })
        .await
        .unwrap()
        .id
}

fn rule(device_id: Option<Uuid>, channels: Vec<Uuid>) -> NewAlertRule {
    NewAlertRule {
        name: "hot".into(),
        kind: "threshold".into(),
        device_id,
        group_id: None,
        metric: Some("temperature".into()),
        condition: "above".into(),
        threshold: Some(50.0),
        threshold_high: None,
        clear_threshold: Some(45.0),
        clear_threshold_high: None,
        for_s: 60,
        repeat_interval_s: None,
        no_data_s: None,
        system_check: None,
        severity: "critical".into(),
        channels,
        enabled: true,
    }
}

fn new_alert(rule_id: Uuid, device_id: Uuid, state: AlertState, at: DateTime<Utc>) -> Alert {
    Alert {
        id: Uuid::now_v7(),
        rule_id,
        device_id: Some(device_id),
        metric: Some("temperature".into()),
        state,
        value: Some(55.0),
        pending_since: Some(at),
        started_at: None,
        resolved_at: None,
        last_notified_at: None,
        last_eval_ts: Some(at),
        acknowledged_by: None,
        acknowledged_at: None,
        ack_comment: None,
        seq: 1,
        created_at: at,
    }
}

fn change(alert: Alert, expected: Option<i64>, event: &str, channels: &[Uuid]) -> AlertChange {
    let at = alert.last_eval_ts.unwrap_or_else(Utc::now);
    AlertChange {
        deliveries: channels
            .iter()
            .map(|c| NewDelivery {
                channel_id: *c,
                message: json!({"state": event, "alert_id": alert.id}),
                expires_at: at + chrono::Duration::hours(24),
            })
            .collect(),
        alert,
        expected_seq: expected,
        event: event.into(),
        from_state: None,
        at,
        muted: false,
        actor: None,
    }
}

async fn rules_and_channels_round_trip_and_secrets_stay_hidden(store: Arc<dyn Store>) {
    let dev = device(store.as_ref(), "boiler-1").await;
    let c1 = channel(store.as_ref(), "ops").await;
    let c2 = channel(store.as_ref(), "oncall").await;
    let info = store.get_channel(c1).await.unwrap();
    assert!(info.has_secret);
    assert_eq!(info.settings, json!({"url": "http://127.0.0.1:9/hook"}));
    let listed = serde_json::to_string(&store.list_channels().await.unwrap()).unwrap();
    assert!(!listed.contains("s3cret"), "{listed}");
    assert_eq!(
        store
            .channel_secret(c1)
            .await
            .unwrap()
            .unwrap()
            .expose_secret(),
        "s3cret"
    );
    // Updating without a secret keeps it.
    let mut changed = NewChannel {
        name: "ops-2".into(),
        kind: "webhook".into(),
        settings: json!({"url": "http://127.0.0.1:9/other"}),
        secret: None,
        allow_private: true,
    };
    let updated = store.update_channel(c1, &changed).await.unwrap();
    assert_eq!(updated.name, "ops-2");
    assert!(updated.has_secret);
    changed.name = "oncall".into();
    assert!(matches!(
        store.update_channel(c1, &changed).await,
        Err(StoreError::Conflict(_))
    ));

    let created = store
        .create_alert_rule(&rule(Some(dev), vec![c2, c1]))
        .await
        .unwrap();
    assert_eq!(created.rule, rule(Some(dev), vec![c2, c1]));
    assert_eq!(store.get_alert_rule(created.id).await.unwrap(), created);
    let mut other = rule(None, vec![c1]);
    other.name = "cold".into();
    other.condition = "below".into();
    other.clear_threshold = Some(55.0);
    store.update_alert_rule(created.id, &other).await.unwrap();
    let rules = store.list_alert_rules().await.unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].rule, other);
    // Unknown channel or device: refused, nothing stored.
    assert!(matches!(
        store
            .create_alert_rule(&rule(Some(dev), vec![Uuid::now_v7()]))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store
            .create_alert_rule(&rule(Some(Uuid::now_v7()), vec![]))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.list_alert_rules().await.unwrap().len(), 1);
    // Deleting a channel takes it off the rule.
    store.delete_channel(c1).await.unwrap();
    assert!(store
        .get_alert_rule(created.id)
        .await
        .unwrap()
        .rule
        .channels
        .is_empty());
    store.delete_alert_rule(created.id).await.unwrap();
    assert!(matches!(
        store.get_alert_rule(created.id).await,
        Err(StoreError::NotFound)
    ));
}

async fn a_transition_is_written_once_with_its_outbox_rows(store: Arc<dyn Store>) {
    let dev = device(store.as_ref(), "boiler-1").await;
    let c1 = channel(store.as_ref(), "ops").await;
    let c2 = channel(store.as_ref(), "oncall").await;
    let r = store
        .create_alert_rule(&rule(Some(dev), vec![c1, c2]))
        .await
        .unwrap();

    let pending = new_alert(r.id, dev, AlertState::Pending, ts(0));
    assert!(store
        .apply_alert_change(&change(pending.clone(), None, "pending", &[]))
        .await
        .unwrap());
    // A second instance creating the same open alert (another id) loses.
    let rival = new_alert(r.id, dev, AlertState::Pending, ts(0));
    assert!(!store
        .apply_alert_change(&change(rival, None, "pending", &[]))
        .await
        .unwrap());
    let open = store
        .find_open_alert(r.id, Some(dev), Some("temperature"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(open.id, pending.id);

    let mut firing = open.clone();
    firing.state = AlertState::Firing;
    firing.started_at = Some(ts(61));
    firing.last_eval_ts = Some(ts(61));
    firing.seq = 2;
    // Two instances race for pending → firing: exactly one writes.
    let first = change(firing.clone(), Some(1), "firing", &[c1, c2]);
    let second = change(firing.clone(), Some(1), "firing", &[c1, c2]);
    let (a, b) = tokio::join!(
        store.apply_alert_change(&first),
        store.apply_alert_change(&second),
    );
    let wins = [a.unwrap(), b.unwrap()].iter().filter(|w| **w).count();
    assert_eq!(wins, 1);
    let deliveries = store.list_deliveries(None, 100).await.unwrap();
    let mut keys: Vec<String> = deliveries
        .iter()
        .map(|d| d.idempotency_key.clone())
        .collect();
    keys.sort();
    let mut expected = vec![
        format!("{}:2:{c1}", pending.id),
        format!("{}:2:{c2}", pending.id),
    ];
    expected.sort();
    assert_eq!(keys, expected);
    assert!(deliveries.iter().all(|d| d.state == DeliveryState::Pending));

    // Readings without a transition move last_eval_ts forward only; a batch of stamps
    // reports the alerts that moved on (stale seq, or gone) and writes the rest.
    let stamp = |alert_id, seq, value, at| EvaluationStamp {
        alert_id,
        seq,
        value,
        last_eval_ts: at,
    };
    let gone = Uuid::now_v7();
    let moved = store
        .record_evaluations(&[
            stamp(pending.id, 2, 48.0, ts(70)),
            stamp(gone, 1, 1.0, ts(70)),
        ])
        .await
        .unwrap();
    assert_eq!(moved, [gone]);
    assert!(store
        .record_evaluations(&[stamp(pending.id, 2, 47.0, ts(65))])
        .await
        .unwrap()
        .is_empty());
    let now = store.get_alert(pending.id).await.unwrap();
    assert_eq!(now.last_eval_ts, Some(ts(70)));
    // The value is the newest reading's: an older stamp (a slower instance) leaves it.
    assert_eq!(now.value, Some(48.0));
    assert_eq!(
        store
            .record_evaluations(&[stamp(pending.id, 1, 46.0, ts(90))])
            .await
            .unwrap(),
        [pending.id]
    );
    assert_eq!(store.get_alert(pending.id).await.unwrap().value, Some(48.0));
    assert!(store.record_evaluations(&[]).await.unwrap().is_empty());

    let history = store.list_transitions(&[pending.id]).await.unwrap();
    let events: Vec<&str> = history.iter().map(|t| t.event.as_str()).collect();
    assert_eq!(events, ["pending", "firing"]);

    // Listing: open first; filters.
    let mut resolved = store.get_alert(pending.id).await.unwrap();
    resolved.state = AlertState::Resolved;
    resolved.resolved_at = Some(ts(80));
    resolved.seq = 3;
    assert!(store
        .apply_alert_change(&change(resolved, Some(2), "resolved", &[]))
        .await
        .unwrap());
    let next = new_alert(r.id, dev, AlertState::Pending, ts(100));
    assert!(store
        .apply_alert_change(&change(next.clone(), None, "pending", &[]))
        .await
        .unwrap());
    let all = store
        .list_alerts(&AlertFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|a| a.id).collect::<Vec<_>>(),
        [next.id, pending.id]
    );
    let only_resolved = store
        .list_alerts(&AlertFilter {
            state: Some(AlertState::Resolved),
            device_id: Some(dev),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(only_resolved.len(), 1);
    assert_eq!(store.list_open_alerts().await.unwrap().len(), 1);
}

async fn the_outbox_is_claimed_once_rescheduled_and_dead_lettered(store: Arc<dyn Store>) {
    let dev = device(store.as_ref(), "boiler-1").await;
    let c1 = channel(store.as_ref(), "ops").await;
    let r = store
        .create_alert_rule(&rule(Some(dev), vec![c1]))
        .await
        .unwrap();
    let now = Utc::now();
    for i in 0..3 {
        let mut a = new_alert(r.id, dev, AlertState::Firing, now);
        a.metric = Some(format!("m{i}"));
        a.last_eval_ts = Some(now);
        assert!(store
            .apply_alert_change(&change(a, None, "firing", &[c1]))
            .await
            .unwrap());
    }
    assert_eq!(store.outbox_stats().await.unwrap().pending, 3);
    // Concurrent claimers never take the same row.
    let (a, b) = tokio::join!(
        store.claim_deliveries(now, Duration::from_secs(30), 2),
        store.claim_deliveries(now, Duration::from_secs(30), 2),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.len() + b.len(), 3);
    let mut ids: Vec<Uuid> = a.iter().chain(&b).map(|d| d.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3);
    assert!(a.iter().chain(&b).all(|d| d.attempts == 1));
    // Leased: nothing more to claim until the lease ends.
    assert!(store
        .claim_deliveries(now, Duration::from_secs(30), 10)
        .await
        .unwrap()
        .is_empty());

    store.mark_delivered(&ids[..1], now).await.unwrap();
    store
        .reschedule_delivery(ids[1], now + chrono::Duration::seconds(5), "HTTP 500")
        .await
        .unwrap();
    store.mark_dead(ids[2], "HTTP 404").await.unwrap();
    assert!(store
        .claim_deliveries(now, Duration::from_secs(30), 10)
        .await
        .unwrap()
        .is_empty());
    let again = store
        .claim_deliveries(
            now + chrono::Duration::seconds(5),
            Duration::from_secs(30),
            10,
        )
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, ids[1]);
    assert_eq!(again[0].attempts, 2);
    assert_eq!(again[0].last_error.as_deref(), Some("HTTP 500"));
    let dead = store
        .list_deliveries(Some(DeliveryState::Dead), 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].last_error.as_deref(), Some("HTTP 404"));
    let stats = store.outbox_stats().await.unwrap();
    assert_eq!(stats.pending, 1);
    assert!(stats.oldest_pending.is_some());
}

async fn silences_and_history_pruning(store: Arc<dyn Store>) {
    let dev = device(store.as_ref(), "boiler-1").await;
    let c1 = channel(store.as_ref(), "ops").await;
    let r = store
        .create_alert_rule(&rule(Some(dev), vec![c1]))
        .await
        .unwrap();
    let silence = store
        .create_silence(&NewSilence {
            rule_id: None,
            device_id: Some(dev),
            group_id: None,
            starts_at: ts(0),
            until: ts(3600),
            comment: Some("maintenance".into()),
            created_by: "user:admin".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        store.list_silences(Some(ts(10))).await.unwrap(),
        vec![silence.clone()]
    );
    assert!(store
        .list_silences(Some(ts(3600)))
        .await
        .unwrap()
        .is_empty());
    assert!(matches!(
        store
            .create_silence(&NewSilence {
                device_id: Some(Uuid::now_v7()),
                ..silence.silence.clone()
            })
            .await,
        Err(StoreError::Conflict(_))
    ));

    let mut a = new_alert(r.id, dev, AlertState::Firing, ts(0));
    assert!(store
        .apply_alert_change(&change(a.clone(), None, "firing", &[c1]))
        .await
        .unwrap());
    a.state = AlertState::Resolved;
    a.resolved_at = Some(ts(100));
    a.seq = 2;
    a.last_eval_ts = Some(ts(100));
    assert!(store
        .apply_alert_change(&change(a.clone(), Some(1), "resolved", &[c1]))
        .await
        .unwrap());
    // In order: the resolution to a channel waits until the firing notice is settled.
    for expected in ["firing", "resolved"] {
        let claimed = store
            .claim_deliveries(Utc::now(), Duration::from_secs(30), 10)
            .await
            .unwrap();
        let events: Vec<&str> = claimed.iter().map(|d| d.event.as_str()).collect();
        assert_eq!(events, [expected]);
        let ids: Vec<Uuid> = claimed.iter().map(|d| d.id).collect();
        store.mark_delivered(&ids, Utc::now()).await.unwrap();
    }

    // The alert resolved after the cutoff stays; the firing notice sent before it goes.
    let pruned = store.prune_alert_history(ts(50)).await.unwrap();
    assert_eq!((pruned.alerts, pruned.deliveries), (0, 1));
    let pruned = store
        .prune_alert_history(Utc::now() + chrono::Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!((pruned.alerts, pruned.deliveries), (1, 1));
    assert!(store.list_transitions(&[a.id]).await.unwrap().is_empty());
    assert!(store.list_silences(None).await.unwrap().is_empty());
    store.delete_silence(silence.id).await.unwrap_err();
}

macro_rules! alert_store_suite {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $check() {
                    let (store, _dir) = super::open(super::Db::Sqlite).await;
                    super::$check(store).await;
                }
            )*
        }
        mod postgres_local_process {
            $(
                #[tokio::test]
                async fn $check() {
                    let (store, _dir) = super::open(super::Db::Postgres(super::Provider::Local)).await;
                    super::$check(store).await;
                }
            )*
        }
    };
}

alert_store_suite!(
    rules_and_channels_round_trip_and_secrets_stay_hidden,
    a_transition_is_written_once_with_its_outbox_rows,
    the_outbox_is_claimed_once_rescheduled_and_dead_lettered,
    silences_and_history_pruning,
);
