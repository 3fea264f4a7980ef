//! `tests/support/webhook_receiver.py`, an HTTP receiver written independently of ddms: it
//! records every request as a JSON line (path, headers, body, whether `X-Ddms-Signature` is
//! the right HMAC for `secret`) and answers as its path asks (`/status/CODE?times=N`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The running receiver on a loopback port; killed on drop. It can be stopped (its port then
/// refuses connections) and started again on the same port, keeping its record.
pub struct WebhookReceiver {
    child: Option<tokio::process::Child>,
    port: u16,
    secret: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl WebhookReceiver {
    /// Starts the receiver, which verifies signatures with `secret`, and waits until it listens.
    pub async fn start(secret: &str) -> WebhookReceiver {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("requests.jsonl");
        let (child, port) = spawn(&log, secret, 0).await;
        WebhookReceiver {
            child: Some(child),
            port,
            secret: secret.to_string(),
            log,
            _dir: dir,
        }
    }

    /// Kills the receiver and waits until it is gone: its port refuses connections.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill the receiver");
        }
    }

    /// Starts it again on the same port, appending to the same record.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the receiver first");
        let (child, port) = spawn(&self.log, &self.secret, self.port).await;
        assert_eq!(port, self.port);
        self.child = Some(child);
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

/// Runs the script on `port` (0: a free one) and waits for its "ready PORT" line.
async fn spawn(log: &Path, secret: &str, port: u16) -> (tokio::process::Child, u16) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/webhook_receiver.py");
    let mut child = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(log)
        .arg(secret)
        .arg(port.to_string())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("receiver starts within 30 s")
        .unwrap()
        .expect("receiver prints its port (is the port free?)");
    let port = ready.strip_prefix("ready ").unwrap().parse().unwrap();
    (child, port)
}
