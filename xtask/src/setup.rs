//! What README command 2 needs on the machine besides Rust, looked for and installed in one
//! place: `cargo xtask test` and `ci` start here, `cargo xtask setup` installs on its own, and
//! `.ci/run` only calls `cargo xtask ci`, so CI and a developer's machine cannot drift apart.
//!
//! Each [`Prerequisite`] says how to tell it is there ([`Probe`]) and what installs it
//! ([`Install`]): a Debian package (apt), a pinned Python package (pip), or a rustup component.
//! `docs/testing.md`'s prerequisites table lists the same; a test keeps the two together.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

/// One thing the suite needs, and what installs it.
pub struct Prerequisite {
    /// What needs it, for the report.
    pub needed_by: &'static str,
    pub present: Probe,
    pub install: Install,
}

/// How to tell a prerequisite is present, without installing anything.
#[derive(Clone, Copy, Debug)]
pub enum Probe {
    /// A program on `PATH`.
    Program(&'static str),
    /// A file at this path (server binaries outside a user's `PATH`).
    File(&'static str),
    /// This command exits 0.
    Succeeds(&'static [&'static str]),
    /// This command's output, trimmed, is exactly this line (a pinned version).
    Prints(&'static [&'static str], &'static str),
    /// `python3` imports this module.
    PythonModule(&'static str),
    /// This Python distribution is installed at exactly this version.
    PythonDist(&'static str, &'static str),
    AnyOf(&'static [Probe]),
    AllOf(&'static [Probe]),
}

/// What installs a prerequisite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Install {
    /// A Debian package (needs root, or sudo).
    Apt(&'static str),
    /// A pip requirement, pinned.
    Pip(&'static str),
    /// A rustup component of the active toolchain.
    Rustup(&'static str),
}

impl Install {
    /// The package, requirement or component, as docs/testing.md names it.
    pub fn name(self) -> &'static str {
        match self {
            Install::Apt(name) | Install::Pip(name) | Install::Rustup(name) => name,
        }
    }
}

const fn apt(needed_by: &'static str, present: Probe, package: &'static str) -> Prerequisite {
    Prerequisite {
        needed_by,
        present,
        install: Install::Apt(package),
    }
}

const fn pip(needed_by: &'static str, present: Probe, requirement: &'static str) -> Prerequisite {
    Prerequisite {
        needed_by,
        present,
        install: Install::Pip(requirement),
    }
}

use Probe::{AllOf, AnyOf, File, Prints, Program, PythonDist, PythonModule, Succeeds};

/// Everything, in install order: apt before pip (pip comes from apt).
pub const PREREQUISITES: &[Prerequisite] = &[
    apt(
        "cargo xtask images (test images without a registry)",
        AnyOf(&[Program("debootstrap"), File("/usr/sbin/debootstrap")]),
        "debootstrap",
    ),
    apt(
        "the MQTT tests' external broker, schema-compat",
        File("/usr/sbin/mosquitto"),
        "mosquitto",
    ),
    apt(
        "the MQTT tests (mosquitto_pub)",
        Program("mosquitto_pub"),
        "mosquitto-clients",
    ),
    apt(
        "integration tests without Docker, schema-compat, the ddms role's database task",
        File("/usr/lib/postgresql/15/bin/initdb"),
        "postgresql-15",
    ),
    apt(
        "testcontainers, the end-to-end tests (starting the engine is the machine's)",
        Program("docker"),
        "docker.io",
    ),
    apt(
        "the ops checks (nginx -t, the shipped site run for real)",
        File("/usr/sbin/nginx"),
        "nginx-light",
    ),
    apt("the release tests", Program("openssl"), "openssl"),
    apt(
        "tidy: the systemd units verify",
        Program("systemd-analyze"),
        "systemd",
    ),
    apt(
        "tidy: every .nix file parses",
        Program("nix-instantiate"),
        "nix-bin",
    ),
    apt("the Python packages below", Program("python3"), "python3"),
    apt(
        "the Python packages below",
        Succeeds(&["python3", "-m", "pip", "--version"]),
        "python3-pip",
    ),
    apt(
        "the end-to-end tests (hosts over ssh)",
        Program("ssh"),
        "openssh-client",
    ),
    apt("the end-to-end tests", Program("curl"), "curl"),
    apt(
        "the dashboard's browser tests",
        Program("chromium"),
        "chromium",
    ),
    apt(
        "the dashboard's browser tests",
        Program("chromedriver"),
        "chromium-driver",
    ),
    apt(
        "the container image test",
        AnyOf(&[
            Program("docker-compose"),
            Succeeds(&["docker", "compose", "version"]),
        ]),
        "docker-compose",
    ),
    apt(
        "the container image test (is the binary static?)",
        Program("file"),
        "file",
    ),
    apt(
        "the container image test (readelf)",
        Program("readelf"),
        "binutils",
    ),
    apt(
        "the container image test (the CA bundle it ships)",
        File("/etc/ssl/certs/ca-certificates.crt"),
        "ca-certificates",
    ),
    apt(
        "the release signatures checked by an independent implementation",
        Program("minisign"),
        "minisign",
    ),
    pip(
        "the Modbus tests' independent device",
        PythonModule("pymodbus"),
        "pymodbus==3.16.1",
    ),
    pip(
        "the MQTT tests' independent publisher",
        PythonDist("paho-mqtt", "2.2.0"),
        "paho-mqtt==2.2.0",
    ),
    pip(
        "the S3 server of the backup tests",
        AllOf(&[Program("moto_server"), PythonDist("moto", "5.2.5")]),
        "moto[s3,server]==5.2.5",
    ),
    pip(
        "the e-mail channel tests' SMTP server",
        PythonDist("aiosmtpd", "1.4.6"),
        "aiosmtpd==1.4.6",
    ),
    pip(
        "the API fuzzed from its openapi.json",
        AllOf(&[
            Program("schemathesis"),
            PythonDist("schemathesis", "4.32.5"),
        ]),
        "schemathesis==4.32.5",
    ),
    pip(
        "ansible-playbook in the end-to-end tests and the ddms role's database task",
        PythonDist("ansible-core", "2.19.14"),
        "ansible-core==2.19.14",
    ),
    pip(
        "tidy: ansible-lint",
        PythonDist("ansible-lint", "26.10.1"),
        "ansible-lint==26.10.1",
    ),
    pip(
        "tidy: the GitHub workflows' security audit",
        Prints(&["zizmor", "--version"], "zizmor 1.33.1"),
        "zizmor==1.33.1",
    ),
    pip(
        "tidy: the release plan (cargo-dist's dist)",
        Prints(&["dist", "--version"], "cargo-dist 0.33.0"),
        "astral-dev-toolchain-cargo-dist==0.33.0",
    ),
    Prerequisite {
        needed_by: "cargo fmt --check",
        present: Succeeds(&["cargo", "fmt", "--version"]),
        install: Install::Rustup("rustfmt"),
    },
    Prerequisite {
        needed_by: "cargo clippy -D warnings",
        present: Succeeds(&["cargo", "clippy", "--version"]),
        install: Install::Rustup("clippy"),
    },
];

/// What `cargo xtask setup` and the start of `test` do about what is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Report it, with the commands that would install it; an error if anything is missing.
    Check,
    /// Install it (apt through sudo when not root, which may ask for a password).
    Install,
    /// `cargo xtask test`: install when that needs no question (root, or password-less sudo),
    /// else as [`Mode::Check`].
    Auto,
}

/// How apt can be run here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Privilege {
    Root,
    /// Not root; `sudo -n` works (password-less, e.g. a CI runner).
    PasswordlessSudo,
    /// Not root; sudo would ask, or is not there.
    User,
}

impl Privilege {
    pub fn detect() -> Self {
        let uid = Command::new("id").arg("-u").output().ok();
        if uid.is_some_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0") {
            return Privilege::Root;
        }
        if quiet(Command::new("sudo").args(["-n", "true"])) {
            Privilege::PasswordlessSudo
        } else {
            Privilege::User
        }
    }
}

/// Looks for every prerequisite and, as `mode` says, installs what is missing.
pub fn run(mode: Mode) -> Result<()> {
    let missing = missing();
    if missing.is_empty() {
        println!(
            "setup: nothing missing ({} prerequisites)",
            PREREQUISITES.len()
        );
        return Ok(());
    }
    println!("setup: {} missing:", missing.len());
    for p in &missing {
        println!("  {:<42} {}", p.install.name(), p.needed_by);
    }
    let privilege = Privilege::detect();
    let has_apt = Path::new("/usr/bin/apt-get").exists();
    let needs_apt = missing.iter().any(|p| matches!(p.install, Install::Apt(_)));
    let install = match mode {
        Mode::Check => false,
        Mode::Install => true,
        Mode::Auto => privilege != Privilege::User,
    };
    if !install || (needs_apt && !has_apt) {
        let commands = install_commands(&missing, privilege);
        if needs_apt && !has_apt {
            println!("setup: no apt-get here: install the Debian packages above by other means");
        }
        println!("setup: to install, run `cargo xtask setup`, or:");
        for command in &commands {
            println!("  {command}");
        }
        bail!(
            "{} prerequisites missing: {}",
            missing.len(),
            names(&missing)
        );
    }
    install_missing(&missing, privilege)?;
    let still = self::missing();
    if !still.is_empty() {
        bail!(
            "still missing after installing: {} (see the output above)",
            names(&still)
        );
    }
    println!("setup: installed {}; nothing missing now", names(&missing));
    Ok(())
}

fn names(list: &[&Prerequisite]) -> String {
    list.iter()
        .map(|p| p.install.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The prerequisites whose probe fails.
pub fn missing() -> Vec<&'static Prerequisite> {
    PREREQUISITES
        .iter()
        .filter(|p| !p.present.holds())
        .collect()
}

impl Probe {
    /// True when what it looks for is there.
    pub fn holds(&self) -> bool {
        match *self {
            Probe::Program(name) => on_path(name).is_some(),
            Probe::File(path) => Path::new(path).exists(),
            Probe::Succeeds(argv) => quiet(&mut command(argv)),
            Probe::Prints(argv, line) => command(argv)
                .stderr(Stdio::null())
                .output()
                .is_ok_and(|out| {
                    out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == line
                }),
            Probe::PythonModule(module) => quiet(Command::new("python3").args([
                "-c",
                "import importlib, sys; importlib.import_module(sys.argv[1])",
                module,
            ])),
            Probe::PythonDist(dist, version) => quiet(Command::new("python3").args([
                "-c",
                "import importlib.metadata as m, sys; sys.exit(m.version(sys.argv[1]) != sys.argv[2])",
                dist,
                version,
            ])),
            Probe::AnyOf(probes) => probes.iter().any(Probe::holds),
            Probe::AllOf(probes) => probes.iter().all(Probe::holds),
        }
    }
}

fn command(argv: &[&str]) -> Command {
    let mut command = Command::new(argv[0]);
    command.args(&argv[1..]);
    command
}

/// Runs with no output; true on exit status 0 (false when it cannot start).
fn quiet(command: &mut Command) -> bool {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn on_path(program: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| is_executable(path))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The missing prerequisites grouped by installer, in install order.
fn by_installer(
    missing: &[&Prerequisite],
) -> (Vec<&'static str>, Vec<&'static str>, Vec<&'static str>) {
    let (mut apt, mut pip, mut rustup) = (Vec::new(), Vec::new(), Vec::new());
    for p in missing {
        match p.install {
            Install::Apt(name) => apt.push(name),
            Install::Pip(name) => pip.push(name),
            Install::Rustup(name) => rustup.push(name),
        }
    }
    (apt, pip, rustup)
}

/// What a person would type to install `missing` (one line a command), for the report.
pub fn install_commands(missing: &[&Prerequisite], privilege: Privilege) -> Vec<String> {
    let (apt, pip, rustup) = by_installer(missing);
    let sudo = if privilege == Privilege::Root {
        ""
    } else {
        "sudo "
    };
    let mut commands = Vec::new();
    if !apt.is_empty() {
        commands.push(format!("{sudo}apt-get update"));
        if apt.contains(&"postgresql-15") {
            commands.push(format!(
                "# Ubuntu without postgresql-15: {sudo}apt-get install postgresql-common && \
                 {sudo}{PGDG_SCRIPT} -y"
            ));
        }
        commands.push(format!(
            "{sudo}apt-get install --no-install-recommends {}",
            apt.join(" ")
        ));
    }
    if !pip.is_empty() {
        let quoted: Vec<String> = pip.iter().map(|r| format!("'{r}'")).collect();
        commands.push(format!(
            "python3 -m pip install {}   # Debian 12+: add --break-system-packages",
            quoted.join(" ")
        ));
    }
    for component in rustup {
        commands.push(format!("rustup component add {component}"));
    }
    commands
}

/// postgresql-common's script that adds PGDG's repository (Ubuntu has no PostgreSQL 15).
const PGDG_SCRIPT: &str = "/usr/share/postgresql-common/pgdg/apt.postgresql.org.sh";

fn install_missing(missing: &[&Prerequisite], privilege: Privilege) -> Result<()> {
    let (apt, pip, rustup) = by_installer(missing);
    if !apt.is_empty() {
        let apt_get = |args: &[&str]| -> Result<()> {
            let mut command = match privilege {
                Privilege::Root => Command::new("apt-get"),
                _ => {
                    let mut sudo = Command::new("sudo");
                    sudo.args(["--preserve-env=DEBIAN_FRONTEND", "apt-get"]);
                    sudo
                }
            };
            run_checked(command.env("DEBIAN_FRONTEND", "noninteractive").args(args))
        };
        println!("setup: apt-get install {}", apt.join(" "));
        apt_get(&["update", "-qq"])?;
        if apt.contains(&"postgresql-15")
            && !quiet(Command::new("apt-cache").args(["show", "postgresql-15"]))
        {
            println!("setup: no postgresql-15 in the sources: adding PGDG's repository");
            apt_get(&[
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "postgresql-common",
            ])?;
            let mut script = match privilege {
                Privilege::Root => Command::new(PGDG_SCRIPT),
                _ => {
                    let mut sudo = Command::new("sudo");
                    sudo.arg(PGDG_SCRIPT);
                    sudo
                }
            };
            run_checked(script.arg("-y"))?;
        }
        let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
        args.extend(&apt);
        apt_get(&args)?;
    }
    if !pip.is_empty() {
        println!("setup: pip install {}", pip.join(" "));
        let mut args = vec!["-m", "pip", "install", "--quiet"];
        args.extend(&pip);
        // Debian 12 and later refuse to install into the system's Python (PEP 668) unless told
        // to; a machine whose only job is tests is told.
        if !quiet(Command::new("python3").args(&args)) {
            args.push("--break-system-packages");
            run_checked(Command::new("python3").args(&args))?;
        }
    }
    for component in rustup {
        println!("setup: rustup component add {component}");
        run_checked(Command::new("rustup").args(["component", "add", component]))?;
    }
    Ok(())
}

fn run_checked(command: &mut Command) -> Result<()> {
    let status = command
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn missing_of(names: &[&str]) -> Vec<&'static Prerequisite> {
        let list: Vec<_> = PREREQUISITES
            .iter()
            .filter(|p| names.contains(&p.install.name()))
            .collect();
        assert_eq!(list.len(), names.len(), "{names:?}");
        list
    }

    #[test]
    fn probes_tell_present_from_missing() {
        assert!(Program("sh").holds());
        assert!(!Program("ddms-no-such-program").holds());
        assert!(File("/").holds());
        assert!(!File("/ddms/no/such/file").holds());
        assert!(Succeeds(&["true"]).holds());
        assert!(!Succeeds(&["false"]).holds());
        assert!(!Succeeds(&["ddms-no-such-program"]).holds());
        assert!(Prints(&["echo", " 1.2 "], "1.2").holds());
        assert!(!Prints(&["echo", "1.3"], "1.2").holds());
        assert!(AnyOf(&[Program("ddms-no-such-program"), Program("sh")]).holds());
        assert!(!AllOf(&[Program("ddms-no-such-program"), Program("sh")]).holds());
        assert!(!PythonDist("ddms-no-such-distribution", "1.0").holds());
        assert!(!PythonModule("ddms_no_such_module").holds());
    }

    #[test]
    fn the_commands_say_sudo_unless_root_and_group_by_installer() {
        let missing = missing_of(&["curl", "postgresql-15", "aiosmtpd==1.4.6", "clippy"]);
        let user = install_commands(&missing, Privilege::User);
        assert_eq!(user[0], "sudo apt-get update");
        assert!(
            user[1].contains("PGDG") || user[1].contains("pgdg"),
            "{user:?}"
        );
        assert_eq!(
            user[2],
            "sudo apt-get install --no-install-recommends postgresql-15 curl"
        );
        assert!(user[3].starts_with("python3 -m pip install 'aiosmtpd==1.4.6'"));
        assert_eq!(user[4], "rustup component add clippy");
        let root = install_commands(&missing_of(&["curl"]), Privilege::Root);
        assert_eq!(
            root,
            [
                "apt-get update",
                "apt-get install --no-install-recommends curl"
            ]
        );
        assert!(install_commands(&[], Privilege::User).is_empty());
    }

    #[test]
    fn every_package_is_named_once_and_pip_requirements_are_pinned() {
        let mut names: Vec<_> = PREREQUISITES.iter().map(|p| p.install.name()).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "a package is listed twice");
        for p in PREREQUISITES {
            if let Install::Pip(requirement) = p.install {
                assert!(requirement.contains("=="), "{requirement} is not pinned");
            }
        }
        // pip comes from apt: every apt prerequisite comes before the first pip one.
        let first_pip = PREREQUISITES
            .iter()
            .position(|p| matches!(p.install, Install::Pip(_)))
            .unwrap();
        assert!(PREREQUISITES[first_pip..]
            .iter()
            .all(|p| !matches!(p.install, Install::Apt(_))));
    }

    fn repository_file(path: &str) -> String {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// docs/testing.md's table names every package, requirement and component, as installed.
    #[test]
    fn the_testing_docs_list_every_prerequisite() {
        let docs = repository_file("docs/testing.md");
        let start = docs
            .find("\n## Prerequisites\n")
            .expect("a Prerequisites section");
        let section = &docs[start + 1..];
        let section = &section[..section.find("\n## ").unwrap_or(section.len())];
        for p in PREREQUISITES {
            let name = p.install.name();
            assert!(
                section.contains(&format!("`{name}`")),
                "docs/testing.md's prerequisites table does not name `{name}` ({})",
                p.needed_by
            );
        }
    }

    /// `.ci/run` installs nothing itself: `cargo xtask ci` does, with this module, so CI and
    /// README command 2 cannot drift apart.
    #[test]
    fn the_ci_script_holds_no_install_logic() {
        let script = repository_file(".ci/run");
        let commands: Vec<&str> = script
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .collect();
        for line in &commands {
            // Words, so that `pipefail` is not `pip`.
            let words = line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'));
            for word in words {
                assert!(
                    ![
                        "apt", "apt-get", "dpkg", "pip", "pip3", "pipx", "rustup", "install",
                        "curl", "wget", "sudo",
                    ]
                    .contains(&word),
                    ".ci/run installs (`{word}` in `{line}`): add it to xtask/src/setup.rs"
                );
            }
        }
        assert!(commands.contains(&"cargo xtask ci"), "{commands:?}");
    }
}
