//! One bad submission must not fail everyone's: the batch writer stores a batch as one
//! transaction, so a reading the database refuses for good would fail every submission in it —
//! and an unacknowledged MQTT message comes back, to fail the next batch too. So:
//!
//! 1. Each submission is checked on its own first ([`super::limits`]) and its series resolved
//!    (quota included); a submission that fails here is refused alone.
//! 2. The rest is inserted as one batch. If the database refuses the rows themselves (see
//!    [`StoreError::is_refusal`]: a value out of range, a constraint, a trigger's exception),
//!    the batch is bisected by submission until the refused ones stand alone: k bad
//!    submissions among n cost about k·log2(n) extra commits.
//! 3. Any other failure (database unavailable, deadlock, a partition being attached, or one
//!    not recognised) holds the batch and retries with back-off, as before, until the writer
//!    is aborted at shutdown: a refusal acknowledges MQTT messages away, so only a known
//!    refusal may cause one.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::limits::{check_metric, check_unit, check_value, SampleProblem};
use super::series::Resolved;
use super::{BatchWriter, IngestError, Submission};
use crate::backoff::{Backoff, Retries};
use crate::store::{Reading, StoreError};

/// What became of one submission.
pub(super) struct Settled {
    pub result: Result<(), IngestError>,
    /// Per sample: whether it went to the store (false: over the device's series quota).
    pub kept: Vec<bool>,
}

/// The `reason` of a submission the database refused for good.
pub const STORE_REFUSED: &str = "store_refused";
/// The `reason` of a reading that would create a series beyond the device's quota.
pub const SERIES_QUOTA: &str = "series_quota";

const GIVEN_UP: &str = "the writer gave up on the database at shutdown";

/// Back-off while the database is unavailable: 100 ms doubling to 5 s.
pub(super) struct Holding {
    retries: Retries,
}

/// Holding a batch while the database is unavailable: retried from 100 ms, at most every 5 s.
const HOLD_RETRY: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

impl Holding {
    pub(super) fn new() -> Self {
        Holding {
            retries: HOLD_RETRY.retries(),
        }
    }

    /// Waits before the next attempt; `false` once the writer is aborted (give up).
    pub(super) async fn pause(&mut self, error: &StoreError, abort: &CancellationToken) -> bool {
        let delay = self.retries.next_delay();
        tracing::warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "database unavailable; holding the batch");
        tokio::select! {
            () = abort.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

fn check_sample(sample: &super::Sample) -> Result<(), SampleProblem> {
    check_value(sample.value)?;
    check_metric(&sample.metric)?;
    check_unit(sample.unit.as_deref())
}

fn refused(reason: &'static str, message: String) -> IngestError {
    IngestError::Refused { reason, message }
}

impl BatchWriter {
    /// Stores what can be stored of `submissions`, returning one [`Settled`] per submission in
    /// their order.
    pub(super) async fn store_isolating(
        &mut self,
        submissions: &[Submission],
        abort: &CancellationToken,
    ) -> Vec<Settled> {
        let mut settled = Vec::with_capacity(submissions.len());
        let mut readings: Vec<Vec<Reading>> = Vec::with_capacity(submissions.len());
        for submission in submissions {
            let (result, kept, prepared) = match self.prepare(submission, abort).await {
                Ok((kept, prepared)) => (Ok(()), kept, prepared),
                Err(e) => (Err(e), vec![false; submission.samples.len()], Vec::new()),
            };
            settled.push(Settled { result, kept });
            readings.push(prepared);
        }
        let ready: Vec<usize> = (0..submissions.len())
            .filter(|&i| settled[i].result.is_ok())
            .collect();
        let mut parts: Vec<&[usize]> = vec![&ready];
        while let Some(part) = parts.pop() {
            let batch: Vec<Reading> = part.iter().flat_map(|&i| readings[i].clone()).collect();
            if batch.is_empty() {
                continue;
            }
            let Err(error) = self.insert_holding(&batch, abort).await else {
                continue;
            };
            if !error.is_refusal() {
                // Aborted while held (the database unavailable, or a failure not known to be
                // a refusal of these rows): nothing of this part is stored, and the MQTT
                // messages stay unacknowledged.
                for &i in part {
                    settled[i].result = Err(IngestError::Store(error.to_string()));
                }
            } else if let [only] = part {
                tracing::error!(protocol = submissions[*only].protocol, error = %error, "the database refused a submission's readings; the rest of the batch is stored");
                settled[*only].result = Err(refused(STORE_REFUSED, error.to_string()));
            } else {
                tracing::warn!(submissions = part.len(), error = %error, "batch refused; splitting it to isolate the submission at fault");
                let (first, second) = part.split_at(part.len() / 2);
                parts.push(second);
                parts.push(first);
            }
        }
        settled
    }

    /// Checks a submission and resolves its series; the readings to insert, and per sample
    /// whether it is among them.
    async fn prepare(
        &mut self,
        submission: &Submission,
        abort: &CancellationToken,
    ) -> Result<(Vec<bool>, Vec<Reading>), IngestError> {
        if abort.is_cancelled() {
            // Given up on the database: no more attempts, each could wait a connect timeout.
            return Err(IngestError::Store(GIVEN_UP.into()));
        }
        for sample in &submission.samples {
            check_sample(sample).map_err(|problem| {
                refused(
                    problem.reason(),
                    format!("metric `{}`: {problem}", sample.metric),
                )
            })?;
        }
        let mut kept = Vec::with_capacity(submission.samples.len());
        let mut readings = Vec::with_capacity(submission.samples.len());
        let mut holding = Holding::new();
        for sample in &submission.samples {
            let resolved = loop {
                match self.series.resolve(&*self.store, sample).await {
                    Ok(resolved) => break resolved,
                    Err(e) if !e.is_refusal() => {
                        if !holding.pause(&e, abort).await {
                            return Err(IngestError::Store(e.to_string()));
                        }
                    }
                    Err(e) => return Err(refused(STORE_REFUSED, e.to_string())),
                }
            };
            match resolved {
                Resolved::Series(series) => {
                    kept.push(true);
                    readings.push(Reading {
                        series,
                        ts: sample.ts,
                        value: sample.value,
                    });
                }
                Resolved::OverQuota => {
                    kept.push(false);
                    self.metrics.reject(submission.protocol, SERIES_QUOTA);
                    if self.series.first_time_over_quota(sample.device_id) {
                        tracing::warn!(device.id = %sample.device_id, metric = %sample.metric, max_series_per_device = self.series.max_per_device(), "device is at its series quota; readings of new metrics are refused (logged once per device)");
                    }
                }
            }
        }
        Ok((kept, readings))
    }

    /// Inserts, holding the batch while the failure is transient; the error if it is not, or
    /// the last one once aborted.
    async fn insert_holding(
        &mut self,
        batch: &[Reading],
        abort: &CancellationToken,
    ) -> Result<u64, StoreError> {
        let mut holding = Holding::new();
        if abort.is_cancelled() {
            return Err(StoreError::Unavailable(GIVEN_UP.into()));
        }
        loop {
            match self.store.insert_readings(batch).await {
                Ok(inserted) => return Ok(inserted),
                Err(e) if !e.is_refusal() => {
                    if !holding.pause(&e, abort).await {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}
