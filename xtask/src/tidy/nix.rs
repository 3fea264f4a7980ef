//! The Nix distribution (flake.nix, nix/). nixpkgs is out of reach here, so the module itself
//! cannot be evaluated (the GitHub `nix` job runs `nix flake check`); what is checked locally is
//! that every file parses, and the module's pure logic — nix/lib.nix, builtins only — evaluated
//! for real by `nix-instantiate --eval` (Debian's nix-bin; `cargo xtask setup` installs it).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use super::root;

fn nix_instantiate() -> Command {
    let mut command = Command::new("nix-instantiate");
    // Debian's nix.conf names a build group that a machine without a daemon lacks.
    command.env("NIX_CONFIG", "build-users-group =");
    command
}

fn files_with_extension(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                files_with_extension(&path, ext, out);
            }
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
}

/// Every `.nix` file parses (`nix-instantiate --parse`). Evaluation needs nixpkgs, which only
/// the GitHub `nix` job has.
#[test]
fn every_nix_file_parses() {
    let mut files = Vec::new();
    files_with_extension(&root(), "nix", &mut files);
    for expected in [
        "flake.nix",
        "nix/package.nix",
        "nix/module.nix",
        "nix/test.nix",
        "nix/lib.nix",
    ] {
        assert!(
            files.contains(&root().join(expected)),
            "{expected} is missing"
        );
    }
    for file in &files {
        let output =
            nix_instantiate().arg("--parse").arg(file).output().expect(
                "nix-instantiate is installed (Debian package nix-bin; `cargo xtask setup` installs it)",
            );
        assert!(
            output.status.success(),
            "{} does not parse:\n{}",
            file.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// `expr` evaluated with `lib` bound to nix/lib.nix, as JSON.
fn eval(expr: &str) -> Value {
    let lib = root().join("nix/lib.nix");
    let full = format!("let lib = import {}; in {expr}", lib.display());
    let output = nix_instantiate()
        .args(["--eval", "--strict", "--json", "-E", &full])
        .output()
        .expect("nix-instantiate is installed (Debian package nix-bin; `cargo xtask setup` installs it)");
    assert!(
        output.status.success(),
        "nix-instantiate --eval {full}:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// `f` applied to each input: the inputs are Nix expressions, so store paths can be built from
/// `builtins.storeDir` (whatever store this nix-instantiate has).
fn map_eval(f: &str, inputs: &[&str]) -> Vec<Value> {
    let list = inputs.join(" ");
    match eval(&format!("map ({f}) [ {list} ]")) {
        Value::Array(values) => values,
        other => panic!("{f}: {other}"),
    }
}

/// Secret paths: absolute strings outside the store, without what systemd would split or
/// expand; a Nix path value is refused (evaluation would copy it into the store).
#[test]
fn secret_paths_outside_the_store_pass_and_others_are_refused() {
    let good = [
        "\"/run/secrets/ddms-token\"",
        "\"/etc/ddms/secrets/database_url\"",
        "\"/var/lib/ddms-secrets/mqtt.password\"",
        // Only the store directory itself and what is under it are the store.
        "(builtins.storeDir + \"x/token\")",
    ];
    for (input, problem) in good.iter().zip(map_eval("lib.pathProblem", &good)) {
        assert_eq!(problem, Value::Null, "{input} is a fine secret path");
    }
    let bad = [
        ("(builtins.storeDir + \"/abc-token\")", "Nix store"),
        ("builtins.storeDir", "Nix store"),
        // Not normalised, still in the store.
        ("(\"/\" + builtins.storeDir + \"//abc-token\")", "Nix store"),
        ("\"run/secrets/token\"", "not an absolute path"),
        ("\"\"", "not an absolute path"),
        ("\"/run/secrets/my token\"", "whitespace"),
        ("\"/run/secrets/token%i\"", "`%`"),
        ("\"/run/secrets/../../nix/store/abc\"", "`..`"),
        ("./lib.nix", "Nix path value"),
    ];
    let inputs: Vec<&str> = bad.iter().map(|(input, _)| *input).collect();
    for ((input, expected), problem) in bad.iter().zip(map_eval("lib.pathProblem", &inputs)) {
        let problem = problem
            .as_str()
            .unwrap_or_else(|| panic!("{input} must be refused, got {problem}"));
        assert!(problem.contains(expected), "{input}: {problem}");
    }
}

/// data_dir / backup.dir: StateDirectory= under /var/lib, else ReadWritePaths=; refused where
/// the unit's sandbox (ProtectHome=, PrivateTmp=) would hide it.
#[test]
fn writable_directories_map_to_state_directory_or_read_write_paths() {
    let dirs = [
        "\"/var/lib/ddms\"",
        "\"/var/lib/ddms/\"",
        "\"/var//lib/ddms/backups\"",
        "\"/var/lib\"",
        "\"/var/library/ddms\"",
        "\"/srv/ddms\"",
    ];
    assert_eq!(
        map_eval("lib.stateDirectoryOf", &dirs),
        [
            json!("ddms"),
            json!("ddms"),
            json!("ddms/backups"),
            Value::Null,
            Value::Null,
            Value::Null
        ]
    );
    for (dir, problem) in dirs.iter().zip(map_eval("lib.writableDirProblem", &dirs)) {
        assert_eq!(problem, Value::Null, "{dir} is a usable directory");
    }
    let bad = [
        ("\"/home/ops/ddms\"", "ProtectHome"),
        ("\"/root/ddms\"", "ProtectHome"),
        ("\"/tmp/ddms\"", "PrivateTmp"),
        ("\"/var/tmp\"", "PrivateTmp"),
        ("(builtins.storeDir + \"/abc-data\")", "Nix store"),
        ("\"data\"", "not an absolute path"),
    ];
    let inputs: Vec<&str> = bad.iter().map(|(input, _)| *input).collect();
    for ((input, expected), problem) in bad.iter().zip(map_eval("lib.writableDirProblem", &inputs))
    {
        let problem = problem
            .as_str()
            .unwrap_or_else(|| panic!("{input} must be refused, got {problem}"));
        assert!(problem.contains(expected), "{input}: {problem}");
    }
}

/// ddms connects to the address Mosquitto binds; loopback only when it binds every address.
#[test]
fn mqtt_url_follows_the_mosquitto_listener_address() {
    let cases = [
        ("null", "mqtt://127.0.0.1:1883"),
        ("\"\"", "mqtt://127.0.0.1:1883"),
        ("\"0.0.0.0\"", "mqtt://127.0.0.1:1883"),
        ("\"127.0.0.1\"", "mqtt://127.0.0.1:1883"),
        ("\"192.168.10.5\"", "mqtt://192.168.10.5:1883"),
        ("\"::\"", "mqtt://[::1]:1883"),
        ("\"fd00::5\"", "mqtt://[fd00::5]:1883"),
        ("\"broker.plant.lan\"", "mqtt://broker.plant.lan:1883"),
    ];
    let inputs: Vec<&str> = cases.iter().map(|(input, _)| *input).collect();
    let urls = map_eval("address: lib.mqttUrl address 1883", &inputs);
    for ((input, expected), url) in cases.iter().zip(urls) {
        assert_eq!(url, json!(expected), "Mosquitto bound to {input}");
    }
    assert_eq!(
        eval("lib.mqttUrl \"10.0.0.2\" 8884"),
        json!("mqtt://10.0.0.2:8884")
    );
    let loopback = map_eval(
        "lib.isLoopback",
        &[
            "\"127.0.0.1\"",
            "\"127.0.1.1\"",
            "\"::1\"",
            "\"localhost\"",
            "null",
            "\"0.0.0.0\"",
            "\"192.168.10.5\"",
        ],
    );
    assert_eq!(
        loopback,
        [true, true, true, true, false, false, false].map(Value::Bool)
    );
}

/// Secrets written into `settings` (which becomes a file in the store) are refused; the
/// password-less socket URL of database.createLocally and credential paths are not.
#[test]
fn secrets_in_settings_are_refused() {
    let fine = eval(
        "lib.settingsProblems { \
           database.url = \"postgres://ddms@localhost/ddms?host=/run/postgresql\"; \
           provisioning.token_file = \"/run/credentials/ddms.service/provisioning_token\"; \
           mqtt = { url = \"mqtt://127.0.0.1:1883\"; username = \"ddms\"; }; \
           http.tls.cert = builtins.storeDir + \"/abc-cert/cert.pem\"; \
           backup.s3.access_key_id = \"AKIA0000\"; \
         }",
    );
    assert_eq!(fine, json!([]), "nothing secret here");
    let cases = [
        (
            "{ provisioning.token = \"t\"; }",
            "settings.provisioning.token holds a secret",
        ),
        (
            "{ mqtt.password = \"p\"; }",
            "settings.mqtt.password holds a secret",
        ),
        (
            "{ mqtt.dynsec.password = \"p\"; }",
            "settings.mqtt.dynsec.password holds a secret",
        ),
        (
            "{ backup.s3.secret_access_key = \"k\"; }",
            "settings.backup.s3.secret_access_key holds a secret",
        ),
        (
            "{ database.url = \"postgres://ddms:pw@db.example.net/ddms\"; }",
            "settings.database.url holds a secret",
        ),
        (
            "{ database.url = \"postgres:///ddms?host=db&password=pw\"; }",
            "settings.database.url holds a secret",
        ),
        (
            "{ provisioning.token_file = builtins.storeDir + \"/abc-token\"; }",
            "settings.provisioning.token_file is in the world-readable Nix store",
        ),
        (
            "{ mqtt.embedded.tls.key = ./lib.nix; }",
            "settings.mqtt.embedded.tls.key is in the world-readable Nix store",
        ),
    ];
    for (settings, expected) in cases {
        let problems = eval(&format!("lib.settingsProblems {settings}"));
        let problems = problems.as_array().unwrap();
        assert_eq!(problems.len(), 1, "{settings}: {problems:?}");
        let problem = problems[0].as_str().unwrap();
        assert!(problem.contains(expected), "{settings}: {problem}");
        assert!(
            problem.contains("services.ddms.secretFiles."),
            "{settings}: the message names the option to use: {problem}"
        );
    }
}

/// `DDMS_` + the key with `__` for nesting, upper case: what ddms' figment layer reads.
#[test]
fn env_names_follow_ddms_nesting() {
    let names = map_eval(
        "lib.envName",
        &[
            "\"provisioning.token_file\"",
            "\"mqtt.dynsec.password_file\"",
            "\"backup.s3.secret_access_key_file\"",
        ],
    );
    assert_eq!(
        names,
        [
            json!("DDMS_PROVISIONING__TOKEN_FILE"),
            json!("DDMS_MQTT__DYNSEC__PASSWORD_FILE"),
            json!("DDMS_BACKUP__S3__SECRET_ACCESS_KEY_FILE"),
        ]
    );
}

/// The string literals that follow each `marker` in `text` (up to `within` characters on).
fn literals_after(text: &str, marker: &str, within: usize) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(marker) {
        rest = &rest[at + marker.len()..];
        let window = &rest[..rest.len().min(within)];
        if let Some(open) = window.find('"') {
            let literal = &rest[open + 1..];
            found.push(literal[..literal.find('"').unwrap()].to_string());
        }
    }
    found
}

/// The module offers a credential for every secret ddms reads from a file: each
/// `resolve_secret_file` key of app/src/config/ (`<key>_file`) and each TLS private key it
/// reads. A secret added to ddms without one here fails this test.
#[test]
fn secret_files_cover_every_secret_ddms_reads() {
    // The whole module, not one file: loading and validation live in different files of it.
    let mut files = Vec::new();
    super::rust_files(&root().join("app/src/config"), &mut files);
    assert!(!files.is_empty(), "no Rust files in app/src/config");
    let config: String = files
        .iter()
        .map(|path| fs::read_to_string(path).unwrap())
        .collect();
    let resolved: BTreeSet<String> = literals_after(&config, "resolve_secret_file(", 60)
        .into_iter()
        .filter(|key| key.contains('.'))
        .collect();
    assert!(
        resolved.len() >= 5,
        "the resolve_secret_file calls of app/src/config: {resolved:?}"
    );
    // Every string that is a TLS key setting: "http.tls.key", "mqtt.tls.key", …
    let tls_keys: BTreeSet<String> = config
        .split('"')
        .filter(|s| {
            s.ends_with(".tls.key")
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_')
        })
        .map(str::to_string)
        .collect();
    assert!(
        tls_keys.contains("http.tls.key") && tls_keys.len() >= 3,
        "the TLS keys app/src/config reads: {tls_keys:?}"
    );

    let table = eval("builtins.attrValues lib.secretFiles");
    let table = table.as_array().unwrap();
    let keys: BTreeSet<&str> = table.iter().map(|s| s["key"].as_str().unwrap()).collect();
    let literals: BTreeSet<&str> = table.iter().filter_map(|s| s["literal"].as_str()).collect();
    for key in &resolved {
        assert!(
            keys.contains(format!("{key}_file").as_str()),
            "nix/lib.nix secretFiles has no entry for {key}_file"
        );
        assert!(
            literals.contains(key.as_str()),
            "nix/lib.nix secretFiles: {key}_file's entry must name `literal = \"{key}\"`"
        );
    }
    for key in &tls_keys {
        assert!(
            keys.contains(key.as_str()),
            "nix/lib.nix secretFiles has no entry for {key}"
        );
    }
    // Credential names are file names in one directory: distinct, and plain.
    let credentials: BTreeSet<&str> = table
        .iter()
        .map(|s| s["credential"].as_str().unwrap())
        .collect();
    assert_eq!(credentials.len(), table.len(), "credential names repeat");
    for credential in credentials {
        assert!(
            credential
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{credential}"
        );
    }
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        fs::create_dir_all(to).unwrap();
        for entry in fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(from, to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    }
}

fn all_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            all_files(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// `base/relative` with `..` resolved lexically.
fn resolve(base: &Path, relative: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for component in base.join(relative).components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The package builds from `sourceFiles` of nix/lib.nix only (so docs edits leave the
/// derivation alone). On a copy of just those files: cargo loads the workspace and finds the
/// ddms library and binary, every file the ddms sources embed or their unit tests read (the
/// `checkPhase`) is there, and no documentation, deployment tooling or integration test is.
#[test]
fn package_source_holds_what_the_build_and_unit_tests_read_and_no_docs() {
    let entries = eval("lib.sourceFiles");
    let entries: Vec<&str> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    let dir = super::tempdir("nix-source");
    for entry in &entries {
        copy_tree(&root().join(entry), &dir.join(entry));
    }

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--offline",
            "--no-deps",
            "--format-version",
            "1",
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cargo does not load the workspace from sourceFiles alone:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).unwrap();
    let ddms = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "ddms")
        .expect("the ddms package");
    let kinds: BTreeSet<String> = ddms["targets"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["kind"].as_array().unwrap().iter())
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    assert!(
        kinds.contains("lib") && kinds.contains("bin") && kinds.contains("custom-build"),
        "ddms targets: {kinds:?}"
    );

    let app = dir.join("app");
    let mut sources = Vec::new();
    super::rust_files(&app.join("src"), &mut sources);
    assert!(sources.len() > 20, "app/src: {sources:?}");
    // (marker, whether the path is relative to the package rather than to the source file,
    // how far after the marker its path literal may start)
    let markers = [
        ("include_str!(", false, 20),
        ("include_bytes!(", false, 20),
        ("migrate!(", true, 20),
        // The stores embed their migrations through `sql_store!(Store, Backend, "<dir>")`,
        // whose `sqlx::migrate!` reads the directory relative to the package.
        ("sql_store!(", true, 40),
        ("env!(\"CARGO_MANIFEST_DIR\")).join(", true, 20),
    ];
    let mut read = Vec::new();
    let mut seen = BTreeSet::new();
    for source in &sources {
        let text = fs::read_to_string(source).unwrap();
        for (marker, from_package, within) in markers {
            let base = if from_package {
                app.as_path()
            } else {
                source.parent().unwrap()
            };
            for relative in literals_after(&text, marker, within) {
                seen.insert(marker);
                read.push((source.clone(), resolve(base, &relative)));
            }
        }
    }
    // include_bytes! and a bare migrate!("…") are not used today; three of the others must be
    // found (the migrations through sql_store!).
    assert!(
        read.len() > 20 && seen.len() >= 3,
        "the scan of app/src found too little: {seen:?} {read:?}"
    );
    for (source, path) in &read {
        assert!(
            path.exists(),
            "{} reads {}, which nix/lib.nix sourceFiles leaves out",
            source.strip_prefix(&dir).unwrap().display(),
            path.strip_prefix(&dir).unwrap_or(path).display()
        );
    }

    let mut files = Vec::new();
    all_files(&dir, &mut files);
    for file in &files {
        let relative = file.strip_prefix(&dir).unwrap();
        let name = relative.display().to_string();
        assert!(
            !name.ends_with(".md")
                && ![
                    "docs",
                    "nix",
                    "ansible",
                    "terraform",
                    ".github",
                    "app/tests",
                    "app/examples",
                    "app/fuzz",
                ]
                .iter()
                .any(|d| relative.starts_with(d)),
            "{name} is in the package source: editing it would rebuild the package"
        );
    }
    fs::remove_dir_all(dir).unwrap();
}
