//! The command line. `main.rs` only parses and calls [`run`].

use std::io::{IsTerminal, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::auth::{generate_api_token, hash_api_token, hash_password, random_secret};
use crate::config::{Config, ConfigError, Loader, Overrides};
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
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Overrides `http.listen`.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Also run simulated devices (group `demo`) and print a signed-in URL of the live page.
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

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

/// Exit status for configuration errors, as the contract promises to scripts.
const EXIT_CONFIG: u8 = 2;

pub fn run(cli: Cli) -> ExitCode {
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
            Command::Config(ConfigCommand::Check) => unreachable!("handled above"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ddms: {e:#}");
            ExitCode::FAILURE
        }
    }
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
            "\nddms demo: simulated devices are running. Open the live page at\n\n    http://{}/#token={}\n",
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
    store
        .append_audit(&NewAuditEntry {
            actor: "cli".into(),
            action: "user.create".into(),
            target: Some(format!("user:{}", user.username)),
            detail: serde_json::json!({ "role": user.role }),
            remote_addr: None,
        })
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
    store
        .append_audit(&NewAuditEntry {
            actor: "cli".into(),
            action: "token.create".into(),
            target: Some(format!("token:{name}")),
            detail: serde_json::json!({ "token_id": token.id, "role": role }),
            remote_addr: None,
        })
        .await?;
    // Only the secret on stdout, so scripts can capture it; the rest goes to stderr.
    eprintln!("created {role} token `{name}` (shown once):");
    println!("{secret}");
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
