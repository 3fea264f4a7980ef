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

use std::{
    env,
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{anyhow, bail, Context, Result};
use xshell::{cmd, Shell};

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
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
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

/// The docker CLI, checked to reach a daemon.
struct Docker {
    /// Whether `docker build` has BuildKit (the buildx plugin); without it the legacy builder
    /// is asked for explicitly, which also works when `DOCKER_BUILDKIT=1` is set.
    buildx: bool,
}

impl Docker {
    fn connect(sh: &Shell) -> Result<Self> {
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

    fn image_id(&self, sh: &Shell, image: &str) -> Result<Option<String>> {
        Ok(self.inspect(sh, image, DIGEST_LABEL)?.map(|(id, _)| id))
    }

    fn label(&self, sh: &Shell, image: &str, label: &str) -> Result<Option<String>> {
        Ok(self
            .inspect(sh, image, label)?
            .map(|(_, value)| value)
            .filter(|value| !value.is_empty()))
    }

    fn build(
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

/// Debian mirrors used for the base image.
struct Mirrors {
    main: String,
    security: String,
}

impl Mirrors {
    /// The mirrors this machine's apt is configured with (so the image fetches from where the
    /// host can), unless overridden by `DDMS_DEBIAN_MIRROR` / `DDMS_DEBIAN_SECURITY_MIRROR`.
    fn detect(sh: &Shell) -> Self {
        let sources = host_apt_sources();
        let find = |suite: &str| {
            sources
                .iter()
                .find(|(_, suites)| suites.iter().any(|s| s == suite))
                .map(|(uri, _)| uri.trim_end_matches('/').to_owned())
        };
        let main = sh
            .var(MIRROR_ENV)
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| find(SUITE))
            .unwrap_or_else(|| DEFAULT_MIRROR.to_owned());
        let security = sh
            .var(SECURITY_MIRROR_ENV)
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| find(&format!("{SUITE}-security")))
            .unwrap_or_else(|| DEFAULT_SECURITY_MIRROR.to_owned());
        Self { main, security }
    }

    fn sources_list(&self) -> String {
        let Self { main, security } = self;
        format!(
            "deb {main} {SUITE} main\n\
             deb {main} {SUITE}-updates main\n\
             deb {security} {SUITE}-security main\n"
        )
    }
}

/// `(uri, suites)` of the host's enabled `deb` sources, in both the one-line
/// (`sources.list`, `*.list`) and the deb822 (`*.sources`) formats.
fn host_apt_sources() -> Vec<(String, Vec<String>)> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    let mut sources = Vec::new();
    for file in files {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        match file.extension().and_then(OsStr::to_str) {
            Some("sources") => sources.extend(parse_deb822_sources(&text)),
            _ if file.file_name() == Some(OsStr::new("sources.list"))
                || file.extension() == Some(OsStr::new("list")) =>
            {
                sources.extend(parse_one_line_sources(&text));
            }
            _ => {}
        }
    }
    sources
}

fn parse_one_line_sources(text: &str) -> Vec<(String, Vec<String>)> {
    let mut sources = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let mut words = line.split_whitespace().peekable();
        if words.next() != Some("deb") {
            continue;
        }
        // Skip options: `[arch=amd64 signed-by=...]`.
        if words.peek().is_some_and(|w| w.starts_with('[')) {
            for word in words.by_ref() {
                if word.ends_with(']') {
                    break;
                }
            }
        }
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            sources.push((uri.to_owned(), vec![suite.to_owned()]));
        }
    }
    sources
}

fn parse_deb822_sources(text: &str) -> Vec<(String, Vec<String>)> {
    let mut sources = Vec::new();
    for stanza in text.split("\n\n") {
        let (mut types, mut uris, mut suites, mut enabled) = ("", "", "", "yes");
        for line in stanza.lines().filter(|l| !l.starts_with('#')) {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match key.trim().to_ascii_lowercase().as_str() {
                "types" => types = value,
                "uris" => uris = value,
                "suites" => suites = value,
                "enabled" => enabled = value,
                _ => {}
            }
        }
        if enabled != "no" && types.split_whitespace().any(|t| t == "deb") {
            let suites: Vec<String> = suites.split_whitespace().map(str::to_owned).collect();
            for uri in uris.split_whitespace() {
                sources.push((uri.to_owned(), suites.clone()));
            }
        }
    }
    sources
}

/// `ops/test-images/base/apt-slim.conf`, plus the host's `Acquire::Check-Valid-Until "false"`
/// when it has one: a mirror pinned to a snapshot serves Release files whose validity has
/// expired, and the host's setting says this machine's mirror may be such a one.
fn base_apt_conf(sh: &Shell, dir: &Path) -> Result<String> {
    let mut conf = String::from_utf8(read(&dir.join("base").join("apt-slim.conf"))?)
        .context("apt-slim.conf is not UTF-8")?;
    let host = cmd!(sh, "apt-config dump Acquire::Check-Valid-Until")
        .quiet()
        .ignore_status()
        .ignore_stderr()
        .read()
        .unwrap_or_default();
    if host.contains("Acquire::Check-Valid-Until \"false\"") {
        conf.push_str("// Copied from the build host's apt configuration.\n");
        conf.push_str("Acquire::Check-Valid-Until \"false\";\n");
    }
    Ok(conf)
}

/// What goes into the base image.
struct BaseRecipe<'a> {
    dir: &'a Path,
    mirror: &'a str,
    sources_list: &'a str,
    apt_conf: &'a str,
    digest: &'a str,
    image: &'a str,
}

/// debootstrap → slim down → `docker import`. Returns the time debootstrap took.
fn build_base(sh: &Shell, recipe: &BaseRecipe<'_>) -> Result<Duration> {
    let root = Privileged::detect(sh)?;
    let debootstrap = find_program("debootstrap", &["/usr/sbin", "/sbin"]).ok_or_else(|| {
        anyhow!(
            "`debootstrap` is not installed; it is needed to build {} \
             (Debian/Ubuntu: `apt-get install debootstrap`)",
            recipe.image
        )
    })?;

    let work = WorkDir::create(root.sudo)?;
    let rootfs = work.path.join("root");
    let files = work.path.join("files");
    fs::create_dir(&files).context("creating a work directory")?;

    // 1. debootstrap.
    let t = Instant::now();
    let output = root
        .cmd(sh, &debootstrap)
        .args(["--variant=minbase", "--components=main", SUITE])
        .arg(&rootfs)
        .arg(recipe.mirror)
        .quiet()
        .ignore_status()
        .output()?;
    let debootstrap_took = t.elapsed();
    if !output.status.success() {
        let log =
            fs::read_to_string(rootfs.join("debootstrap/debootstrap.log")).unwrap_or_default();
        let log_tail: Vec<&str> = log.lines().rev().take(20).collect();
        bail!(
            "debootstrap {SUITE} from {} failed ({}):\n{}\n--- debootstrap.log (end) ---\n{}",
            recipe.mirror,
            output.status,
            output_tail(&output, 20),
            log_tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    println!("images: debootstrap took {}", secs(debootstrap_took));

    // 2. Configuration files, installed root-owned.
    let mut installs: Vec<(PathBuf, &str, &str)> = Vec::new();
    for (file, dest, mode) in BASE_FILES {
        installs.push((recipe.dir.join("base").join(file), dest, mode));
    }
    // Generated files; sources.list replaces debootstrap's.
    let apt_conf = files.join("apt.conf");
    fs::write(&apt_conf, recipe.apt_conf).context("writing apt.conf")?;
    installs.push((apt_conf, "etc/apt/apt.conf.d/ddms-test-slim", "0644"));
    let sources = files.join("sources.list");
    fs::write(&sources, recipe.sources_list).context("writing sources.list")?;
    installs.push((sources, "etc/apt/sources.list", "0644"));
    for (src, dest, mode) in installs {
        let dest = rootfs.join(dest);
        root.cmd(sh, "install")
            .args(["-D", "-o", "0", "-g", "0", "-m", mode])
            .arg(&src)
            .arg(&dest)
            .quiet()
            .run()?;
    }

    // 3. Slim down: package caches and lists, docs, translations, logs, host identity.
    let find = |dir: &str, tests: &[&str]| -> Result<()> {
        let dir = rootfs.join(dir);
        if dir.is_dir() {
            root.cmd(sh, "find")
                .arg(&dir)
                .args(["-mindepth", "1"])
                .args(tests)
                .arg("-delete")
                .quiet()
                .run()?;
        }
        Ok(())
    };
    find("var/lib/apt/lists", &["-type", "f"])?;
    find("var/cache/apt", &["-type", "f"])?;
    find(
        "usr/share/doc",
        &["!", "-name", "copyright", "!", "-type", "d"],
    )?;
    find("usr/share/doc", &["-type", "d", "-empty"])?;
    for dir in SLIM_DIRS {
        find(dir, &[])?;
    }
    find(
        "var/log",
        &[
            "-type", "f", "(", "-name", "*.log", "-o", "-path", "*/apt/*", ")",
        ],
    )?;
    find("var/cache/debconf", &["-name", "*-old"])?;
    find("var/lib/dpkg", &["-maxdepth", "1", "-name", "*-old"])?;
    root.cmd(sh, "rm")
        .arg("-f")
        .arg(rootfs.join("etc/hostname"))
        .arg(rootfs.join("etc/resolv.conf"))
        .quiet()
        .run()?;

    // 4. Import.
    let tarball = work.path.join("rootfs.tar");
    root.cmd(sh, "tar")
        .args(["--numeric-owner", "--one-file-system", "-C"])
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .quiet()
        .run()
        .context("packing the root file system")?;
    let size = fs::metadata(&tarball).map(|m| m.len()).unwrap_or_default();
    println!("images: root file system is {} MiB", size / (1024 * 1024));
    let mut changes = Vec::new();
    for change in [
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        "ENV LANG=C.UTF-8".to_owned(),
        format!("LABEL {DIGEST_LABEL}={}", recipe.digest),
        "CMD [\"bash\"]".to_owned(),
    ] {
        changes.push("--change".to_owned());
        changes.push(change);
    }
    let message = format!("debootstrap --variant=minbase {SUITE} {}", recipe.mirror);
    let image = recipe.image;
    cmd!(
        sh,
        "docker import {changes...} --message {message} {tarball} {image}"
    )
    .quiet()
    .ignore_stdout()
    .run()
    .with_context(|| format!("importing {image}"))?;
    Ok(debootstrap_took)
}

/// Runs commands as root: directly when we are root, else through password-less `sudo`.
struct Privileged {
    sudo: bool,
}

impl Privileged {
    fn detect(sh: &Shell) -> Result<Self> {
        let uid = cmd!(sh, "id -u")
            .quiet()
            .read()
            .context("running `id -u`")?;
        if uid.trim() == "0" {
            return Ok(Self { sudo: false });
        }
        let sudo_ok = cmd!(sh, "sudo -n true")
            .quiet()
            .ignore_status()
            .ignore_stderr()
            .output()
            .is_ok_and(|out| out.status.success());
        if !sudo_ok {
            bail!("debootstrap needs root: run as root, or as a user with password-less sudo");
        }
        Ok(Self { sudo: true })
    }

    fn cmd<'a>(&self, sh: &'a Shell, program: impl AsRef<Path>) -> xshell::Cmd<'a> {
        if self.sudo {
            sh.cmd("sudo").arg("-n").arg(program.as_ref())
        } else {
            sh.cmd(program.as_ref())
        }
    }
}

/// A fresh directory under the system temp dir, removed (as root if need be) when dropped.
struct WorkDir {
    path: PathBuf,
    sudo: bool,
}

impl WorkDir {
    fn create(sudo: bool) -> Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let path =
            env::temp_dir().join(format!("ddms-test-base-{}-{nanos:09}", std::process::id()));
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path, sudo })
    }

    /// Mount points inside the work directory (debootstrap mounts /proc and /sys in the
    /// target and may leave them mounted if it fails), deepest first.
    fn mounts(&self) -> Vec<String> {
        let prefix = format!("{}/", self.path.display());
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut found: Vec<String> = mounts
            .lines()
            .filter_map(|line| line.split_whitespace().nth(1))
            .filter(|target| target.starts_with(&prefix))
            .map(str::to_owned)
            .collect();
        found.sort_by_key(|target| std::cmp::Reverse(target.len()));
        found
    }

    fn command(&self, program: &str) -> Command {
        if self.sudo {
            let mut command = Command::new("sudo");
            command.arg("-n").arg(program);
            command
        } else {
            Command::new(program)
        }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        for target in self.mounts() {
            let _ = self.command("umount").arg("--lazy").arg(&target).status();
        }
        if !self.mounts().is_empty() {
            eprintln!(
                "images: warning: left {} in place: something is still mounted inside it",
                self.path.display()
            );
            return;
        }
        // --one-file-system: never descend into anything mounted inside the directory.
        let removed = self
            .command("rm")
            .args(["-rf", "--one-file-system"])
            .arg(&self.path)
            .status()
            .is_ok_and(|status| status.success());
        if !removed {
            eprintln!("images: warning: could not remove {}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_deb822_sources() {
        let text = "Types: deb\n# comment\nURIs: http://deb.example/debian\n\
                    Suites: bookworm bookworm-updates\nComponents: main\n\n\
                    Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n\
                    Types: deb\nURIs: http://deb.example/debian-security\n\
                    Suites: bookworm-security\nEnabled: yes\n";
        let sources = parse_deb822_sources(text);
        assert_eq!(sources.len(), 2);
        assert_eq!(sources[0].0, "http://deb.example/debian");
        assert_eq!(sources[0].1, ["bookworm", "bookworm-updates"]);
        assert_eq!(sources[1].1, ["bookworm-security"]);
    }

    #[test]
    fn parses_one_line_sources() {
        let text = "# deb http://commented/debian bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://deb.example/debian bookworm main\n\
                    deb-src http://src.example/debian bookworm main\n\
                    deb http://sec.example/debian-security bookworm-security main\n";
        let sources = parse_one_line_sources(text);
        assert_eq!(
            sources,
            [
                (
                    "http://deb.example/debian".to_owned(),
                    vec!["bookworm".to_owned()]
                ),
                (
                    "http://sec.example/debian-security".to_owned(),
                    vec!["bookworm-security".to_owned()]
                ),
            ]
        );
    }

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
