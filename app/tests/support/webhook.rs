//! `tests/support/webhook_receiver.py`, an HTTP receiver written independently of ddms: it
//! records every request as a JSON line (path, headers, body, whether `X-Ddms-Signature` is
//! the right HMAC for `secret`) and answers as its path asks (`/status/CODE?times=N`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The running receiver on a free loopback port; killed on drop.
pub struct WebhookReceiver {
    _child: tokio::process::Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl WebhookReceiver {
    /// Starts the receiver, which verifies signatures with `secret`, and waits until it listens.
    pub async fn start(secret: &str) -> WebhookReceiver {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("requests.jsonl");
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/webhook_receiver.py");
        let mut child = tokio::process::Command::new("python3")
            .arg(&script)
            .arg(&log)
            .arg(secret)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("receiver starts within 30 s")
            .unwrap()
            .expect("receiver prints its port");
        let port = ready.strip_prefix("ready ").unwrap().parse().unwrap();
        WebhookReceiver {
            _child: child,
            port,
            log,
            _dir: dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every request recorded so far, in order.
    pub fn requests(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect()
    }
}
