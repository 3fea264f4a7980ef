//! Prometheus metrics of alerting.

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
        let firing = IntGaugeVec::new(
            Opts::new("ddms_alerts_firing", "Alerts firing now, by severity"),
            &["severity"],
        )
        .expect("valid metric");
        let transitions = IntCounterVec::new(
            Opts::new(
                "ddms_alert_transitions_total",
                "Alert transitions stored by this instance, by the event (pending, firing, resolved, repeat, acknowledged)",
            ),
            &["to"],
        )
        .expect("valid metric");
        let deliveries = IntCounterVec::new(
            Opts::new(
                "ddms_alert_deliveries_total",
                "Notification delivery attempts, by channel kind and result (delivered, retry, dead)",
            ),
            &["kind", "result"],
        )
        .expect("valid metric");
        let outbox_depth = IntGauge::new(
            "ddms_alert_outbox_depth",
            "Notifications waiting to be delivered",
        )
        .expect("valid metric");
        let outbox_oldest_age = IntGauge::new(
            "ddms_alert_outbox_oldest_age_seconds",
            "Age of the oldest notification waiting to be delivered (0 when none)",
        )
        .expect("valid metric");
        let evaluation_errors = IntCounter::new(
            "ddms_alert_evaluation_errors_total",
            "Evaluations of readings against a rule that failed for a reason other than a database blip (those are retried)",
        )
        .expect("valid metric");
        for collector in [
            Box::new(firing.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(transitions.clone()),
            Box::new(deliveries.clone()),
            Box::new(outbox_depth.clone()),
            Box::new(outbox_oldest_age.clone()),
            Box::new(evaluation_errors.clone()),
        ] {
            registry.register(collector).expect("unique metric");
        }
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
