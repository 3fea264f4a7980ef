//! HTTP checks of slots and of nginx: `/ready`, `/api/version`, the 5xx share from `/metrics`.
//! [`Probe::get`] is also `ddms healthcheck`'s request (see [`crate::healthcheck`]).
//!
//! reqwest (rustls) rather than a hand-written client: it was already in the dependency graph
//! for the tests, shares rustls and ring with sqlx, and the public check needs TLS. Every check
//! opens a fresh connection (no pool), so a check after an nginx reload reaches a new worker
//! instead of reusing a connection to an old one.

use std::time::Duration;

use serde::Deserialize;

pub struct Probe {
    client: reqwest::Client,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VersionInfo {
    pub version: String,
    pub git_sha: String,
    pub slot: Option<String>,
}

impl Probe {
    /// A client sending `User-Agent: <agent>/<version>`, so a slot's log tells a release
    /// check from the container's healthcheck.
    pub fn new(agent: &str, timeout: Duration) -> Probe {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(0)
            // The public check talks to the local nginx by address; its certificate names the
            // public host, so it cannot verify here.
            .danger_accept_invalid_certs(true)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(format!("{agent}/{}", crate::VERSION))
            .build()
            .expect("HTTP client builds");
        Probe { client }
    }

    /// Status and body of a GET, or why there was none.
    pub async fn get(&self, url: &str) -> Result<(u16, String), String> {
        let response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| describe(url, &e))?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(|e| describe(url, &e))?;
        Ok((status, body))
    }

    pub async fn version(&self, base: &str) -> Result<VersionInfo, String> {
        let url = format!("{base}/api/version");
        match self.get(&url).await? {
            (200, body) => serde_json::from_str(&body).map_err(|e| format!("{url}: {e}: {body}")),
            (code, body) => Err(format!("{url} answered {code}: {}", excerpt(&body))),
        }
    }

    /// `(all, 5xx)` requests the slot has counted since it started.
    pub async fn request_counts(&self, base: &str) -> Result<(u64, u64), String> {
        let url = format!("{base}/metrics");
        match self.get(&url).await? {
            (200, body) => Ok(parse_request_counts(&body)),
            (code, body) => Err(format!("{url} answered {code}: {}", excerpt(&body))),
        }
    }
}

fn describe(url: &str, e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail = format!("{detail}: {s}");
        source = s.source();
    }
    format!("{url}: {kind} ({detail})")
}

pub fn excerpt(text: &str) -> String {
    let text = text.trim();
    if text.chars().count() > 300 {
        format!("{}…", text.chars().take(300).collect::<String>())
    } else {
        text.to_string()
    }
}

/// Sums `ddms_http_requests_total` over all series, and over those with a 5xx `status` label.
pub fn parse_request_counts(metrics: &str) -> (u64, u64) {
    let mut all = 0.0;
    let mut errors = 0.0;
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("ddms_http_requests_total") else {
            continue;
        };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(rest) => match rest.rsplit_once('}') {
                Some((labels, value)) => (labels, value),
                None => continue,
            },
            None => ("", rest),
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        all += value;
        if labels
            .split(',')
            .any(|label| label.trim().starts_with("status=\"5"))
        {
            errors += value;
        }
    }
    (all as u64, errors as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_counts_sum_every_series_and_the_5xx_ones() {
        let text = "\
# HELP ddms_http_requests_total HTTP requests by route and status
# TYPE ddms_http_requests_total counter
ddms_http_requests_total{method=\"GET\",route=\"/ready\",status=\"200\"} 40
ddms_http_requests_total{method=\"GET\",route=\"/ready\",status=\"503\"} 2
ddms_http_requests_total{method=\"GET\",route=\"/api/devices\",status=\"500\"} 1
ddms_http_requests_total{method=\"POST\",route=\"/api/devices\",status=\"422\"} 7
ddms_http_request_duration_seconds_count{method=\"GET\",route=\"/ready\",status=\"503\"} 2
";
        assert_eq!(parse_request_counts(text), (50, 3));
        assert_eq!(parse_request_counts(""), (0, 0));
    }
}
