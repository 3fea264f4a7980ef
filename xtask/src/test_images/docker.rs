//! The docker CLI as the image builder uses it: reach the daemon, read an image's id and
//! labels, build from a directory of `ops/test-images`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use super::{find_program, output_tail, BASE_LABEL, DIGEST_LABEL};

/// The docker CLI, checked to reach a daemon.
pub(super) struct Docker {
    /// Whether `docker build` has BuildKit (the buildx plugin); without it the legacy builder
    /// is asked for explicitly, which also works when `DOCKER_BUILDKIT=1` is set.
    buildx: bool,
}

impl Docker {
    pub(super) fn connect(sh: &Shell) -> Result<Self> {
        if find_program("docker", &[]).is_none() {
            bail!(
                "`docker` is not on PATH: the local test images need Docker \
                 (Debian: `apt-get install docker.io`)"
            );
        }
        let format = "{{.Server.Version}} {{.Server.APIVersion}} {{.Client.APIVersion}}";
        let output = cmd!(sh, "docker version --format {format}")
            .quiet()
            .ignore_status()
            .output()?;
        if !output.status.success() {
            bail!(
                "cannot reach the Docker daemon (is it running, and may this user use it?):\n{}",
                output_tail(&output, 10)
            );
        }
        let version = String::from_utf8_lossy(&output.stdout);
        let mut words = version.split_whitespace();
        let (server, api, client_api) = (words.next(), words.next(), words.next());
        println!(
            "images: docker engine {} (API {}; CLI speaking {})",
            server.unwrap_or("?"),
            api.unwrap_or("?"),
            client_api.unwrap_or("?")
        );
        let buildx = cmd!(sh, "docker buildx version")
            .quiet()
            .ignore_status()
            .output()
            .is_ok_and(|out| out.status.success());
        Ok(Self { buildx })
    }

    /// `(id, value of label)` of a local image, or `None` if there is no such image.
    fn inspect(&self, sh: &Shell, image: &str, label: &str) -> Result<Option<(String, String)>> {
        let format = format!("{{{{.Id}}}} {{{{index .Config.Labels \"{label}\"}}}}");
        let output = cmd!(sh, "docker image inspect --format {format} {image}")
            .quiet()
            .ignore_status()
            .output()?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            if stderr.contains("No such image") || stderr.contains("not found") {
                return Ok(None);
            }
            bail!(
                "docker image inspect {image} failed:\n{}",
                output_tail(&output, 10)
            );
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let mut words = stdout.split_whitespace();
        let id = words.next().unwrap_or_default().to_owned();
        // Absent labels print as "<no value>" (or nothing).
        let value = words
            .next()
            .filter(|v| !v.starts_with('<'))
            .unwrap_or_default()
            .to_owned();
        Ok(Some((id, value)))
    }

    pub(super) fn image_id(&self, sh: &Shell, image: &str) -> Result<Option<String>> {
        Ok(self.inspect(sh, image, DIGEST_LABEL)?.map(|(id, _)| id))
    }

    pub(super) fn label(&self, sh: &Shell, image: &str, label: &str) -> Result<Option<String>> {
        Ok(self
            .inspect(sh, image, label)?
            .map(|(_, value)| value)
            .filter(|value| !value.is_empty()))
    }

    pub(super) fn build(
        &self,
        sh: &Shell,
        image: &str,
        context: &Path,
        base: &str,
        digest: &str,
        base_id: &str,
    ) -> Result<()> {
        let digest_label = format!("{DIGEST_LABEL}={digest}");
        let base_label = format!("{BASE_LABEL}={base_id}");
        let base_arg = format!("BASE_IMAGE={base}");
        let dockerfile = context.join("Dockerfile");
        let mut build = cmd!(
            sh,
            "docker build --tag {image} --label {digest_label} --label {base_label}
                --build-arg {base_arg} --file {dockerfile} {context}"
        );
        if !self.buildx {
            build = build.env("DOCKER_BUILDKIT", "0");
        }
        build.run().with_context(|| format!("building {image}"))
    }
}
