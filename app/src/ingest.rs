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

use crate::events::{EventHub, LiveEvent, LiveReading, ReadingsStored};

pub mod limits;
mod series;
mod split;

use crate::metrics::registered;
/// Defined beside [`SignalSink`], which alerting implements and the batch writer calls.
pub use crate::signals::Sample;
use crate::signals::SignalSink;
use crate::store::Store;
pub use series::MAX_CACHED_SERIES;
pub use split::{SERIES_QUOTA, STORE_REFUSED};

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum IngestError {
    #[error("the ingest pipeline has shut down")]
    Closed,
    /// Not stored this time (the database stayed unavailable until shutdown): sending the
    /// readings again may succeed.
    #[error("readings could not be stored: {0}")]
    Store(String),
    /// Can never be stored as sent (a value out of range, readings the database refuses for
    /// good): sending them again would fail the same way. Counted in
    /// `ddms_readings_rejected_total` with `reason`.
    #[error("readings refused ({reason}): {message}")]
    Refused {
        reason: &'static str,
        message: String,
    },
}

impl IngestError {
    /// Whether the submission is settled for good although not stored: a producer should
    /// drop it (an MQTT message is acknowledged), not send it again.
    pub fn is_refusal(&self) -> bool {
        matches!(self, IngestError::Refused { .. })
    }
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
    /// Series one device may have; readings that would create more are refused.
    pub max_series_per_device: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            channel_capacity: 4096,
            max_batch: 10_000,
            max_delay: Duration::ZERO,
            max_series_per_device: 1000,
        }
    }
}

#[derive(Clone)]
pub struct IngestMetrics {
    pub ingested: IntCounterVec,
    pub rejected: IntCounterVec,
    pub failed: IntCounterVec,
    batch_size: Histogram,
    commit_seconds: Histogram,
    pub channel_depth: IntGauge,
}

impl IngestMetrics {
    pub fn register(registry: &Registry) -> Self {
        let ingested = registered(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "ddms_readings_ingested_total",
                    "Readings committed, by protocol",
                ),
                &["protocol"],
            ),
        );
        let rejected = registered(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "ddms_readings_rejected_total",
                    "Messages or readings refused, by protocol and reason",
                ),
                &["protocol", "reason"],
            ),
        );
        let failed = registered(registry, IntCounterVec::new(
            Opts::new(
                "ddms_readings_failed_total",
                "Readings given up because the database stayed unavailable until shutdown (MQTT \
                 messages among them are redelivered; Modbus readings are lost), by protocol",
            ),
            &["protocol"],
        ));
        let batch_size = registered(
            registry,
            Histogram::with_opts(
                HistogramOpts::new("ddms_ingest_batch_size", "Readings per committed batch")
                    .buckets(vec![
                        1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
                    ]),
            ),
        );
        let commit_seconds = registered(
            registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "ddms_ingest_commit_duration_seconds",
                    "Time to commit one batch",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
            ),
        );
        let channel_depth = registered(
            registry,
            IntGauge::new(
                "ddms_ingest_channel_depth",
                "Submissions waiting for the batch writer",
            ),
        );
        IngestMetrics {
            ingested,
            rejected,
            failed,
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
    series: series::SeriesResolver,
    device_changes: Option<Arc<tokio::sync::Notify>>,
    alerts: Option<Arc<dyn SignalSink>>,
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
            series: series::SeriesResolver::new(config.max_series_per_device),
            device_changes: None,
            alerts: None,
        },
    )
}

impl BatchWriter {
    /// Forgets the cached series of deleted devices whenever `changed` is notified (the API
    /// notifies it after every device change).
    pub fn forgetting_deleted_devices(mut self, changed: Arc<tokio::sync::Notify>) -> Self {
        self.device_changes = Some(changed);
        self
    }

    /// Evaluates every committed batch against the alert rules before its producers are told.
    pub fn with_alerts(mut self, alerts: Arc<dyn SignalSink>) -> Self {
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
        // Enabled at once, so a change notified while a batch commits is not missed.
        let changes = self.device_changes.clone().unwrap_or_default();
        let mut changed = Box::pin(changes.clone().notified_owned());
        changed.as_mut().enable();
        loop {
            let first = tokio::select! {
                biased;
                () = &mut changed => {
                    changed = Box::pin(changes.clone().notified_owned());
                    changed.as_mut().enable();
                    self.forget_deleted_devices().await;
                    continue;
                }
                received = self.receiver.recv() => match received {
                    Some(submission) => submission,
                    None => break,
                },
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
        let mut settled = self.store_isolating(&submissions, abort).await;
        let mut stored = 0usize;
        // Live events carry each series' newest reading of the batch: what a live view shows,
        // at a fraction of the log volume under heavy ingest (history comes from the API).
        // `oldest_ts` tells how far back the batch reaches for the device (latency probes).
        let mut newest: HashMap<(Uuid, &str), &Sample> = HashMap::new();
        let mut oldest: HashMap<Uuid, DateTime<Utc>> = HashMap::new();
        // What was stored, for the alert rules (refused readings never reach them).
        let mut stored_samples: Vec<&Sample> = Vec::new();
        for (submission, fate) in submissions.iter().zip(&settled) {
            let readings = submission.samples.len() as u64;
            match &fate.result {
                Ok(()) => {}
                Err(IngestError::Refused { reason, .. }) => {
                    self.metrics
                        .rejected
                        .with_label_values(&[submission.protocol, reason])
                        .inc_by(readings);
                    continue;
                }
                Err(_) => {
                    self.metrics
                        .failed
                        .with_label_values(&[submission.protocol])
                        .inc_by(readings);
                    continue;
                }
            }
            let kept = submission
                .samples
                .iter()
                .zip(&fate.kept)
                .filter_map(|(s, kept)| kept.then_some(s));
            let mut count = 0;
            for s in kept {
                count += 1;
                stored_samples.push(s);
                let entry = newest.entry((s.device_id, s.metric.as_str())).or_insert(s);
                if s.ts >= entry.ts {
                    *entry = s;
                }
                let first = oldest.entry(s.device_id).or_insert(s.ts);
                *first = (*first).min(s.ts);
            }
            self.metrics
                .ingested
                .with_label_values(&[submission.protocol])
                .inc_by(count);
            stored += count as usize;
        }
        let total: usize = submissions.iter().map(|s| s.samples.len()).sum();
        if stored > 0 {
            self.metrics.batch_size.observe(stored as f64);
            self.metrics
                .commit_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        if stored < total {
            tracing::debug!(readings = total, stored, "batch partly stored");
        }
        let mut per_device: HashMap<Uuid, Vec<LiveReading>> = HashMap::new();
        for ((device_id, _), s) in newest {
            per_device.entry(device_id).or_default().push(LiveReading {
                metric: s.metric.clone(),
                ts: s.ts,
                value: s.value,
                unit: s.unit.clone(),
            });
        }
        for (device_id, readings) in per_device {
            self.hub.publish(LiveEvent::Reading(ReadingsStored {
                device_id,
                readings,
                oldest_ts: oldest.get(&device_id).copied(),
            }));
        }
        // Before the acknowledgement: a message is acked only once its alert state is stored.
        if let Some(alerts) = self.alerts.as_ref().filter(|_| !stored_samples.is_empty()) {
            let mut holding = split::Holding::new();
            while let Err(e) = alerts.evaluate(&stored_samples).await {
                if !holding.pause(&e, abort).await {
                    // Given up at shutdown: the readings are stored but not evaluated. Failing
                    // the submissions retryably leaves MQTT messages unacknowledged; the
                    // redelivery is evaluated from where the series stopped (`last_eval_ts`).
                    tracing::warn!(error = %e, "alert evaluation given up at shutdown; the readings will be redelivered");
                    for fate in settled.iter_mut().filter(|f| f.result.is_ok()) {
                        fate.result = Err(IngestError::Store(format!(
                            "stored, but the alert evaluation was given up: {e}"
                        )));
                    }
                    break;
                }
            }
        }
        for (submission, fate) in submissions.into_iter().zip(settled) {
            (submission.on_commit)(fate.result);
        }
    }

    async fn forget_deleted_devices(&mut self) {
        match self.store.list_device_versions().await {
            Ok(devices) => {
                let existing = devices.iter().map(|d| d.id).collect();
                self.series.retain_devices(&existing);
            }
            Err(e) => {
                // Unsure which devices remain: forget them all (the cache refills on use).
                tracing::warn!(error = %e, "cannot list devices; clearing the series cache");
                self.series.clear();
            }
        }
        tracing::debug!(
            cached = self.series.cached(),
            "series cache updated after a device change"
        );
    }
}
