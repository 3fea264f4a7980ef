//! What the one-instance scale benchmarks (`bench modbus`, `bench mqtt-fleet`) share: room for
//! a descriptor per device, ddms' resident memory (now and at its peak), the device API called
//! for thousands of devices at once, and the cadence check — each device's stored readings, the
//! worst gap between consecutive ones measured against its interval.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::{json, Value};

/// Requests to ddms' API in flight at once while creating or reading thousands of devices.
pub const API_CONCURRENCY: usize = 16;

/// Raises this process's file-descriptor limit to at least `needed` (children such as the ddms
/// under test inherit it): the soft limit up to the hard one, and the hard one too when the
/// process may (root, or `CAP_SYS_RESOURCE`). Fails naming the figure when it cannot.
pub fn raise_fd_limit(needed: u64) -> Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= needed {
        return Ok(soft);
    }
    if hard < needed && setrlimit(Resource::RLIMIT_NOFILE, needed, needed).is_ok() {
        return Ok(needed);
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard.min(needed.max(soft)), hard)?;
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < needed {
        bail!(
            "this run needs {needed} file descriptors and may only have {soft} \
             (`ulimit -n`; raise the hard limit or run as root)"
        );
    }
    Ok(soft)
}

/// Resident memory of process `pid` in MiB: now (`VmRSS`) and its peak so far (`VmHWM`, kept
/// by the kernel, so no sample can miss it).
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub rss_mb: f64,
    pub peak_mb: f64,
}

pub fn memory(pid: u32) -> Memory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    Memory {
        rss_mb: field("VmRSS:"),
        peak_mb: field("VmHWM:"),
    }
}

/// Creates `bodies` through `POST /api/devices`, [`API_CONCURRENCY`] at a time; the created
/// devices' JSON, in the order of `bodies`.
pub async fn create_devices(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    bodies: Vec<Value>,
) -> Result<Vec<Value>> {
    let url = format!("{base}/api/devices");
    let created: Vec<Result<Value>> = futures::stream::iter(bodies)
        .map(|body| {
            let url = url.clone();
            async move {
                let response =
                    send_retrying(|| client.post(&url).bearer_auth(token).json(&body)).await?;
                if response.status() != 201 {
                    bail!("create device: {}", response.text().await?);
                }
                Ok(response.json::<Value>().await?)
            }
        })
        .buffered(API_CONCURRENCY)
        .collect()
        .await;
    created.into_iter().collect()
}

/// Sends the request `make` builds, again after a `429` (the API's rate limit) once its
/// `Retry-After` has passed.
async fn send_retrying(make: impl Fn() -> reqwest::RequestBuilder) -> Result<reqwest::Response> {
    loop {
        let response = make().send().await?;
        if response.status() != 429 {
            return Ok(response);
        }
        let wait = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .unwrap_or(1);
        tokio::time::sleep(Duration::from_secs(wait.max(1))).await;
    }
}

/// The stored readings of one device's `metric` between `from` and `to`: their timestamps,
/// oldest first.
pub async fn reading_times(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    id: &str,
    metric: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<DateTime<Utc>>> {
    let url = format!(
        "{base}/api/devices/{id}/readings?metric={metric}&from={}&to={}&limit=100000",
        from.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        to.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    );
    let response = send_retrying(|| client.get(&url).bearer_auth(token)).await?;
    if !response.status().is_success() {
        bail!("readings of {id}: {}", response.text().await?);
    }
    let points: Vec<Value> = response.json().await?;
    let mut times: Vec<DateTime<Utc>> = points
        .iter()
        .map(|p| {
            p["ts"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .context("reading without ts")
        })
        .collect::<Result<_>>()?;
    times.sort();
    Ok(times)
}

/// [`reading_times`] of every device in `ids`, [`API_CONCURRENCY`] at a time, in their order.
pub async fn fleet_reading_times(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    ids: &[String],
    metric: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<Vec<DateTime<Utc>>>> {
    let all: Vec<Result<Vec<DateTime<Utc>>>> = futures::stream::iter(ids)
        .map(|id| reading_times(client, base, token, id, metric, from, to))
        .buffered(API_CONCURRENCY)
        .collect()
        .await;
    all.into_iter().collect()
}

/// One device's cadence in a window: how many readings were stored, and how late the worst of
/// them came — the largest gap between consecutive readings, counting the window's edges as
/// readings when `edges` is set, minus the interval.
#[derive(Debug, Clone)]
pub struct DeviceCadence {
    pub stored: usize,
    pub worst_late: Duration,
}

pub fn device_cadence(
    times: &[DateTime<Utc>],
    window: Option<(DateTime<Utc>, DateTime<Utc>)>,
    interval: Duration,
) -> DeviceCadence {
    let mut points: Vec<DateTime<Utc>> = Vec::with_capacity(times.len() + 2);
    if let Some((from, _)) = window {
        points.push(from);
    }
    points.extend_from_slice(times);
    if let Some((_, to)) = window {
        points.push(to);
    }
    let worst_gap = points
        .windows(2)
        .map(|w| (w[1] - w[0]).to_std().unwrap_or_default())
        .max()
        .unwrap_or_default();
    DeviceCadence {
        stored: times.len(),
        worst_late: worst_gap.saturating_sub(interval),
    }
}

/// The cadence of a whole fleet, in intervals: `late` holds each device's worst lateness.
pub fn fleet_cadence(devices: &[DeviceCadence], interval: Duration) -> Value {
    let mut late: Vec<f64> = devices
        .iter()
        .map(|d| d.worst_late.as_secs_f64() / interval.as_secs_f64())
        .collect();
    late.sort_by(f64::total_cmp);
    let at = |q: f64| {
        late.get(((late.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let slipped = late.iter().filter(|l| **l > 1.0).count();
    json!({
        "devices": devices.len(),
        "readings_stored": devices.iter().map(|d| d.stored).sum::<usize>(),
        "devices_without_readings": devices.iter().filter(|d| d.stored == 0).count(),
        "worst_lateness_p50_intervals": at(0.5),
        "worst_lateness_p99_intervals": at(0.99),
        "worst_lateness_max_intervals": at(1.0),
        "devices_late_by_more_than_one_interval": slipped,
        "held": slipped == 0 && !late.is_empty(),
    })
}

/// The value of the first sample named exactly `series` (name and labels) in a `/metrics`
/// text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}

/// ddms' `/metrics` text.
pub async fn scrape(client: &reqwest::Client, base: &str) -> Result<String> {
    Ok(client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?)
}

/// The machine's load average (1, 5 and 15 minutes), recorded with the figures.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
