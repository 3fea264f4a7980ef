//! Services in Docker (testcontainers): the images, one runtime for every container call, the
//! containers labelled per test process and removed with it.

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Images {
    Local,
    Official,
}

impl Images {
    pub(super) fn from_env() -> Images {
        let setting = std::env::var("DDMS_TEST_IMAGES").unwrap_or_default();
        match setting.trim().to_ascii_lowercase().as_str() {
            "official" => Images::Official,
            _ => Images::Local,
        }
    }

    pub(super) fn postgres(self) -> (&'static str, &'static str) {
        match self {
            Images::Local => ("ddms-test/postgres", "15"),
            Images::Official => ("postgres", "15"),
        }
    }

    pub(super) fn mosquitto(self) -> (&'static str, &'static str) {
        match self {
            Images::Local => ("ddms-test/mosquitto", "2"),
            Images::Official => ("eclipse-mosquitto", "2"),
        }
    }
}

// ---------------------------------------------------------------------------
// PostgreSQL

/// Every Docker call runs on this runtime: `#[tokio::test]` runtimes die with
/// their test, and the testcontainers client (with its connection pool) is
/// shared by the containers of all tests, including the static one.
pub(super) fn docker_runtime() -> Result<&'static tokio::runtime::Runtime> {
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

pub(super) async fn on_docker_runtime<T, F>(future: F) -> Result<T>
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
pub(super) fn bind_to_loopback(host_config: &mut HostConfig) {
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

pub(super) async fn start_container(
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

pub(super) async fn remove_instance_containers(instance: &str) {
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

pub(super) struct DockerServer {
    /// `Option` only so that `Drop` can hand the container to the Docker runtime.
    pub(super) container: Option<Arc<ContainerAsync<GenericImage>>>,
    pub(super) stop_signal: Signal,
    pub(super) _reaper: Reaper,
}

impl DockerServer {
    pub(super) fn container(&self) -> Result<Arc<ContainerAsync<GenericImage>>> {
        self.container
            .clone()
            .ok_or_else(|| anyhow!("container already dropped"))
    }

    pub(super) async fn stop(&self) -> Result<()> {
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
                // sleep: the poll interval of this wait with a deadline (a container stopping)
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(())
        })
        .await
    }

    pub(super) async fn start(&self) -> Result<()> {
        let container = self.container()?;
        on_docker_runtime(async move { Ok(container.start().await?) }).await
    }

    pub(super) async fn ensure_running(&self) -> Result<()> {
        let container = self.container()?;
        let running = on_docker_runtime(async move { Ok(container.is_running().await?) }).await?;
        if running {
            Ok(())
        } else {
            bail!("container exited; its log:\n{}", self.logs().await)
        }
    }

    pub(super) async fn logs(&self) -> String {
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
