//! The gates of a deploy: the probes that decide whether a started slot may get traffic
//! (`ready`, `version`) and whether it keeps it (`route`, `watch`). Split from the state
//! machine in `deploy.rs`, which runs them as steps; `activate`, `rollback` and `restart` all
//! pass through the same ones.

use std::time::{Duration, Instant};

use super::super::probe::excerpt;
use super::super::state::ReleaseMeta;
use super::super::ReleaseError;
use super::Ctx;
use crate::config::Slot;

/// How often the watch asks nginx for `/ready`.
const WATCH_PROBE_EVERY: Duration = Duration::from_millis(500);
/// How often the watch reads the new slot's request counters.
const WATCH_METRICS_EVERY: Duration = Duration::from_secs(2);
/// How long nginx may take after the reload to answer from the new slot.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(15);
/// The new slot must answer every check through nginx for this long, and this many times,
/// before the switch counts as done (old workers stop accepting within milliseconds).
const ROUTE_SETTLE: Duration = Duration::from_millis(500);
const ROUTE_SETTLE_ANSWERS: u32 = 5;

impl Ctx<'_> {
    pub(super) async fn slot_ready(&self, slot: Slot) -> bool {
        matches!(
            self.probe
                .get(&format!("{}/ready", self.host.slot_url(slot)))
                .await,
            Ok((200, _))
        )
    }

    /// Polls the slot's `/ready` until 200; fails early when the slot's process is gone.
    pub(super) async fn wait_ready(&self, slot: Slot) -> Result<Duration, ReleaseError> {
        let started = Instant::now();
        let timeout = self.host.gates.ready_timeout;
        let url = format!("{}/ready", self.host.slot_url(slot));
        loop {
            let last = match self.probe.get(&url).await {
                Ok((200, _)) => return Ok(started.elapsed()),
                Ok((code, body)) => format!("/ready answered {code}: {}", excerpt(&body)),
                Err(e) => e,
            };
            let not_ready = |detail: String| ReleaseError::NotReady {
                slot,
                timeout_s: timeout.as_secs(),
                detail,
            };
            if !self.manager.is_active(slot).await? {
                let log = self
                    .manager
                    .recent_log(slot)
                    .map(|log| format!("; its last output: {log}"))
                    .unwrap_or_default();
                return Err(not_ready(format!(
                    "the slot's process exited ({last}){log}"
                )));
            }
            if started.elapsed() >= timeout {
                return Err(not_ready(last));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The slot runs the release's binary, as that slot.
    pub(super) async fn check_version(
        &self,
        slot: Slot,
        meta: &ReleaseMeta,
    ) -> Result<(), ReleaseError> {
        let info = self
            .probe
            .version(&self.host.slot_url(slot))
            .await
            .map_err(|e| ReleaseError::VersionMismatch {
                slot,
                expected: meta.version_output.clone(),
                actual: e,
            })?;
        let slot_name = slot.to_string();
        if info.version != meta.version
            || info.git_sha != meta.git_sha
            || info.slot.as_deref() != Some(slot_name.as_str())
        {
            return Err(ReleaseError::VersionMismatch {
                slot,
                expected: format!(
                    "version {} (git {}) in slot {slot}",
                    meta.version, meta.git_sha
                ),
                actual: format!(
                    "version {} (git {}) in slot {}",
                    info.version,
                    info.git_sha,
                    info.slot.as_deref().unwrap_or("none")
                ),
            });
        }
        Ok(())
    }

    /// After the reload: new connections through nginx reach the new slot, consistently.
    /// `nginx -s reload` returns before the new workers run, and the old workers accept
    /// connections until they get to their shutdown; one answer from the new slot is not yet
    /// the end of the switch. Returns (first answer, settled) after the reload.
    pub(super) async fn wait_routed(
        &self,
        slot: Slot,
    ) -> Result<(Duration, Duration), ReleaseError> {
        let started = Instant::now();
        let base = self.host.public_url.as_str().trim_end_matches('/');
        let want = slot.to_string();
        let mut first: Option<Duration> = None;
        let mut streak: Option<Instant> = None;
        let mut answers = 0u32;
        loop {
            let last = match self.probe.version(base).await {
                Ok(info) if info.slot.as_deref() == Some(want.as_str()) => {
                    first.get_or_insert(started.elapsed());
                    let since = *streak.get_or_insert_with(Instant::now);
                    answers += 1;
                    if answers >= ROUTE_SETTLE_ANSWERS && since.elapsed() >= ROUTE_SETTLE {
                        return Ok((first.unwrap_or_default(), started.elapsed()));
                    }
                    String::new()
                }
                Ok(info) => {
                    (streak, answers) = (None, 0);
                    format!(
                        "nginx still answers from slot {}",
                        info.slot.as_deref().unwrap_or("none")
                    )
                }
                Err(e) => {
                    (streak, answers) = (None, 0);
                    e
                }
            };
            if started.elapsed() >= ROUTE_TIMEOUT {
                return Err(ReleaseError::Unhealthy(format!(
                    "nginx did not route to slot {slot} consistently within {} s: {last}",
                    ROUTE_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The watch window: `/ready` through nginx, the new slot's process, and its 5xx share.
    pub(super) async fn watch(&self, slot: Slot) -> Result<String, ReleaseError> {
        let gates = &self.host.gates;
        let slot_url = self.host.slot_url(slot);
        let ready_url = self
            .host
            .public_url
            .join("ready")
            .map_err(|e| ReleaseError::Invalid(format!("--public-url: {e}")))?
            .to_string();
        // The slot's own `/ready` too: through nginx, a failing slot would be masked by the
        // backup server (the old slot, still running during the watch).
        let slot_ready_url = format!("{}/ready", slot_url.trim_end_matches('/'));
        let (base_all, base_5xx) = self
            .probe
            .request_counts(&slot_url)
            .await
            .map_err(ReleaseError::Unhealthy)?;
        let started = Instant::now();
        let mut last_metrics = Instant::now();
        let mut probes = 0u64;
        let (mut all, mut errors) = (0u64, 0u64);
        loop {
            if !self.manager.is_active(slot).await? {
                return Err(ReleaseError::Unhealthy(format!(
                    "slot {slot} stopped running {} ms into the watch",
                    started.elapsed().as_millis()
                )));
            }
            for url in [&ready_url, &slot_ready_url] {
                match self.probe.get(url).await {
                    Ok((200, _)) => {}
                    Ok((code, body)) => {
                        return Err(ReleaseError::Unhealthy(format!(
                            "{url} answered {code} {} ms into the watch: {}",
                            started.elapsed().as_millis(),
                            excerpt(&body)
                        )))
                    }
                    Err(e) => {
                        return Err(ReleaseError::Unhealthy(format!(
                            "{e} ({} ms into the watch)",
                            started.elapsed().as_millis()
                        )))
                    }
                }
            }
            probes += 1;
            let done = started.elapsed() >= gates.watch;
            if done || last_metrics.elapsed() >= WATCH_METRICS_EVERY {
                last_metrics = Instant::now();
                let (now_all, now_5xx) = self
                    .probe
                    .request_counts(&slot_url)
                    .await
                    .map_err(ReleaseError::Unhealthy)?;
                all = now_all.saturating_sub(base_all);
                errors = now_5xx.saturating_sub(base_5xx);
                if all > 0 && errors as f64 / all as f64 > gates.max_5xx_ratio {
                    return Err(ReleaseError::Unhealthy(format!(
                        "slot {slot} answered {errors} of {all} requests with 5xx ({:.1} %, more than {:.1} %)",
                        errors as f64 * 100.0 / all as f64,
                        gates.max_5xx_ratio * 100.0
                    )));
                }
            }
            if done {
                return Ok(format!(
                    "{} s: {probes} /ready probes through nginx passed; slot {slot} served {all} requests, {errors} with 5xx",
                    gates.watch.as_secs()
                ));
            }
            tokio::time::sleep(WATCH_PROBE_EVERY).await;
        }
    }
}
