//! Prometheus metrics of alerting.

use crate::metrics::registered;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct AlertMetrics {
    pub firing: IntGaugeVec,
    pub transitions: IntCounterVec,
    pub deliveries: IntCounterVec,
    pub outbox_depth: IntGauge,
    pub outbox_oldest_age: IntGauge,
    pub evaluation_errors: IntCounter,
}

impl AlertMetrics {
    pub fn register(registry: &Registry) -> Self {
        let firing = registered(
            registry,
            IntGaugeVec::new(
                Opts::new("ddms_alerts_firing", "Alerts firing now, by severity"),
                &["severity"],
            ),
        );
        let transitions = registered(registry, IntCounterVec::new(
            Opts::new(
                "ddms_alert_transitions_total",
                "Alert transitions stored by this instance, by the event (pending, firing, resolved, repeat, acknowledged)",
            ),
            &["to"],
        ));
        let deliveries = registered(registry, IntCounterVec::new(
            Opts::new(
                "ddms_alert_deliveries_total",
                "Notification delivery attempts, by channel kind and result (delivered, retry, dead)",
            ),
            &["kind", "result"],
        ));
        let outbox_depth = registered(
            registry,
            IntGauge::new(
                "ddms_alert_outbox_depth",
                "Notifications waiting to be delivered",
            ),
        );
        let outbox_oldest_age = registered(
            registry,
            IntGauge::new(
                "ddms_alert_outbox_oldest_age_seconds",
                "Age of the oldest notification waiting to be delivered (0 when none)",
            ),
        );
        let evaluation_errors = registered(registry, IntCounter::new(
            "ddms_alert_evaluation_errors_total",
            "Evaluations of readings against a rule that failed for a reason other than a database blip (those are retried)",
        ));
        for severity in ["info", "warning", "critical"] {
            firing.with_label_values(&[severity]).set(0);
        }
        AlertMetrics {
            firing,
            transitions,
            deliveries,
            outbox_depth,
            outbox_oldest_age,
            evaluation_errors,
        }
    }
}
