//! `bench_ingest --rules N`: N enabled threshold rules over the benchmark's series, and the
//! comparison, in one run, of sustained ingest without them and with them.
//!
//! Rule `i` watches device `i % devices`, metric `m{(i / devices) % metrics}`: with the default
//! 100 devices × 10 metrics, 1,000 rules cover every series once. Every reading of a watched
//! series is evaluated. Published values grow from 0 by one per message, so one rule in a
//! hundred (threshold 0) fires — once, and then stays firing, its series evaluated against an
//! open alert on every batch — and the rest (threshold 1e12) never do. The rules notify no
//! channel: what is measured is evaluation on the ingest path; delivery runs in the outbox
//! worker, off that path, and a handful of notifications would cost nothing measurable.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use futures::StreamExt;
use serde_json::{json, Value};

/// Requests in flight while creating or deleting rules.
const CONCURRENCY: usize = 8;

/// Which windows to measure: `rounds` pairs, alternating which goes first (without rules, then
/// with; with, then without; ...), so a drift over the run (a warming cache, a growing table,
/// other work on the machine) does not favour one side.
pub fn plan(rounds: usize) -> Vec<bool> {
    (0..rounds.max(1))
        .flat_map(|r| {
            if r % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            }
        })
        .collect()
}

/// The rule body for rule `i`.
pub fn body(i: usize, devices: &[String], metrics: usize) -> Value {
    let device = &devices[i % devices.len()];
    let metric = format!("m{}", (i / devices.len()) % metrics);
    let fires = i.is_multiple_of(100);
    json!({
        "name": format!("bench rule {i}"),
        "device_id": device,
        "metric": metric,
        "condition": "above",
        "threshold": if fires { 0.0 } else { 1e12 },
        "for_s": 10,
        "severity": "warning",
    })
}

/// Creates `n` rules through the API; returns their ids.
pub async fn create(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    devices: &[String],
    metrics: usize,
    n: usize,
) -> Result<Vec<String>> {
    let results: Vec<Result<String>> = futures::stream::iter(0..n)
        .map(|i| {
            let body = body(i, devices, metrics);
            async move {
                let response = client
                    .post(format!("{base}/api/alert-rules"))
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await?;
                ensure!(
                    response.status() == 201,
                    "create rule {i}: {}",
                    response.text().await?
                );
                let created: Value = response.json().await?;
                Ok(created["id"].as_str().context("rule id")?.to_string())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Deletes the rules `create` made.
pub async fn delete(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    ids: Vec<String>,
) -> Result<()> {
    let results: Vec<Result<()>> = futures::stream::iter(ids)
        .map(|id| async move {
            let response = client
                .delete(format!("{base}/api/alert-rules/{id}"))
                .bearer_auth(token)
                .send()
                .await?;
            ensure!(
                response.status().is_success(),
                "delete rule {id}: {}",
                response.text().await?
            );
            Ok(())
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}

/// CPU time (user + system) a process has used, from /proc (Linux), in seconds.
pub fn cpu_seconds(pid: Option<u32>) -> f64 {
    let Some(stat) = pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
    else {
        return f64::NAN;
    };
    // Fields after the command (which may hold spaces) start at field 3; utime, stime are 14, 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // In clock ticks: USER_HZ, which Linux fixes at 100 for user space.
    (ticks(11) + ticks(12)) / 100.0
}

/// One measured window.
pub struct Window {
    pub with_rules: bool,
    pub window: Duration,
    pub readings: f64,
    pub p99_ms: f64,
    pub ddms_cpu_s: f64,
}

impl Window {
    pub fn rate(&self) -> f64 {
        self.readings / self.window.as_secs_f64()
    }

    /// ddms' CPU seconds per 100,000 readings committed.
    pub fn cpu_per_100k(&self) -> f64 {
        self.ddms_cpu_s / self.readings * 100_000.0
    }
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let values: Vec<f64> = values.collect();
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// The JSON section, and a one-line summary for the console.
pub fn summary(rules: usize, windows: &[Window]) -> (Value, String) {
    let side = |with: bool| windows.iter().filter(move |w| w.with_rules == with);
    let (rate_without, rate_with) = (
        mean(side(false).map(Window::rate)),
        mean(side(true).map(Window::rate)),
    );
    let (cpu_without, cpu_with) = (
        mean(side(false).map(Window::cpu_per_100k)),
        mean(side(true).map(Window::cpu_per_100k)),
    );
    let ratio = rate_with / rate_without;
    let json = json!({
        "rules": rules,
        "rules_firing": rules.div_ceil(100),
        "channels": "none (evaluation only; see app/examples/bench_ingest/alert_rules.rs)",
        "windows": windows.iter().map(|w| json!({
            "with_rules": w.with_rules,
            "window_s": w.window.as_secs_f64(),
            "readings_per_s": w.rate(),
            "p99_latency_ms": w.p99_ms,
            "ddms_cpu_s_per_100k_readings": w.cpu_per_100k(),
        })).collect::<Vec<_>>(),
        "readings_per_s_without_rules": rate_without,
        "readings_per_s_with_rules": rate_with,
        "ratio_with_to_without": ratio,
        "ddms_cpu_s_per_100k_readings": {"without_rules": cpu_without, "with_rules": cpu_with},
        "target": "ratio >= 0.9",
    });
    let line = format!(
        "bench ingest: {rules} alert rules: {rate_with:.0} readings/s with, {rate_without:.0} without, ratio {ratio:.3}; ddms CPU {cpu_with:.2} s vs {cpu_without:.2} s per 100k readings"
    );
    (json, line)
}
