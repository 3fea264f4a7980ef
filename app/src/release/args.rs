//! `ddms release`'s arguments: the subcommands and the host options (`--root`, slot ports,
//! nginx, the gates' timeouts), clap-derived, and their mapping onto a [`Host`]. The command
//! line (`cli/`) names them; `cli/release.rs` runs them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::{Gates, Host, Nginx, ServiceManagerKind};

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    #[command(flatten)]
    pub host: HostArgs,
    #[command(subcommand)]
    pub command: ReleaseCommand,
}

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Verify an artifact against its published SHA-256 — and its minisign signature when
    /// <root>/etc/ddms/release.pub pins a release key — and unpack it into
    /// <root>/opt/ddms/releases/<name>/ (name: the tarball's top directory less `ddms-` and
    /// `-<arch>-linux`, i.e. the version; for cargo-dist's `ddms-<target>/`, the binary's
    /// version). Prints the release's metadata as JSON, with `signature.status` `verified` or
    /// `unchecked` (no key pinned).
    Install {
        /// The release tarball (`cargo xtask build`, or cargo-dist's `ddms-<target>.tar.gz`).
        artifact: PathBuf,
        /// The published checksum in sha256sum format (default: ARTIFACT.sha256).
        #[arg(long, value_name = "FILE")]
        checksum: Option<PathBuf>,
        /// The minisign signature (default: ARTIFACT.minisig); checked only against the key
        /// pinned at <root>/etc/ddms/release.pub, never one named on the command line.
        #[arg(long, value_name = "FILE")]
        signature: Option<PathBuf>,
    },
    /// Blue-green switch to an installed release: lock, migrate, start the idle slot, wait for
    /// /ready, check /api/version, switch nginx, watch, stop the old slot; on any failure
    /// switch back and exit non-zero. Appends one JSON record to deploys.jsonl and prints it.
    Activate {
        /// An installed release (see `ddms release status`).
        release: String,
    },
    /// Back to the previous known-good release, through the same gates (no migrations).
    Rollback,
    /// Run the live release again in the idle slot so that it reads the configuration and
    /// secrets as they are now, through the same gates as activate (no migrations); on any
    /// failure traffic stays on (or goes back to) the running slot. Prints one JSON record,
    /// result `restarted` when the new process serves, and appends it to deploys.jsonl.
    /// Refuses (exit 1) when no release is live.
    Restart,
    /// Active slot, release and health per slot, lock holder, last deploy, as JSON.
    Status,
    /// Remove all but the N newest releases; never one a slot points at, the last known good
    /// one or the rollback target.
    Prune {
        #[arg(long, value_name = "N")]
        keep: usize,
    },
}

/// Host options of `ddms release`. Defaults follow the contract's host layout; each can also
/// be set with a `DDMS_RELEASE_*` variable (ignored by the application's own configuration).
/// The global `--config` (or `DDMS_CONFIG`) names the ddms.toml the release's `ddms migrate`
/// and, with the direct service manager, `ddms serve` use (default <root>/etc/ddms/ddms.toml).
#[derive(Debug, Args)]
pub struct HostArgs {
    /// Prefix for every host path (/opt/ddms, /etc/ddms, /var/lib/ddms, the nginx include).
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "DDMS_RELEASE_ROOT",
        default_value = "/"
    )]
    pub root: PathBuf,
    /// systemd (`ddms@<slot>` units), direct (a built-in supervisor), or auto (systemd when
    /// /run/systemd/system exists).
    #[arg(
        long,
        global = true,
        value_name = "KIND",
        env = "DDMS_RELEASE_SERVICE_MANAGER",
        default_value = "auto"
    )]
    pub service_manager: ServiceManagerKind,
    /// Slot blue listens on 127.0.0.1:PORT (its env file, the nginx upstream, the checks).
    #[arg(
        long,
        global = true,
        value_name = "PORT",
        env = "DDMS_RELEASE_BLUE_PORT",
        default_value_t = 8081
    )]
    pub blue_port: u16,
    /// Slot green listens on 127.0.0.1:PORT.
    #[arg(
        long,
        global = true,
        value_name = "PORT",
        env = "DDMS_RELEASE_GREEN_PORT",
        default_value_t = 8082
    )]
    pub green_port: u16,
    /// The upstream include to rewrite [default: <root>/etc/nginx/ddms/ddms-upstream.conf].
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "DDMS_RELEASE_NGINX_UPSTREAM"
    )]
    pub nginx_upstream: Option<PathBuf>,
    /// The nginx binary for `-t` and `-s reload`.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "DDMS_RELEASE_NGINX",
        default_value = "nginx"
    )]
    pub nginx_bin: PathBuf,
    /// Passed to nginx as `-c FILE`.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "DDMS_RELEASE_NGINX_CONF"
    )]
    pub nginx_conf: Option<PathBuf>,
    /// Passed to nginx as `-p DIR`.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "DDMS_RELEASE_NGINX_PREFIX"
    )]
    pub nginx_prefix: Option<PathBuf>,
    /// nginx's public side, for the post-switch checks (http or https; the certificate is not
    /// verified, the check talks to the local nginx).
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "DDMS_RELEASE_PUBLIC_URL",
        default_value = "https://127.0.0.1/"
    )]
    pub public_url: url::Url,
    /// Seconds a started slot has to become ready.
    #[arg(
        long,
        global = true,
        value_name = "SECONDS",
        env = "DDMS_RELEASE_READY_TIMEOUT",
        default_value_t = 60
    )]
    pub ready_timeout: u64,
    /// Seconds traffic is watched after the switch before the old slot stops.
    #[arg(
        long,
        global = true,
        value_name = "SECONDS",
        env = "DDMS_RELEASE_WATCH",
        default_value_t = 30
    )]
    pub watch: u64,
    /// Seconds a stopping slot may drain before it is killed (direct service manager;
    /// systemd uses the unit's TimeoutStopSec).
    #[arg(
        long,
        global = true,
        value_name = "SECONDS",
        env = "DDMS_RELEASE_DRAIN_TIMEOUT",
        default_value_t = 40
    )]
    pub drain_timeout: u64,
    /// Seconds `ddms migrate` may run.
    #[arg(
        long,
        global = true,
        value_name = "SECONDS",
        env = "DDMS_RELEASE_MIGRATE_TIMEOUT",
        default_value_t = 600
    )]
    pub migrate_timeout: u64,
    /// Seconds of the deploy lock's lease (renewed every third of it while a deploy runs; a
    /// killed deploy's lock is free after it).
    #[arg(
        long,
        global = true,
        value_name = "SECONDS",
        env = "DDMS_RELEASE_LOCK_TTL",
        default_value_t = 60
    )]
    pub lock_ttl: u64,
    /// Largest share of 5xx answers the new slot may give during the watch (0.01 = 1 %).
    #[arg(
        long,
        global = true,
        value_name = "RATIO",
        env = "DDMS_RELEASE_MAX_5XX_RATIO",
        default_value_t = 0.01
    )]
    pub max_5xx_ratio: f64,
    /// Who deploys, for the record [default: $SUDO_USER, else $USER].
    #[arg(long, global = true, value_name = "NAME", env = "DDMS_RELEASE_ACTOR")]
    pub actor: Option<String>,
}

impl HostArgs {
    pub fn into_host(self, app_config: Option<PathBuf>) -> Host {
        let mut host = Host::new(self.root);
        let layout = host.layout();
        host.app_config = app_config.unwrap_or_else(|| layout.etc_dir().join("ddms.toml"));
        host.service_manager = self.service_manager;
        host.blue_port = self.blue_port;
        host.green_port = self.green_port;
        host.nginx = Nginx {
            bin: self.nginx_bin,
            conf: self.nginx_conf,
            prefix: self.nginx_prefix,
            upstream: self
                .nginx_upstream
                .unwrap_or_else(|| layout.default_upstream()),
        };
        host.public_url = self.public_url;
        host.gates = Gates {
            ready_timeout: Duration::from_secs(self.ready_timeout),
            watch: Duration::from_secs(self.watch),
            drain_timeout: Duration::from_secs(self.drain_timeout),
            migrate_timeout: Duration::from_secs(self.migrate_timeout),
            lock_ttl: Duration::from_secs(self.lock_ttl.max(1)),
            max_5xx_ratio: self.max_5xx_ratio,
        };
        if let Some(actor) = self.actor {
            host.actor = actor;
        }
        host
    }
}
