//! ddms' side of `bench ingest --peer` (`peer.rs`): ddms serving on a fresh database and a
//! fresh broker, its commits timed from `/metrics`, and one closed-loop run.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use chrono::Utc;
use serde_json::{json, Value};
use sqlx::Connection;

use super::peer::{
    generate, settle, write_ids, PeerArgs, Run, Who, BROKER_CONFIG, PROBE_MESSAGES_PER_S,
};
use super::services::{Mosquitto, Postgres, Provider};
use super::{percentile, publisher, reading_latencies, Device};
use crate::driver;

async fn ingested(client: &reqwest::Client, base: &str) -> Result<(u64, bool)> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok((
        value("ddms_readings_ingested_total{protocol=\"mqtt\"}") as u64,
        value("ddms_mqtt_connected") >= 1.0,
    ))
}

/// ddms serving on a fresh database and a fresh broker, subscribed, with the generator's
/// devices (and one more, the latency probe's) created through the API.
pub(super) struct DdmsUnderTest {
    pub process: tokio::process::Child,
    pub client: reqwest::Client,
    pub base: String,
    pub token: String,
    pub url: String,
    pub broker: Mosquitto,
    /// The generator's device ids, one a line.
    pub ids_file: PathBuf,
    pub probe_id: String,
    /// ddms' data directory, removed with it.
    _dir: tempfile::TempDir,
}

impl DdmsUnderTest {
    pub(super) async fn start(
        ddms: &str,
        postgres: &Postgres,
        args: &PeerArgs,
        work: &Path,
        broker_config: &str,
        log_name: &str,
        out: &str,
    ) -> Result<DdmsUnderTest> {
        let url = postgres.create_database().await?;
        let broker = Mosquitto::start(Provider::Local, broker_config).await?;
        let dir = tempfile::tempdir_in(work)?;
        let env = |cmd: &mut tokio::process::Command| {
            cmd.env("DDMS_DATABASE__URL", &url)
                .env("DDMS_LOG__LEVEL", "warn")
                .env("DDMS_MQTT__MODE", "external")
                .env(
                    "DDMS_MQTT__URL",
                    format!("mqtt://127.0.0.1:{}", broker.port()),
                )
                .env("DDMS_MQTT__CLIENT_ID", "ddms-bench");
            for (key, value) in &args.env {
                cmd.env(key, value);
            }
        };
        let mut token_cmd = driver::ddms_command(ddms, dir.path());
        env(&mut token_cmd);
        let token = driver::create_token(token_cmd, "bench", "admin").await?;
        let port = driver::free_port()?;
        let base = format!("http://127.0.0.1:{port}");
        let mut serve = driver::ddms_command(ddms, dir.path());
        env(&mut serve);
        let mut process = serve
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .stdout(driver::log_file(out, log_name)?.1)
            .kill_on_drop(true)
            .spawn()?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ingested(&client, &base).await.is_ok_and(|(_, up)| up) {
            ensure!(
                Instant::now() < deadline,
                "ddms did not connect to the broker"
            );
            if let Some(status) = process.try_wait()? {
                bail!("ddms exited: {status}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut ids = Vec::new();
        for i in 0..=args.devices {
            let body =
                json!({"name": format!("bench-{i:04}"), "protocol": "mqtt", "group": "bench"});
            let response = client
                .post(format!("{base}/api/devices"))
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await?;
            ensure!(
                response.status() == 201,
                "create device: {}",
                response.text().await?
            );
            let created: Value = response.json().await?;
            ids.push(created["id"].as_str().context("id")?.to_string());
        }
        // The last device is the latency probe's.
        let probe_id = ids.pop().context("probe device")?;
        let ids_file = work.join(format!("{log_name}-ids.txt"));
        write_ids(&ids_file, &ids)?;
        Ok(DdmsUnderTest {
            process,
            client,
            base,
            token,
            url,
            broker,
            ids_file,
            probe_id,
            _dir: dir,
        })
    }

    /// Rows in `readings`.
    pub(super) async fn stored(&self) -> Result<u64> {
        let mut db = sqlx::PgConnection::connect(&self.url).await?;
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM readings")
            .fetch_one(&mut db)
            .await?;
        Ok(stored as u64)
    }

    pub(super) async fn stop(mut self) {
        let _ = self.process.start_kill();
        let _ = self.process.wait().await;
    }
}

/// Readings committed so far, and when (Unix seconds) the count first and last grew.
#[derive(Clone, Copy, Default)]
struct Commits {
    count: u64,
    first: Option<f64>,
    last: Option<f64>,
}

/// ddms' commits as they happen: `ddms_readings_ingested_total` read every 50 ms.
pub(super) struct CommitWatch {
    progress: Arc<Mutex<Commits>>,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl CommitWatch {
    pub(super) fn start(client: reqwest::Client, base: String) -> CommitWatch {
        let progress = Arc::new(Mutex::new(Commits::default()));
        let stop = tokio_util::sync::CancellationToken::new();
        let task = {
            let (progress, stop) = (progress.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    if let Ok((count, _)) = ingested(&client, &base).await {
                        let now = Utc::now().timestamp_micros() as f64 / 1e6;
                        let mut p = progress.lock().unwrap();
                        if count > p.count {
                            p.first.get_or_insert(now);
                            p.last = Some(now);
                            p.count = count;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        CommitWatch {
            progress,
            stop,
            task,
        }
    }

    /// Waits until the count reaches `expected` or stops growing ([`settle`]); then the count
    /// and the commit span in seconds.
    pub(super) async fn settle(self, expected: u64) -> Result<(u64, f64)> {
        let progress = self.progress.clone();
        settle(expected, || async { Ok(progress.lock().unwrap().count) }).await?;
        self.stop.cancel();
        let _ = self.task.await;
        let done = *self.progress.lock().unwrap();
        Ok((
            done.count,
            done.last.unwrap_or(0.0) - done.first.unwrap_or(0.0),
        ))
    }
}

pub(super) async fn run_ddms(
    ddms: &str,
    postgres: &Postgres,
    args: &PeerArgs,
    work: &Path,
    round: usize,
    out: &str,
) -> Result<Run> {
    let log_name = format!("round{round}");
    let under_test =
        DdmsUnderTest::start(ddms, postgres, args, work, BROKER_CONFIG, &log_name, out).await?;
    let DdmsUnderTest {
        client,
        base,
        token,
        broker,
        probe_id,
        ids_file,
        ..
    } = &under_test;

    let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let stream = client
        .get(format!("{base}/api/stream"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(24 * 3600))
        .send()
        .await?;
    let probe_events = {
        let probe_id = probe_id.clone();
        reading_latencies(stream, latencies.clone(), move |event| {
            event.contains(&probe_id)
        })
    };

    let commits = CommitWatch::start(client.clone(), base.clone());
    let stop_probe = tokio_util::sync::CancellationToken::new();
    let probe = tokio::spawn(publisher(
        broker.port(),
        Device {
            id: probe_id.clone(),
            credentials: None,
        },
        PROBE_MESSAGES_PER_S,
        1,
        stop_probe.clone(),
    ));
    let generated = generate(args, args.seconds as f64, broker.port(), ids_file).await;
    stop_probe.cancel();
    let (offered, offered_per_s) = generated?;
    let (probe_sent, probe_acked) = probe.await??;
    ensure!(
        probe_sent == probe_acked,
        "probe: {probe_acked} of {probe_sent} acknowledged"
    );
    let (count, seconds) = commits.settle(offered + probe_sent).await?;
    probe_events.abort();
    let stored = under_test.stored().await?;
    under_test.stop().await;
    let mut lat = std::mem::take(&mut *latencies.lock().unwrap());
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok(Run {
        who: Who::Ddms,
        round,
        offered_readings: offered,
        offered_per_s,
        committed: count.saturating_sub(probe_sent),
        stored: stored.saturating_sub(probe_sent),
        seconds,
        latency_ms: Some((percentile(&lat, 0.5), percentile(&lat, 0.99), lat.len())),
    })
}
