//! Throwaway PostgreSQL 15 and Mosquitto 2 servers for the integration tests.
//!
//! Two providers sit behind one API: Docker containers started through
//! testcontainers, or plain local processes (`initdb`/`postgres`, `mosquitto`)
//! living in temp dirs. Selection: `DDMS_TEST_SERVICES=docker|local|auto`
//! (default `auto`) and, for Docker, `DDMS_TEST_IMAGES=local|official`
//! (default `local`: the `ddms-test/*` images built by `cargo xtask images`).
//!
//! Every server gets a reaper: a `sh` child blocked on reading a pipe whose only
//! writer is this process. When the server is dropped, or when the test process
//! ends in any way (statics such as [`shared_postgres`] are never dropped), the
//! pipe closes and the reaper removes the container, or stops the process and
//! deletes its files.

// Each test binary uses only part of these helpers.
#![allow(dead_code)]

// The parent module holds the one port allocator (`support::ports` in the tests; the driver's in
// `bench_ingest`, which includes this file too).
pub use super::ports::free_port;

use std::{
    collections::HashMap,
    ffi::OsString,
    fs::{self, File, OpenOptions},
    future::Future,
    io::{Read, Seek, SeekFrom},
    net::Ipv4Addr,
    os::unix::{
        fs::{chown, MetadataExt},
        process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, OnceLock,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use sqlx::{postgres::PgConnection, Connection};
use testcontainers::{
    bollard::{
        models::HostConfig,
        query_parameters::{KillContainerOptions, ListContainersOptions, RemoveContainerOptions},
    },
    core::{client::docker_client_instance, ContainerPort},
    runners::AsyncRunner,
    ContainerAsync, GenericImage, ImageExt,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::OnceCell,
};

#[path = "services/docker.rs"]
mod docker;
#[path = "services/local.rs"]
mod local;

use docker::*;
pub use local::Reaper;
use local::*;

const PG_USER: &str = "postgres";
const PG_PASSWORD: &str = "postgres";
/// Durability is pointless for throwaway data, and parallel tests open many connections.
const PG_SETTINGS: [&str; 4] = [
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "max_connections=300",
];
/// Same encoding and collation for both providers, so text ordering cannot differ.
const PG_INITDB_ARGS: [&str; 2] = ["--encoding=UTF8", "--no-locale"];
const PG_CONTAINER_PORT: u16 = 5432;
const MQTT_CONTAINER_PORT: u16 = 1883;
const MOSQUITTO_CONTAINER_CONFIG: &str = "/mosquitto/config/mosquitto.conf";

const LABEL: &str = "ddms.test";
const INSTANCE_LABEL: &str = "ddms.test.instance";

const LOCAL_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Containers also run the image's first-start initialisation (initdb).
const DOCKER_READY_TIMEOUT: Duration = Duration::from_secs(60);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// A port chosen as free can be taken before the server binds it; retry with another.
const PORT_ATTEMPTS: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    Docker,
    Local,
}

impl Provider {
    /// DDMS_TEST_SERVICES = docker | local | auto (default auto: Docker when the
    /// engine answers and the image is present, else Local).
    pub async fn from_env() -> Provider {
        static CHOSEN: OnceCell<Provider> = OnceCell::const_new();
        *CHOSEN
            .get_or_init(|| async {
                let setting = std::env::var("DDMS_TEST_SERVICES").unwrap_or_default();
                match setting.trim().to_ascii_lowercase().as_str() {
                    "docker" => Provider::Docker,
                    "local" => Provider::Local,
                    "" | "auto" => detect().await,
                    other => {
                        eprintln!(
                            "test services: unknown DDMS_TEST_SERVICES={other:?}, using auto"
                        );
                        detect().await
                    }
                }
            })
            .await
    }
}

async fn detect() -> Provider {
    match docker_usable().await {
        Ok(()) => Provider::Docker,
        Err(err) => {
            eprintln!("test services: using local processes, Docker is not usable: {err:#}");
            Provider::Local
        }
    }
}

async fn docker_usable() -> Result<()> {
    let images = Images::from_env();
    on_docker_runtime(async move {
        let docker = docker_client_instance().await?;
        tokio::time::timeout(Duration::from_secs(5), docker.ping())
            .await
            .context("Docker engine did not answer within 5 s")??;
        // Official images may still be pulled; local ones must have been built.
        if images == Images::Local {
            for (name, tag) in [images.postgres(), images.mosquitto()] {
                let image = format!("{name}:{tag}");
                docker.inspect_image(&image).await.with_context(|| {
                    format!("image {image} missing (build it: cargo xtask images)")
                })?;
            }
        }
        Ok(())
    })
    .await
}

pub struct Postgres {
    provider: Provider,
    port: u16,
    server: Server,
}

impl Postgres {
    /// Starts a fresh server and waits until it accepts connections.
    pub async fn start(provider: Provider) -> Result<Postgres> {
        match provider {
            Provider::Docker => start_docker_postgres().await,
            Provider::Local => start_local_postgres().await,
        }
        .with_context(|| format!("starting PostgreSQL 15 ({provider:?})"))
    }

    pub fn provider(&self) -> Provider {
        self.provider
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self, database: &str) -> String {
        postgres_url(self.port, database)
    }

    /// Creates a fresh, uniquely named database and returns its URL (isolated database per test).
    pub async fn create_database(&self) -> Result<String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        // The server belongs to this process alone, so pid + counter is unique.
        let name = format!(
            "test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = PgConnection::connect(&self.url("postgres"))
            .await
            .with_context(|| format!("connecting to PostgreSQL on port {}", self.port))?;
        sqlx::query(&format!(r#"CREATE DATABASE "{name}""#))
            .execute(&mut conn)
            .await
            .with_context(|| format!("creating database {name}"))?;
        let _ = conn.close().await;
        Ok(self.url(&name))
    }

    /// Stops the server (fast shutdown); the data is kept for [`Postgres::restart`].
    pub async fn stop(&self) -> Result<()> {
        self.server.stop().await.context("stopping PostgreSQL")
    }

    /// Starts the server again on the same port with the same data and waits until it is ready.
    pub async fn restart(&self) -> Result<()> {
        self.server.stop().await.context("stopping PostgreSQL")?;
        self.server.start().await.context("restarting PostgreSQL")?;
        Service::Postgres
            .wait_ready(&self.server, self.port, ready_timeout(self.provider))
            .await
    }
}

fn ready_timeout(provider: Provider) -> Duration {
    match provider {
        Provider::Docker => DOCKER_READY_TIMEOUT,
        Provider::Local => LOCAL_READY_TIMEOUT,
    }
}

fn postgres_url(port: u16, database: &str) -> String {
    format!("postgres://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{port}/{database}")
}

/// One server per test process, started on first use (tests run as threads of one process under `cargo test`).
pub async fn shared_postgres() -> &'static Postgres {
    static SHARED: OnceCell<Postgres> = OnceCell::const_new();
    SHARED
        .get_or_init(|| async {
            let provider = Provider::from_env().await;
            Postgres::start(provider)
                .await
                .expect("the shared PostgreSQL for the integration tests did not start")
        })
        .await
}

fn postgres_args(port: u16, socket_dir: &Path, data_dir: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "-D".into(),
        data_dir.into(),
        "-p".into(),
        port.to_string().into(),
        "-k".into(),
        socket_dir.into(),
        "-c".into(),
        "listen_addresses=127.0.0.1".into(),
    ];
    for setting in PG_SETTINGS {
        args.extend(["-c".into(), setting.into()]);
    }
    args
}

async fn start_local_postgres() -> Result<Postgres> {
    let bin_dir = std::env::var_os("DDMS_TEST_PG_BINDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
    // PostgreSQL refuses to run as root.
    let run_as = if running_as_root() {
        Some(system_user("postgres")?)
    } else {
        None
    };
    let process = LocalProcess::new(
        "postgres",
        "ddms-test-pg-",
        bin_dir.join("postgres"),
        run_as,
        Signal::SIGINT,
    )?;
    let dir = process.dir.clone();
    let socket_dir = dir.join("sock");
    let data_dir = dir.join("data");
    let password_file = dir.join("password");
    fs::create_dir(&socket_dir)?;
    fs::write(&password_file, PG_PASSWORD)?;
    if let Some((uid, gid)) = run_as {
        for path in [&dir, &socket_dir, &password_file] {
            chown(path, Some(uid), Some(gid))
                .with_context(|| format!("chown {}", path.display()))?;
        }
    }

    let mut initdb = tokio::process::Command::new(bin_dir.join("initdb"));
    initdb
        .arg("-D")
        .arg(&data_dir)
        .args(["-U", PG_USER])
        .arg(format!("--pwfile={}", password_file.display()))
        // Password over TCP like the Docker image, so auth behaves the same.
        .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
        .args(PG_INITDB_ARGS)
        .args(["--no-sync", "--no-instructions"])
        .current_dir(&dir)
        .stdin(Stdio::null());
    if let Some((uid, gid)) = run_as {
        initdb.uid(uid).gid(gid);
    }
    let output = initdb
        .output()
        .await
        .with_context(|| format!("running {}/initdb", bin_dir.display()))?;
    if !output.status.success() {
        bail!(
            "initdb failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let server = Server::Local(process);
    let port = start_local_on_free_port(&server, Service::Postgres, |port| {
        postgres_args(port, &socket_dir, &data_dir)
    })
    .await?;
    Ok(Postgres {
        provider: Provider::Local,
        port,
        server,
    })
}

/// Starts the local server on a free port (retrying on port clashes) and waits
/// until it is ready; `args` gives the command line for a port.
async fn start_local_on_free_port(
    server: &Server,
    service: Service,
    args: impl Fn(u16) -> Vec<OsString>,
) -> Result<u16> {
    let Server::Local(process) = server else {
        bail!("not a local server");
    };
    let mut attempt = 1;
    loop {
        let port = free_port()?;
        *lock(&process.args) = args(port);
        process.start()?;
        match service.wait_ready(server, port, LOCAL_READY_TIMEOUT).await {
            Ok(()) => return Ok(port),
            Err(err) if attempt < PORT_ATTEMPTS && is_port_conflict(&err) => {
                process.stop().await?;
                attempt += 1;
            }
            Err(err) => return Err(err),
        }
    }
}

async fn start_docker_postgres() -> Result<Postgres> {
    let (name, tag) = Images::from_env().postgres();
    let mut cmd = vec!["postgres".to_string()];
    for setting in PG_SETTINGS {
        cmd.extend(["-c".to_string(), setting.to_string()]);
    }
    let request = |port: u16, instance: &str| {
        GenericImage::new(name, tag)
            .with_env_var("POSTGRES_USER", PG_USER)
            .with_env_var("POSTGRES_PASSWORD", PG_PASSWORD)
            .with_env_var("POSTGRES_INITDB_ARGS", PG_INITDB_ARGS.join(" "))
            .with_cmd(cmd.clone())
            .with_mapped_port(port, ContainerPort::Tcp(PG_CONTAINER_PORT))
            .with_label(LABEL, "1")
            .with_label(INSTANCE_LABEL, instance)
            .with_host_config_modifier(bind_to_loopback)
            .with_startup_timeout(DOCKER_READY_TIMEOUT)
    };
    let (port, container) =
        start_container(&format!("{name}:{tag}"), request, Signal::SIGINT).await?;
    let server = Server::Docker(container);
    Service::Postgres
        .wait_ready(&server, port, DOCKER_READY_TIMEOUT)
        .await?;
    Ok(Postgres {
        provider: Provider::Docker,
        port,
        server,
    })
}

// ---------------------------------------------------------------------------
// Mosquitto

pub struct Mosquitto {
    provider: Provider,
    port: u16,
    server: Server,
}

impl Mosquitto {
    /// `extra_config` is appended to a base config (listener on the container/local
    /// port, allow_anonymous true, persistence on with a data dir).
    pub async fn start(provider: Provider, extra_config: &str) -> Result<Mosquitto> {
        match provider {
            Provider::Docker => start_docker_mosquitto(extra_config).await,
            Provider::Local => start_local_mosquitto(extra_config).await,
        }
        .with_context(|| format!("starting Mosquitto 2 ({provider:?})"))
    }

    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Host port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the broker; it writes its persistence file on the way out.
    pub async fn stop(&self) -> Result<()> {
        self.server.stop().await.context("stopping Mosquitto")
    }

    /// Starts the broker again on the same port, with the persisted state.
    pub async fn restart(&self) -> Result<()> {
        self.server.stop().await.context("stopping Mosquitto")?;
        self.server.start().await.context("restarting Mosquitto")?;
        Service::Mosquitto
            .wait_ready(&self.server, self.port, ready_timeout(self.provider))
            .await
    }
}

fn mosquitto_config(listener: &str, data_dir: &str, extra_config: &str) -> String {
    // As root mosquitto would switch to user `mosquitto`, which cannot write a
    // root-owned persistence dir; outside root the option is ignored.
    format!(
        "listener {listener}\n\
         allow_anonymous true\n\
         persistence true\n\
         persistence_location {data_dir}\n\
         user root\n\
         log_dest stderr\n\
         \n# extra_config\n{extra_config}\n"
    )
}

async fn start_local_mosquitto(extra_config: &str) -> Result<Mosquitto> {
    let program = std::env::var_os("DDMS_TEST_MOSQUITTO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/mosquitto"));
    let process = LocalProcess::new(
        "mosquitto",
        "ddms-test-mqtt-",
        program,
        None,
        Signal::SIGTERM,
    )?;
    let dir = process.dir.clone();
    let data_dir = dir.join("data");
    fs::create_dir(&data_dir)?;
    let config_file = dir.join("mosquitto.conf");
    let server = Server::Local(process);
    let port = start_local_on_free_port(&server, Service::Mosquitto, |port| {
        // The config names the port, so each attempt rewrites it; a failed
        // write surfaces as mosquitto failing to start.
        let config = mosquitto_config(
            &format!("{port} 127.0.0.1"),
            &format!("{}/", data_dir.display()),
            extra_config,
        );
        let _ = fs::write(&config_file, config);
        vec!["-c".into(), config_file.clone().into()]
    })
    .await?;
    Ok(Mosquitto {
        provider: Provider::Local,
        port,
        server,
    })
}

async fn start_docker_mosquitto(extra_config: &str) -> Result<Mosquitto> {
    let (name, tag) = Images::from_env().mosquitto();
    let config = mosquitto_config(
        &MQTT_CONTAINER_PORT.to_string(),
        "/mosquitto/data/",
        extra_config,
    );
    let request = |port: u16, instance: &str| {
        GenericImage::new(name, tag)
            .with_copy_to(MOSQUITTO_CONTAINER_CONFIG, config.clone().into_bytes())
            .with_cmd(["/usr/sbin/mosquitto", "-c", MOSQUITTO_CONTAINER_CONFIG])
            .with_mapped_port(port, ContainerPort::Tcp(MQTT_CONTAINER_PORT))
            .with_label(LABEL, "1")
            .with_label(INSTANCE_LABEL, instance)
            .with_host_config_modifier(bind_to_loopback)
            .with_startup_timeout(DOCKER_READY_TIMEOUT)
    };
    let (port, container) =
        start_container(&format!("{name}:{tag}"), request, Signal::SIGTERM).await?;
    let server = Server::Docker(container);
    Service::Mosquitto
        .wait_ready(&server, port, DOCKER_READY_TIMEOUT)
        .await?;
    Ok(Mosquitto {
        provider: Provider::Docker,
        port,
        server,
    })
}

/// MQTT 3.1.1 CONNECT → CONNACK. A bare TCP connect is not enough: Docker's port
/// proxy accepts connections before the broker listens. Any CONNACK counts, even
/// a refusal, since `extra_config` may forbid anonymous clients.
async fn mqtt_probe(port: u16) -> Result<()> {
    const CLIENT_ID: &[u8] = b"ddms-test-probe";
    // CONNECT, remaining length; protocol "MQTT" level 4 (3.1.1), clean
    // session, keep-alive 10 s; client id.
    let mut connect = vec![0x10, (12 + CLIENT_ID.len()) as u8];
    connect.extend_from_slice(b"\x00\x04MQTT\x04\x02\x00\x0a");
    connect.extend_from_slice(&[0, CLIENT_ID.len() as u8]);
    connect.extend_from_slice(CLIENT_ID);
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
    stream.write_all(&connect).await?;
    let mut connack = [0u8; 4];
    stream
        .read_exact(&mut connack)
        .await
        .context("no CONNACK")?;
    if connack[0] != 0x20 {
        bail!("unexpected reply to CONNECT: {connack:02x?}");
    }
    let _ = stream.write_all(&[0xE0, 0]).await; // DISCONNECT
    Ok(())
}

// ---------------------------------------------------------------------------
// Servers: a container or a local child process

/// What a server runs, which decides how readiness is probed.
#[derive(Clone, Copy)]
enum Service {
    Postgres,
    Mosquitto,
}

impl Service {
    async fn wait_ready(self, server: &Server, port: u16, timeout: Duration) -> Result<()> {
        match self {
            Service::Postgres => {
                let url = postgres_url(port, "postgres");
                wait_until_ready(server, "PostgreSQL", timeout, || async {
                    let conn = PgConnection::connect(&url).await?;
                    let _ = conn.close().await;
                    Ok(())
                })
                .await
            }
            Service::Mosquitto => {
                wait_until_ready(server, "Mosquitto", timeout, || mqtt_probe(port)).await
            }
        }
    }
}

enum Server {
    Docker(DockerServer),
    Local(LocalProcess),
}

impl Server {
    async fn stop(&self) -> Result<()> {
        match self {
            Server::Docker(server) => server.stop().await,
            Server::Local(process) => process.stop().await,
        }
    }

    async fn start(&self) -> Result<()> {
        match self {
            Server::Docker(server) => server.start().await,
            Server::Local(process) => process.start(),
        }
    }

    /// Errors (with the server's log) once the server has exited.
    async fn ensure_running(&self) -> Result<()> {
        match self {
            Server::Docker(server) => server.ensure_running().await,
            Server::Local(process) => process.ensure_running(),
        }
    }

    async fn logs(&self) -> String {
        match self {
            Server::Docker(server) => server.logs().await,
            Server::Local(process) => process.log_tail(),
        }
    }
}

async fn wait_until_ready<F, Fut>(
    server: &Server,
    what: &str,
    timeout: Duration,
    mut probe: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        server.ensure_running().await?;
        let err = match tokio::time::timeout(PROBE_TIMEOUT, probe()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(err)) => err,
            Err(_) => anyhow!("no answer within {PROBE_TIMEOUT:?}"),
        };
        if Instant::now() >= deadline {
            let logs = server.logs().await;
            return Err(err.context(format!(
                "{what} not ready after {timeout:?}; server log:\n{logs}"
            )));
        }
        // sleep: the poll interval of this wait with a deadline (it reports the server's log)
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn is_port_conflict(err: &anyhow::Error) -> bool {
    let text = format!("{err:#}").to_ascii_lowercase();
    ["address already in use", "port is already allocated"]
        .iter()
        .any(|needle| text.contains(needle))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test must not wedge the others.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------
// Docker
