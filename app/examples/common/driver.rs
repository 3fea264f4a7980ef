//! What every benchmark driver does with the ddms binary before it measures anything: run it
//! with none of the caller's `DDMS_*` settings (the driver sets its own), create an API token,
//! pick a free port, keep its log.

use std::path::Path;

use anyhow::{ensure, Result};

#[path = "../../tests/support/ports.rs"]
pub mod ports;
pub use ports::free_port;

/// `ddms` run in `dir`, without the `DDMS_*` variables of the shell that started the driver.
/// A relative `--ddms target/release/ddms` means the caller's directory, not `dir`; a bare
/// name is looked up in `PATH`.
pub fn ddms_command(ddms: impl AsRef<Path>, dir: &Path) -> tokio::process::Command {
    let ddms = ddms.as_ref();
    let program = if ddms.components().count() > 1 {
        std::path::absolute(ddms).unwrap_or_else(|_| ddms.to_path_buf())
    } else {
        ddms.to_path_buf()
    };
    let mut cmd = tokio::process::Command::new(program);
    for (key, _) in std::env::vars() {
        if key.starts_with("DDMS_") {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(dir);
    cmd
}

/// Runs `ddms token create` with `cmd`'s environment; the token's secret.
pub async fn create_token(
    mut cmd: tokio::process::Command,
    name: &str,
    role: &str,
) -> Result<String> {
    let out = cmd
        .args(["token", "create", "--name", name, "--role", role])
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "token create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// Where a driver keeps the log (stdout) of the `ddms` it runs: beside its JSON report `out`,
/// named `<report stem>-<label>.ddms.log`, so a run that fails (a 500 from a query, a panic)
/// can be read afterwards instead of vanishing with the temporary directory.
pub fn log_file(out: &str, label: &str) -> Result<(std::path::PathBuf, std::fs::File)> {
    let out = Path::new(out);
    let dir = out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let stem = out
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bench".into());
    let path = dir.join(format!("{stem}-{label}.ddms.log"));
    let file = std::fs::File::create(&path)?;
    println!("ddms' log: {}", path.display());
    Ok((path, file))
}

/// Waits until `ddms` at `base` answers `/ready` with 200, for at most `within`.
pub async fn wait_ready(
    client: &reqwest::Client,
    base: &str,
    within: std::time::Duration,
) -> Result<()> {
    let deadline = std::time::Instant::now() + within;
    while client
        .get(format!("{base}/ready"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
        != 200
    {
        ensure!(
            std::time::Instant::now() < deadline,
            "ddms did not become ready"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(())
}

/// A `ddms serve` started by a driver, ready, with an admin API token.
// Each driver is its own crate and reads only the fields it needs.
#[allow(dead_code)]
pub struct Served {
    pub child: tokio::process::Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    pub addr: std::net::SocketAddr,
    pub token: String,
    /// A client for the API (60 s timeout).
    pub client: reqwest::Client,
}

/// The start every driver makes: with exactly `env` as its `DDMS_*` settings, in `dir`, creates
/// an admin token (`ddms token create`), then runs `ddms serve` on a free loopback port and
/// waits until `/ready` answers 200 (at most `ready_within`). Its log goes to `log` (see
/// [`log_file`]). The child dies with the handle.
pub async fn serve(
    ddms: impl AsRef<Path>,
    dir: &Path,
    env: &[(String, String)],
    log: std::fs::File,
    ready_within: std::time::Duration,
) -> Result<Served> {
    let command = || {
        let mut cmd = ddms_command(ddms.as_ref(), dir);
        cmd.envs(env.iter().map(|(key, value)| (key, value)));
        cmd
    };
    let token = create_token(command(), "bench", "admin").await?;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let child = command()
        .args(["serve", "--listen", &addr.to_string()])
        .stdout(log)
        .kill_on_drop(true)
        .spawn()?;
    let base = format!("http://{addr}");
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()?;
    wait_ready(&client, &base, ready_within).await?;
    Ok(Served {
        child,
        base,
        addr,
        token,
        client,
    })
}
