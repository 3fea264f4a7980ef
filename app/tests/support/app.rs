//! The ddms under test, two ways: in-process on port 0 ([`spawn_app`]) for API tests, and as the
//! real binary ([`DdmsProcess`]) where signals, exit codes or log output matter.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ddms::store::Store;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::services::{Postgres, Provider};

/// Which database an app under test uses.
pub enum Db {
    Sqlite,
    /// A fresh database on the shared server of the given provider.
    Postgres(Provider),
    /// A fresh database on a given server (tests that stop and start it).
    PostgresOn(&'static Postgres),
    /// An existing database, shared with another instance under test.
    Url(String),
}

/// One PostgreSQL server per provider per test process; each test gets its own database on it.
pub async fn postgres(provider: Provider) -> &'static Postgres {
    static LOCAL: tokio::sync::OnceCell<Postgres> = tokio::sync::OnceCell::const_new();
    static DOCKER: tokio::sync::OnceCell<Postgres> = tokio::sync::OnceCell::const_new();
    let cell = match provider {
        Provider::Local => &LOCAL,
        Provider::Docker => &DOCKER,
    };
    cell.get_or_init(|| async move {
        Postgres::start(provider)
            .await
            .unwrap_or_else(|e| panic!("shared PostgreSQL ({provider:?}) did not start: {e:#}"))
    })
    .await
}

/// A database URL for a new, isolated database, plus the temp dir that holds SQLite files.
pub async fn database_url(db: &Db) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = match db {
        Db::Sqlite => format!("sqlite://{}", dir.path().join("ddms.db").display()),
        Db::Postgres(provider) => postgres(*provider)
            .await
            .create_database()
            .await
            .expect("create test database"),
        Db::PostgresOn(server) => server
            .create_database()
            .await
            .expect("create test database"),
        Db::Url(url) => url.clone(),
    };
    (url, dir)
}

/// Deep-merges `extra` into `base` (tables merge, other values replace).
fn merge(base: &mut toml::Table, extra: toml::Table) {
    for (key, value) in extra {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(e)) => merge(b, e),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub store: Arc<dyn Store>,
    pub ingest: ddms::ingest::IngestHandle,
    pub status: ddms::status::StatusBoard,
    /// For a second instance on the same database ([`Db::Url`]).
    pub database_url: String,
    /// The embedded MQTT broker's plain and TLS addresses, when `mqtt.mode = "embedded"`.
    pub mqtt_addr: Option<SocketAddr>,
    pub mqtts_addr: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

/// Starts ddms in this process on 127.0.0.1:0 with a fresh database; `extra_toml` adds config.
pub async fn spawn_app(db: Db, extra_toml: &str) -> TestApp {
    let (url, dir) = database_url(&db).await;
    let database_url = url.clone();
    let mut table: toml::Table = format!(
        "data_dir = {data:?}\n[database]\nurl = {url:?}\nconnect_timeout = 2\n\
         [http]\nlisten = \"127.0.0.1:0\"\n[mqtt]\nmode = \"off\"\n",
        data = dir.path().display().to_string(),
    )
    .parse()
    .expect("base test config");
    merge(
        &mut table,
        extra_toml.parse().expect("extra test config is TOML"),
    );
    let toml = toml::to_string(&table).unwrap();
    let config = ddms::config::from_toml(&toml).expect("test config is valid");
    let server = ddms::server::Server::build(config)
        .await
        .expect("server builds");
    let addr = server.local_addr();
    let store = server.store();
    let ingest = server.ingest();
    let status = server.status();
    let (mqtt_addr, mqtts_addr) = match server.mqtt_addrs() {
        Some((plain, tls)) => (Some(plain), tls),
        None => (None, None),
    };
    let (tx, rx) = oneshot::channel();
    let handle = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        store,
        ingest,
        status,
        database_url,
        mqtt_addr,
        mqtts_addr,
        shutdown: Some(tx),
        server: Some(handle),
        _dir: dir,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }

    pub async fn get_with_token(&self, path: &str, token: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    pub async fn post_json(
        &self,
        path: &str,
        token: Option<&str>,
        body: &serde_json::Value,
    ) -> reqwest::Response {
        let mut request = self.client.post(self.url(path)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request")
    }

    /// Creates an API token with `role` directly in the store, returning its secret.
    pub async fn token(&self, role: ddms::store::Role) -> String {
        let secret = ddms::auth::generate_api_token();
        self.store
            .create_api_token(&ddms::store::NewApiToken {
                name: format!("test-{role}"),
                token_hash: ddms::auth::hash_api_token(&secret),
                role,
            })
            .await
            .expect("create token");
        secret
    }

    pub async fn put_json(
        &self,
        path: &str,
        token: &str,
        body: &serde_json::Value,
    ) -> reqwest::Response {
        self.client
            .put(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn delete(&self, path: &str, token: &str) -> reqwest::Response {
        self.client
            .delete(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    /// Stops the server gracefully and waits for it. The test's own ingest handle goes first,
    /// or the pipeline would wait for it forever.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let handle = self.server.take();
        drop(self);
        if let Some(handle) = handle {
            handle.await.expect("server task").expect("server ran");
        }
    }
}

/// The real `ddms` binary, with its stdout (JSON logs) captured line by line.
pub struct DdmsProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub logs: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
}

pub fn ddms_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ddms"))
}

/// A `ddms` command with a clean environment: no DDMS_* from the developer's shell.
pub fn ddms_command(dir: &Path) -> Command {
    let mut cmd = Command::new(ddms_bin());
    cmd.current_dir(dir)
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    for (key, _) in std::env::vars() {
        if key.starts_with("DDMS_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

impl DdmsProcess {
    /// Runs `ddms serve` in `dir` with `env`, on a free port, and waits until /health answers.
    pub async fn serve(dir: &Path, env: &[(&str, &str)]) -> Result<DdmsProcess> {
        Self::serve_with_args(dir, &["serve"], env).await
    }

    /// Like [`DdmsProcess::serve`] with explicit arguments (`["serve", "--demo"]`).
    pub async fn serve_with_args(
        dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<DdmsProcess> {
        let port = super::services::free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let mut cmd = ddms_command(dir);
        cmd.args(args)
            .env("DDMS_HTTP__LISTEN", addr.to_string())
            .env("DDMS_LOG__FORMAT", "json")
            .env("DDMS_MQTT__MODE", "off")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("spawn ddms")?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        for (stream, sink) in [
            (
                Box::new(child.stdout.take().unwrap())
                    as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                logs.clone(),
            ),
            (Box::new(child.stderr.take().unwrap()), stderr.clone()),
        ] {
            readers.push(tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    sink.lock().unwrap().push(line);
                }
            }));
        }
        let process = DdmsProcess {
            child,
            addr,
            logs,
            stderr,
            readers,
        };
        process.wait_healthy(Duration::from_secs(30)).await?;
        Ok(process)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    async fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let client = reqwest::Client::new();
        loop {
            if let Ok(r) = client.get(self.url("/health")).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "ddms did not become healthy; stderr: {:?}; logs: {:?}",
                    self.stderr.lock().unwrap(),
                    self.logs.lock().unwrap()
                );
            }
            // sleep: the poll interval of this wait with a deadline (it reports the logs)
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = self.child.id().expect("running") as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).expect("send signal");
    }

    /// Parsed JSON log lines so far (non-JSON lines fail the test: logs must be machine-readable).
    pub fn json_logs(&self) -> Vec<serde_json::Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
            })
            .collect()
    }

    /// Waits for the process to exit and for its output to be read to the end.
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .expect("ddms exits in time")
            .expect("wait");
        for reader in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        }
        status
    }
}
