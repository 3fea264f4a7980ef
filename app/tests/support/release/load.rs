//! Load through nginx while a release switches: HTTPS clients that count every request, and
//! what a request that failed mid-switch looks like.

use super::*;

/// For long-lived streams.
pub fn insecure_client_without_timeout() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap()
}

pub fn insecure_client() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// What a load loop saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub ok: u64,
    /// Non-2xx answers and connection errors, described.
    pub failures: Vec<String>,
    /// Requests sent again because a kept-alive connection closed before any answer (see
    /// [`Load::start`]); each then succeeded, or it is in `failures`.
    pub retried: Vec<String>,
    /// Slots that answered `/api/version`, with how often.
    pub slots: std::collections::BTreeMap<String, u64>,
}

/// API reads through nginx, one after another, until stopped (at most ten minutes).
///
/// With `keep_alive`, requests reuse connections like a browser or an API client does, and,
/// like them (RFC 9112 §9.3.1), send an idempotent request once more when the reused
/// connection closed before any answer: a reloading nginx closes its old workers' idle
/// keep-alive connections, and a request can cross that close on the wire. Without
/// `keep_alive`, every request has a connection of its own and nothing is retried.
pub struct Load {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<LoadReport>>,
    handle: tokio::task::JoinHandle<()>,
}

pub(super) fn closed_before_answer(e: &reqwest::Error) -> bool {
    let text = format!("{e:?}");
    text.contains("IncompleteMessage") || text.contains("ConnectionReset")
}

impl Load {
    pub fn start(host: &ReleaseHost, token: &str, keep_alive: bool) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(LoadReport::default()));
        let mut client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(10));
        if !keep_alive {
            client = client.pool_max_idle_per_host(0);
        }
        let client = client.build().unwrap();
        let devices = host.public_url("/api/devices");
        let version = host.public_url("/api/version");
        let token = token.to_string();
        let handle = tokio::spawn({
            let (stop, report) = (stop.clone(), report.clone());
            async move {
                let started = Instant::now();
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(600) {
                    n += 1;
                    let url = if n.is_multiple_of(2) {
                        &version
                    } else {
                        &devices
                    };
                    let mut result = client.get(url).bearer_auth(&token).send().await;
                    if keep_alive {
                        if let Err(e) = &result {
                            if closed_before_answer(e) {
                                report.lock().unwrap().retried.push(format!("{url}: {e:?}"));
                                result = client.get(url).bearer_auth(&token).send().await;
                            }
                        }
                    }
                    let outcome = match result {
                        Ok(response) if response.status().is_success() => {
                            match response.text().await {
                                Ok(body) => Ok(serde_json::from_str::<Value>(&body)
                                    .ok()
                                    .and_then(|v| v["slot"].as_str().map(str::to_string))),
                                Err(e) => Err(format!("{url}: body: {e:?}")),
                            }
                        }
                        Ok(response) => Err(format!(
                            "{url}: {} {}",
                            response.status(),
                            response.text().await.unwrap_or_default()
                        )),
                        Err(e) => Err(format!("{url}: {e:?}")),
                    };
                    {
                        let mut report = report.lock().unwrap();
                        match outcome {
                            Ok(slot) => {
                                report.ok += 1;
                                if let Some(slot) = slot {
                                    *report.slots.entry(slot).or_default() += 1;
                                }
                            }
                            Err(failure) => report.failures.push(failure),
                        }
                    }
                    // sleep: the load's pace, a client's requests one after another.
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
            }
        });
        Load {
            stop,
            report,
            handle,
        }
    }

    /// Requests answered by `slot` since the counters were last taken (they are not reset).
    pub fn answered_by(&self, slot: &str) -> u64 {
        self.report
            .lock()
            .unwrap()
            .slots
            .get(slot)
            .copied()
            .unwrap_or(0)
    }

    /// Counters so far, resetting them.
    pub fn take(&self) -> LoadReport {
        std::mem::take(&mut *self.report.lock().unwrap())
    }

    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        let Load { report, handle, .. } = self;
        let _ = handle.await;
        let report = std::mem::take(&mut *report.lock().unwrap());
        report
    }
}
