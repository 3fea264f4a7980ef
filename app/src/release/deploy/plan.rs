//! What a deploy run was asked for — `activate RELEASE`, `rollback` or `restart` — and the few
//! places where the three differ: which release goes to the idle slot, whether migrations
//! run, and whether a release that is live already is left alone. Everything else (lock,
//! start, gates, switch, watch, the way back, the record) is the one path in `deploy.rs`.

use super::super::state::{HostState, Outcome};
use super::super::{Layout, ReleaseError};
use crate::config::Slot;

pub(super) enum Plan {
    Activate(String),
    Rollback,
    /// The live release once more, in the idle slot: its new process reads the host's
    /// configuration and secrets as they are now.
    Restart,
}

impl Plan {
    /// The record's `command`.
    pub(super) fn command(&self) -> &'static str {
        match self {
            Plan::Activate(_) => "activate",
            Plan::Rollback => "rollback",
            Plan::Restart => "restart",
        }
    }

    /// What the deploy lock says is running (`ddms release status` shows it).
    pub(super) fn command_line(&self) -> String {
        match self {
            Plan::Activate(name) => format!("activate {name}"),
            other => other.command().to_string(),
        }
    }

    /// The release to start in the idle slot. `active` is the slot traffic goes to.
    pub(super) fn target(
        &self,
        state: &HostState,
        active: Option<Slot>,
        layout: &Layout,
    ) -> Result<String, ReleaseError> {
        let live = active.and_then(|slot| layout.slot_release(slot));
        match self {
            Plan::Activate(name) => Ok(name.clone()),
            Plan::Rollback => rollback_target(state, live),
            Plan::Restart => live.ok_or_else(|| {
                ReleaseError::NothingLive(match active {
                    Some(slot) => format!("slot {slot} is active but points at no release"),
                    None => "no release has been activated on this host".into(),
                })
            }),
        }
    }

    /// Why `migrate` is skipped, if it is.
    pub(super) fn skip_migrations(&self) -> Option<&'static str> {
        match self {
            Plan::Activate(_) => None,
            Plan::Rollback => {
                Some("rollback: migrations are expand-only, the older release runs on this schema")
            }
            Plan::Restart => {
                Some("restart: the live release's migrations ran when it was activated")
            }
        }
    }

    /// `activate` of the release that is live already, ready, changes nothing (`unchanged`);
    /// `restart` exists to replace exactly that process.
    pub(super) fn leaves_live_release_alone(&self) -> bool {
        !matches!(self, Plan::Restart)
    }

    /// The outcome when every gate passed.
    pub(super) fn success(&self) -> Outcome {
        match self {
            Plan::Restart => Outcome::Restarted,
            Plan::Activate(_) | Plan::Rollback => Outcome::Ok,
        }
    }
}

/// Where `rollback` goes: the last known good release when the live one is not it (a deploy
/// that never finished its watch), else the known-good release before it.
fn rollback_target(state: &HostState, live: Option<String>) -> Result<String, ReleaseError> {
    match (&state.last_known_good, &state.previous_known_good) {
        (Some(good), _) if live.as_ref() != Some(good) => Ok(good.clone()),
        (_, Some(previous)) => Ok(previous.clone()),
        _ => Err(ReleaseError::NoRollbackTarget(
            "no earlier known-good release is recorded".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollback_goes_to_the_last_good_release_unless_it_is_the_live_one() {
        let state = HostState {
            last_known_good: Some("v2".into()),
            previous_known_good: Some("v1".into()),
            ..HostState::default()
        };
        assert_eq!(rollback_target(&state, Some("v2".into())).unwrap(), "v1");
        // v3 went live but its deploy died before the watch passed.
        assert_eq!(rollback_target(&state, Some("v3".into())).unwrap(), "v2");
        let first = HostState {
            last_known_good: Some("v1".into()),
            ..HostState::default()
        };
        assert!(matches!(
            rollback_target(&first, Some("v1".into())),
            Err(ReleaseError::NoRollbackTarget(_))
        ));
    }

    #[test]
    fn restart_targets_the_live_release_and_refuses_when_there_is_none() {
        let root = tempfile::tempdir().unwrap();
        let layout = Layout::new(root.path());
        let state = HostState::default();
        assert!(matches!(
            Plan::Restart.target(&state, None, &layout),
            Err(ReleaseError::NothingLive(_))
        ));
        std::fs::create_dir_all(layout.slots_dir()).unwrap();
        std::os::unix::fs::symlink("../releases/v7", layout.slot_link(Slot::Green)).unwrap();
        assert_eq!(
            Plan::Restart
                .target(&state, Some(Slot::Green), &layout)
                .unwrap(),
            "v7"
        );
        assert!(matches!(
            Plan::Restart.target(&state, Some(Slot::Blue), &layout),
            Err(ReleaseError::NothingLive(_))
        ));
        assert!(!Plan::Restart.leaves_live_release_alone());
        assert!(Plan::Activate("v7".into()).leaves_live_release_alone());
    }
}
