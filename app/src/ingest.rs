//! The ingest pipeline: producers (Modbus pollers, the MQTT ingester) submit readings into one
//! bounded channel; one batch writer commits them in batches (flush on size or time), then tells
//! each producer its readings are stored — only then does the MQTT ingester acknowledge a
//! message to the broker. Writes are idempotent on (series, ts), so a redelivered message or a
//! retried batch stores nothing twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::events::{EventHub, EventKind};
use crate::store::{Reading, SeriesId, Store, StoreError};

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub device_id: Uuid,
    pub metric: String,
    pub unit: Option<String>,
    pub ts: DateTime<Utc>,
    pub value: f64,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum IngestError {
    #[error("the ingest pipeline has shut down")]
    Closed,
    #[error("readings could not be stored: {0}")]
    Store(String),
}

/// Called once the submission's readings are committed (or definitively failed).
pub type OnCommit = Box<dyn FnOnce(Result<(), IngestError>) + Send + Sync>;

struct Submission {
    protocol: &'static str,
    samples: Vec<Sample>,
    on_commit: OnCommit,
}

#[derive(Debug, Clone, Copy)]
pub struct IngestConfig {
    /// Submissions the channel holds before producers wait (backpressure).
    pub channel_capacity: usize,
    /// A batch holds at most this many readings.
    pub max_batch: usize,
    /// How long the writer waits for more readings once the queue has run dry. Zero (the
    /// default) is group commit: a batch is whatever queued while the previous one committed,
    /// so batches grow with load and a lone reading is committed at once.
    pub max_delay: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            channel_capacity: 4096,
            max_batch: 1000,
            max_delay: Duration::ZERO,
        }
    }
}

#[derive(Clone)]
pub struct IngestMetrics {
    pub ingested: IntCounterVec,
    pub rejected: IntCounterVec,
    batch_size: Histogram,
    commit_seconds: Histogram,
    pub channel_depth: IntGauge,
}

impl IngestMetrics {
    pub fn register(registry: &Registry) -> Self {
        let ingested = IntCounterVec::new(
            Opts::new(
                "ddms_readings_ingested_total",
                "Readings committed, by protocol",
            ),
            &["protocol"],
        )
        .expect("valid metric");
        let rejected = IntCounterVec::new(
            Opts::new(
                "ddms_readings_rejected_total",
                "Messages or readings refused, by protocol and reason",
            ),
            &["protocol", "reason"],
        )
        .expect("valid metric");
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("ddms_ingest_batch_size", "Readings per committed batch").buckets(
                vec![1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0],
            ),
        )
        .expect("valid metric");
        let commit_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "ddms_ingest_commit_duration_seconds",
                "Time to commit one batch",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .expect("valid metric");
        let channel_depth = IntGauge::new(
            "ddms_ingest_channel_depth",
            "Submissions waiting for the batch writer",
        )
        .expect("valid metric");
        for collector in [
            Box::new(ingested.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(rejected.clone()),
            Box::new(batch_size.clone()),
            Box::new(commit_seconds.clone()),
            Box::new(channel_depth.clone()),
        ] {
            registry.register(collector).expect("unique metric");
        }
        IngestMetrics {
            ingested,
            rejected,
            batch_size,
            commit_seconds,
            channel_depth,
        }
    }

    pub fn reject(&self, protocol: &str, reason: &str) {
        self.rejected.with_label_values(&[protocol, reason]).inc();
    }
}

/// The producers' side of the pipeline; cheap to clone.
#[derive(Clone)]
pub struct IngestHandle {
    sender: mpsc::Sender<Submission>,
    metrics: IngestMetrics,
}

impl IngestHandle {
    /// Queues readings (waiting while the channel is full) and calls `on_commit` once they are
    /// stored.
    pub async fn submit_then(
        &self,
        protocol: &'static str,
        samples: Vec<Sample>,
        on_commit: OnCommit,
    ) -> Result<(), IngestError> {
        let submission = Submission {
            protocol,
            samples,
            on_commit,
        };
        match self.sender.send(submission).await {
            Ok(()) => {
                self.metrics.channel_depth.inc();
                Ok(())
            }
            Err(mpsc::error::SendError(submission)) => {
                (submission.on_commit)(Err(IngestError::Closed));
                Err(IngestError::Closed)
            }
        }
    }

    /// Queues readings and waits until they are stored.
    pub async fn submit(
        &self,
        protocol: &'static str,
        samples: Vec<Sample>,
    ) -> Result<(), IngestError> {
        let (tx, rx) = oneshot::channel();
        self.submit_then(
            protocol,
            samples,
            Box::new(move |result| {
                let _ = tx.send(result);
            }),
        )
        .await?;
        rx.await.unwrap_or(Err(IngestError::Closed))
    }

    pub fn metrics(&self) -> &IngestMetrics {
        &self.metrics
    }
}

pub struct BatchWriter {
    receiver: mpsc::Receiver<Submission>,
    store: Arc<dyn Store>,
    hub: EventHub,
    metrics: IngestMetrics,
    config: IngestConfig,
    series: HashMap<(Uuid, String), SeriesId>,
    alerts: Option<Arc<crate::alerts::Alerting>>,
}

pub fn pipeline(
    store: Arc<dyn Store>,
    hub: EventHub,
    metrics: IngestMetrics,
    config: IngestConfig,
) -> (IngestHandle, BatchWriter) {
    let (sender, receiver) = mpsc::channel(config.channel_capacity.max(1));
    (
        IngestHandle {
            sender,
            metrics: metrics.clone(),
        },
        BatchWriter {
            receiver,
            store,
            hub,
            metrics,
            config,
            series: HashMap::new(),
            alerts: None,
        },
    )
}

impl BatchWriter {
    /// Evaluates every committed batch against the alert rules before its producers are told.
    pub fn with_alerts(mut self, alerts: Arc<crate::alerts::Alerting>) -> Self {
        self.alerts = Some(alerts);
        self
    }

    /// Runs until every [`IngestHandle`] is dropped and the channel is drained: shutdown stops
    /// the producers first, so whatever they submitted is still committed. `abort` gives up on
    /// a database that stays unreachable (the submissions fail; MQTT messages stay unacknowledged
    /// and the broker redelivers them).
    pub async fn run(mut self, abort: CancellationToken) {
        let mut pending: Vec<Submission> = Vec::new();
        let mut readings = 0usize;
        loop {
            let first = match self.receiver.recv().await {
                Some(submission) => submission,
                None => break,
            };
            self.metrics.channel_depth.dec();
            readings += first.samples.len();
            pending.push(first);
            let deadline = tokio::time::Instant::now() + self.config.max_delay;
            while readings < self.config.max_batch {
                let next = match self.receiver.try_recv() {
                    Ok(submission) => Some(submission),
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                    Err(mpsc::error::TryRecvError::Empty) if self.config.max_delay.is_zero() => {
                        None
                    }
                    Err(mpsc::error::TryRecvError::Empty) => {
                        tokio::time::timeout_at(deadline, self.receiver.recv())
                            .await
                            .ok()
                            .flatten()
                    }
                };
                let Some(submission) = next else { break };
                self.metrics.channel_depth.dec();
                readings += submission.samples.len();
                pending.push(submission);
            }
            self.commit(std::mem::take(&mut pending), &abort).await;
            readings = 0;
        }
        tracing::debug!("batch writer drained and stopped");
    }

    async fn commit(&mut self, submissions: Vec<Submission>, abort: &CancellationToken) {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(100);
        let result = loop {
            match self.try_commit(&submissions).await {
                Ok(result) => break Ok(result),
                Err(StoreError::Unavailable(e)) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "database unavailable; holding the batch");
                    tokio::select! {
                        () = abort.cancelled() => break Err(IngestError::Store(e)),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    tracing::error!(error = %e, "batch could not be stored");
                    break Err(IngestError::Store(e.to_string()));
                }
            }
        };
        let total: usize = submissions.iter().map(|s| s.samples.len()).sum();
        match &result {
            Ok(_) => {
                self.metrics.batch_size.observe(total as f64);
                self.metrics
                    .commit_seconds
                    .observe(started.elapsed().as_secs_f64());
            }
            Err(e) => tracing::error!(readings = total, error = %e, "batch failed"),
        }
        let committed = result.is_ok();
        // Live events carry each series' newest reading of the batch: what a live view shows,
        // at a fraction of the log volume under heavy ingest (history comes from the API).
        // `oldest_ts` tells how far back the batch reaches for the device (latency probes).
        let mut newest: HashMap<(Uuid, &str), &Sample> = HashMap::new();
        let mut oldest: HashMap<Uuid, DateTime<Utc>> = HashMap::new();
        for submission in &submissions {
            if committed {
                self.metrics
                    .ingested
                    .with_label_values(&[submission.protocol])
                    .inc_by(submission.samples.len() as u64);
                for s in &submission.samples {
                    let entry = newest.entry((s.device_id, s.metric.as_str())).or_insert(s);
                    if s.ts >= entry.ts {
                        *entry = s;
                    }
                    let first = oldest.entry(s.device_id).or_insert(s.ts);
                    *first = (*first).min(s.ts);
                }
            }
        }
        let mut per_device: HashMap<Uuid, Vec<serde_json::Value>> = HashMap::new();
        for ((device_id, _), s) in newest {
            per_device
                .entry(device_id)
                .or_default()
                .push(serde_json::json!({
                    "metric": s.metric, "ts": s.ts, "value": s.value, "unit": s.unit,
                }));
        }
        for (device_id, readings) in per_device {
            self.hub.publish(
                EventKind::Reading,
                serde_json::json!({
                    "device_id": device_id, "readings": readings, "oldest_ts": oldest.get(&device_id),
                }),
            );
        }
        // Before the acknowledgement: a message is acked only once its alert state is stored.
        if let (true, Some(alerts)) = (committed, &self.alerts) {
            alerts
                .evaluate(submissions.iter().flat_map(|s| &s.samples))
                .await;
        }
        for submission in submissions {
            (submission.on_commit)(result.clone().map(|_| ()));
        }
    }

    async fn try_commit(&mut self, submissions: &[Submission]) -> Result<u64, StoreError> {
        let mut batch = Vec::with_capacity(submissions.iter().map(|s| s.samples.len()).sum());
        for submission in submissions {
            for sample in &submission.samples {
                let key = (sample.device_id, sample.metric.clone());
                let series = match self.series.get(&key) {
                    Some(id) => *id,
                    None => {
                        let id = self
                            .store
                            .ensure_series(sample.device_id, &sample.metric, sample.unit.as_deref())
                            .await?;
                        self.series.insert(key, id);
                        id
                    }
                };
                batch.push(Reading {
                    series,
                    ts: sample.ts,
                    value: sample.value,
                });
            }
        }
        self.store.insert_readings(&batch).await
    }
}
