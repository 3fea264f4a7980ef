//! The command line of `cargo xtask`: one clap (derive) definition for every task, so each
//! answers `--help` and refuses what it does not know in the same words. The tasks' own
//! modules take plain option structs; this module only maps flags onto them.

mod bench;
mod fleet;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

pub use bench::Bench;
pub use fleet::{DeployArgs, HistoryArgs, ProvisionArgs, RollbackArgs, StatusArgs};

use crate::{certs, container_image, fuzz, schema_compat, signing};

/// The project's one automation entry point.
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "The project's one automation entry point: checks, images, benchmarks, releases, \
             deploys.",
    disable_version_flag = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub task: Task,
}

#[derive(Debug, Subcommand)]
pub enum Task {
    /// Everything: the tools it needs, fmt check, clippy -D warnings, local test images (when Docker answers),
    /// unit + integration tests, tidy, README command 1 smoke run, the API fuzzed, and the
    /// previous release on the new schema (schema-compat).
    ///
    /// First it looks for the tools the suite needs (`setup`) and installs what is missing when
    /// it can without asking (as root, or with password-less sudo); otherwise it prints the
    /// commands and stops.
    Test {
        /// Skip the release build and README command 1.
        #[arg(long)]
        no_smoke: bool,
        /// Only report missing tools, never install them.
        #[arg(long)]
        no_install: bool,
    },
    /// What CI runs: `test` with --locked dependencies.
    Ci,
    /// Install what the suite needs on this machine (Debian packages, pinned Python packages,
    /// rustup components); docs/testing.md lists it.
    Setup {
        /// Only report what is missing and the commands that install it; exit status 1 if
        /// anything is.
        #[arg(long)]
        check: bool,
    },
    /// Build the local Docker test images (debootstrap → postgres, mosquitto, host, dbhost,
    /// systemd-host).
    Images {
        /// Rebuild images that exist already.
        #[arg(long)]
        force: bool,
    },
    /// Performance targets: each prints its figures and writes JSON under target/bench/.
    Bench {
        #[command(subcommand)]
        bench: Bench,
    },
    /// The API fuzzed from its openapi.json by schemathesis against a running ddms (release
    /// build unless --debug); part of `test`.
    Apifuzz {
        /// Run against the debug build (quicker to build).
        #[arg(long)]
        debug: bool,
    },
    /// Hostile-client soak of a release ddms on loopback (slowloris, invented methods and
    /// paths, login floods, MQTT floods, SSE churn) beside a good device and dashboard; fails
    /// when a bound breaks; JSON in target/bench/soak.json.
    Soak {
        /// Seconds of hostile load.
        #[arg(long, value_name = "S")]
        seconds: Option<String>,
        /// Seconds of the baseline before it.
        #[arg(long, value_name = "S")]
        baseline: Option<String>,
        /// Seconds of settling after it, before RSS is compared.
        #[arg(long, value_name = "S")]
        settle: Option<String>,
        /// Slowloris connections held open.
        #[arg(long, value_name = "N")]
        slowloris: Option<String>,
    },
    /// Each fuzz target of app/fuzz/ for N seconds with cargo fuzz (nightly; cargo-fuzz is
    /// installed if missing); fails on any crash. Not in `ci`.
    Fuzz {
        /// Seconds per target.
        #[arg(long, value_name = "N", default_value_t = fuzz::DEFAULT_SECONDS,
              value_parser = clap::value_parser!(u64).range(1..))]
        seconds: u64,
        /// Only this target (repeatable); all when none is given.
        #[arg(long = "target", value_name = "NAME")]
        targets: Vec<String>,
        /// Unoptimised build: compiles much faster, fuzzes slower.
        #[arg(long)]
        dev: bool,
    },
    /// The container image of ops/container/: a static ddms (crt-static glibc) on scratch,
    /// tagged NAME:<version> and NAME:latest.
    Image {
        /// The image's repository name.
        #[arg(long, value_name = "NAME", default_value = container_image::DEFAULT_REPOSITORY)]
        repository: String,
        /// Build with --locked dependencies.
        #[arg(long)]
        locked: bool,
    },
    /// Release tarball (binary, ops/, example config, docs), its .sha256 and, with a signing
    /// key, its .minisig.
    Build {
        /// Build with --locked dependencies.
        #[arg(long)]
        locked: bool,
        /// The minisign secret key to sign the tarball with (`cargo xtask keygen`); its
        /// password comes from DDMS_SIGNING_KEY_PASSWORD or the terminal.
        #[arg(long, value_name = "FILE", env = signing::KEY_ENV)]
        signing_key: Option<PathBuf>,
    },
    /// A release signing key pair (minisign, ed25519): the secret key (0600, kept outside the
    /// repository) signs releases, the public key is pinned on the hosts. See
    /// docs/deploying.md.
    Keygen {
        /// Where the secret key goes (outside the repository).
        #[arg(long, value_name = "FILE")]
        secret_key: PathBuf,
        /// Where the public key goes (what hosts pin as /etc/ddms/release.pub).
        #[arg(long, value_name = "FILE")]
        public_key: PathBuf,
        /// No password on the secret key (for a CI secret store that protects it instead);
        /// otherwise DDMS_SIGNING_KEY_PASSWORD, or asked for on the terminal.
        #[arg(long)]
        unencrypted: bool,
        /// Replace existing key files.
        #[arg(long)]
        force: bool,
    },
    /// Sign a release artifact: writes ARTIFACT.minisig next to it.
    Sign {
        /// The tarball (`cargo xtask build`, or cargo-dist's).
        artifact: PathBuf,
        /// The minisign secret key; its password comes from DDMS_SIGNING_KEY_PASSWORD or the
        /// terminal.
        #[arg(long, value_name = "FILE", env = signing::KEY_ENV)]
        signing_key: PathBuf,
    },
    /// Build the release, verify and unpack it, run README command 1 against it.
    Smoke,
    /// The previous release's ddms on a database the new one migrated, both serving (the
    /// blue-green window): it must still read and write. Part of `test`; docs/testing.md.
    SchemaCompat {
        /// The previous release (commit, tag); default: the rule in docs/testing.md.
        #[arg(long, value_name = "REV", env = schema_compat::PREVIOUS_ENV)]
        previous: Option<String>,
        /// Only this backend (repeatable); both when none is given.
        #[arg(long = "backend", value_name = "BACKEND")]
        backends: Vec<schema_compat::Backend>,
        /// Only choose and build the previous release's binary (what `test` starts in the
        /// background).
        #[arg(long, hide = true)]
        build_only: bool,
    },
    /// Ship a release to the environment's hosts, batch by batch (blue-green on each).
    ///
    /// Uploads the release over ssh and runs `ddms release install` + `activate` host by host;
    /// on a failure rolls back the hosts this run switched. Prints a summary table; the JSON
    /// report goes to --report (default target/deploy/). DDMS_RELEASE_* variables are passed
    /// on to the hosts. See docs/deploying.md.
    Deploy(DeployArgs),
    /// Every host back to its previous known-good release, or --to a chosen one.
    ///
    /// `ddms release rollback` on every host, or with --to, `ddms release activate VERSION`
    /// (installed on every selected host, checked before any host moves).
    Rollback(RollbackArgs),
    /// Every host's `ddms release status`, as one JSON.
    ///
    /// Exit status 1 unless each host has exactly one active slot that runs and is ready.
    Status(StatusArgs),
    /// The fleet's deploys, newest first, from each host's own record (deploys.jsonl).
    History(HistoryArgs),
    /// Provision an environment: terraform apply → inventory → ansible-playbook site.yml.
    ///
    /// terraform apply runs in terraform/envs/ENV unless an Ansible inventory is given or a
    /// hand-written one exists; the inventory (hosts, group_vars, known_hosts, certs) is
    /// written to ansible/inventories/ENV from its outputs, cloud-init is waited for.
    Provision(ProvisionArgs),
    /// TLS material: a CA, server certificates for the dashboard and the broker, device client
    /// certificates; existing files are kept unless --force.
    Certs {
        /// Where the files go.
        #[arg(long, value_name = "DIR", default_value = "certs")]
        out: PathBuf,
        /// A DNS name or IP address the dashboard and broker are reached at (repeatable).
        #[arg(long = "host", value_name = "NAME")]
        hosts: Vec<String>,
        /// A device id to make a client certificate for (repeatable).
        #[arg(long = "device", value_name = "ID")]
        devices: Vec<String>,
        /// Validity of the certificates, 1 to 3650 days.
        #[arg(long, value_name = "N", default_value_t = 825)]
        days: i64,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

impl Task {
    /// certs' options, checked.
    pub fn certs_options(
        out: &std::path::Path,
        hosts: &[String],
        devices: &[String],
        days: i64,
        force: bool,
    ) -> Result<certs::Options> {
        let options = certs::Options {
            out: out.to_path_buf(),
            hosts: hosts.to_vec(),
            devices: devices.to_vec(),
            days,
            force,
        };
        certs::validate(&options)?;
        Ok(options)
    }
}

#[cfg(test)]
mod tests;
