//! Repository rules, as tests (`cargo test -p xtask`).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

mod docs;
mod migrations;
mod module_cycles;
mod module_docs;
mod nginx;
mod nix;
mod sleeps;
mod terraform;
mod workflows;

fn root() -> PathBuf {
    crate::project_root()
}

fn migration_names(backend: &str) -> BTreeSet<String> {
    fs::read_dir(root().join("migrations").join(backend))
        .unwrap_or_else(|e| panic!("migrations/{backend}: {e}"))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".sql"))
        .collect()
}

#[test]
fn every_migration_exists_for_both_backends() {
    let postgres = migration_names("postgres");
    let sqlite = migration_names("sqlite");
    assert!(!postgres.is_empty());
    let only_pg: Vec<_> = postgres.difference(&sqlite).collect();
    let only_sqlite: Vec<_> = sqlite.difference(&postgres).collect();
    assert!(
        only_pg.is_empty() && only_sqlite.is_empty(),
        "migrations for one backend only: postgres {only_pg:?}, sqlite {only_sqlite:?}"
    );
    for name in &postgres {
        let version = name.split('_').next().unwrap();
        assert!(
            version.len() == 4 && version.chars().all(|c| c.is_ascii_digit()),
            "{name}: migrations are named NNNN_description.sql"
        );
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_ignored_or_should_panic_tests() {
    // Built from pieces so this file does not match itself.
    let forbidden = [concat!("#[", "ignore"), concat!("#[", "should_panic")];
    let mut files = Vec::new();
    for dir in ["app", "xtask"] {
        rust_files(&root().join(dir), &mut files);
    }
    let mut offenders = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if forbidden.iter().any(|f| line.contains(f)) {
                offenders.push(format!("{}:{}", file.display(), n + 1));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "tests must not be skipped: {offenders:?}"
    );
}

/// Files about one thing, small enough to read in one sitting: no Rust file of the workspace
/// (sources, tests, examples, fuzz targets) is longer than this. A file that grows past it is
/// split by what it holds (see how `app/tests/it/storage/` or `xtask/src/cli/` are).
const MAX_RUST_FILE_LINES: usize = 700;

#[test]
fn no_rust_file_is_longer_than_700_lines() {
    let mut files = Vec::new();
    for dir in ["app", "xtask"] {
        rust_files(&root().join(dir), &mut files);
    }
    assert!(
        files.len() > 200,
        "the workspace's Rust files: {}",
        files.len()
    );
    let mut long: Vec<String> = files
        .iter()
        .filter_map(|file| {
            let lines = fs::read_to_string(file).unwrap().lines().count();
            (lines > MAX_RUST_FILE_LINES).then(|| format!("{} ({lines})", file.display()))
        })
        .collect();
    long.sort();
    assert!(
        long.is_empty(),
        "longer than {MAX_RUST_FILE_LINES} lines: {long:?}"
    );
}

/// The dashboard's scripts never parse server data as HTML, and its pages carry no inline
/// script, style or event handler (the CSP forbids them; this keeps them from creeping in).
#[test]
fn dashboard_assets_insert_text_only_and_have_nothing_inline() {
    let mut files = Vec::new();
    for dir in ["app/assets", "app/assets/pages"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    assert!(
        files.len() > 5,
        "the dashboard assets are where this test looks"
    );
    let mut offences = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.strip_prefix(root()).unwrap().display().to_string();
        let forbidden: &[&str] = match path.extension().and_then(|e| e.to_str()) {
            Some("js") => &[
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
                "new Function",
            ],
            Some("html") => &[
                "<script>",
                "<script ",
                "<style",
                " style=",
                " onclick",
                " onload",
                " onerror",
                " onsubmit",
                "javascript:",
            ],
            _ => &[],
        };
        for needle in forbidden {
            if text.contains(needle) {
                offences.push(format!("{name}: {needle}"));
            }
        }
    }
    assert!(offences.is_empty(), "{offences:#?}");
}

#[test]
fn later_folders_say_what_will_live_there() {
    for dir in ["ops", "terraform", "ansible", "nix", "migrations"] {
        let readme = root().join(dir).join("README.md");
        assert!(readme.is_file(), "{} is missing", readme.display());
    }
}

/// The shipped systemd unit parses: `systemd-analyze verify` reports nothing but the missing
/// binary (no release is installed on the machine running the tests).
#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let dir = tempdir("unit");
    let unit = dir.join("ddms@blue.service");
    fs::copy(root().join("ops/systemd/ddms@.service"), &unit).unwrap();
    let output = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze is installed (systemd package)");
    let text = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    let problems: Vec<&str> = text
        .lines()
        .filter(|line| !line.contains("is not executable") && !line.trim().is_empty())
        .collect();
    assert!(problems.is_empty(), "systemd-analyze: {problems:#?}");
    fs::remove_dir_all(dir).unwrap();
}

/// Every path under /opt/ddms the unit names exists in the host layout (ARCHITECTURE.md):
/// /opt/ddms itself, or a file a release ships (`cargo xtask build`) under the slot's link
/// /opt/ddms/slots/<slot>/. There is no /opt/ddms/current: slots replace it.
#[test]
fn systemd_unit_names_only_paths_of_the_host_layout() {
    let unit = fs::read_to_string(root().join("ops/systemd/ddms@.service")).unwrap();
    let shipped = [
        "ddms",
        "README.md",
        "ARCHITECTURE.md",
        "ddms.example.toml",
        "VERSION",
    ];
    let build = fs::read_to_string(root().join("xtask/src/build.rs")).unwrap();
    for file in shipped
        .iter()
        .filter(|f| !matches!(**f, "ddms" | "VERSION"))
    {
        assert!(
            build.contains(&format!("\"{file}\"")),
            "build.rs no longer ships {file}"
        );
    }
    let mut checked = 0;
    for line in unit.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        for word in value.split_whitespace() {
            let path = word.trim_start_matches("file://");
            if path != "/opt/ddms" && !path.starts_with("/opt/ddms/") {
                continue;
            }
            checked += 1;
            let ok = path == "/opt/ddms"
                || path
                    .strip_prefix("/opt/ddms/slots/%i/")
                    .is_some_and(|file| shipped.contains(&file));
            assert!(
                ok,
                "{key}={value}: {path} is not in the host layout (/opt/ddms/slots/%i/<file a release ships>)"
            );
        }
    }
    assert!(checked >= 2, "the unit names no release path at all");
}

/// compose.yaml's own variables stay out of ddms' `DDMS_` prefix: ddms refuses unknown
/// `DDMS_` keys, so `DDMS_IMAGE=… docker compose up` in a shell that also runs ddms broke it.
/// (The `DDMS_…` keys under `environment:` are ddms' configuration and are fine.)
#[test]
fn compose_variables_do_not_use_the_ddms_prefix() {
    let compose = fs::read_to_string(root().join("ops/container/compose.yaml")).unwrap();
    let mut variables: Vec<&str> = compose
        .split("${")
        .skip(1)
        .map(|rest| rest.split([':', '-', '}']).next().unwrap_or_default())
        .collect();
    variables.sort_unstable();
    variables.dedup();
    assert!(variables.contains(&"POSTGRES_IMAGE"), "{variables:?}");
    let clashing: Vec<&&str> = variables
        .iter()
        .filter(|v| v.starts_with("DDMS_"))
        .collect();
    assert!(
        clashing.is_empty(),
        "compose variables in ddms' prefix: {clashing:?}"
    );
    let readme = fs::read_to_string(root().join("ops/container/README.md")).unwrap();
    for variable in &variables {
        assert!(
            readme.contains(&format!("`{variable}`")),
            "ops/container/README.md does not document {variable}"
        );
    }
}

/// The shipped nginx site and upstream include, runnable from `dir`: a throwaway certificate,
/// paths moved into `dir`, the listeners on loopback `http`/`https` ports, the upstream's
/// servers at `upstream` (the shipped include when None). Returns the main config's path.
pub(crate) fn nginx_config(dir: &Path, http: u16, https: u16, upstream: Option<&str>) -> PathBuf {
    let run = |program: &str, args: &[&str]| {
        let status = std::process::Command::new(program)
            .args(args)
            .current_dir(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(status.success(), "{program} {args:?} failed");
    };
    run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.crt",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ],
    );
    let d = dir.display().to_string();
    let site = fs::read_to_string(root().join("ops/nginx/ddms.conf"))
        .unwrap()
        .replace(
            "/etc/nginx/ddms/ddms-upstream.conf",
            &format!("{d}/upstream.conf"),
        )
        .replace("/etc/ddms/tls/", &format!("{d}/"))
        .replace("/var/www/ddms-acme", &d)
        .replace("listen 80;", &format!("listen 127.0.0.1:{http};"))
        .replace("listen [::]:80;", "")
        .replace(
            "listen 443 ssl http2;",
            &format!("listen 127.0.0.1:{https} ssl http2;"),
        )
        .replace("listen [::]:443 ssl http2;", "");
    fs::write(dir.join("site.conf"), site).unwrap();
    let shipped = fs::read_to_string(root().join("ops/nginx/ddms-upstream.conf")).unwrap();
    let include = match upstream {
        Some(server) => shipped
            .replace("127.0.0.1:8081", server)
            .replace("127.0.0.1:8082", server),
        None => shipped,
    };
    fs::write(dir.join("upstream.conf"), include).unwrap();
    let main = format!(
        "pid {d}/nginx.pid;\nerror_log {d}/error.log;\nworker_shutdown_timeout 30s;\n\
         daemon off;\nmaster_process off;\nevents {{}}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
         include {d}/site.conf;\n}}\n"
    );
    fs::write(dir.join("nginx.conf"), main).unwrap();
    dir.join("nginx.conf")
}

/// The shipped nginx site and upstream include pass `nginx -t`, with a throwaway certificate
/// and paths moved into a temp dir.
#[test]
fn nginx_site_passes_nginx_t() {
    let dir = tempdir("nginx");
    let conf = nginx_config(&dir, 18080, 18443, None);
    let output = std::process::Command::new("nginx")
        .args(["-t", "-p", &dir.display().to_string(), "-c"])
        .arg(&conf)
        .output()
        .expect("nginx is installed");
    assert!(
        output.status.success(),
        "nginx -t: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    fs::remove_dir_all(dir).unwrap();
}

pub(crate) fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ddms-tidy-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// The playbooks and roles pass ansible-lint with its strictest profile (`production`),
/// offline (no collections to download: the roles use `ansible.builtin` only). `cargo
/// xtask setup` installs the pinned ansible-core and ansible-lint.
#[test]
fn ansible_passes_ansible_lint_production_profile() {
    let dir = root().join("ansible");
    let output = std::process::Command::new("ansible-lint")
        .args([
            "--offline",
            "--profile",
            "production",
            "--strict",
            "--nocolor",
        ])
        .current_dir(&dir)
        .env("ANSIBLE_CONFIG", dir.join("ansible.cfg"))
        .output()
        .expect(
            "ansible-lint is installed (pip install ansible-lint; `cargo xtask setup` installs it)",
        );
    assert!(
        output.status.success(),
        "ansible-lint:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every Ansible role has `meta/main.yml` and `defaults/main.yml`, and every variable in its
/// defaults is documented: a comment above it, or above the group of variables it belongs to
/// (no blank line in between).
#[test]
fn every_ansible_role_documents_its_defaults() {
    let roles = root().join("ansible/roles");
    let mut undocumented = Vec::new();
    let mut count = 0;
    for entry in fs::read_dir(&roles).unwrap() {
        let role = entry.unwrap().path();
        let name = role.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            role.join("meta/main.yml").is_file(),
            "{name}: meta/main.yml"
        );
        let defaults = fs::read_to_string(role.join("defaults/main.yml"))
            .unwrap_or_else(|e| panic!("{name}: defaults/main.yml: {e}"));
        count += 1;
        let lines: Vec<&str> = defaults.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let is_key = |l: &str| {
                l.split_once(':').is_some_and(|(k, _)| {
                    !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                })
            };
            if !is_key(line) {
                continue;
            }
            // Walk up over the group's other keys and their indented values to a comment.
            let documented = lines[..i]
                .iter()
                .rev()
                .find(|l| !is_key(l) && !l.starts_with(' '))
                .is_some_and(|l| l.starts_with('#'));
            if !documented {
                undocumented.push(format!("{name}: {line}"));
            }
        }
    }
    assert_eq!(count, 5, "roles common, postgresql, mosquitto, nginx, ddms");
    assert!(
        undocumented.is_empty(),
        "variables without a comment: {undocumented:#?}"
    );
}

/// The ddms role's S3 region default is the region Terraform creates the backup bucket in by
/// default (every environment's `region` variable), so that the two never disagree silently.
#[test]
fn ansible_s3_region_default_is_terraforms_default_region() {
    let defaults = fs::read_to_string(root().join("ansible/roles/ddms/defaults/main.yml")).unwrap();
    let ansible = defaults
        .lines()
        .find_map(|l| l.strip_prefix("ddms_backup_s3_region:"))
        .expect("ddms_backup_s3_region in the ddms role's defaults")
        .trim()
        .to_string();
    for env in ["production", "staging"] {
        let path = root().join(format!("terraform/envs/{env}/variables.tf"));
        let text = fs::read_to_string(&path).unwrap();
        let block = text
            .split("variable \"region\"")
            .nth(1)
            .and_then(|rest| rest.split('}').next())
            .unwrap_or_else(|| panic!("{}: no variable \"region\"", path.display()));
        let terraform = block
            .lines()
            .find_map(|l| l.trim().strip_prefix("default"))
            .and_then(|l| l.split('"').nth(1))
            .unwrap_or_else(|| panic!("{}: region has no default", path.display()));
        assert_eq!(
            ansible, terraform,
            "ddms_backup_s3_region ({ansible}) and Terraform's {env} region ({terraform})"
        );
    }
}
