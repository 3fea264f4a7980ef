//! Local stand-ins for the container images used by the integration tests.
//!
//! On machines that cannot pull from a registry, the integration tests use images built here
//! from Debian packages instead of the official `postgres:15` and `eclipse-mosquitto:2`:
//!
//! * `ddms-test/base:bookworm`: a `debootstrap --variant=minbase` Debian root file system,
//!   slimmed down and imported with `docker import`;
//! * `ddms-test/postgres:15` and `ddms-test/mosquitto:2`: `docker build` of
//!   `ops/test-images/{postgres,mosquitto}` on top of the base;
//! * `ddms-test/host:bookworm` (sshd, python3, nginx, tini) and `ddms-test/dbhost:bookworm`
//!   (the host plus PostgreSQL and Mosquitto): the hosts of the end-to-end tests
//!   (`xtask/tests/e2e`), which Ansible provisions over ssh.
//!
//! Every image carries a label with a digest of its inputs (for the derived images this
//! includes the id of the base image they were built on), so re-running the build only
//! rebuilds what changed. See `ops/test-images/README.md`.

mod base;
mod docker;

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Output,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use xshell::{cmd, Shell};

use base::{base_apt_conf, build_base, BaseRecipe, Mirrors};
use docker::Docker;

/// Image references the test harness should use, e.g. ("ddms-test/postgres", "15").
pub const POSTGRES_IMAGE: (&str, &str) = ("ddms-test/postgres", "15");
/// Image reference of the local stand-in for `eclipse-mosquitto:2`.
pub const MOSQUITTO_IMAGE: (&str, &str) = ("ddms-test/mosquitto", "2");
/// The Debian base both test images are built on.
pub const BASE_IMAGE: (&str, &str) = ("ddms-test/base", "bookworm");
/// A Debian "server" (sshd, python3, sudo, nginx, tini) for the ssh-driven end-to-end tests.
pub const HOST_IMAGE: (&str, &str) = ("ddms-test/host", "bookworm");
/// [`HOST_IMAGE`] with PostgreSQL 15 and Mosquitto preinstalled: the database host.
pub const DBHOST_IMAGE: (&str, &str) = ("ddms-test/dbhost", "bookworm");
/// [`HOST_IMAGE`] with systemd as PID 1: the host of the systemd service-manager tests.
pub const SYSTEMD_HOST_IMAGE: (&str, &str) = ("ddms-test/systemd-host", "bookworm");

/// Label holding the digest of an image's inputs.
const DIGEST_LABEL: &str = "org.ddms.test-images.input-digest";
/// Label recording the base image a derived image was built on (informational).
const BASE_LABEL: &str = "org.ddms.test-images.base-id";
/// Part of every digest: bump it when this file changes how images are made.
const RECIPE_VERSION: &str = "ddms-test-images/1";

/// Where the Dockerfiles and their files live, relative to the workspace root.
const IMAGES_DIR: &str = "ops/test-images";
const SUITE: &str = "bookworm";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
const DEFAULT_SECURITY_MIRROR: &str = "http://deb.debian.org/debian-security";
/// Environment variables that override the mirrors read from the host's apt configuration.
const MIRROR_ENV: &str = "DDMS_DEBIAN_MIRROR";
const SECURITY_MIRROR_ENV: &str = "DDMS_DEBIAN_SECURITY_MIRROR";

/// Files under `ops/test-images/base` installed as they are into the base root file system:
/// (file, destination in the root file system, mode). `apt-slim.conf` is installed too, with
/// an addition (see [`base_apt_conf`]), as is a generated `sources.list`.
const BASE_FILES: [(&str, &str, &str); 2] = [
    ("policy-rc.d", "usr/sbin/policy-rc.d", "0755"),
    (
        "dpkg-slim.cfg",
        "etc/dpkg/dpkg.cfg.d/ddms-test-slim",
        "0644",
    ),
];

/// Directories of the root file system emptied after debootstrap, matching `dpkg-slim.cfg`.
const SLIM_DIRS: [&str; 6] = [
    "usr/share/man",
    "usr/share/info",
    "usr/share/groff",
    "usr/share/lintian",
    "usr/share/linda",
    "usr/share/locale",
];

/// An image built with `docker build` from a directory of `ops/test-images`.
struct DerivedImage {
    image: (&'static str, &'static str),
    /// The image it is built on: [`BASE_IMAGE`], or one built earlier in [`DERIVED_IMAGES`].
    parent: (&'static str, &'static str),
    /// Directory under `ops/test-images`; it is the build context.
    dir: &'static str,
    /// Every file of the build context, all of which feed the digest.
    files: &'static [&'static str],
}

/// In build order: a parent comes before the images built on it.
const DERIVED_IMAGES: [DerivedImage; 5] = [
    DerivedImage {
        image: POSTGRES_IMAGE,
        parent: BASE_IMAGE,
        dir: "postgres",
        files: &["Dockerfile", "docker-entrypoint.sh"],
    },
    DerivedImage {
        image: MOSQUITTO_IMAGE,
        parent: BASE_IMAGE,
        dir: "mosquitto",
        files: &["Dockerfile", "mosquitto.conf"],
    },
    DerivedImage {
        image: HOST_IMAGE,
        parent: BASE_IMAGE,
        dir: "host",
        files: &["Dockerfile", "docker-entrypoint.sh"],
    },
    DerivedImage {
        image: DBHOST_IMAGE,
        parent: HOST_IMAGE,
        dir: "dbhost",
        files: &["Dockerfile"],
    },
    DerivedImage {
        image: SYSTEMD_HOST_IMAGE,
        parent: HOST_IMAGE,
        dir: "systemd-host",
        files: &["Dockerfile", "ddms-test-ssh-keys.service"],
    },
];

/// Builds the local test images (debootstrap base → postgres, mosquitto). Skips images that are
/// already present with the same input digest unless `force`.
pub fn build_local_images(sh: &Shell, force: bool) -> Result<()> {
    let started = Instant::now();
    let docker = Docker::connect(sh)?;
    let dir = images_dir(sh)?;
    let mut report = Vec::new();

    // Base image.
    let mirrors = Mirrors::detect(sh);
    let apt_conf = base_apt_conf(sh, &dir)?;
    let sources_list = mirrors.sources_list();
    let mut inputs = Inputs::new("base");
    inputs.add(
        "debootstrap",
        format!("--variant=minbase {SUITE} {}", mirrors.main),
    );
    inputs.add("sources.list", &sources_list);
    inputs.add("apt.conf", &apt_conf);
    for (file, dest, mode) in BASE_FILES {
        inputs.add(
            &format!("{file} -> {dest} ({mode})"),
            read(&dir.join("base").join(file))?,
        );
    }
    let digest = inputs.digest(sh)?;
    let base_ref = image_ref(BASE_IMAGE);
    let mut rebuilt_base = false;
    if !force && docker.label(sh, &base_ref, DIGEST_LABEL)?.as_deref() == Some(digest.as_str()) {
        report.push(Step::skipped(&base_ref, &digest));
    } else {
        println!(
            "images: building {base_ref} (debootstrap {SUITE} from {})",
            mirrors.main
        );
        let t = Instant::now();
        let debootstrap = build_base(
            sh,
            &BaseRecipe {
                dir: &dir,
                mirror: &mirrors.main,
                sources_list: &sources_list,
                apt_conf: &apt_conf,
                digest: &digest,
                image: &base_ref,
            },
        )?;
        report.push(Step::built(
            &base_ref,
            &digest,
            t.elapsed(),
            format!("debootstrap {}", secs(debootstrap)),
        ));
        rebuilt_base = true;
    }
    let base_id = docker
        .image_id(sh, &base_ref)?
        .ok_or_else(|| anyhow!("{base_ref} is missing right after it was built"))?;

    // Images built on the base.
    let mut rebuilt_any = rebuilt_base;
    for image in &DERIVED_IMAGES {
        let parent_id = if image.parent == BASE_IMAGE {
            base_id.clone()
        } else {
            docker
                .image_id(sh, &image_ref(image.parent))?
                .ok_or_else(|| {
                    anyhow!(
                        "{} is missing; it is built before {}",
                        image_ref(image.parent),
                        image_ref(image.image)
                    )
                })?
        };
        let parent = (image_ref(image.parent), parent_id);
        rebuilt_any |= build_derived(sh, &docker, &dir, image, &parent, force, &mut report)?;
    }

    if rebuilt_any {
        // Images replaced by this run are left untagged; remove the ones nothing uses.
        let filter = format!("label={DIGEST_LABEL}");
        if let Err(err) = cmd!(sh, "docker image prune --force --filter {filter}")
            .quiet()
            .ignore_stdout()
            .run()
        {
            eprintln!("images: warning: could not prune replaced images: {err}");
        }
    }

    println!("images: done in {}", secs(started.elapsed()));
    for step in &report {
        println!("  {step}");
    }
    Ok(())
}

/// Builds only the end-to-end hosts (`ddms-test/host`, `ddms-test/dbhost`), on an official
/// Debian image instead of the debootstrapped base: for machines that pull the official service
/// images (`DDMS_TEST_IMAGES=official`), which have no stand-in for these.
pub fn build_host_images_on(sh: &Shell, base: &str, force: bool) -> Result<()> {
    let started = Instant::now();
    let docker = Docker::connect(sh)?;
    let dir = images_dir(sh)?;
    if docker.image_id(sh, base)?.is_none() {
        cmd!(sh, "docker pull {base}")
            .run()
            .with_context(|| format!("pulling {base}"))?;
    }
    let base_id = docker
        .image_id(sh, base)?
        .ok_or_else(|| anyhow!("{base} is missing right after it was pulled"))?;
    let mut report = Vec::new();
    for image in DERIVED_IMAGES
        .iter()
        .filter(|i| [HOST_IMAGE, DBHOST_IMAGE, SYSTEMD_HOST_IMAGE].contains(&i.image))
    {
        // The host image goes on `base`; the others on the host image built just before.
        let parent = if image.parent == BASE_IMAGE {
            (base.to_owned(), base_id.clone())
        } else {
            let reference = image_ref(image.parent);
            let id = docker
                .image_id(sh, &reference)?
                .ok_or_else(|| anyhow!("{reference} is missing; it is built first"))?;
            (reference, id)
        };
        build_derived(sh, &docker, &dir, image, &parent, force, &mut report)?;
    }
    println!("images: done in {}", secs(started.elapsed()));
    for step in &report {
        println!("  {step}");
    }
    Ok(())
}

/// Builds one image of `ops/test-images` on `parent` (reference, id) unless its input digest
/// label is up to date; whether it was built.
fn build_derived(
    sh: &Shell,
    docker: &Docker,
    dir: &Path,
    image: &DerivedImage,
    (parent_ref, parent_id): &(String, String),
    force: bool,
    report: &mut Vec<Step>,
) -> Result<bool> {
    let context = dir.join(image.dir);
    let reference = image_ref(image.image);
    // The parent's id is an input: a rebuilt parent rebuilds everything built on it.
    let mut inputs = Inputs::new(image.dir);
    inputs.add("base image id", parent_id);
    for file in image.files {
        inputs.add(file, read(&context.join(file))?);
    }
    let digest = inputs.digest(sh)?;
    if !force && docker.label(sh, &reference, DIGEST_LABEL)?.as_deref() == Some(digest.as_str()) {
        report.push(Step::skipped(&reference, &digest));
        return Ok(false);
    }
    println!("images: building {reference} from {}", context.display());
    let t = Instant::now();
    docker.build(sh, &reference, &context, parent_ref, &digest, parent_id)?;
    report.push(Step::built(&reference, &digest, t.elapsed(), String::new()));
    Ok(true)
}

/// `name:tag`.
fn image_ref((name, tag): (&str, &str)) -> String {
    format!("{name}:{tag}")
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Finds `ops/test-images`, from the shell's directory or, failing that, from this crate's.
fn images_dir(sh: &Shell) -> Result<PathBuf> {
    let cwd = sh.current_dir();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    cwd.ancestors()
        .chain(manifest.ancestors())
        .map(|root| root.join(IMAGES_DIR))
        .find(|dir| dir.join("postgres").join("Dockerfile").is_file())
        .ok_or_else(|| {
            anyhow!(
                "cannot find {IMAGES_DIR}/ above {} or {}",
                cwd.display(),
                manifest.display()
            )
        })
}

/// Looks a program up in `PATH`, then in `extra` directories.
fn find_program(name: &str, extra: &[&str]) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Last `n` lines of a command's stdout and stderr, for error messages.
fn output_tail(output: &Output, n: usize) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    crate::last_lines(&text, n)
}

/// What happened to one image, for the final summary.
struct Step {
    image: String,
    digest: String,
    /// `None` when the image was up to date.
    built_in: Option<Duration>,
    detail: String,
}

impl Step {
    fn skipped(image: &str, digest: &str) -> Self {
        Self {
            image: image.to_owned(),
            digest: digest.to_owned(),
            built_in: None,
            detail: String::new(),
        }
    }

    fn built(image: &str, digest: &str, took: Duration, detail: String) -> Self {
        Self {
            image: image.to_owned(),
            digest: digest.to_owned(),
            built_in: Some(took),
            detail,
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let digest = self.digest.get(..12).unwrap_or(&self.digest);
        match self.built_in {
            None => write!(
                f,
                "{:<32} skipped (up to date, inputs {digest})",
                self.image
            ),
            Some(took) if self.detail.is_empty() => {
                write!(
                    f,
                    "{:<32} built in {} (inputs {digest})",
                    self.image,
                    secs(took)
                )
            }
            Some(took) => write!(
                f,
                "{:<32} built in {}, {} (inputs {digest})",
                self.image,
                secs(took),
                self.detail
            ),
        }
    }
}

/// Named inputs of an image, hashed into the digest stored in its label.
struct Inputs(Vec<u8>);

impl Inputs {
    fn new(image: &str) -> Self {
        let mut inputs = Self(Vec::new());
        inputs.add("recipe", RECIPE_VERSION);
        inputs.add("image", image);
        inputs
    }

    fn add(&mut self, name: &str, value: impl AsRef<[u8]>) {
        let value = value.as_ref();
        // Length-prefixed, so that no two different lists of inputs hash the same bytes.
        self.0
            .extend_from_slice(format!("{}:{name}\n{}:", name.len(), value.len()).as_bytes());
        self.0.extend_from_slice(value);
        self.0.push(b'\n');
    }

    /// SHA-256 of the inputs, by coreutils' `sha256sum`.
    fn digest(&self, sh: &Shell) -> Result<String> {
        let out = cmd!(sh, "sha256sum")
            .stdin(&self.0)
            .quiet()
            .read()
            .context("running sha256sum (coreutils)")?;
        let digest = out.split_whitespace().next().unwrap_or_default();
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("unexpected sha256sum output: {out:?}");
        }
        Ok(digest.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_length_prefixed() {
        let mut a = Inputs::new("x");
        a.add("ab", "c");
        let mut b = Inputs::new("x");
        b.add("a", "bc");
        assert_ne!(a.0, b.0);
    }

    #[test]
    fn image_refs() {
        assert_eq!(image_ref(POSTGRES_IMAGE), "ddms-test/postgres:15");
        assert_eq!(image_ref(MOSQUITTO_IMAGE), "ddms-test/mosquitto:2");
        assert_eq!(image_ref(BASE_IMAGE), "ddms-test/base:bookworm");
        assert_eq!(image_ref(HOST_IMAGE), "ddms-test/host:bookworm");
        assert_eq!(image_ref(DBHOST_IMAGE), "ddms-test/dbhost:bookworm");
        assert_eq!(
            image_ref(SYSTEMD_HOST_IMAGE),
            "ddms-test/systemd-host:bookworm"
        );
    }
}
