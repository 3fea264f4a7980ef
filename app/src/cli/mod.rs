//! The command line: the clap definition ([`Cli`], [`Command`]), the exit status of an
//! invalid configuration and the dispatch. `main.rs` only parses and calls [`run`]. What each
//! command does lives beside this file: `service.rs` (serve, migrate, healthcheck), `admin.rs`
//! (users and tokens), `backup.rs` (`ddms backup …`) and `release.rs` (`ddms release …`, whose
//! arguments are `release/args.rs`'s).

mod admin;
mod backup;
mod release;
mod service;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError, Loader, Overrides};
use crate::store::{self, NewAuditEntry, StoreError};

pub use crate::release::{HostArgs, ReleaseArgs, ReleaseCommand};
pub use admin::{TokenCommand, UserCommand};
pub use backup::BackupCommand;
pub use service::{HealthcheckArgs, ServeArgs};

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

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print it with secrets redacted; exit 2 when invalid.
    Check,
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
        } => return release::run(config, *args),
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
        return service::healthcheck(&config, args);
    }
    let runtime = match start_runtime(&mut tokio::runtime::Builder::new_multi_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => {
                crate::telemetry::init(&config);
                service::serve(config, args.demo).await
            }
            Command::Migrate => {
                crate::telemetry::init_minimal();
                service::migrate(config).await
            }
            Command::User(UserCommand::Add { username, role }) => {
                crate::telemetry::init_minimal();
                admin::add_user(config, username, role).await
            }
            Command::Token(TokenCommand::Create { name, role }) => {
                crate::telemetry::init_minimal();
                admin::create_token(config, name, role).await
            }
            Command::Backup(command) => {
                crate::telemetry::init_minimal();
                backup::run(config, command).await
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

// What the commands beside this file share.

/// The runtime a command runs on: `builder` with I/O and timers enabled. `Err` is the exit
/// status, once the reason is on stderr.
fn start_runtime(
    builder: &mut tokio::runtime::Builder,
) -> Result<tokio::runtime::Runtime, ExitCode> {
    builder.enable_all().build().map_err(|e| {
        eprintln!("ddms: cannot start the async runtime: {e}");
        ExitCode::FAILURE
    })
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
