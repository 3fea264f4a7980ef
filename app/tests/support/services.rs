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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Images {
    Local,
    Official,
}

impl Images {
    fn from_env() -> Images {
        let setting = std::env::var("DDMS_TEST_IMAGES").unwrap_or_default();
        match setting.trim().to_ascii_lowercase().as_str() {
            "official" => Images::Official,
            _ => Images::Local,
        }
    }

    fn postgres(self) -> (&'static str, &'static str) {
        match self {
            Images::Local => ("ddms-test/postgres", "15"),
            Images::Official => ("postgres", "15"),
        }
    }

    fn mosquitto(self) -> (&'static str, &'static str) {
        match self {
            Images::Local => ("ddms-test/mosquitto", "2"),
            Images::Official => ("eclipse-mosquitto", "2"),
        }
    }
}

// ---------------------------------------------------------------------------
// PostgreSQL

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

/// Every Docker call runs on this runtime: `#[tokio::test]` runtimes die with
/// their test, and the testcontainers client (with its connection pool) is
/// shared by the containers of all tests, including the static one.
fn docker_runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> =
        OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("ddms-test-docker")
                .enable_all()
                .build()
                .map_err(|err| err.to_string())
        })
        .as_ref()
        .map_err(|err| anyhow!("cannot build the Docker runtime: {err}"))
}

async fn on_docker_runtime<T, F>(future: F) -> Result<T>
where
    T: Send + 'static,
    F: Future<Output = Result<T>> + Send + 'static,
{
    docker_runtime()?
        .spawn(future)
        .await
        .context("Docker task panicked")?
}

/// Publish only on loopback: that is where `free_port` checked, and test
/// databases have no business on the network.
fn bind_to_loopback(host_config: &mut HostConfig) {
    for bindings in host_config
        .port_bindings
        .iter_mut()
        .flat_map(|map| map.values_mut())
        .flatten()
    {
        for binding in bindings {
            binding.host_ip = Some("127.0.0.1".into());
        }
    }
}

type Request = testcontainers::ContainerRequest<GenericImage>;

async fn start_container(
    image: &str,
    request: impl Fn(u16, &str) -> Request,
    stop_signal: Signal,
) -> Result<(u16, DockerServer)> {
    let instance = uuid::Uuid::new_v4().to_string();
    // Before creating anything: a failed start can leave a created container behind.
    let reaper = Reaper::spawn(
        r#"ids=$(docker ps -aq --filter "label=ddms.test.instance=$1"); [ -z "$ids" ] || docker rm -f -v $ids"#,
        &[instance.as_str().into()],
    )?;
    let mut attempt = 1;
    loop {
        let port = free_port()?;
        let request = request(port, &instance);
        let started = on_docker_runtime(async move { Ok(request.start().await?) }).await;
        match started {
            Ok(container) => {
                let server = DockerServer {
                    container: Some(Arc::new(container)),
                    stop_signal,
                    _reaper: reaper,
                };
                return Ok((port, server));
            }
            Err(err) => {
                remove_instance_containers(&instance).await;
                if attempt < PORT_ATTEMPTS && is_port_conflict(&err) {
                    attempt += 1;
                    continue;
                }
                let hint = if Images::from_env() == Images::Local {
                    " (local images come from `cargo xtask images`; DDMS_TEST_IMAGES=official uses Docker Hub)"
                } else {
                    ""
                };
                return Err(err.context(format!("starting container from {image}{hint}")));
            }
        }
    }
}

async fn remove_instance_containers(instance: &str) {
    let filter = format!("{INSTANCE_LABEL}={instance}");
    let _ = on_docker_runtime(async move {
        let docker = docker_client_instance().await?;
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_string(), vec![filter])])),
            ..Default::default()
        };
        for summary in docker.list_containers(Some(options)).await? {
            if let Some(id) = summary.id {
                let options = RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                };
                let _ = docker.remove_container(&id, Some(options)).await;
            }
        }
        Ok(())
    })
    .await;
}

struct DockerServer {
    /// `Option` only so that `Drop` can hand the container to the Docker runtime.
    container: Option<Arc<ContainerAsync<GenericImage>>>,
    stop_signal: Signal,
    _reaper: Reaper,
}

impl DockerServer {
    fn container(&self) -> Result<Arc<ContainerAsync<GenericImage>>> {
        self.container
            .clone()
            .ok_or_else(|| anyhow!("container already dropped"))
    }

    async fn stop(&self) -> Result<()> {
        let container = self.container()?;
        let signal = self.stop_signal.as_str().to_string();
        on_docker_runtime(async move {
            if !container.is_running().await? {
                return Ok(());
            }
            // Sent explicitly rather than relying on the image's STOPSIGNAL:
            // PostgreSQL needs SIGINT for a fast shutdown.
            let docker = docker_client_instance().await?;
            docker
                .kill_container(container.id(), Some(KillContainerOptions { signal }))
                .await?;
            let deadline = Instant::now() + STOP_TIMEOUT;
            while container.is_running().await? {
                if Instant::now() >= deadline {
                    container.stop_with_timeout(Some(0)).await?;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(())
        })
        .await
    }

    async fn start(&self) -> Result<()> {
        let container = self.container()?;
        on_docker_runtime(async move { Ok(container.start().await?) }).await
    }

    async fn ensure_running(&self) -> Result<()> {
        let container = self.container()?;
        let running = on_docker_runtime(async move { Ok(container.is_running().await?) }).await?;
        if running {
            Ok(())
        } else {
            bail!("container exited; its log:\n{}", self.logs().await)
        }
    }

    async fn logs(&self) -> String {
        let Ok(container) = self.container() else {
            return String::new();
        };
        on_docker_runtime(async move {
            let stdout = container.stdout_to_vec().await?;
            let stderr = container.stderr_to_vec().await?;
            Ok(format!(
                "{}{}",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            ))
        })
        .await
        .unwrap_or_else(|err| format!("(logs unavailable: {err:#})"))
    }
}

impl Drop for DockerServer {
    fn drop(&mut self) {
        // testcontainers removes the container in its own Drop, which needs a
        // Tokio context; run it where the client lives. The reaper (dropped
        // next) removes it as well, whichever is first.
        if let (Some(container), Ok(runtime)) = (self.container.take(), docker_runtime()) {
            runtime.spawn(async move { drop(container) });
        }
    }
}

// ---------------------------------------------------------------------------
// Local processes

struct LocalProcess {
    name: &'static str,
    program: PathBuf,
    /// Set per start attempt, since it names the port.
    args: Mutex<Vec<OsString>>,
    run_as: Option<(u32, u32)>,
    stop_signal: Signal,
    /// Temp dir holding everything of this server; removed by the reaper.
    dir: PathBuf,
    log_file: PathBuf,
    /// Where in the log the current run starts, so errors show only its lines.
    log_start: Mutex<u64>,
    /// Read by the reaper to find the server after restarts.
    pid_file: PathBuf,
    child: Mutex<Option<Child>>,
    _reaper: Reaper,
}

impl LocalProcess {
    fn new(
        name: &'static str,
        dir_prefix: &str,
        program: PathBuf,
        run_as: Option<(u32, u32)>,
        stop_signal: Signal,
    ) -> Result<LocalProcess> {
        let dir = tempfile::Builder::new()
            .prefix(dir_prefix)
            .tempdir()
            .context("creating a temp dir")?
            .keep();
        let pid_file = dir.join("server.pid");
        let reaper = Reaper::spawn(
            r#"pid=$(cat "$2" 2>/dev/null)
if [ -n "$pid" ]; then
  kill -s "$3" "$pid" 2>/dev/null
  i=0
  while [ "$i" -lt 300 ] && [ -d "/proc/$pid" ] && ! grep -q ') Z' "/proc/$pid/stat" 2>/dev/null; do
    sleep 0.1; i=$((i + 1))
  done
  [ -d "/proc/$pid" ] && kill -s KILL "$pid" 2>/dev/null
fi
case "$1" in */ddms-test-*) rm -rf "$1" ;; esac"#,
            &[
                dir.clone().into(),
                pid_file.clone().into(),
                stop_signal.as_str().trim_start_matches("SIG").into(),
            ],
        );
        let reaper = match reaper {
            Ok(reaper) => reaper,
            Err(err) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(err);
            }
        };
        Ok(LocalProcess {
            name,
            program,
            args: Mutex::new(Vec::new()),
            run_as,
            stop_signal,
            log_file: dir.join(format!("{name}.log")),
            log_start: Mutex::new(0),
            pid_file,
            dir,
            child: Mutex::new(None),
            _reaper: reaper,
        })
    }

    fn start(&self) -> Result<()> {
        let mut child = lock(&self.child);
        if child.is_some() {
            bail!("{} is already running", self.name);
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .with_context(|| format!("opening {}", self.log_file.display()))?;
        *lock(&self.log_start) = log.metadata()?.len();
        let mut command = Command::new(&self.program);
        command
            .args(lock(&self.args).iter())
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Out of the test's process group, so a signal aimed at the test run
            // (Ctrl-C, a CI timeout's SIGKILL) leaves the shutdown to the reaper
            // instead of killing the server mid-flight.
            .process_group(0);
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        let spawned = command
            .spawn()
            .with_context(|| format!("spawning {}", self.program.display()))?;
        let pid = spawned.id();
        *child = Some(spawned);
        fs::write(&self.pid_file, pid.to_string())
            .with_context(|| format!("writing {}", self.pid_file.display()))
    }

    /// Signals the server and waits for it to exit; a no-op when it is not running.
    async fn stop(&self) -> Result<()> {
        let Some(mut child) = lock(&self.child).take() else {
            return Ok(());
        };
        if child.try_wait()?.is_none() {
            signal(&child, self.stop_signal)?;
            let deadline = Instant::now() + STOP_TIMEOUT;
            while child.try_wait()?.is_none() {
                if Instant::now() >= deadline {
                    child.kill()?;
                    child.wait()?;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let _ = fs::remove_file(&self.pid_file);
        Ok(())
    }

    fn ensure_running(&self) -> Result<()> {
        let mut guard = lock(&self.child);
        let Some(child) = guard.as_mut() else {
            bail!("{} is not running", self.name);
        };
        if let Some(status) = child.try_wait()? {
            guard.take();
            drop(guard);
            bail!(
                "{} exited ({status}); its log:\n{}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let start = *lock(&self.log_start);
        let mut text = String::new();
        let read = File::open(&self.log_file).and_then(|mut file| {
            file.seek(SeekFrom::Start(start))?;
            file.read_to_string(&mut text)
        });
        if let Err(err) = read {
            return format!("(log unavailable: {err})");
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for LocalProcess {
    fn drop(&mut self) {
        // The reaper (dropped next) signals via the pid file and deletes the
        // dir once the process is gone; reap the child so it leaves no zombie.
        if let Some(mut child) = lock(&self.child).take() {
            let _ = signal(&child, self.stop_signal);
            std::thread::spawn(move || child.wait());
        }
    }
}

fn signal(child: &Child, signal: Signal) -> Result<()> {
    let pid = i32::try_from(child.id()).context("pid out of range")?;
    kill(Pid::from_raw(pid), signal).with_context(|| format!("sending {signal} to {pid}"))
}

fn running_as_root() -> bool {
    // /proc/self belongs to the effective uid; avoids needing nix's `user` feature.
    fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

/// (uid, gid) of a system account, from /etc/passwd.
fn system_user(name: &str) -> Result<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.len() > 3 && fields[0] == name)
        .and_then(|fields| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
        .with_context(|| format!("no user {name:?} in /etc/passwd (needed when running as root)"))
}

// ---------------------------------------------------------------------------
// Reaper

/// A `sh` that runs a cleanup script once its stdin reaches EOF, i.e. when this
/// value is dropped or the test process exits, however it exits.
pub struct Reaper {
    stdin: Option<ChildStdin>,
    child: Option<Child>,
}

impl Reaper {
    pub fn spawn(script: &str, args: &[OsString]) -> Result<Reaper> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("trap '' INT HUP; cat >/dev/null; {script}"))
            .arg("ddms-test-reaper")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Own process group: a Ctrl-C aimed at `cargo test` must not kill the cleanup.
            .process_group(0)
            .spawn()
            .context("spawning the cleanup process (sh)")?;
        Ok(Reaper {
            stdin: child.stdin.take(),
            child: Some(child),
        })
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if let Some(mut child) = self.child.take() {
            std::thread::spawn(move || child.wait());
        }
    }
}
