//! `ddms user add` and `ddms token create`: the one-shot commands that give people and scripts
//! access, each audited with actor `cli`.

use std::io::{IsTerminal, Read};

use anyhow::Context;
use clap::Subcommand;

use super::{audit_cli, open_migrated};
use crate::auth::{generate_api_token, hash_api_token, hash_password, random_secret};
use crate::config::Config;
use crate::store::{NewApiToken, NewUser, Role, StoreError};

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

/// `value` of the option `flag` without surrounding spaces, refused when that leaves it empty
/// or longer than `max` bytes.
fn trimmed_name(value: &str, flag: &str, max: usize) -> anyhow::Result<String> {
    let value = value.trim();
    anyhow::ensure!(
        !value.is_empty() && value.len() <= max,
        "{flag} must be 1 to {max} characters"
    );
    Ok(value.to_string())
}

pub(super) async fn add_user(config: Config, username: String, role: Role) -> anyhow::Result<()> {
    let username = trimmed_name(&username, "--username", 64)?;
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

pub(super) async fn create_token(config: Config, name: String, role: Role) -> anyhow::Result<()> {
    let name = trimmed_name(&name, "--name", 100)?;
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
