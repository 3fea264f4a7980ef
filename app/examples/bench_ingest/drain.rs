//! The backlog drain of `bench ingest --peer`: ddms' own committed rate when the generator is
//! not what limits it.
//!
//! On two cores the generator's Python processes, Mosquitto, PostgreSQL and the ingester share
//! the CPU, and in the side-by-side runs ddms commits everything the generator offers: their
//! rate is the generator's, not ddms' ceiling. Here the same generator, used as it is, publishes
//! for a few seconds while ddms is paused (SIGSTOP; its TCP connection and MQTT session stay),
//! so the broker holds the backlog for ddms' subscription; then the generator has exited, ddms
//! resumes (SIGCONT) and commits the backlog with nothing else producing. The rate is computed
//! as for the runs: committed readings / (last commit − first commit).
//!
//! The peer is drained the same way (paused once its table exists), so the two capacities
//! compare without the generator competing for the CPU. The broker keeps the peer set's
//! `max_inflight_messages 1000` (with acknowledgement after commit, it bounds how many
//! readings an ingester has in hand) but may queue [`DRAIN_QUEUE`] messages instead of
//! 100,000, so that several seconds of the generator's output fit.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use super::ddms_run::{CommitWatch, DdmsUnderTest};
use super::peer::{generate, PeerArgs};
use super::services::Postgres;

/// Messages Mosquitto queues for the paused ingester (10 readings each with the defaults).
pub const DRAIN_QUEUE: u64 = 400_000;

/// The broker of a drain: the peer set's in-flight window, a queue that holds the backlog.
pub fn broker_config() -> String {
    format!("max_inflight_messages 1000\nmax_queued_messages {DRAIN_QUEUE}\n")
}

/// One drain of one backlog.
pub struct Drain {
    pub who: &'static str,
    pub round: usize,
    /// Readings the generator published while the ingester was paused.
    pub backlog: u64,
    pub committed: u64,
    pub stored: u64,
    pub seconds: f64,
}

impl Drain {
    pub fn rate(&self) -> f64 {
        self.committed as f64 / self.seconds.max(1e-9)
    }

    pub fn json(&self) -> Value {
        json!({
            "ingester": self.who,
            "round": self.round,
            "backlog_readings": self.backlog,
            "committed_readings": self.committed,
            "stored_readings": self.stored,
            "commit_span_s": self.seconds,
            "committed_readings_per_s": self.rate(),
        })
    }
}

/// Runs `work` (the generator) while the process `pid` is stopped; resumes it afterwards,
/// whatever `work` did (a paused ingester would outlive the benchmark).
pub async fn while_paused<T>(
    pid: Option<u32>,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let pid = Pid::from_raw(pid.context("the ingester exited before the drain")? as i32);
    kill(pid, Signal::SIGSTOP).context("pausing the ingester")?;
    let result = work.await;
    kill(pid, Signal::SIGCONT).context("resuming the ingester")?;
    result
}

/// The peer's drain: [`run_peer`](super::peer::run_peer) with a backlog.
pub async fn peer(
    postgres: &Postgres,
    args: &PeerArgs,
    work: &Path,
    round: usize,
) -> Result<Drain> {
    let run =
        super::peer::run_peer(postgres, args, work, round, Some(args.backlog_seconds)).await?;
    Ok(Drain {
        who: "peer",
        round,
        backlog: run.offered_readings,
        committed: run.committed,
        stored: run.stored,
        seconds: run.seconds,
    })
}

/// ddms' drain: paused once serving and subscribed, resumed when the generator has exited;
/// its commits timed from `/metrics`.
pub async fn ddms(
    ddms: &str,
    postgres: &Postgres,
    args: &PeerArgs,
    work: &Path,
    round: usize,
    out: &str,
) -> Result<Drain> {
    let log_name = format!("drain{round}");
    let config = broker_config();
    let under_test =
        DdmsUnderTest::start(ddms, postgres, args, work, &config, &log_name, out).await?;
    let generated = generate(
        args,
        args.backlog_seconds,
        under_test.broker.port(),
        &under_test.ids_file,
    );
    let (backlog, _) = while_paused(under_test.process.id(), generated).await?;
    let commits = CommitWatch::start(under_test.client.clone(), under_test.base.clone());
    let (committed, seconds) = commits.settle(backlog).await?;
    let stored = under_test.stored().await?;
    under_test.stop().await;
    ensure!(
        committed > 0,
        "ddms committed nothing of a backlog of {backlog} readings"
    );
    Ok(Drain {
        who: "ddms",
        round,
        backlog,
        committed,
        stored,
        seconds,
    })
}
