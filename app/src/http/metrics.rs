//! Prometheus metrics of the HTTP layer and the process, in a per-instance registry (so tests
//! running several servers in one process do not mix their figures).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::metrics::registered;

/// The `method` label of a request: the standard methods by name, anything else `other`
/// (methods are client-chosen tokens; each new one would otherwise be a new series).
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    connections_open: IntGauge,
    connections_open_max: IntGauge,
    streams_open: IntGauge,
    /// When the last request arrived, in ms since `created` (shutdown waits for a quiet spell).
    created: Instant,
    last_request_ms: Arc<AtomicU64>,
}

impl Metrics {
    pub fn new(version: &str, git_sha: &str) -> Self {
        let registry = Registry::new();
        let requests = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "ddms_http_requests_total",
                    "HTTP requests by route and status",
                ),
                &["method", "route", "status"],
            ),
        );
        let latency = registered(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "ddms_http_request_duration_seconds",
                    "HTTP request latency by route and status",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
                &["method", "route", "status"],
            ),
        );
        let build = registered(
            &registry,
            IntGaugeVec::new(
                Opts::new("ddms_build_info", "Version of the running ddms"),
                &["version", "git_sha"],
            ),
        );
        build.with_label_values(&[version, git_sha]).set(1);
        let gauge = |name: &str, help: &str| registered(&registry, IntGauge::new(name, help));
        let connections_open = gauge("ddms_http_connections_open", "HTTP connections open now");
        let connections_open_max = gauge(
            "ddms_http_connections_open_max",
            "Most HTTP connections open at once since start",
        );
        let streams_open = gauge(
            "ddms_http_streams_open",
            "Live event streams (GET /api/stream) open now",
        );
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric");
        registry
            .register(Box::new(crate::allocator::AllocatorCollector::new()))
            .expect("unique metric");
        Metrics {
            registry,
            requests,
            latency,
            connections_open,
            connections_open_max,
            streams_open,
            created: Instant::now(),
            last_request_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Notes that a request arrived now.
    pub fn request_arrived(&self) {
        let now = self.created.elapsed().as_millis() as u64;
        self.last_request_ms.store(now, Ordering::Relaxed);
    }

    /// How long ago the last request arrived (since start when none did).
    pub fn since_last_request(&self) -> Duration {
        let last = Duration::from_millis(self.last_request_ms.load(Ordering::Relaxed));
        self.created.elapsed().saturating_sub(last)
    }

    pub fn observe_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let status = status.to_string();
        let labels = [method, route, status.as_str()];
        self.requests.with_label_values(&labels).inc();
        self.latency
            .with_label_values(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a connection as open until the returned guard is dropped.
    pub fn connection_opened(&self) -> GaugeGuard {
        let open = GaugeGuard::raise(&self.connections_open);
        let now = self.connections_open.get();
        if now > self.connections_open_max.get() {
            self.connections_open_max.set(now);
        }
        open
    }

    /// Counts a live stream as open until the returned guard is dropped.
    pub fn stream_opened(&self) -> GaugeGuard {
        GaugeGuard::raise(&self.streams_open)
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

/// One unit of a gauge, given back when dropped.
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    fn raise(gauge: &IntGauge) -> Self {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
