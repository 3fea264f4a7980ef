//! The base test image: a `debootstrap --variant=minbase` Debian root file system from the
//! mirrors this machine's apt uses, slimmed down and imported with `docker import`.

use std::{
    env,
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{anyhow, bail, Context, Result};
use xshell::{cmd, Shell};

use super::{
    find_program, output_tail, read, secs, BASE_FILES, DEFAULT_MIRROR, DEFAULT_SECURITY_MIRROR,
    DIGEST_LABEL, MIRROR_ENV, SECURITY_MIRROR_ENV, SLIM_DIRS, SUITE,
};
use crate::setup::Privilege;

/// Debian mirrors used for the base image.
pub(super) struct Mirrors {
    pub(super) main: String,
    security: String,
}

impl Mirrors {
    /// The mirrors this machine's apt is configured with (so the image fetches from where the
    /// host can), unless overridden by `DDMS_DEBIAN_MIRROR` / `DDMS_DEBIAN_SECURITY_MIRROR`.
    pub(super) fn detect(sh: &Shell) -> Self {
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

    pub(super) fn sources_list(&self) -> String {
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
pub(super) fn base_apt_conf(sh: &Shell, dir: &Path) -> Result<String> {
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
pub(super) struct BaseRecipe<'a> {
    pub(super) dir: &'a Path,
    pub(super) mirror: &'a str,
    pub(super) sources_list: &'a str,
    pub(super) apt_conf: &'a str,
    pub(super) digest: &'a str,
    pub(super) image: &'a str,
}

/// debootstrap → slim down → `docker import`. Returns the time debootstrap took.
pub(super) fn build_base(sh: &Shell, recipe: &BaseRecipe<'_>) -> Result<Duration> {
    let root = Privileged::detect()?;
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
    fn detect() -> Result<Self> {
        match Privilege::detect() {
            Privilege::Root => Ok(Self { sudo: false }),
            Privilege::PasswordlessSudo => Ok(Self { sudo: true }),
            Privilege::User => {
                bail!("debootstrap needs root: run as root, or as a user with password-less sudo")
            }
        }
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
}
