//! `cargo xtask bench ingest --peer DIR`: ddms side by side with a peer ingester, on the same
//! throwaway PostgreSQL 15 cluster, each run with a fresh database and a fresh Mosquitto
//! (`max_inflight_messages 1000`, `max_queued_messages 100000`), loaded by the same generator.
//!
//! `DIR` holds the two Python scripts of the team's benchmark peer set: `peer_ingest.py` (the
//! seeds' stack: paho-mqtt, manual acks after commit, psycopg COPY into a staging table and
//! `INSERT … ON CONFLICT DO NOTHING`) and `mqtt_load.py` (P paho processes publishing QoS 1
//! telemetry as fast as the broker acknowledges). They are used as they are: the yardstick.
//!
//! Each round runs both, the order alternating between rounds (the first run of a round warms
//! the machine for the second). Committed readings/s is rows / (last commit − first commit),
//! for both: the peer writes its commits to `--stats-file`; for ddms, `/metrics` is read every
//! 50 ms. While the generator runs, one more device publishes 20 messages/s stamped with their
//! publish time; its `reading` events on `/api/stream` give ddms' publish→commit latency under
//! that load (the generator's own timestamps are counters, not publish times). Each round
//! ends with a backlog drain of each ingester (`drain.rs`: its own rate, the generator not
//! competing for the CPU), the run with PostgreSQL's raw COPY ceiling in the same cluster.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{json, Value};
use sqlx::Connection;

use super::copy_baseline;
use super::services::{Mosquitto, Postgres, Provider};

/// As in the reference runs of the peer set.
pub(super) const BROKER_CONFIG: &str = "max_inflight_messages 1000\nmax_queued_messages 100000\n";
const PEER_CLIENT_ID: &str = "peer-ingest";
pub(super) const PROBE_MESSAGES_PER_S: f64 = 20.0;
/// A run is over when nothing was committed for this long after the generator stopped.
const SETTLE: Duration = Duration::from_secs(10);
/// Rows for the COPY ceiling.
const COPY_ROWS: u64 = 1_000_000;

pub struct PeerArgs {
    pub dir: PathBuf,
    pub rounds: usize,
    pub procs: usize,
    pub devices: usize,
    pub metrics: usize,
    pub seconds: u64,
    /// `--backlog-seconds`: how long the generator fills the broker for the paused ingester in
    /// a backlog drain (`drain.rs`).
    pub backlog_seconds: f64,
    /// `--env KEY=VALUE`: extra `DDMS_*` settings for ddms (a tuned run; the default is none).
    pub env: Vec<(String, String)>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Who {
    Peer,
    Ddms,
}

/// One run of one ingester.
pub(super) struct Run {
    pub(super) who: Who,
    pub(super) round: usize,
    pub(super) offered_readings: u64,
    pub(super) offered_per_s: f64,
    pub(super) committed: u64,
    pub(super) stored: u64,
    pub(super) seconds: f64,
    pub(super) latency_ms: Option<(f64, f64, usize)>,
}

impl Run {
    pub(super) fn rate(&self) -> f64 {
        self.committed as f64 / self.seconds.max(1e-9)
    }

    fn json(&self) -> Value {
        json!({
            "ingester": format!("{:?}", self.who).to_lowercase(),
            "round": self.round,
            "offered_readings": self.offered_readings,
            "offered_readings_per_s": self.offered_per_s,
            "committed_readings": self.committed,
            "stored_readings": self.stored,
            "commit_span_s": self.seconds,
            "committed_readings_per_s": self.rate(),
            "latency_ms": self.latency_ms.map(|(p50, p99, n)| json!({"p50": p50, "p99": p99, "samples": n})),
        })
    }
}

/// Fails early, with what to install, when the peer set or its Python packages are missing.
pub fn check(dir: &Path) -> Result<()> {
    for script in ["peer_ingest.py", "mqtt_load.py"] {
        ensure!(
            dir.join(script).is_file(),
            "--peer {}: no {script} there (the directory of the benchmark peer set)",
            dir.display()
        );
    }
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import paho.mqtt, psycopg; print(paho.mqtt.__version__)",
        ])
        .output()
        .context("running python3")?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "2.2.0",
        "the peer set needs python3 with paho-mqtt 2.2.0 and psycopg: \
         pip install 'paho-mqtt==2.2.0' 'psycopg[binary]' ({})",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

pub async fn run(ddms: &str, args: PeerArgs, out: &str) -> Result<()> {
    check(&args.dir)?;
    ensure!(args.rounds >= 1, "--rounds must be at least 1");
    println!(
        "bench ingest --peer: {} round(s), generator {} procs × {} devices × {} metrics, {} s, \
         peer set in {}",
        args.rounds,
        args.procs,
        args.devices,
        args.metrics,
        args.seconds,
        args.dir.display()
    );
    let postgres = Postgres::start(Provider::Local).await?;
    let work = tempfile::tempdir()?;
    let mut runs = Vec::new();
    let mut drains = Vec::new();
    for round in 1..=args.rounds {
        let order = if round % 2 == 1 {
            [Who::Peer, Who::Ddms]
        } else {
            [Who::Ddms, Who::Peer]
        };
        for who in order {
            let run = match who {
                Who::Peer => run_peer(&postgres, &args, work.path(), round, None).await?,
                Who::Ddms => {
                    super::ddms_run::run_ddms(ddms, &postgres, &args, work.path(), round, out)
                        .await?
                }
            };
            println!(
                "  round {round} {:>4}: {:>7.0} readings/s committed ({} of {} offered at {:.0}/s stored, {:.1} s){}",
                format!("{who:?}").to_lowercase(),
                run.rate(),
                run.stored,
                run.offered_readings,
                run.offered_per_s,
                run.seconds,
                run.latency_ms
                    .map(|(p50, p99, _)| format!(", publish→commit p50 {p50:.0} ms p99 {p99:.0} ms"))
                    .unwrap_or_default()
            );
            runs.push(run);
        }
        // The drains in the round's order too.
        for who in order {
            let drain = match who {
                Who::Peer => super::drain::peer(&postgres, &args, work.path(), round).await?,
                Who::Ddms => {
                    super::drain::ddms(ddms, &postgres, &args, work.path(), round, out).await?
                }
            };
            println!(
                "  round {round} {:>4} backlog drain: {:>7.0} readings/s committed ({} of a backlog of {} stored, {:.1} s)",
                drain.who,
                drain.rate(),
                drain.stored,
                drain.backlog,
                drain.seconds
            );
            drains.push(drain);
        }
    }
    let url = postgres.create_database().await?;
    let mut conn = sqlx::PgConnection::connect(&url).await?;
    let copy = copy_baseline(&mut conn, COPY_ROWS, (args.devices * args.metrics) as u64).await?;
    let mean = |who: Who| {
        let rates: Vec<f64> = runs
            .iter()
            .filter(|r| r.who == who)
            .map(Run::rate)
            .collect();
        rates.iter().sum::<f64>() / rates.len() as f64
    };
    let (peer, ours) = (mean(Who::Peer), mean(Who::Ddms));
    let drained = |who: &str| {
        let rates: Vec<f64> = drains
            .iter()
            .filter(|d| d.who == who)
            .map(super::drain::Drain::rate)
            .collect();
        rates.iter().sum::<f64>() / rates.len() as f64
    };
    let (peer_drained, ddms_drained) = (drained("peer"), drained("ddms"));
    let mut latencies: Vec<(f64, f64)> = runs
        .iter()
        .filter_map(|r| r.latency_ms.map(|(p50, p99, _)| (p50, p99)))
        .collect();
    latencies.sort_by(|a, b| a.1.total_cmp(&b.1));
    let worst = latencies.last().copied().unwrap_or((f64::NAN, f64::NAN));
    let losses: Vec<String> = runs
        .iter()
        .filter(|r| r.stored < r.offered_readings)
        .map(|r| format!("{:?} round {}", r.who, r.round))
        .collect();
    let summary = json!({
        "benchmark": "ingest-peer",
        "path": "mqtt_load.py → Mosquitto → (peer_ingest.py | ddms, mqtt.mode = external) → PostgreSQL 15",
        "ddms_settings": if args.env.is_empty() { json!("default") } else { json!(args.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>()) },
        "generator": {"procs": args.procs, "devices": args.devices, "metrics": args.metrics, "seconds": args.seconds},
        "rate": "committed readings / (last commit − first commit)",
        "runs": runs.iter().map(Run::json).collect::<Vec<_>>(),
        "peer_readings_per_s": peer,
        "ddms_readings_per_s": ours,
        "ratio_ddms_to_peer": ours / peer,
        "copy_ceiling_rows_per_s": copy,
        "ratio_ddms_to_copy": ours / copy,
        "backlog_drain": {
            "what": "each ingester paused while the generator fills the broker, then resumed: its committed rate with nothing else producing",
            "backlog_seconds": args.backlog_seconds,
            "broker": format!("max_inflight_messages 1000, max_queued_messages {}", super::drain::DRAIN_QUEUE),
            "drains": drains.iter().map(super::drain::Drain::json).collect::<Vec<_>>(),
            "peer_readings_per_s": peer_drained,
            "ddms_readings_per_s": ddms_drained,
            "ratio_ddms_to_peer": ddms_drained / peer_drained,
            "ratio_ddms_to_copy": ddms_drained / copy,
        },
        "ddms_latency_ms_worst_run": {"p50": worst.0, "p99": worst.1},
        "runs_with_broker_queue_overflow": losses,
        "targets": {"ratio_ddms_to_peer": ">= 2.0", "backlog_drain.ratio_ddms_to_copy": ">= 0.35"},
        "load_average": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    });
    if let Some(parent) = Path::new(out).parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(out, serde_json::to_string_pretty(&summary)?)?;
    println!(
        "bench ingest --peer: peer {peer:.0} readings/s, ddms {ours:.0} readings/s, ddms = {:.2} × peer; \
         COPY ceiling {copy:.0} rows/s, ddms = {:.2} × COPY; backlog drains: peer {peer_drained:.0}, ddms {ddms_drained:.0} readings/s, \
         ddms = {:.2} × peer = {:.2} × COPY; \
         ddms publish→commit (worst run) p50 {:.0} ms p99 {:.0} ms",
        ours / peer,
        ours / copy,
        ddms_drained / peer_drained,
        ddms_drained / copy,
        worst.0,
        worst.1
    );
    println!("bench ingest --peer: wrote {out}");
    if !losses.is_empty() {
        // Mosquitto drops QoS 1 messages for a subscriber whose queue is full
        // (max_queued_messages): they never reach the ingester, which acknowledges only what
        // it committed. Exactly-once is the open-loop benchmark's and the tests' business.
        println!(
            "bench ingest --peer: stored fewer readings than the generator published in {losses:?}: \
             the broker's queue for that subscriber (max_queued_messages 100000) overflowed"
        );
    }
    Ok(())
}

/// Runs the shared generator against `port`, publishing as the devices in `ids`.
pub(super) async fn generate(
    args: &PeerArgs,
    seconds: f64,
    port: u16,
    ids: &Path,
) -> Result<(u64, f64)> {
    let out = tokio::process::Command::new("python3")
        .arg(args.dir.join("mqtt_load.py"))
        .args(["127.0.0.1", &port.to_string()])
        .args(["--procs", &args.procs.to_string()])
        .args(["--devices", &args.devices.to_string()])
        .args(["--metrics", &args.metrics.to_string()])
        .args(["--seconds", &seconds.to_string()])
        .arg("--device-ids")
        .arg(ids)
        .kill_on_drop(true)
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "mqtt_load.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("mqtt_load.py said {}", String::from_utf8_lossy(&out.stdout)))?;
    Ok((
        report["readings"].as_u64().context("readings")?,
        report["offered_readings_per_s"].as_f64().unwrap_or(0.0),
    ))
}

pub(super) fn write_ids(path: &Path, ids: &[String]) -> Result<()> {
    std::fs::write(path, ids.join("\n") + "\n")?;
    Ok(())
}

/// Waits until `progress` stops changing for [`SETTLE`] (or reaches `expected`).
pub(super) async fn settle<F, Fut>(expected: u64, mut progress: F) -> Result<u64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64>>,
{
    let mut last = (progress().await?, Instant::now());
    loop {
        if last.0 >= expected || last.1.elapsed() > SETTLE {
            return Ok(last.0);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = progress().await?;
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
}

/// One run of the peer; with `backlog`, its backlog drain instead (`drain.rs`): the generator
/// publishes for that many seconds while the peer is paused.
pub(super) async fn run_peer(
    postgres: &Postgres,
    args: &PeerArgs,
    work: &Path,
    round: usize,
    backlog: Option<f64>,
) -> Result<Run> {
    let url = postgres.create_database().await?;
    let config = match backlog {
        Some(_) => super::drain::broker_config(),
        None => BROKER_CONFIG.to_string(),
    };
    let broker = Mosquitto::start(Provider::Local, &config).await?;
    // The peer subscribes once connected; its persistent session is made beforehand, so the
    // broker keeps what the generator publishes meanwhile (both start at once, as for ddms
    // once it is subscribed).
    let mut options = MqttOptions::new(PEER_CLIENT_ID, "127.0.0.1", broker.port());
    options.set_clean_session(false);
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client
        .subscribe("devices/+/telemetry", QoS::AtLeastOnce)
        .await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        ensure!(
            Instant::now() < deadline,
            "no SUBACK for the peer's session"
        );
        if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) =
            tokio::time::timeout(Duration::from_secs(1), eventloop.poll())
                .await
                .unwrap_or(Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::PingReq)))
        {
            break;
        }
    }
    client.disconnect().await?;
    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
    drop(eventloop);

    let stats = work.join(format!("peer-{round}.json"));
    let _ = std::fs::remove_file(&stats);
    let mut peer = tokio::process::Command::new("python3")
        .arg(args.dir.join("peer_ingest.py"))
        .args([&url, "127.0.0.1", &broker.port().to_string()])
        .arg("--stats-file")
        .arg(&stats)
        .kill_on_drop(true)
        .spawn()?;
    let mut conn = sqlx::PgConnection::connect(&url).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while sqlx::query_scalar::<_, Option<String>>("SELECT to_regclass('peer_readings')::text")
        .fetch_one(&mut conn)
        .await?
        .is_none()
    {
        ensure!(Instant::now() < deadline, "peer_ingest.py did not start");
        if let Some(status) = peer.try_wait()? {
            bail!("peer_ingest.py exited: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ids: Vec<String> = (0..args.devices)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let ids_file = work.join("peer-ids.txt");
    write_ids(&ids_file, &ids)?;
    let generated = generate(
        args,
        backlog.unwrap_or(args.seconds as f64),
        broker.port(),
        &ids_file,
    );
    let (offered, offered_per_s) = match backlog {
        Some(_) => super::drain::while_paused(peer.id(), generated).await?,
        None => generated.await?,
    };
    let read_stats = || -> Result<Value> {
        Ok(std::fs::read(&stats)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null))
    };
    settle(offered, || async {
        Ok(read_stats()?["rows"].as_u64().unwrap_or(0))
    })
    .await?;
    let _ = peer.start_kill();
    let _ = peer.wait().await;
    let s = read_stats()?;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM peer_readings")
        .fetch_one(&mut conn)
        .await?;
    Ok(Run {
        who: Who::Peer,
        round,
        offered_readings: offered,
        offered_per_s,
        committed: s["rows"].as_u64().unwrap_or(0),
        stored: stored as u64,
        seconds: s["last_commit"].as_f64().unwrap_or(0.0)
            - s["first_commit"].as_f64().unwrap_or(0.0),
        latency_ms: None,
    })
}
