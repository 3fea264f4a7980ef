//! The commands about the service's own process: `ddms serve` (with `--demo`), `ddms migrate`
//! and `ddms healthcheck`, the container image's probe of a running instance.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::start_runtime;
use crate::auth::random_secret;
use crate::config::Config;
use crate::server::{shutdown_signal, Server};
use crate::store;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Overrides `http.listen`.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Also run simulated devices (group `demo`) and print a signed-in URL of the dashboard.
    #[arg(long)]
    pub demo: bool,
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

pub(super) async fn serve(mut config: Config, demo: bool) -> anyhow::Result<()> {
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

pub(super) async fn migrate(config: Config) -> anyhow::Result<()> {
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

/// Prints the probe's answer (Docker keeps it in the container's health log) and exits 0 only
/// on a 200.
pub(super) fn healthcheck(config: &Config, args: &HealthcheckArgs) -> ExitCode {
    use crate::healthcheck::{url, Check};
    use crate::release::probe::Probe;
    let check = if args.live { Check::Live } else { Check::Ready };
    let url = url(config.http.listen, check);
    let runtime = match start_runtime(&mut tokio::runtime::Builder::new_current_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let timeout = Duration::from_secs(args.timeout.max(1));
    match runtime.block_on(Probe::new("ddms-healthcheck", timeout).get(&url)) {
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
