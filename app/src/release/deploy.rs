//! The deploy state machine behind `activate` and `rollback`.
//!
//! ```text
//! lock → resolve → migrate → [stop_idle] → link → start → ready → version → switch → route → watch → stop_old → commit
//!                     │                                 │         │          │        │        │
//!                     └── fails: aborted, ──────────────┴─────────┴──────────┴────────┴────────┴─▶ [switch_back] → stop_new
//!                         nothing moved                          fails after the start: rolled back (or aborted
//!                                                                when traffic had not moved yet)
//! ```
//!
//! Each step runs through one [`Recorder`], which times it, records its result, and races it
//! against an [`Abort`] (a signal to the deploying process, or the deploy lock lost). The way
//! back is not interruptible. The finished [`DeployRecord`] is appended to `deploys.jsonl`.

use std::future::Future;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::lock::DeployLock;
use super::nginx::render_upstream;
use super::probe::{excerpt, Probe};
use super::service::ServiceManager;
use super::state::{
    active_slot, DeployRecord, HostState, Outcome, ReleaseMeta, Step, StepRecord, StepResult,
};
use super::{other, write_atomic, Host, Layout, ReleaseError, ServiceManagerKind};
use crate::config::Slot;
use crate::locks::MutexExt;
use plan::Plan;

mod gates;
mod plan;

const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a deploy must stop early.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AbortReason {
    Signal(String),
    LockLost,
}

/// Stops a running deploy at the next step boundary (or inside a waiting step): the deploy
/// then takes the way back. Cloned into signal handlers.
#[derive(Clone, Default)]
pub struct Abort {
    token: CancellationToken,
    reason: Arc<Mutex<Option<AbortReason>>>,
}

impl Abort {
    pub fn new() -> Abort {
        Abort::default()
    }

    /// Asks the deploy to stop; `what` names the cause (`SIGTERM`).
    pub fn trigger(&self, what: impl Into<String>) {
        self.set(AbortReason::Signal(what.into()));
    }

    fn set(&self, reason: AbortReason) {
        let mut slot = self.reason.lock_unpoisoned();
        if slot.is_none() {
            *slot = Some(reason);
        }
        self.token.cancel();
    }

    fn error(&self) -> ReleaseError {
        match self.reason.lock_unpoisoned().clone() {
            Some(AbortReason::LockLost) => ReleaseError::LockLost,
            Some(AbortReason::Signal(what)) => ReleaseError::Interrupted(what),
            None => ReleaseError::Interrupted("an abort request".into()),
        }
    }

    fn lock_lost(&self) -> bool {
        matches!(*self.reason.lock_unpoisoned(), Some(AbortReason::LockLost))
    }
}

/// Times steps and collects their records.
struct Recorder {
    steps: Vec<StepRecord>,
    abort: Abort,
}

impl Recorder {
    /// Runs a forward step, racing it against the abort.
    async fn run<T>(
        &mut self,
        step: Step,
        fut: impl Future<Output = Result<T, ReleaseError>>,
    ) -> Result<T, ReleaseError> {
        let abort = self.abort.clone();
        let abortable = async move {
            if abort.token.is_cancelled() {
                return Err(abort.error());
            }
            tokio::select! {
                biased;
                () = abort.token.cancelled() => Err(abort.error()),
                result = fut => result,
            }
        };
        self.run_final(step, abortable).await
    }

    /// Runs a step of the way back (or past the point of no return): not interruptible.
    async fn run_final<T>(
        &mut self,
        step: Step,
        fut: impl Future<Output = Result<T, ReleaseError>>,
    ) -> Result<T, ReleaseError> {
        let started = Instant::now();
        let result = fut.await;
        self.push(step, started, result.as_ref().err().map(|e| e.to_string()));
        result
    }

    fn push(&mut self, name: Step, started: Instant, error: Option<String>) {
        let duration_ms = started.elapsed().as_millis() as u64;
        let result = if error.is_some() {
            StepResult::Failed
        } else {
            StepResult::Ok
        };
        match &error {
            Some(e) => {
                tracing::warn!(step = %name, duration_ms, error = %e, "{name} failed");
            }
            None => tracing::info!(step = %name, duration_ms, "{name} done"),
        }
        self.steps.push(StepRecord {
            name,
            duration_ms,
            result,
            detail: error,
        });
    }

    /// Adds a detail to the last step (what it found, how long nginx took, …).
    fn detail(&mut self, text: impl Into<String>) {
        let text = text.into();
        if let Some(last) = self.steps.last_mut() {
            tracing::info!(step = %last.name, "{}: {text}", last.name);
            last.detail = Some(match last.detail.take() {
                Some(existing) => format!("{existing}; {text}"),
                None => text,
            });
        }
    }

    fn skip(&mut self, name: Step, reason: &str) {
        self.steps.push(StepRecord {
            name,
            duration_ms: 0,
            result: StepResult::Skipped,
            detail: Some(reason.to_string()),
        });
    }
}

/// `ddms release activate RELEASE`. Always returns the record (also appended to
/// `deploys.jsonl`); its `result` says whether the release is live.
pub async fn activate(host: &Host, release: &str, abort: &Abort) -> DeployRecord {
    transition(host, Plan::Activate(release.to_string()), abort).await
}

/// `ddms release rollback`: back to the previous known-good release, through the same gates
/// (without running migrations: they are expand-only, so the older release works on the
/// newer schema).
pub async fn rollback(host: &Host, abort: &Abort) -> DeployRecord {
    transition(host, Plan::Rollback, abort).await
}

/// `ddms release restart`: the live release again, in the idle slot, through the same gates
/// and with the same way back as `activate`. The new process reads the host's configuration
/// and secrets as they are now, which is how a changed `ddms.toml` reaches traffic without a
/// moment when no slot serves.
pub async fn restart(host: &Host, abort: &Abort) -> DeployRecord {
    transition(host, Plan::Restart, abort).await
}

async fn transition(host: &Host, plan: Plan, abort: &Abort) -> DeployRecord {
    let layout = host.layout();
    let mut record = DeployRecord::new(plan.command(), &host.actor);
    if let Plan::Activate(name) = &plan {
        record.release = Some(name.clone());
    }
    let mut rec = Recorder {
        steps: Vec::new(),
        abort: abort.clone(),
    };
    let command = plan.command_line();
    let locked = rec
        .run(Step::Lock, async {
            DeployLock::acquire(&layout, host.gates.lock_ttl, &host.actor, &command)
        })
        .await;
    let (outcome, error) = match locked {
        Err(e) => {
            let outcome = if matches!(e, ReleaseError::LockHeld(_)) {
                Outcome::Refused
            } else {
                Outcome::Aborted
            };
            (outcome, Some(e))
        }
        Ok(lock) => {
            let lost = lock.lost_token();
            let on_lost = {
                let abort = abort.clone();
                tokio::spawn(async move {
                    lost.cancelled().await;
                    abort.set(AbortReason::LockLost);
                })
            };
            let ctx = Ctx {
                host,
                layout: layout.clone(),
                manager: host.manager(),
                probe: Probe::new("ddms-release", PROBE_TIMEOUT),
            };
            let result = ctx.forward(&mut rec, &mut record, &plan).await;
            on_lost.abort();
            lock.release().await;
            result
        }
    };
    record.steps = rec.steps;
    record.result = outcome;
    record.error = error.map(|e| e.to_string());
    record.finished_at = Utc::now();
    record.duration_ms = (record.finished_at - record.started_at)
        .num_milliseconds()
        .max(0) as u64;
    if let Err(e) = record.append(&layout) {
        tracing::error!(error = %e, "cannot append the deploy record to deploys.jsonl");
    }
    record
}

struct Ctx<'a> {
    host: &'a Host,
    layout: Layout,
    manager: Box<dyn ServiceManager>,
    probe: Probe,
}

/// What the forward path had done when it failed: what the way back must undo.
struct Progress {
    started: bool,
    switched: bool,
    /// The watch passed: the release stays, whatever fails after.
    watched: bool,
    /// The upstream include before the switch.
    previous_upstream: Option<String>,
}

impl Ctx<'_> {
    async fn forward(
        &self,
        rec: &mut Recorder,
        record: &mut DeployRecord,
        plan: &Plan,
    ) -> (Outcome, Option<ReleaseError>) {
        // Resolve: which release, which slots.
        let resolved = rec
            .run(Step::Resolve, async {
                let state = HostState::load(&self.layout)?;
                let active = active_slot(self.host, &state);
                let name = plan.target(&state, active, &self.layout)?;
                let meta = ReleaseMeta::load(&self.layout, &name)?;
                Ok((state, meta, active))
            })
            .await;
        let (mut state, meta, active) = match resolved {
            Ok(resolved) => resolved,
            Err(e) => return (Outcome::Aborted, Some(e)),
        };
        let idle = active.map(other).unwrap_or(Slot::Blue);
        let from_release = active.and_then(|slot| self.layout.slot_release(slot));
        record.release = Some(meta.name.clone());
        record.version = Some(meta.version_output.clone());
        record.artifact_digest = Some(meta.digest.clone());
        record.from_slot = active;
        record.from_release = from_release.clone();
        record.to_slot = Some(idle);
        if let Some(active) = active.filter(|_| plan.leaves_live_release_alone()) {
            if from_release.as_deref() == Some(meta.name.as_str())
                && self.manager.is_active(active).await.unwrap_or(false)
                && self.slot_ready(active).await
            {
                rec.detail(format!("{} is already live in slot {active}", meta.name));
                record.to_slot = Some(active);
                // Converge: a leftover of an interrupted deploy in the idle slot goes.
                if self.manager.is_active(idle).await.unwrap_or(false) {
                    if let Err(e) = rec.run(Step::StopIdle, self.manager.stop(idle)).await {
                        return (Outcome::Failed, Some(e));
                    }
                }
                return (Outcome::Unchanged, None);
            }
        }

        rec.detail(format!(
            "{} ({}) → slot {idle}; active: {}",
            meta.name,
            meta.version_output,
            match (&active, &from_release) {
                (Some(slot), Some(release)) => format!("{slot} running {release}"),
                (Some(slot), None) => format!("{slot}"),
                _ => "none (first deploy)".to_string(),
            }
        ));

        let mut progress = Progress {
            started: false,
            switched: false,
            watched: false,
            previous_upstream: None,
        };
        let result = self
            .advance(rec, &mut state, &meta, active, idle, &mut progress, plan)
            .await;
        match result {
            Ok(()) => (plan.success(), None),
            // Past the point of no return: the new release is live, but a step after the
            // watch (stopping the old slot, saving state) failed. Nothing to undo.
            Err(e) if progress.watched => (Outcome::Failed, Some(e)),
            // Another deploy may own the host now: touch nothing.
            Err(e) if rec.abort.lock_lost() => (Outcome::Failed, Some(e)),
            Err(e) => {
                let back = self
                    .way_back(
                        rec,
                        &mut state,
                        active,
                        from_release.as_deref(),
                        idle,
                        &progress,
                    )
                    .await;
                match back {
                    Ok(()) if progress.switched => (Outcome::RolledBack, Some(e)),
                    Ok(()) => (Outcome::Aborted, Some(e)),
                    Err(back) => (
                        Outcome::Failed,
                        Some(ReleaseError::Invalid(format!(
                            "{e}; and restoring the previous state failed: {back}"
                        ))),
                    ),
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn advance(
        &self,
        rec: &mut Recorder,
        state: &mut HostState,
        meta: &ReleaseMeta,
        active: Option<Slot>,
        idle: Slot,
        progress: &mut Progress,
        plan: &Plan,
    ) -> Result<(), ReleaseError> {
        match plan.skip_migrations() {
            None => {
                let output = rec.run(Step::Migrate, self.migrate(meta)).await?;
                rec.detail(output);
            }
            Some(reason) => rec.skip(Step::Migrate, reason),
        }

        if self.manager.is_active(idle).await? {
            // Left running by an interrupted deploy; it serves no traffic.
            rec.run(Step::StopIdle, self.manager.stop(idle)).await?;
        }

        rec.run(Step::Link, async { self.link(idle, &meta.name) })
            .await?;

        progress.started = true;
        rec.run(Step::Start, self.manager.start(idle)).await?;

        let waited = rec.run(Step::Ready, self.wait_ready(idle)).await?;
        rec.detail(format!("ready after {} ms", waited.as_millis()));

        rec.run(Step::Version, self.check_version(idle, meta))
            .await?;

        let upstream = render_upstream(
            idle,
            self.host.port(idle),
            self.host.port(other(idle)),
            &meta.name,
        );
        // Not interruptible: once nginx is asked to reload, the way back must know.
        rec.run_final(Step::Switch, async {
            progress.previous_upstream = self.host.nginx.current()?;
            self.host.nginx.apply(&upstream).await?;
            progress.switched = true;
            state.active_slot = Some(idle);
            state.save(&self.layout)
        })
        .await?;

        let (first, settled) = rec.run(Step::Route, self.wait_routed(idle)).await?;
        rec.detail(format!(
            "nginx answered from slot {idle} {} ms after the reload, only from it after {} ms",
            first.as_millis(),
            settled.as_millis()
        ));

        let watched = rec.run(Step::Watch, self.watch(idle)).await?;
        rec.detail(watched);
        progress.watched = true;

        // Past the watch the release stays, whatever happens: no more interruptions.
        if let Some(old) = active {
            if self.manager.is_active(old).await.unwrap_or(true) {
                rec.run_final(Step::StopOld, self.manager.stop(old)).await?;
            }
        }
        rec.run_final(Step::Commit, async {
            state.mark_good(&meta.name);
            state.save(&self.layout)
        })
        .await
    }

    /// Undoes what `advance` did: nginx back to the old slot (restarting it when it is not
    /// running), then the new slot stopped.
    async fn way_back(
        &self,
        rec: &mut Recorder,
        state: &mut HostState,
        active: Option<Slot>,
        from_release: Option<&str>,
        idle: Slot,
        progress: &Progress,
    ) -> Result<(), ReleaseError> {
        let mut failures = Vec::new();
        if progress.switched {
            let back = rec
                .run_final(Step::SwitchBack, async {
                    match (active, from_release) {
                        (Some(old), Some(release)) => {
                            if !self.manager.is_active(old).await.unwrap_or(false) {
                                self.manager.start(old).await?;
                            }
                            self.wait_ready(old).await?;
                            self.host
                                .nginx
                                .apply(&render_upstream(
                                    old,
                                    self.host.port(old),
                                    self.host.port(other(old)),
                                    release,
                                ))
                                .await?;
                            self.wait_routed(old).await?;
                        }
                        // First deploy: no previous release to send traffic to; put the
                        // include back as it was.
                        _ => {
                            if let Some(previous) = &progress.previous_upstream {
                                self.host.nginx.apply(previous).await?;
                            }
                        }
                    }
                    state.active_slot = active;
                    state.save(&self.layout)
                })
                .await;
            if let Err(e) = back {
                failures.push(e.to_string());
            }
        }
        if progress.started {
            let stopped = rec.run_final(Step::StopNew, self.manager.stop(idle)).await;
            if let Err(e) = stopped {
                failures.push(e.to_string());
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(ReleaseError::Invalid(failures.join("; ")))
        }
    }

    /// `<release>/ddms migrate` with the host's configuration, from the state directory (the
    /// service's working directory).
    async fn migrate(&self, meta: &ReleaseMeta) -> Result<String, ReleaseError> {
        let binary = self.layout.release_dir(&meta.name).join("ddms");
        let state_dir = self.layout.state_dir();
        std::fs::create_dir_all(&state_dir).map_err(ReleaseError::io(&state_dir))?;
        let mut command = tokio::process::Command::new(&binary);
        command
            .arg("migrate")
            .current_dir(&state_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        self.app_env(&mut command);
        let failed = |detail: String| ReleaseError::Migration {
            release: meta.name.clone(),
            detail,
        };
        let output = tokio::time::timeout(self.host.gates.migrate_timeout, command.output())
            .await
            .map_err(|_| {
                failed(format!(
                    "did not finish within {} s",
                    self.host.gates.migrate_timeout.as_secs()
                ))
            })?
            .map_err(|e| failed(format!("cannot run {}: {e}", binary.display())))?;
        if !output.status.success() {
            return Err(failed(format!(
                "{}: {}",
                output.status,
                excerpt(&String::from_utf8_lossy(&output.stderr))
            )));
        }
        Ok(excerpt(&String::from_utf8_lossy(&output.stdout)))
    }

    /// The environment `ddms migrate` shares with `ddms serve`: the host's configuration file
    /// (when it exists; otherwise defaults and environment), and under systemd the profile
    /// the unit sets.
    fn app_env(&self, command: &mut tokio::process::Command) {
        if self.host.app_config.exists() {
            command.env("DDMS_CONFIG", &self.host.app_config);
        } else {
            command.env_remove("DDMS_CONFIG");
        }
        if self.host.service_manager == ServiceManagerKind::Systemd
            && std::env::var_os("DDMS_PROFILE").is_none()
        {
            command.env("DDMS_PROFILE", "production");
        }
    }

    /// Writes the slot's env file and points its link at the release (symlink beside it, then
    /// rename: the link is never missing).
    fn link(&self, slot: Slot, release: &str) -> Result<(), ReleaseError> {
        write_atomic(
            &self.layout.slot_env(slot),
            format!(
                "# Written by `ddms release`: slot {slot}'s listen address.\nDDMS_HTTP__LISTEN=127.0.0.1:{}\n",
                self.host.port(slot)
            )
            .as_bytes(),
        )?;
        let slots = self.layout.slots_dir();
        std::fs::create_dir_all(&slots).map_err(ReleaseError::io(&slots))?;
        let link = self.layout.slot_link(slot);
        let temp = slots.join(format!(".{slot}.tmp-{}", uuid::Uuid::new_v4().simple()));
        let target = Path::new("../releases").join(release);
        std::os::unix::fs::symlink(&target, &temp).map_err(ReleaseError::io(&temp))?;
        if let Err(e) = std::fs::rename(&temp, &link) {
            let _ = std::fs::remove_file(&temp);
            return Err(ReleaseError::Io {
                path: link,
                source: e,
            });
        }
        Ok(())
    }
}
