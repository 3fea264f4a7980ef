//! What the release machinery keeps on the host: the state file (active slot, last known good
//! release), per-release metadata, the deploy log (`deploys.jsonl`, one [`DeployRecord`] a
//! line), and the reports built from them (`status`, `prune`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::lock::{self, LockInfo};
use super::probe::Probe;
use super::{write_atomic, Host, Layout, ReleaseError, SLOTS};
use crate::config::Slot;

/// `<state>/release-state.json`. The slot links are the truth for what each slot runs; this
/// file holds what links cannot say.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostState {
    /// The slot nginx sends traffic to (updated right after each upstream switch).
    pub active_slot: Option<Slot>,
    /// The release that last passed the watch.
    pub last_known_good: Option<String>,
    /// The known-good release before it: where `rollback` goes.
    pub previous_known_good: Option<String>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl HostState {
    pub fn load(layout: &Layout) -> Result<HostState, ReleaseError> {
        let path = layout.state_file();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ReleaseError::Corrupt {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HostState::default()),
            Err(e) => Err(ReleaseError::Io { path, source: e }),
        }
    }

    pub fn save(&mut self, layout: &Layout) -> Result<(), ReleaseError> {
        self.updated_at = Some(Utc::now());
        let mut json = serde_json::to_vec_pretty(self).expect("state serializes");
        json.push(b'\n');
        write_atomic(&layout.state_file(), &json)
    }

    /// Records `release` as the last known good one, keeping the one before as the rollback
    /// target.
    pub fn mark_good(&mut self, release: &str) {
        if self.last_known_good.as_deref() != Some(release) {
            self.previous_known_good = self.last_known_good.take();
            self.last_known_good = Some(release.to_string());
        }
    }
}

/// `<release>/.ddms-release.json`, written by `install`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseMeta {
    pub name: String,
    /// `ddms --version` of the release's binary, e.g. `ddms 0.1.0 (git 1a2b3c4)`.
    pub version_output: String,
    /// The version alone (`0.1.0`), as `/api/version` reports it.
    pub version: String,
    /// The commit, as `/api/version` reports it.
    pub git_sha: String,
    /// `sha256:<hex>` of the artifact it was installed from.
    pub digest: String,
    pub artifact: String,
    pub installed_at: DateTime<Utc>,
}

pub const META_FILE: &str = ".ddms-release.json";

impl ReleaseMeta {
    pub fn load(layout: &Layout, name: &str) -> Result<ReleaseMeta, ReleaseError> {
        let dir = layout.release_dir(name);
        if !valid_release_name(name) || !dir.is_dir() {
            return Err(ReleaseError::UnknownRelease(name.to_string()));
        }
        let path = dir.join(META_FILE);
        let bytes = std::fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ReleaseError::Corrupt {
                    path: path.clone(),
                    reason: "missing: the release was not installed by `ddms release install`"
                        .into(),
                }
            } else {
                ReleaseError::Io {
                    path: path.clone(),
                    source: e,
                }
            }
        })?;
        serde_json::from_slice(&bytes).map_err(|e| ReleaseError::Corrupt {
            path,
            reason: e.to_string(),
        })
    }
}

/// Release names are single, plain path components: no `/`, no `..` anywhere, and no leading `.`
/// or `-` (a hidden file, or an option to the commands that are given the path).
pub fn valid_release_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(['.', '-'])
        && !name.contains("..")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'))
}

/// The steps of a deploy, in the order they run; the last two only on the way back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Take the deploy lock (a lease renewed while the deploy runs).
    Lock,
    /// Find the release, the active and the idle slot.
    Resolve,
    /// `<release>/ddms migrate` (expand-only migrations) before anything switches.
    Migrate,
    /// Stop a leftover process in the idle slot (from an interrupted deploy).
    StopIdle,
    /// Point the idle slot's link at the release and write its env file.
    Link,
    /// Start the idle slot through the service manager.
    Start,
    /// Wait for the slot's `/ready`.
    Ready,
    /// The slot's `/api/version` names the release's version, commit and the slot.
    Version,
    /// Rewrite the nginx upstream include, `nginx -t`, graceful reload.
    Switch,
    /// nginx answers from the new slot.
    Route,
    /// `/ready` through nginx and the new slot's 5xx share, for the watch window.
    Watch,
    /// Stop the old slot (it drains in-flight requests and ends live streams).
    StopOld,
    /// Record the release as last known good.
    Commit,
    /// On failure after the switch: nginx back to the old slot.
    SwitchBack,
    /// On failure after the start: stop the new slot.
    StopNew,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = serde_json::to_value(self).expect("serializes");
        f.write_str(name.as_str().unwrap_or("step"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepResult {
    Ok,
    Failed,
    Skipped,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub name: Step,
    pub duration_ms: u64,
    pub result: StepResult,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// How a deploy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The release is live and passed the watch; the old slot is stopped.
    Ok,
    /// The release was already live and ready; nothing changed.
    Unchanged,
    /// `restart`: the live release runs again in the other slot, which passed the watch and
    /// serves; the old slot is stopped.
    Restarted,
    /// Another deploy holds the lock; nothing changed.
    Refused,
    /// Failed before traffic moved; the old slot kept serving throughout.
    Aborted,
    /// Failed after traffic moved; traffic is back on the old slot.
    RolledBack,
    /// Failed and could not restore the previous state: needs an operator.
    Failed,
}

impl Outcome {
    pub fn is_success(self) -> bool {
        matches!(self, Outcome::Ok | Outcome::Unchanged | Outcome::Restarted)
    }
}

/// One line of `deploys.jsonl`, also printed by `activate`, `rollback` and `restart`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployRecord {
    pub id: String,
    /// `activate`, `rollback` or `restart`.
    pub command: String,
    pub actor: String,
    pub host: String,
    pub release: Option<String>,
    pub version: Option<String>,
    pub artifact_digest: Option<String>,
    pub from_slot: Option<Slot>,
    pub from_release: Option<String>,
    pub to_slot: Option<Slot>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_ms: u64,
    pub steps: Vec<StepRecord>,
    pub result: Outcome,
    pub error: Option<String>,
}

impl DeployRecord {
    pub fn new(command: &str, actor: &str) -> DeployRecord {
        let now = Utc::now();
        DeployRecord {
            id: uuid::Uuid::now_v7().to_string(),
            command: command.to_string(),
            actor: actor.to_string(),
            host: hostname(),
            release: None,
            version: None,
            artifact_digest: None,
            from_slot: None,
            from_release: None,
            to_slot: None,
            started_at: now,
            finished_at: now,
            duration_ms: 0,
            steps: Vec::new(),
            result: Outcome::Failed,
            error: None,
        }
    }

    /// Appends the record as one line to `deploys.jsonl` (one `write`, `O_APPEND`).
    pub fn append(&self, layout: &Layout) -> Result<(), ReleaseError> {
        let path = layout.deploy_log();
        let dir = layout.state_dir();
        std::fs::create_dir_all(&dir).map_err(ReleaseError::io(&dir))?;
        let mut line = serde_json::to_vec(self).expect("record serializes");
        line.push(b'\n');
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(ReleaseError::io(&path))?;
        file.write_all(&line).map_err(ReleaseError::io(&path))?;
        file.sync_data().map_err(ReleaseError::io(&path))
    }

    /// The step of that name, if it ran.
    pub fn step(&self, name: Step) -> Option<&StepRecord> {
        self.steps.iter().rev().find(|s| s.name == name)
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The last record of `deploys.jsonl`, if any.
pub fn last_deploy(layout: &Layout) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(layout.deploy_log()).ok()?;
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    serde_json::from_str(line).ok()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotStatus {
    pub release: Option<String>,
    pub port: u16,
    /// nginx sends traffic here.
    pub active: bool,
    /// The service manager says the slot's process runs.
    pub running: bool,
    /// `/ready` answered 200.
    pub ready: bool,
    /// What `/ready` answered, or why it did not.
    pub health: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Where traffic goes: the nginx include's slot, else the state file's.
    pub active_slot: Option<Slot>,
    /// The slot the nginx upstream include points at.
    pub upstream_slot: Option<Slot>,
    /// The slot the state file names (equals `upstream_slot` unless a deploy died mid-switch).
    pub recorded_active_slot: Option<Slot>,
    pub slots: BTreeMap<Slot, SlotStatus>,
    pub last_known_good: Option<String>,
    pub previous_known_good: Option<String>,
    pub lock: Option<LockInfo>,
    pub last_deploy: Option<serde_json::Value>,
    pub releases: Vec<String>,
    pub service_manager: String,
}

/// The slot traffic goes to: the one the nginx include points at (the truth, should a deploy
/// have died between the reload and saving the state), else the one the state file names.
pub fn active_slot(host: &Host, state: &HostState) -> Option<Slot> {
    let upstream = upstream_slot(host);
    match (upstream, state.active_slot) {
        (Some(upstream), Some(recorded)) if upstream != recorded => {
            tracing::warn!(upstream = %upstream, recorded = %recorded, "the nginx upstream and the state file disagree on the active slot; following nginx");
            Some(upstream)
        }
        (Some(upstream), _) => Some(upstream),
        (None, recorded) => recorded,
    }
}

fn upstream_slot(host: &Host) -> Option<Slot> {
    let port = host.nginx.current_port()?;
    SLOTS.into_iter().find(|slot| host.port(*slot) == port)
}

/// `ddms release status`: reads state, links, the lock and the deploy log, and asks each slot's
/// `/ready`.
pub async fn status(host: &Host) -> Result<Status, ReleaseError> {
    let layout = host.layout();
    let state = HostState::load(&layout)?;
    let manager = host.manager();
    let probe = Probe::new("ddms-release", Duration::from_secs(2));
    let active = active_slot(host, &state);
    let mut slots = BTreeMap::new();
    for slot in SLOTS {
        let running = manager.is_active(slot).await.unwrap_or(false);
        let (ready, health) = match probe.get(&format!("{}/ready", host.slot_url(slot))).await {
            Ok((200, _)) => (true, "ready".to_string()),
            Ok((code, _)) => (false, format!("/ready answered {code}")),
            Err(e) => (false, e),
        };
        slots.insert(
            slot,
            SlotStatus {
                release: layout.slot_release(slot),
                port: host.port(slot),
                active: active == Some(slot),
                running,
                ready,
                health,
            },
        );
    }
    Ok(Status {
        active_slot: active,
        upstream_slot: upstream_slot(host),
        recorded_active_slot: state.active_slot,
        slots,
        last_known_good: state.last_known_good,
        previous_known_good: state.previous_known_good,
        lock: lock::current(&layout),
        last_deploy: last_deploy(&layout),
        releases: list_releases(&layout)?
            .into_iter()
            .map(|(name, _)| name)
            .collect(),
        service_manager: manager.name().to_string(),
    })
}

/// Installed releases, newest first (by install time; releases without metadata last).
pub fn list_releases(layout: &Layout) -> Result<Vec<(String, Option<ReleaseMeta>)>, ReleaseError> {
    let dir = layout.releases_dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(ReleaseError::Io {
                path: dir,
                source: e,
            })
        }
    };
    let mut releases = Vec::new();
    for entry in entries {
        let entry = entry.map_err(ReleaseError::io(&dir))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !valid_release_name(&name) || !entry.path().is_dir() {
            continue;
        }
        let meta = ReleaseMeta::load(layout, &name).ok();
        releases.push((name, meta));
    }
    releases.sort_by(|(a_name, a), (b_name, b)| {
        let a_time = a.as_ref().map(|m| m.installed_at);
        let b_time = b.as_ref().map(|m| m.installed_at);
        b_time.cmp(&a_time).then_with(|| b_name.cmp(a_name))
    });
    Ok(releases)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PruneReport {
    pub kept: Vec<String>,
    pub removed: Vec<String>,
    /// Kept whatever their age: linked by a slot, last known good, or the rollback target.
    pub protected: Vec<String>,
}

/// Leftover install directories older than this are removed by `prune`.
const STALE_INSTALL: Duration = Duration::from_secs(3600);

/// `ddms release prune --keep N`: removes all but the `keep` newest releases, never one a
/// slot points at (the active release among them), the last known good one, or the rollback
/// target. Holds the deploy lock, so it cannot remove a release a deploy is about to use.
pub async fn prune(host: &Host, keep: usize) -> Result<PruneReport, ReleaseError> {
    let layout = host.layout();
    let lock = lock::DeployLock::acquire(
        &layout,
        host.gates.lock_ttl,
        &host.actor,
        &format!("prune --keep {keep}"),
    )?;
    let result = prune_locked(&layout, keep);
    lock.release().await;
    result
}

fn prune_locked(layout: &Layout, keep: usize) -> Result<PruneReport, ReleaseError> {
    let state = HostState::load(layout)?;
    let mut protected: Vec<String> = SLOTS
        .iter()
        .filter_map(|slot| layout.slot_release(*slot))
        .chain(state.last_known_good.clone())
        .chain(state.previous_known_good.clone())
        .collect();
    protected.sort();
    protected.dedup();
    let mut report = PruneReport {
        kept: Vec::new(),
        removed: Vec::new(),
        protected: protected.clone(),
    };
    for (index, (name, meta)) in list_releases(layout)?.into_iter().enumerate() {
        // Directories we did not install are not ours to remove.
        if index < keep || protected.contains(&name) || meta.is_none() {
            report.kept.push(name);
            continue;
        }
        let dir = layout.release_dir(&name);
        remove_release_dir(layout, &dir)?;
        report.removed.push(name);
    }
    remove_stale_installs(layout);
    Ok(report)
}

/// Removes a release directory by first renaming it out of the way, so a crash mid-removal
/// never leaves a half release under its own name.
fn remove_release_dir(layout: &Layout, dir: &Path) -> Result<(), ReleaseError> {
    let trash = layout
        .releases_dir()
        .join(format!(".prune-{}", uuid::Uuid::new_v4().simple()));
    std::fs::rename(dir, &trash).map_err(ReleaseError::io(dir))?;
    std::fs::remove_dir_all(&trash).map_err(ReleaseError::io(&trash))
}

fn remove_stale_installs(layout: &Layout) {
    let Ok(entries) = std::fs::read_dir(layout.releases_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let leftover = name.starts_with(".install-") || name.starts_with(".prune-");
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_INSTALL);
        if leftover && (old || name.starts_with(".prune-")) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploy_records_have_the_documented_shape() {
        let mut record = DeployRecord::new("activate", "alice");
        record.release = Some("0.2.0".into());
        record.version = Some("ddms 0.2.0 (git abc1234)".into());
        record.artifact_digest = Some("sha256:00ff".into());
        record.from_slot = Some(Slot::Blue);
        record.from_release = Some("0.1.0".into());
        record.to_slot = Some(Slot::Green);
        record.steps.push(StepRecord {
            name: Step::Watch,
            duration_ms: 30_001,
            result: StepResult::Failed,
            detail: Some("/ready through nginx answered 502".into()),
        });
        record.steps.push(StepRecord {
            name: Step::SwitchBack,
            duration_ms: 12,
            result: StepResult::Ok,
            detail: None,
        });
        record.result = Outcome::RolledBack;
        record.error = Some("unhealthy after the switch: …".into());
        let json = serde_json::to_value(&record).unwrap();
        let mut keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "actor",
                "artifact_digest",
                "command",
                "duration_ms",
                "error",
                "finished_at",
                "from_release",
                "from_slot",
                "host",
                "id",
                "release",
                "result",
                "started_at",
                "steps",
                "to_slot",
                "version"
            ]
        );
        assert_eq!(json["from_slot"], "blue");
        assert_eq!(json["to_slot"], "green");
        assert_eq!(json["result"], "rolled_back");
        assert_eq!(
            json["steps"][0],
            serde_json::json!({"name": "watch", "duration_ms": 30001, "result": "failed",
                               "detail": "/ready through nginx answered 502"})
        );
        assert_eq!(
            json["steps"][1],
            serde_json::json!({"name": "switch_back", "duration_ms": 12, "result": "ok"})
        );
        let back: DeployRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
    }

    #[test]
    fn host_state_round_trips_and_remembers_the_rollback_target() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        assert_eq!(HostState::load(&layout).unwrap(), HostState::default());
        let mut state = HostState {
            active_slot: Some(Slot::Green),
            ..HostState::default()
        };
        state.mark_good("0.1.0");
        state.mark_good("0.2.0");
        state.mark_good("0.2.0");
        assert_eq!(state.last_known_good.as_deref(), Some("0.2.0"));
        assert_eq!(state.previous_known_good.as_deref(), Some("0.1.0"));
        state.save(&layout).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.state_file()).unwrap()).unwrap();
        assert_eq!(json["active_slot"], "green");
        assert_eq!(json["last_known_good"], "0.2.0");
        assert_eq!(json["previous_known_good"], "0.1.0");
        assert_eq!(HostState::load(&layout).unwrap(), state);
    }

    #[test]
    fn release_names_are_plain_path_components() {
        for good in ["0.1.0", "v2", "0.1.0+build.7", "ddms-0.1.0-x86_64-linux"] {
            assert!(valid_release_name(good), "{good}");
        }
        for bad in [
            "", ".", "..", ".hidden", "a/b", "a b", "../x", "é", "-", "-rf", "1..2",
        ] {
            assert!(!valid_release_name(bad), "{bad}");
        }
    }
}
