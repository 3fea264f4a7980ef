//! The command line of `cargo xtask`: one clap (derive) definition for every task, so each
//! answers `--help` and refuses what it does not know in the same words. The tasks' own
//! modules take plain option structs; this module only maps flags onto them.

use std::path::PathBuf;

use anyhow::{ensure, Result};
use clap::{Args, Parser, Subcommand};

use crate::{certs, deploy, fuzz, image, schema_compat, signing};

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
    /// Everything: fmt check, clippy -D warnings, local test images (when Docker answers),
    /// unit + integration tests, tidy, README command 1 smoke run, the API fuzzed, and the
    /// previous release on the new schema (schema-compat).
    Test {
        /// Skip the release build and README command 1.
        #[arg(long)]
        no_smoke: bool,
    },
    /// What CI runs: `test` with --locked dependencies.
    Ci,
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
        #[arg(long, value_name = "NAME", default_value = image::DEFAULT_REPOSITORY)]
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

/// The benchmarks. Flags left out take the driver's defaults.
#[derive(Debug, Subcommand)]
pub enum Bench {
    /// MQTT → Mosquitto → ddms → PostgreSQL vs a raw COPY.
    Ingest {
        /// Seconds of load.
        #[arg(long, value_name = "S")]
        seconds: Option<String>,
        /// Simulated devices.
        #[arg(long, value_name = "N")]
        devices: Option<String>,
        /// Messages a second, all devices together.
        #[arg(long, value_name = "MSGS_PER_S")]
        rate: Option<String>,
        /// Metrics per message.
        #[arg(long, value_name = "PER_MSG")]
        metrics: Option<String>,
        /// postgres or sqlite.
        #[arg(long, value_name = "BACKEND")]
        backend: Option<String>,
        /// Also measure with N enabled threshold rules over the benchmark's series.
        #[arg(long, value_name = "N")]
        rules: Option<String>,
        /// Rounds: windows with and without rules (with --rules), or side-by-side rounds
        /// alternating who goes first (with --peer).
        #[arg(long, value_name = "R")]
        rounds: Option<String>,
        /// Side by side with the benchmark peer set's Python ingester: the directory holding
        /// peer_ingest.py and mqtt_load.py.
        #[arg(long, value_name = "DIR")]
        peer: Option<String>,
        /// Generator processes (with --peer).
        #[arg(long, value_name = "P")]
        procs: Option<String>,
        /// A DDMS_KEY=VALUE setting for ddms (with --peer; repeatable).
        #[arg(long = "env", value_name = "DDMS_KEY=VALUE")]
        env: Vec<String>,
    },
    /// Many simulated Modbus devices polled by a release ddms.
    Modbus {
        #[arg(long, value_name = "N")]
        devices: Option<String>,
        /// Poll interval per device.
        #[arg(long, value_name = "I")]
        interval_ms: Option<String>,
        #[arg(long, value_name = "S")]
        seconds: Option<String>,
        /// Share of devices that never answer.
        #[arg(long, value_name = "F")]
        dead_fraction: Option<String>,
        /// sqlite (default) or postgres.
        #[arg(long, value_name = "BACKEND")]
        backend: Option<String>,
    },
    /// Many MQTT devices connected to one release ddms (embedded broker), each publishing one
    /// QoS 1 reading per interval: connections, memory, cadence, acknowledged vs stored.
    MqttFleet {
        #[arg(long, value_name = "N")]
        devices: Option<String>,
        /// Seconds between one device's messages.
        #[arg(long, value_name = "I")]
        interval_s: Option<String>,
        /// Seconds of publishing.
        #[arg(long, value_name = "S")]
        seconds: Option<String>,
        /// sqlite or postgres.
        #[arg(long, value_name = "BACKEND")]
        backend: Option<String>,
        /// New connections a second while the fleet connects.
        #[arg(long, value_name = "R")]
        connect_rate: Option<String>,
        /// A DDMS_KEY=VALUE setting for ddms (repeatable).
        #[arg(long = "env", value_name = "DDMS_KEY=VALUE")]
        env: Vec<String>,
    },
    /// Server-sent events to many dashboard clients.
    Sse(WebBench),
    /// The read API under load.
    Api(WebBench),
    /// Blue-green switches under load on the Docker e2e fleet: switch time, per-host deploy
    /// time, failed requests.
    Deploy {
        /// Deploys to measure.
        #[arg(long, value_name = "N")]
        switches: Option<String>,
        /// Requests a second during the switches.
        #[arg(long, value_name = "R")]
        rate: Option<String>,
        /// Fewest requests a switch must see.
        #[arg(long, value_name = "M")]
        min_requests: Option<String>,
        /// Only load, no switch, for this many seconds.
        #[arg(long, value_name = "S")]
        load_only: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct WebBench {
    #[arg(long, value_name = "N")]
    devices: Option<String>,
    #[arg(long, value_name = "I")]
    interval_ms: Option<String>,
    #[arg(long, value_name = "S")]
    seconds: Option<String>,
    #[arg(long, value_name = "N")]
    clients: Option<String>,
    #[arg(long, value_name = "R")]
    rate: Option<String>,
    #[arg(long, value_name = "N")]
    history_devices: Option<String>,
}

impl Bench {
    /// The benchmark's name and the flags for its driver, as given.
    pub fn driver_args(&self) -> (&'static str, Vec<String>) {
        fn flags(pairs: &[(&str, &Option<String>)]) -> Vec<String> {
            pairs
                .iter()
                .filter_map(|(name, value)| value.as_ref().map(|v| [name.to_string(), v.clone()]))
                .flatten()
                .collect()
        }
        match self {
            Bench::Ingest {
                seconds,
                devices,
                rate,
                metrics,
                backend,
                rules,
                rounds,
                peer,
                procs,
                env,
            } => (
                "ingest",
                [
                    flags(&[
                        ("--seconds", seconds),
                        ("--devices", devices),
                        ("--rate", rate),
                        ("--metrics", metrics),
                        ("--backend", backend),
                        ("--rules", rules),
                        ("--rounds", rounds),
                        ("--peer", peer),
                        ("--procs", procs),
                    ]),
                    env.iter()
                        .flat_map(|e| ["--env".to_string(), e.clone()])
                        .collect(),
                ]
                .concat(),
            ),
            Bench::Modbus {
                devices,
                interval_ms,
                seconds,
                dead_fraction,
                backend,
            } => (
                "modbus",
                flags(&[
                    ("--devices", devices),
                    ("--interval-ms", interval_ms),
                    ("--seconds", seconds),
                    ("--dead-fraction", dead_fraction),
                    ("--backend", backend),
                ]),
            ),
            Bench::MqttFleet {
                devices,
                interval_s,
                seconds,
                backend,
                connect_rate,
                env,
            } => (
                "mqtt-fleet",
                [
                    flags(&[
                        ("--devices", devices),
                        ("--interval-s", interval_s),
                        ("--seconds", seconds),
                        ("--backend", backend),
                        ("--connect-rate", connect_rate),
                    ]),
                    env.iter()
                        .flat_map(|e| ["--env".to_string(), e.clone()])
                        .collect(),
                ]
                .concat(),
            ),
            Bench::Sse(web) | Bench::Api(web) => (
                if matches!(self, Bench::Sse(_)) {
                    "sse"
                } else {
                    "api"
                },
                flags(&[
                    ("--devices", &web.devices),
                    ("--interval-ms", &web.interval_ms),
                    ("--seconds", &web.seconds),
                    ("--clients", &web.clients),
                    ("--rate", &web.rate),
                    ("--history-devices", &web.history_devices),
                ]),
            ),
            Bench::Deploy {
                switches,
                rate,
                min_requests,
                load_only,
            } => (
                "deploy",
                flags(&[
                    ("--switches", switches),
                    ("--rate", rate),
                    ("--min-requests", min_requests),
                    ("--load-only", load_only),
                ]),
            ),
        }
    }
}

/// Which environment and which of its hosts: shared by deploy, rollback, status and history.
#[derive(Debug, Args)]
pub struct Fleet {
    /// The environment: ansible/inventories/ENV/hosts.yml, else terraform/envs/ENV.
    #[arg(long, value_name = "ENV")]
    env: String,
    /// An Ansible inventory to read instead (through `ansible-inventory --list`, so
    /// group_vars and host_vars apply).
    #[arg(long, value_name = "FILE")]
    inventory: Option<PathBuf>,
    /// Only these hosts of group `ddms`: inventory names, comma-separated or repeated.
    #[arg(
        long,
        visible_alias = "limit",
        value_name = "NAMES",
        value_delimiter = ','
    )]
    hosts: Vec<String>,
}

/// How a run that changes hosts proceeds and reports.
#[derive(Debug, Args)]
pub struct Run {
    /// Hosts changed at once; the next batch starts only when this one passed.
    #[arg(long, value_name = "N", default_value_t = 1)]
    batch: usize,
    /// Where the JSON report goes [default: target/deploy/ENV-COMMAND-TIME.json].
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Print the plan (hosts, current → new release, gates, batches) and change nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    #[command(flatten)]
    fleet: Fleet,
    #[command(flatten)]
    run: Run,
    /// The version to ship: target/dist/ddms-VERSION-<arch>-linux.tar.gz from `cargo xtask
    /// build` (default: build one now).
    #[arg(long, value_name = "V")]
    version: Option<String>,
    /// The tarball to ship, with PATH.sha256 beside it.
    #[arg(long, value_name = "PATH")]
    artifact: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    fleet: Fleet,
    #[command(flatten)]
    run: Run,
    /// Every host to this installed release (which must have been live there before),
    /// instead of each host's previous known-good one.
    #[arg(long, value_name = "VERSION")]
    to: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    fleet: Fleet,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    fleet: Fleet,
    /// The newest N records of each host.
    #[arg(long, value_name = "N", default_value_t = deploy::history::DEFAULT_LAST)]
    last: usize,
    /// One JSON record a line (the hosts' own records, with `inventory_host`) instead of a
    /// table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ProvisionArgs {
    /// The environment: terraform/envs/ENV, ansible/inventories/ENV.
    #[arg(long, value_name = "ENV")]
    env: String,
    /// An Ansible inventory to provision instead of Terraform's hosts.
    #[arg(long, value_name = "FILE")]
    inventory: Option<PathBuf>,
    /// Pass -auto-approve to terraform apply.
    #[arg(long)]
    auto_approve: bool,
    /// Use this `terraform output -json` instead of running terraform (outputs saved
    /// elsewhere, or a stand-in fleet).
    #[arg(long, value_name = "FILE", conflicts_with = "inventory")]
    from_output: Option<PathBuf>,
    /// Where the generated inventory goes (default ansible/inventories/ENV).
    #[arg(long, value_name = "DIR", conflicts_with = "inventory")]
    out: Option<PathBuf>,
    /// Seconds to wait for ssh and cloud-init on every host, in all.
    #[arg(long, value_name = "S", default_value_t = 900)]
    cloud_init_timeout: u64,
    /// Further arguments for ansible-playbook, after `--`.
    #[arg(last = true, value_name = "ANSIBLE-PLAYBOOK-ARGS")]
    playbook_args: Vec<String>,
}

impl Fleet {
    fn options(&self) -> Result<deploy::Options> {
        let options = deploy::Options {
            env: self.env.clone(),
            inventory: self.inventory.clone(),
            hosts: self.hosts.clone(),
            batch: 1,
            ..deploy::Options::default()
        };
        deploy::validate(&options)?;
        Ok(options)
    }
}

impl Run {
    fn apply(&self, options: &mut deploy::Options) -> Result<()> {
        ensure!(self.batch >= 1, "--batch must be at least 1");
        options.batch = self.batch;
        options.report = self.report.clone();
        options.dry_run = self.dry_run;
        Ok(())
    }
}

impl DeployArgs {
    pub fn options(&self) -> Result<deploy::Options> {
        let mut options = self.fleet.options()?;
        self.run.apply(&mut options)?;
        options.version = self.version.clone();
        options.artifact = self.artifact.clone();
        Ok(options)
    }
}

impl RollbackArgs {
    pub fn options(&self) -> Result<deploy::Options> {
        let mut options = self.fleet.options()?;
        self.run.apply(&mut options)?;
        options.to = self.to.clone();
        if let Some(to) = &options.to {
            ensure!(
                deploy::valid_release_name(to),
                "--to `{}`: a release name holds only letters, digits, '.', '_', '-' and '+' \
                 and does not start with '.' or '-'",
                to.escape_debug()
            );
        }
        Ok(options)
    }
}

impl StatusArgs {
    pub fn options(&self) -> Result<deploy::Options> {
        self.fleet.options()
    }
}

impl HistoryArgs {
    pub fn options(&self) -> Result<(deploy::Options, usize, bool)> {
        ensure!(self.last >= 1, "--last must be at least 1");
        Ok((self.fleet.options()?, self.last, self.json))
    }
}

impl ProvisionArgs {
    pub fn options(&self) -> Result<deploy::Options> {
        let options = deploy::Options {
            env: self.env.clone(),
            inventory: self.inventory.clone(),
            batch: 1,
            auto_approve: self.auto_approve,
            playbook_args: self.playbook_args.clone(),
            from_output: self.from_output.clone(),
            out: self.out.clone(),
            cloud_init_timeout: self.cloud_init_timeout,
            ..deploy::Options::default()
        };
        deploy::validate(&options)?;
        Ok(options)
    }
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
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("xtask").chain(args.iter().copied()))
    }

    fn deploy_options(args: &[&str]) -> Result<deploy::Options> {
        match parse(args)?.task {
            Task::Deploy(d) => d.options(),
            Task::Rollback(r) => r.options(),
            Task::Status(s) => s.options(),
            Task::Provision(p) => p.options(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_existing_flags_keep_their_names_and_meaning() {
        let o = deploy_options(&[
            "deploy",
            "--env",
            "staging",
            "--version",
            "0.2.0",
            "--batch",
            "2",
            "--artifact",
            "a.tar.gz",
            "--inventory",
            "i.yml",
            "--report",
            "r.json",
        ])
        .unwrap();
        assert_eq!((o.env.as_str(), o.batch), ("staging", 2));
        assert_eq!(o.version.as_deref(), Some("0.2.0"));
        assert_eq!(o.artifact, Some(PathBuf::from("a.tar.gz")));
        assert_eq!(o.inventory, Some(PathBuf::from("i.yml")));
        assert_eq!(o.report, Some(PathBuf::from("r.json")));
        assert!(!o.dry_run);
        assert!(deploy_options(&["deploy", "--version", "1"]).is_err());
        assert!(deploy_options(&["deploy", "--env", "a/b"]).is_err());
        assert!(deploy_options(&["deploy", "--env", "a", "--batch", "0"]).is_err());
        assert!(deploy_options(&["status", "--env", "a", "--version", "1"]).is_err());
        let p = deploy_options(&["provision", "--env", "e", "--", "--check", "-v"]).unwrap();
        assert_eq!(p.playbook_args, ["--check", "-v"]);
        let p = deploy_options(&["provision", "--env", "e", "--auto-approve"]).unwrap();
        assert!(p.auto_approve && p.playbook_args.is_empty());

        match parse(&["test", "--no-smoke"]).unwrap().task {
            Task::Test { no_smoke } => assert!(no_smoke),
            other => panic!("{other:?}"),
        }
        match parse(&["fuzz", "--target", "a", "--target", "b", "--seconds", "5"])
            .unwrap()
            .task
        {
            Task::Fuzz {
                seconds, targets, ..
            } => assert_eq!((seconds, targets), (5, vec!["a".into(), "b".into()])),
            other => panic!("{other:?}"),
        }
        assert!(parse(&["fuzz", "--seconds", "0"]).is_err());
        match parse(&["image"]).unwrap().task {
            Task::Image { repository, .. } => assert_eq!(repository, "ddms"),
            other => panic!("{other:?}"),
        }
        match parse(&["bench", "ingest", "--seconds", "3", "--rate", "100"])
            .unwrap()
            .task
        {
            Task::Bench { bench } => assert_eq!(
                bench.driver_args(),
                (
                    "ingest",
                    ["--seconds", "3", "--rate", "100"]
                        .map(String::from)
                        .to_vec()
                )
            ),
            other => panic!("{other:?}"),
        }
        match parse(&[
            "bench",
            "mqtt-fleet",
            "--devices",
            "10",
            "--interval-s",
            "2",
        ])
        .unwrap()
        .task
        {
            Task::Bench { bench } => assert_eq!(
                bench.driver_args(),
                (
                    "mqtt-fleet",
                    ["--devices", "10", "--interval-s", "2"]
                        .map(String::from)
                        .to_vec()
                )
            ),
            other => panic!("{other:?}"),
        }
        match parse(&["bench", "api", "--clients", "8"]).unwrap().task {
            Task::Bench { bench } => assert_eq!(
                bench.driver_args(),
                ("api", ["--clients", "8"].map(String::from).to_vec())
            ),
            other => panic!("{other:?}"),
        }
    }

    fn certs_options(args: &[&str]) -> Result<certs::Options> {
        let mut full = vec!["certs"];
        full.extend_from_slice(args);
        match parse(&full)?.task {
            Task::Certs {
                out,
                hosts,
                devices,
                days,
                force,
            } => Task::certs_options(&out, &hosts, &devices, days, force),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(certs_options(&["--days", "0"]).is_err());
        assert!(certs_options(&["--device", "../etc/passwd"]).is_err());
        assert!(certs_options(&["--host"]).is_err());
        assert!(certs_options(&["--bogus"]).is_err());
        let ok =
            certs_options(&["--out", "x", "--host", "h", "--device", "d-1", "--force"]).unwrap();
        assert!(ok.force && ok.hosts == ["h"] && ok.devices == ["d-1"]);
        assert_eq!(certs_options(&[]).unwrap().out, PathBuf::from("certs"));
        for bad in [
            &["fuzz", "--seconds"][..],
            &["fuzz", "--seconds", "0"],
            &["fuzz", "--seconds", "x"],
            &["fuzz", "--what"],
            &["bench"],
            &["bench", "nope"],
            &["nope"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        match parse(&["fuzz"]).unwrap().task {
            Task::Fuzz {
                seconds,
                targets,
                dev,
            } => assert_eq!(
                (seconds, targets.len(), dev),
                (fuzz::DEFAULT_SECONDS, 0, false)
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hosts_limit_dry_run_and_rollback_to() {
        let o = deploy_options(&[
            "deploy",
            "--env",
            "e",
            "--hosts",
            "web1,web2",
            "--limit",
            "web3",
            "--dry-run",
        ])
        .unwrap();
        assert_eq!(o.hosts, ["web1", "web2", "web3"]);
        assert!(o.dry_run);
        let o = deploy_options(&["rollback", "--env", "e", "--to", "0.2.0"]).unwrap();
        assert_eq!(o.to.as_deref(), Some("0.2.0"));
        let err = deploy_options(&["rollback", "--env", "e", "--to", "../x"]).unwrap_err();
        assert!(err.to_string().contains("release name"), "{err}");
        assert!(deploy_options(&["status", "--env", "e", "--to", "1"]).is_err());
    }

    /// Every task and subcommand answers `--help`: exit status 0 and its usage, through the
    /// same parser `main` uses (the e2e suite asks the built binary too).
    #[test]
    fn every_task_and_subcommand_answers_help() {
        let paths = command_paths();
        assert!(paths.len() > 15, "{paths:?}");
        for path in paths {
            let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
            args.push("--help");
            let err = parse(&args).expect_err("--help stops the parse");
            let text = err.render().to_string();
            assert!(
                err.kind() == clap::error::ErrorKind::DisplayHelp
                    && err.exit_code() == 0
                    && text.contains("Usage: cargo xtask"),
                "`xtask {}`: {:?} exit {}\n{text}",
                args.join(" "),
                err.kind(),
                err.exit_code()
            );
        }
        // And an unknown flag is an error naming it, exit 2.
        let err = parse(&["deploy", "--env", "e", "--nope"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--nope"), "{err}");
    }

    /// Every task and subcommand, as the words that name it (`[]` is the top level).
    pub fn command_paths() -> Vec<Vec<String>> {
        fn walk(cmd: &clap::Command, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
            out.push(prefix.clone());
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                let mut path = prefix.clone();
                path.push(sub.get_name().to_string());
                walk(sub, path, out);
            }
        }
        let mut paths = Vec::new();
        walk(&Cli::command(), Vec::new(), &mut paths);
        paths
    }
}
