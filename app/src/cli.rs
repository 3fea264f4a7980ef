//! The command line. `main.rs` only parses and calls [`run`].

use std::io::{IsTerminal, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::auth::{generate_api_token, hash_api_token, hash_password, random_secret};
use crate::config::{Config, ConfigError, Loader, Overrides};
use crate::release;
use crate::server::{shutdown_signal, Server};
use crate::store::{self, NewApiToken, NewAuditEntry, NewUser, Role, StoreError};

const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("BUILD_GIT_SHA"),
    ")"
);

/// ddms — device data monitoring: Modbus TCP and MQTT ingestion, storage, dashboard.
#[derive(Debug, Parser)]
#[command(name = "ddms", version = LONG_VERSION, propagate_version = true)]
pub struct Cli {
    /// Configuration file (default: ./ddms.toml when present).
    #[arg(long, global = true, value_name = "FILE", env = "DDMS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Overrides `data_dir`.
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service.
    Serve(ServeArgs),
    /// Apply pending database migrations and exit.
    Migrate,
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage dashboard users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage API tokens for scripts.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Back up the database; list, check and restore backups (backup.dir and S3).
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Host-side blue-green release management. Reads no ddms.toml itself: `--config` names
    /// the one the release's `ddms migrate` (and, with the direct service manager, `ddms
    /// serve`) uses, by default <root>/etc/ddms/ddms.toml.
    Release(Box<ReleaseArgs>),
    /// Ask this instance's own `/ready` (on `http.listen`) and exit 0 when it answers 200, 1
    /// otherwise: the container image's HEALTHCHECK (the image has no shell and no curl).
    Healthcheck(HealthcheckArgs),
}

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// Ask `/health` (the process serves) instead of `/ready`.
    #[arg(long)]
    pub live: bool,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    pub timeout: u64,
}

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
    pub service_manager: release::ServiceManagerKind,
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
    pub fn into_host(self, app_config: Option<PathBuf>) -> release::Host {
        let mut host = release::Host::new(self.root);
        let layout = host.layout();
        host.app_config = app_config.unwrap_or_else(|| layout.etc_dir().join("ddms.toml"));
        host.service_manager = self.service_manager;
        host.blue_port = self.blue_port;
        host.green_port = self.green_port;
        host.nginx = release::Nginx {
            bin: self.nginx_bin,
            conf: self.nginx_conf,
            prefix: self.nginx_prefix,
            upstream: self
                .nginx_upstream
                .unwrap_or_else(|| layout.default_upstream()),
        };
        host.public_url = self.public_url;
        host.gates = release::Gates {
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

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Overrides `http.listen`.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Also run simulated devices (group `demo`) and print a signed-in URL of the dashboard.
    #[arg(long)]
    pub demo: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print it with secrets redacted; exit 2 when invalid.
    Check,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user. The password is read from standard input when it is not a terminal;
    /// otherwise one is generated and printed once.
    Add {
        #[arg(long)]
        username: String,
        #[arg(long, value_parser = parse_role)]
        role: Role,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token; it is printed once and stored only as a hash.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = parse_role)]
        role: Role,
    },
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Write a backup archive now: a consistent snapshot of the database, into backup.dir and,
    /// with backup.s3.bucket, to S3. Prints it as JSON.
    Create,
    /// The archives in backup.dir and in S3, newest first, as JSON.
    List,
    /// Check an archive against its manifest: checksums, row counts, SQLite's integrity check.
    Verify {
        /// An archive's name (see `list`) or path.
        backup: String,
    },
    /// Load an archive into the configured database, all or nothing (verified first). The
    /// database must be empty unless --force. Stop the service first.
    Restore {
        /// An archive's name (see `list`) or path.
        backup: String,
        /// Replace what the database holds.
        #[arg(long)]
        force: bool,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

/// Exit status for configuration errors, as the contract promises to scripts.
const EXIT_CONFIG: u8 = 2;

pub fn run(cli: Cli) -> ExitCode {
    // Release management runs before (and without) the application's configuration.
    let cli = match cli {
        Cli {
            config,
            command: Command::Release(args),
            ..
        } => return run_release(config, *args),
        cli => cli,
    };
    let loader = Loader {
        file: cli.config.clone(),
        overrides: Overrides {
            data_dir: cli.data_dir.clone(),
            http_listen: match &cli.command {
                Command::Serve(args) => args.listen,
                _ => None,
            },
        },
    };
    let config = match loader.load() {
        Ok(config) => config,
        Err(ConfigError::Invalid(message)) => {
            eprintln!("ddms: invalid configuration:\n{message}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Command::Config(ConfigCommand::Check) = cli.command {
        println!("{}", config.redacted_toml());
        eprintln!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    if let Command::Healthcheck(args) = &cli.command {
        return healthcheck(&config, args);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ddms: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => {
                crate::telemetry::init(&config);
                serve(config, args.demo).await
            }
            Command::Migrate => {
                crate::telemetry::init_minimal();
                migrate(config).await
            }
            Command::User(UserCommand::Add { username, role }) => {
                crate::telemetry::init_minimal();
                add_user(config, username, role).await
            }
            Command::Token(TokenCommand::Create { name, role }) => {
                crate::telemetry::init_minimal();
                create_token(config, name, role).await
            }
            Command::Backup(command) => {
                crate::telemetry::init_minimal();
                backup(config, command).await
            }
            Command::Config(ConfigCommand::Check)
            | Command::Release(_)
            | Command::Healthcheck(_) => {
                unreachable!("handled above")
            }
        }
    });
    // Dropping the runtime would wait for every blocking task (a backup's tar writer, say) with
    // no bound; the stop already had its deadline (`http.shutdown_timeout`).
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ddms: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_release(app_config: Option<PathBuf>, args: ReleaseArgs) -> ExitCode {
    crate::telemetry::init_progress();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ddms: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let host = args.host.into_host(app_config);
    runtime.block_on(async move {
        let fail = |e: release::ReleaseError| {
            eprintln!("ddms: {e}");
            ExitCode::from(e.exit_code())
        };
        match args.command {
            ReleaseCommand::Install {
                artifact,
                checksum,
                signature,
            } => {
                match release::install(
                    &host.layout(),
                    &artifact,
                    checksum.as_deref(),
                    signature.as_deref(),
                )
                .await
                {
                    Ok(installed) => print_json(&installed, false),
                    Err(e) => fail(e),
                }
            }
            ReleaseCommand::Activate { release: name } => {
                let abort = abort_on_signals();
                finish_deploy(release::activate(&host, &name, &abort).await)
            }
            ReleaseCommand::Rollback => {
                let abort = abort_on_signals();
                finish_deploy(release::rollback(&host, &abort).await)
            }
            ReleaseCommand::Status => match release::status(&host).await {
                Ok(status) => print_json(&status, true),
                Err(e) => fail(e),
            },
            ReleaseCommand::Prune { keep } => match release::prune(&host, keep).await {
                Ok(report) => print_json(&report, false),
                Err(e) => fail(e),
            },
        }
    })
}

/// Prints the probe's answer (Docker keeps it in the container's health log) and exits 0 only
/// on a 200.
fn healthcheck(config: &Config, args: &HealthcheckArgs) -> ExitCode {
    use crate::healthcheck::{probe, url, Check};
    let check = if args.live { Check::Live } else { Check::Ready };
    let url = url(config.http.listen, check);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ddms: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(probe(&url, Duration::from_secs(args.timeout.max(1)))) {
        Ok((200, body)) => {
            println!("{url}: 200 {}", body.trim());
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            println!("{url}: {status} {}", body.trim());
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("ddms healthcheck: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_json(value: &impl serde::Serialize, pretty: bool) -> ExitCode {
    let text = if pretty {
        serde_json::to_string_pretty(value)
    } else {
        serde_json::to_string(value)
    };
    println!("{}", text.expect("serializes"));
    ExitCode::SUCCESS
}

/// Prints the deploy record (one JSON line) and maps its result to the exit status: 0 when the
/// release is live, 3 when another deploy holds the lock, 1 otherwise (aborted, rolled back,
/// failed).
fn finish_deploy(record: release::DeployRecord) -> ExitCode {
    println!("{}", serde_json::to_string(&record).expect("serializes"));
    match record.result {
        outcome if outcome.is_success() => ExitCode::SUCCESS,
        release::Outcome::Refused => {
            eprintln!("ddms: {}", record.error.as_deref().unwrap_or("refused"));
            ExitCode::from(3)
        }
        outcome => {
            eprintln!(
                "ddms: deploy {}: {}",
                serde_json::to_value(outcome)
                    .expect("serializes")
                    .as_str()
                    .unwrap_or("failed"),
                record.error.as_deref().unwrap_or("unknown error")
            );
            ExitCode::FAILURE
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP (a cancelled CI job, a dropped SSH session) stop a deploy at
/// the next step; it then switches back and releases its lock instead of leaving them behind.
fn abort_on_signals() -> release::Abort {
    use tokio::signal::unix::{signal, SignalKind};
    let abort = release::Abort::new();
    for (kind, name) in [
        (SignalKind::interrupt(), "SIGINT"),
        (SignalKind::terminate(), "SIGTERM"),
        (SignalKind::hangup(), "SIGHUP"),
    ] {
        match signal(kind) {
            Ok(mut stream) => {
                let abort = abort.clone();
                tokio::spawn(async move {
                    while stream.recv().await.is_some() {
                        tracing::warn!(
                            signal = name,
                            "signal received: stopping the deploy and restoring the previous state"
                        );
                        abort.trigger(name);
                    }
                });
            }
            Err(e) => tracing::warn!(signal = name, error = %e, "cannot listen for the signal"),
        }
    }
    abort
}

async fn serve(mut config: Config, demo: bool) -> anyhow::Result<()> {
    // The demo's MQTT devices register themselves like real ones: they need a provisioning
    // token, made up for this run when none is configured.
    let provisioning = if demo && config.mqtt.mode != crate::config::MqttMode::Off {
        let token = match &config.provisioning.token {
            Some(token) => secrecy::ExposeSecret::expose_secret(token).to_string(),
            None => {
                let token = random_secret(32);
                config.provisioning.token = Some(secrecy::SecretString::from(token.clone()));
                token
            }
        };
        Some(token)
    } else {
        None
    };
    let server = Server::build(config).await?;
    let _demo = if demo {
        let store = server.store();
        let demo = crate::demo::start(store.as_ref()).await?;
        if let Some(token) = provisioning {
            demo.start_mqtt(store, format!("http://{}", server.local_addr()), token);
        }
        // To the terminal, not the log: the URL carries a (viewer) token.
        eprintln!(
            "\nddms demo: simulated devices are running. Open the dashboard at\n\n    http://{}/#token={}\n",
            server.local_addr(),
            demo.viewer_token
        );
        Some(demo)
    } else {
        None
    };
    server.run(shutdown_signal()).await
}

/// The store for one-shot commands. With `database.migrate_on_start` (the default) a fresh
/// database is migrated first, so `ddms user add` works on a new install; otherwise the schema
/// must already be current.
async fn open_migrated(config: &Config) -> anyhow::Result<std::sync::Arc<dyn store::Store>> {
    let store = store::connect(
        &config.database_url(),
        config.database.max_connections,
        config.database.connect_timeout,
    )
    .await?;
    if config.database.migrate_on_start {
        store.migrate().await.context("migration failed")?;
        return Ok(store);
    }
    let status = store.migration_status().await?;
    anyhow::ensure!(
        status.is_current(),
        "the database has pending migrations {:?}; run `ddms migrate` first",
        status.pending
    );
    Ok(store)
}

async fn migrate(config: Config) -> anyhow::Result<()> {
    let store = store::connect(
        &config.database_url(),
        config.database.max_connections,
        config.database.connect_timeout,
    )
    .await?;
    let before = store
        .migration_status()
        .await
        .context("cannot reach the database")?;
    let after = store.migrate().await.context("migration failed")?;
    let created = store
        .ensure_partitions(chrono::Utc::now(), config.database.partitions_ahead_days)
        .await
        .context("cannot create reading partitions")?;
    println!(
        "{} database: {} migration(s) applied now, {} in total{}{}",
        store.backend().name(),
        before.pending.len(),
        after.applied.len(),
        if created > 0 {
            format!(", {created} reading partition(s) created")
        } else {
            String::new()
        },
        if after.unknown.is_empty() {
            String::new()
        } else {
            format!(
                "; {} migration(s) from a newer release present",
                after.unknown.len()
            )
        }
    );
    Ok(())
}

async fn add_user(config: Config, username: String, role: Role) -> anyhow::Result<()> {
    let username = username.trim().to_string();
    anyhow::ensure!(
        !username.is_empty() && username.len() <= 64,
        "--username must be 1 to 64 characters"
    );
    let store = open_migrated(&config).await?;
    let (password, generated) = read_or_generate_password()?;
    let password_hash = hash_password(&password)?;
    let user = match store
        .create_user(&NewUser {
            username: username.clone(),
            password_hash,
            role,
        })
        .await
    {
        Err(StoreError::Conflict(_)) => anyhow::bail!("user `{username}` already exists"),
        other => other?,
    };
    audit_cli(
        store.as_ref(),
        "user.create",
        format!("user:{}", user.username),
        serde_json::json!({ "role": user.role }),
    )
    .await?;
    if generated {
        println!(
            "created {role} `{}`; password (shown once): {password}",
            user.username
        );
    } else {
        println!("created {role} `{}`", user.username);
    }
    Ok(())
}

/// The audit entry of a one-shot command (actor `cli`, no address).
async fn audit_cli(
    store: &dyn store::Store,
    action: &str,
    target: String,
    detail: serde_json::Value,
) -> Result<(), StoreError> {
    store
        .append_audit(&NewAuditEntry {
            actor: "cli".into(),
            action: action.into(),
            target: Some(target),
            detail,
            remote_addr: None,
        })
        .await
}

fn read_or_generate_password() -> anyhow::Result<(String, bool)> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut input = String::new();
        stdin
            .lock()
            .read_to_string(&mut input)
            .context("cannot read the password from standard input")?;
        let password = input.trim_end_matches(['\n', '\r']).to_string();
        if !password.is_empty() {
            return Ok((password, false));
        }
    }
    Ok((random_secret(20), true))
}

async fn create_token(config: Config, name: String, role: Role) -> anyhow::Result<()> {
    let name = name.trim().to_string();
    anyhow::ensure!(
        !name.is_empty() && name.len() <= 100,
        "--name must be 1 to 100 characters"
    );
    let store = open_migrated(&config).await?;
    let secret = generate_api_token();
    let token = store
        .create_api_token(&NewApiToken {
            name: name.clone(),
            token_hash: hash_api_token(&secret),
            role,
        })
        .await?;
    audit_cli(
        store.as_ref(),
        "token.create",
        format!("token:{name}"),
        serde_json::json!({ "token_id": token.id, "role": role }),
    )
    .await?;
    // Only the secret on stdout, so scripts can capture it; the rest goes to stderr.
    eprintln!("created {role} token `{name}` (shown once):");
    println!("{secret}");
    Ok(())
}

async fn backup(config: Config, command: BackupCommand) -> anyhow::Result<()> {
    use crate::backup::{Backups, Trigger};
    let store = open_migrated(&config).await?;
    let backups = std::sync::Arc::new(Backups::new(store.clone(), &config).await);
    match command {
        BackupCommand::Create => {
            let info = backups.create(Trigger::Cli).await?;
            audit_cli(
                store.as_ref(),
                "backup.create",
                format!("backup:{}", info.name),
                serde_json::json!({ "trigger": "cli", "bytes": info.bytes }),
            )
            .await?;
            eprintln!(
                "backup {} written to {} ({} bytes)",
                info.name,
                backups.dir().display(),
                info.bytes
            );
            print_json(&info, false);
        }
        BackupCommand::List => {
            let listing = backups.list().await?;
            if let Some(error) = &listing.s3_error {
                eprintln!("ddms: cannot list the S3 copies: {error}");
            }
            print_json(&listing, true);
            anyhow::ensure!(listing.s3_error.is_none(), "the S3 listing failed");
        }
        BackupCommand::Verify { backup } => {
            let verified = backups.verify(&backup).await?;
            let manifest = &verified.manifest;
            eprintln!("backup {} is intact: {}", manifest.name, manifest.summary());
            print_json(manifest, true);
        }
        BackupCommand::Restore { backup, force } => {
            let manifest = backups.restore(&backup, force).await?;
            audit_cli(
                store.as_ref(),
                "backup.restore",
                format!("backup:{}", manifest.name),
                serde_json::json!({ "replaced": force, "rows": manifest.rows() }),
            )
            .await?;
            println!("restored backup {} ({})", manifest.name, manifest.summary());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn version_names_the_git_commit() {
        assert!(LONG_VERSION.contains("(git "), "{LONG_VERSION}");
    }
}
