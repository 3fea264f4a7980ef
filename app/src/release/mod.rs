//! `ddms release`: the host-side blue-green state machine that every deploy front-end
//! (`cargo xtask deploy` over SSH, the Ansible role, the NixOS module) drives.
//!
//! - [`install`] verifies an artifact against its published SHA-256 and, when the host pins a
//!   release key, its minisign signature ([`signature`]), then unpacks it atomically into
//!   `releases/<name>/`.
//! - [`activate`] and [`rollback`] move traffic from the active slot to the idle one through
//!   one explicit state machine ([`deploy`]): lock → migrate → link → start → ready → version →
//!   switch → route → watch → stop old, with the way back (switch back, stop new) taken on any
//!   failure. Each run appends one JSON record to `deploys.jsonl`.
//! - [`restart`] runs the live release again in the idle slot, through the same machine: how a
//!   changed configuration or secret reaches traffic (the new process reads them at start).
//! - [`status`] and [`prune`] report and tidy.
//!
//! Nothing here reads the application's configuration: the commands take a [`Host`] (paths
//! under `--root`, ports, nginx, timeouts). The application configuration file is only handed
//! to the new release's own `ddms migrate` and, with the direct service manager, `ddms serve`.

mod args;
pub(crate) mod artifact;
pub mod deploy;
mod lock;
mod nginx;
pub(crate) mod probe;
mod service;
pub mod signature;
pub(crate) mod state;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use args::{HostArgs, ReleaseArgs, ReleaseCommand};
pub use artifact::{install, parse_version_output, release_name, Installed};
pub use deploy::{activate, restart, rollback, Abort};
pub use lock::LockInfo;
pub use nginx::Nginx;
pub use service::{Direct, ServiceManager, ServiceManagerKind, Systemd};
pub use signature::SignatureCheck;
pub use state::{
    list_releases, prune, status, valid_release_name, DeployRecord, HostState, Outcome,
    PruneReport, ReleaseMeta, SlotStatus, Status, Step, StepRecord, StepResult,
};

use crate::config::Slot;

/// Both slots, blue first.
pub const SLOTS: [Slot; 2] = [Slot::Blue, Slot::Green];

/// The slot that is not `slot`.
pub fn other(slot: Slot) -> Slot {
    match slot {
        Slot::Blue => Slot::Green,
        Slot::Green => Slot::Blue,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no published checksum for {}: expected {} next to it, or pass --checksum FILE", artifact.display(), checksum.display())]
    ChecksumMissing {
        artifact: PathBuf,
        checksum: PathBuf,
    },
    #[error("checksum file {}: {reason}", path.display())]
    ChecksumInvalid { path: PathBuf, reason: String },
    #[error("{} does not match its published checksum (expected sha256 {expected}, got {actual}): the artifact is corrupt, truncated or tampered with; nothing was installed", artifact.display())]
    ChecksumMismatch {
        artifact: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{} is not signed: this host pins release key {key_id} ({}) and {} does not exist; nothing was installed (sign releases with `cargo xtask sign`, docs/deploying.md)", artifact.display(), key.display(), signature.display())]
    SignatureMissing {
        artifact: PathBuf,
        signature: PathBuf,
        key_id: String,
        key: PathBuf,
    },
    #[error("{} is not signed by this host's release key (signature {}): {reason}; nothing was installed", artifact.display(), signature.display())]
    SignatureInvalid {
        artifact: PathBuf,
        signature: PathBuf,
        reason: String,
    },
    #[error("release public key {}: {reason}; refusing to install anything until it is fixed or removed", path.display())]
    PublicKeyInvalid { path: PathBuf, reason: String },
    #[error("--signature was given, but no release public key is pinned at {}: nothing to check it against; nothing was installed", key.display())]
    NoPinnedKey { key: PathBuf },
    #[error("{} is not a ddms release artifact: {reason}; nothing was installed", path.display())]
    InvalidArtifact { path: PathBuf, reason: String },
    #[error("release `{name}` is already installed from a different artifact ({existing}); refusing to overwrite it")]
    ReleaseConflict { name: String, existing: String },
    #[error("release `{0}` is not installed (see `ddms release install`)")]
    UnknownRelease(String),
    #[error("another deploy holds the lock: {0}")]
    LockHeld(Box<LockInfo>),
    #[error("the deploy lock was lost (it expired or was taken over); stopping")]
    LockLost,
    #[error("interrupted by {0}")]
    Interrupted(String),
    #[error("`ddms migrate` of release `{release}` failed: {detail}")]
    Migration { release: String, detail: String },
    #[error("service manager ({manager}): {detail}")]
    Service {
        manager: &'static str,
        detail: String,
    },
    #[error("slot {slot} did not become ready within {timeout_s} s: {detail}")]
    NotReady {
        slot: Slot,
        timeout_s: u64,
        detail: String,
    },
    #[error("slot {slot} answers /api/version with {actual}, expected {expected}")]
    VersionMismatch {
        slot: Slot,
        expected: String,
        actual: String,
    },
    #[error("nginx: {0}")]
    Nginx(String),
    #[error("unhealthy after the switch: {0}")]
    Unhealthy(String),
    #[error("nothing is live to restart: {0} (see `ddms release activate`)")]
    NothingLive(String),
    #[error("nothing to roll back to: {0}")]
    NoRollbackTarget(String),
    #[error("{}: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
}

impl ReleaseError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ReleaseError {
        let path = path.into();
        move |source| ReleaseError::Io { path, source }
    }

    /// Reads the text file `path`: a missing file is the error `missing` makes, another failure
    /// [`ReleaseError::Io`].
    pub(crate) fn read_text(
        path: &Path,
        missing: impl FnOnce() -> ReleaseError,
    ) -> Result<String, ReleaseError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(missing()),
            Err(e) => Err(ReleaseError::io(path)(e)),
        }
    }

    /// Exit status for the command line: 3 when another deploy holds the lock (retry later),
    /// 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            ReleaseError::LockHeld(_) => 3,
            _ => 1,
        }
    }
}

/// Timeouts and thresholds of a deploy.
#[derive(Debug, Clone)]
pub struct Gates {
    /// How long a started slot has to answer `/ready` with 200.
    pub ready_timeout: Duration,
    /// How long traffic is watched after the switch before the old slot is stopped.
    pub watch: Duration,
    /// How long a stopping slot may drain before it is killed (direct service manager).
    pub drain_timeout: Duration,
    /// How long `ddms migrate` may run.
    pub migrate_timeout: Duration,
    /// Deploy lock lease; renewed every third of it while the deploy runs.
    pub lock_ttl: Duration,
    /// Largest share of 5xx responses the new slot may serve during the watch.
    pub max_5xx_ratio: f64,
}

impl Default for Gates {
    fn default() -> Self {
        Gates {
            ready_timeout: Duration::from_secs(60),
            watch: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(40),
            migrate_timeout: Duration::from_secs(600),
            lock_ttl: Duration::from_secs(60),
            max_5xx_ratio: 0.01,
        }
    }
}

/// Everything the release commands know about the host. Paths follow the contract's "Host
/// layout for blue-green", each under `root` (`/` in production, a temp dir in tests).
#[derive(Debug, Clone)]
pub struct Host {
    pub root: PathBuf,
    /// The application's configuration file for `ddms migrate` and `ddms serve`
    /// (default `<root>/etc/ddms/ddms.toml`).
    pub app_config: PathBuf,
    pub service_manager: ServiceManagerKind,
    pub blue_port: u16,
    pub green_port: u16,
    pub nginx: Nginx,
    /// nginx's public side; the watch checks `<public_url>ready` through it. Certificates are
    /// not verified: this is the local nginx, whose certificate names the public host.
    pub public_url: url::Url,
    pub gates: Gates,
    /// Who deploys (`--actor`, else `$SUDO_USER`, else `$USER`).
    pub actor: String,
}

impl Host {
    /// Production defaults under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Host {
        let root = root.into();
        let layout = Layout::new(&root);
        Host {
            app_config: layout.etc_dir().join("ddms.toml"),
            service_manager: ServiceManagerKind::detect(),
            blue_port: 8081,
            green_port: 8082,
            nginx: Nginx {
                bin: PathBuf::from("nginx"),
                conf: None,
                prefix: None,
                upstream: layout.default_upstream(),
            },
            public_url: url::Url::parse("https://127.0.0.1/").expect("a valid URL"),
            gates: Gates::default(),
            actor: default_actor(),
            root,
        }
    }

    pub fn layout(&self) -> Layout {
        Layout::new(&self.root)
    }

    pub fn port(&self, slot: Slot) -> u16 {
        match slot {
            Slot::Blue => self.blue_port,
            Slot::Green => self.green_port,
        }
    }

    /// `http://127.0.0.1:<port>` of a slot.
    pub fn slot_url(&self, slot: Slot) -> String {
        format!("http://127.0.0.1:{}", self.port(slot))
    }

    pub fn manager(&self) -> Box<dyn ServiceManager> {
        match self.service_manager {
            ServiceManagerKind::Systemd => Box::new(Systemd),
            ServiceManagerKind::Direct => Box::new(Direct {
                layout: self.layout(),
                app_config: self.app_config.clone(),
                drain_timeout: self.gates.drain_timeout,
            }),
        }
    }
}

/// `$SUDO_USER`, else `$USER`, else `unknown`.
pub fn default_actor() -> String {
    ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|key| std::env::var(key).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "unknown".into())
}

/// The host paths, each under a root.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Layout {
        Layout {
            root: root.to_path_buf(),
        }
    }

    /// `<root>/opt/ddms/releases/`
    pub fn releases_dir(&self) -> PathBuf {
        self.root.join("opt/ddms/releases")
    }

    pub fn release_dir(&self, name: &str) -> PathBuf {
        self.releases_dir().join(name)
    }

    /// `<root>/opt/ddms/slots/`
    pub fn slots_dir(&self) -> PathBuf {
        self.root.join("opt/ddms/slots")
    }

    /// `<root>/opt/ddms/slots/<slot>`: a symbolic link to the slot's release.
    pub fn slot_link(&self, slot: Slot) -> PathBuf {
        self.slots_dir().join(slot.to_string())
    }

    /// `<root>/var/lib/ddms/`
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("var/lib/ddms")
    }

    pub fn state_file(&self) -> PathBuf {
        self.state_dir().join("release-state.json")
    }

    pub fn deploy_log(&self) -> PathBuf {
        self.state_dir().join("deploys.jsonl")
    }

    pub fn lock_file(&self) -> PathBuf {
        self.state_dir().join("deploy.lock")
    }

    /// `<root>/etc/ddms/`
    pub fn etc_dir(&self) -> PathBuf {
        self.root.join("etc/ddms")
    }

    /// `<root>/etc/ddms/release.pub`: the release signing key this host pins, if any
    /// ([`signature`]).
    pub fn release_public_key(&self) -> PathBuf {
        self.etc_dir().join(signature::PUBLIC_KEY_FILE)
    }

    /// `<root>/etc/ddms/slot-<slot>.env`
    pub fn slot_env(&self, slot: Slot) -> PathBuf {
        self.etc_dir().join(format!("slot-{slot}.env"))
    }

    /// `<root>/etc/nginx/ddms/ddms-upstream.conf`
    pub fn default_upstream(&self) -> PathBuf {
        self.root.join("etc/nginx/ddms/ddms-upstream.conf")
    }

    /// The release a slot's link points at, if any.
    pub fn slot_release(&self, slot: Slot) -> Option<String> {
        let target = std::fs::read_link(self.slot_link(slot)).ok()?;
        target
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
    }
}

/// Writes `content` to `path` atomically: a temp file beside it, fsync, rename.
pub(crate) fn write_atomic(path: &Path, content: &[u8]) -> Result<(), ReleaseError> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(ReleaseError::io(dir))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        uuid::Uuid::new_v4().simple()
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(content)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(ReleaseError::Io {
            path: path.to_path_buf(),
            source: e,
        });
    }
    Ok(())
}
