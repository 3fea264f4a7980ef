//! Registration of the Prometheus metrics every part of ddms keeps. Each server instance has
//! its own [`Registry`] (tests run several in one process), and each part registers its
//! metrics into it once, at start.

use prometheus::core::Collector;
use prometheus::Registry;

/// `metric`, registered in `registry`. Panics when the metric is malformed or its name is
/// already taken: names, help texts and labels are literals in the code and every part
/// registers once per registry, so either is a programming error that the first test run
/// shows.
pub fn registered<C>(registry: &Registry, metric: prometheus::Result<C>) -> C
where
    C: Collector + Clone + 'static,
{
    let metric = metric.expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

/// `metric`, registered in `registry` unless a metric of its name is there already; then the
/// one returned counts on its own, unexported. For parts a process may run twice against one
/// registry (tests), where the first one's series are the ones reported.
pub fn registered_unless_taken<C>(registry: &Registry, metric: prometheus::Result<C>) -> C
where
    C: Collector + Clone + 'static,
{
    let metric = metric.expect("valid metric");
    // Ignoring `AlreadyReg` (the only error for a valid metric) keeps the first registrant.
    let _ = registry.register(Box::new(metric.clone()));
    metric
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::IntGauge;

    #[test]
    fn a_registered_metric_is_exported_and_a_taken_name_keeps_the_first() {
        let registry = Registry::new();
        let first = registered(&registry, IntGauge::new("ddms_test_gauge", "help"));
        first.set(3);
        let second = registered_unless_taken(&registry, IntGauge::new("ddms_test_gauge", "help"));
        second.set(5);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(text.contains("\nddms_test_gauge 3\n"), "{text}");
    }
}
