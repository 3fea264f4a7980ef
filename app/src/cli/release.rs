//! Runs `ddms release …` (arguments in `release/args.rs`) without the application's
//! configuration: maps each subcommand onto [`crate::release`], prints its JSON and turns the
//! outcome into the exit status; deploys stop cleanly on SIGINT, SIGTERM and SIGHUP.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{print_json, start_runtime};
use crate::release::{self, ReleaseArgs, ReleaseCommand};

pub(super) fn run(app_config: Option<PathBuf>, args: ReleaseArgs) -> ExitCode {
    crate::telemetry::init_progress();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2);
    let runtime = match start_runtime(&mut builder) {
        Ok(rt) => rt,
        Err(code) => return code,
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
            ReleaseCommand::Restart => {
                let abort = abort_on_signals();
                finish_deploy(release::restart(&host, &abort).await)
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
