//! Repository rules for the Terraform modules and environments, which cannot be applied here
//! (no cloud, no providers): what can be checked locally is checked with the real parsers
//! (`terraform fmt`, hcl-rs); `terraform validate` and tflint run in the GitHub `ci` workflow.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use hcl::expr::{Expression, ObjectKey, TraversalOperator};
use hcl::{Block, Body};
use yaml_serde::Value;

use super::root;
use super::workflows::{get, text};

// ── Terraform ───────────────────────────────────────────────────────────────────────────────

/// `terraform fmt -check` over the whole tree, when terraform is installed (it is not
/// packaged by Debian; the GitHub `terraform` job always has it).
#[test]
fn terraform_files_are_formatted() {
    let Ok(output) = Command::new("terraform")
        .args(["fmt", "-check", "-recursive", "-diff", "-no-color"])
        .arg(root().join("terraform"))
        .output()
    else {
        eprintln!(
            "tidy: WARNING: terraform is not on PATH: `terraform fmt -check` NOT run \
             (the GitHub terraform job runs it)"
        );
        return;
    };
    assert!(
        output.status.success(),
        "terraform fmt -check -recursive terraform/ wants changes:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The host's cloud-init template, rendered by terraform itself (`templatefile` needs no
/// provider), is cloud-config YAML that creates the `ddms` user and whose volume script is valid
/// shell; with another SSH port it moves sshd there.
#[test]
fn host_cloud_init_renders_to_cloud_config() {
    let template = root().join("terraform/modules/host/cloud-init.yaml.tftpl");
    for ssh_port in [22, 2222] {
        let dir = super::tempdir(&format!("cloud-init-{ssh_port}"));
        let expression = format!(
            "templatefile({:?}, {{ hostname = \"ddms-test-1\", ssh_port = {ssh_port}, \
             volume_id = \"vol-0123456789abcdef0\", data_device = \"/dev/sdf\", \
             ssh_host_private_key = \"-----BEGIN OPENSSH PRIVATE KEY-----\\nAAAA\\n-----END OPENSSH PRIVATE KEY-----\", \
             ssh_host_public_key = \"ssh-ed25519 AAAAC3Nz test\" }})\n",
            template.display().to_string()
        );
        let Ok(mut child) = Command::new("terraform")
            .arg("console")
            .current_dir(&dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
        else {
            eprintln!(
                "tidy: WARNING: terraform is not on PATH: the cloud-init template is NOT \
                 rendered (the GitHub terraform job validates the module)"
            );
            return;
        };
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(expression.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "terraform console: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        // Multi-line strings print as a heredoc.
        let rendered = stdout
            .trim()
            .strip_prefix("<<EOT\n")
            .and_then(|s| s.strip_suffix("EOT"))
            .unwrap_or_else(|| panic!("unexpected console output: {stdout}"));
        assert!(rendered.starts_with("#cloud-config\n"), "{rendered}");
        let config: Value = yaml_serde::from_str(rendered)
            .unwrap_or_else(|e| panic!("rendered cloud-init is not YAML: {e}\n{rendered}"));
        let ddms = get(&config, &["users"])
            .as_sequence()
            .unwrap()
            .iter()
            .find(|u| u.get("name").and_then(Value::as_str) == Some("ddms"))
            .unwrap_or_else(|| panic!("no ddms user: {rendered}"));
        assert_eq!(ddms.get("system").and_then(Value::as_bool), Some(true));
        let script = get(&config, &["runcmd"]).as_sequence().unwrap()[0]
            .as_str()
            .unwrap()
            .to_string();
        assert!(script.contains("vol0123456789abcdef0"), "{script}");
        assert!(script.contains("mount /var/lib/ddms"), "{script}");
        let script_file = dir.join("runcmd.sh");
        fs::write(&script_file, &script).unwrap();
        let status = Command::new("sh")
            .arg("-n")
            .arg(&script_file)
            .status()
            .unwrap();
        assert!(status.success(), "runcmd is not valid sh:\n{script}");
        let moves_sshd = config
            .get("write_files")
            .is_some_and(|files| text(files).contains(&format!("Port {ssh_port}")));
        assert_eq!(moves_sshd, ssh_port != 22, "{rendered}");
        fs::remove_dir_all(dir).unwrap();
    }
}

/// The blocks of every `.tf` file directly in `dir` (one Terraform module).
fn tf_module(dir: &Path) -> Vec<Block> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "tf") {
            files.push(path);
        }
    }
    assert!(!files.is_empty(), "{}: no .tf files", dir.display());
    files.sort();
    files
        .iter()
        .flat_map(|file| {
            let text = fs::read_to_string(file).unwrap();
            let body: Body = hcl::parse(&text)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", file.display()));
            body.into_blocks().collect::<Vec<_>>()
        })
        .collect()
}

fn blocks<'a>(module: &'a [Block], kind: &'a str) -> impl Iterator<Item = &'a Block> + 'a {
    module.iter().filter(move |b| b.identifier.as_str() == kind)
}

fn label(block: &Block) -> &str {
    block.labels.first().map(|l| l.as_str()).unwrap_or("")
}

fn attr<'a>(block: &'a Block, key: &str) -> Option<&'a Expression> {
    block
        .body
        .attributes()
        .find(|a| a.key.as_str() == key)
        .map(|a| &a.expr)
}

fn module_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for group in ["modules", "envs"] {
        for entry in fs::read_dir(root().join("terraform").join(group)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            }
        }
    }
    dirs.sort();
    dirs
}

/// `a.b.c` → ["a", "b", "c"]; None for anything but a plain attribute traversal.
fn traversal_path(expr: &Expression) -> Option<Vec<String>> {
    match expr {
        Expression::Variable(v) => Some(vec![v.as_str().to_string()]),
        Expression::Traversal(t) => {
            let mut path = traversal_path(&t.expr)?;
            for op in &t.operators {
                match op {
                    TraversalOperator::GetAttr(id) => path.push(id.as_str().to_string()),
                    _ => return None,
                }
            }
            Some(path)
        }
        _ => None,
    }
}

fn object_fields(expr: &Expression) -> Option<BTreeMap<String, &Expression>> {
    let Expression::Object(object) = expr else {
        return None;
    };
    object
        .iter()
        .map(|(key, value)| {
            let key = match key {
                ObjectKey::Identifier(id) => id.as_str().to_string(),
                ObjectKey::Expression(Expression::String(s)) => s.clone(),
                ObjectKey::Expression(other) => traversal_path(other)?.join("."),
                _ => return None,
            };
            Some((key, value))
        })
        .collect()
}

struct Env {
    dir: PathBuf,
    blocks: Vec<Block>,
}

impl Env {
    fn output(&self, name: &str) -> &Expression {
        let output = blocks(&self.blocks, "output")
            .find(|b| label(b) == name)
            .unwrap_or_else(|| panic!("{}: no output \"{name}\"", self.dir.display()));
        attr(output, "value")
            .unwrap_or_else(|| panic!("{}: output \"{name}\" has no value", self.dir.display()))
    }

    /// The blocks of the module that `module "<name>"` instantiates.
    fn called_module(&self, name: &str) -> (&Block, Vec<Block>) {
        let call = blocks(&self.blocks, "module")
            .find(|b| label(b) == name)
            .unwrap_or_else(|| panic!("{}: no module \"{name}\"", self.dir.display()));
        let Some(Expression::String(source)) = attr(call, "source") else {
            panic!(
                "{}: module \"{name}\" has no local source",
                self.dir.display()
            );
        };
        (call, tf_module(&self.dir.join(source)))
    }

    /// Asserts that `module.<name>.<output>` exists and, when the module output is a plain
    /// `var.X`, that X is declared with `expected_type`.
    fn assert_module_output(&self, module: &str, output: &str, expected_type: Option<&str>) {
        let (_, blocks_of) = self.called_module(module);
        let declared = blocks(&blocks_of, "output")
            .find(|b| label(b) == output)
            .unwrap_or_else(|| {
                panic!(
                    "{}: module \"{module}\" has no output \"{output}\"",
                    self.dir.display()
                )
            });
        let (Some(expected), Some(value)) = (expected_type, attr(declared, "value")) else {
            return;
        };
        if let Some([var, name]) = traversal_path(value).as_deref() {
            if var == "var" {
                let variable = blocks(&blocks_of, "variable")
                    .find(|b| label(b) == name)
                    .unwrap_or_else(|| panic!("module \"{module}\": no variable \"{name}\""));
                let ty = attr(variable, "type").and_then(traversal_path);
                assert_eq!(
                    ty.as_deref(),
                    Some(&[expected.to_string()][..]),
                    "{}: module.{module}.{output} must be a {expected}",
                    self.dir.display()
                );
            }
        }
    }
}

fn envs() -> Vec<Env> {
    let mut envs: Vec<Env> = ["staging", "production"]
        .iter()
        .map(|name| {
            let dir = root().join("terraform/envs").join(name);
            Env {
                blocks: tf_module(&dir),
                dir,
            }
        })
        .collect();
    // Any further environment must honour the same contract.
    for entry in fs::read_dir(root().join("terraform/envs")).unwrap() {
        let dir = entry.unwrap().path();
        if dir.is_dir() && !envs.iter().any(|e| e.dir == dir) {
            envs.push(Env {
                blocks: tf_module(&dir),
                dir,
            });
        }
    }
    envs
}

/// The inventory contract `cargo xtask deploy` and Ansible rely on: every environment outputs
/// `ddms_hosts` = a list of `{ name, address, ssh_user, ssh_port }` built from a host module's
/// real outputs, and `backup_bucket` = `{ name, region }` from the bucket module's.
#[test]
fn terraform_envs_output_the_deploy_inventory() {
    for env in envs() {
        let dir = env.dir.display().to_string();

        let Expression::ForExpr(hosts) = env.output("ddms_hosts") else {
            panic!("{dir}: ddms_hosts must be a list built with `for`");
        };
        assert!(
            hosts.key_expr.is_none(),
            "{dir}: ddms_hosts must be a list, not a map"
        );
        let collection = traversal_path(&hosts.collection_expr);
        let Some([module_kw, host_module]) = collection.as_deref() else {
            panic!("{dir}: ddms_hosts must iterate over `module.<host module>`");
        };
        assert_eq!(
            module_kw, "module",
            "{dir}: ddms_hosts iterates over a module"
        );
        let (call, _) = env.called_module(host_module);
        assert!(
            attr(call, "for_each").is_some(),
            "{dir}: module \"{host_module}\" needs for_each, so `for name, host in …` names hosts"
        );
        let fields = object_fields(&hosts.value_expr)
            .unwrap_or_else(|| panic!("{dir}: ddms_hosts items must be objects"));
        let keys: BTreeSet<&str> = fields.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            BTreeSet::from(["name", "address", "ssh_user", "ssh_port"]),
            "{dir}: ddms_hosts fields"
        );
        let item = hosts.value_var.as_str();
        let key = hosts.key_var.as_ref().map(|k| k.as_str());
        for (field, value) in fields {
            let path = traversal_path(value)
                .unwrap_or_else(|| panic!("{dir}: ddms_hosts.{field} must be a reference"));
            match path.as_slice() {
                [only] if Some(only.as_str()) == key && field == "name" => {}
                [var, output] if var == item => {
                    let expected = match field.as_str() {
                        "ssh_port" => Some("number"),
                        "ssh_user" => Some("string"),
                        _ => None,
                    };
                    env.assert_module_output(host_module, output, expected);
                }
                other => panic!("{dir}: ddms_hosts.{field} = {other:?} is not a host output"),
            }
        }

        let fields = object_fields(env.output("backup_bucket"))
            .unwrap_or_else(|| panic!("{dir}: backup_bucket must be an object"));
        let keys: BTreeSet<&str> = fields.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            BTreeSet::from(["name", "region"]),
            "{dir}: backup_bucket fields"
        );
        for (field, value) in fields {
            match traversal_path(value).as_deref() {
                Some([m, module, output]) if m == "module" => {
                    env.assert_module_output(module, output, None);
                }
                other => panic!("{dir}: backup_bucket.{field} = {other:?} is not a module output"),
            }
        }
    }
}

/// Standard module structure: the four files, and every variable typed and described.
#[test]
fn every_terraform_variable_has_type_and_description() {
    let dirs = module_dirs();
    assert!(dirs.len() >= 4, "modules and envs: {dirs:?}");
    for dir in dirs {
        for file in [
            "main.tf",
            "variables.tf",
            "outputs.tf",
            "versions.tf",
            "README.md",
        ] {
            assert!(dir.join(file).is_file(), "{}: no {file}", dir.display());
        }
        for variable in blocks(&tf_module(&dir), "variable") {
            let name = label(variable);
            assert!(
                attr(variable, "type").is_some(),
                "{}: variable \"{name}\" has no type",
                dir.display()
            );
            match attr(variable, "description") {
                Some(Expression::String(d)) if !d.trim().is_empty() => {}
                _ => panic!("{}: variable \"{name}\" has no description", dir.display()),
            }
        }
    }
}

/// Every `module` call points at a module here, passes only variables it declares and every
/// variable it requires.
#[test]
fn terraform_module_calls_match_their_modules() {
    const META: [&str; 6] = [
        "source",
        "for_each",
        "count",
        "depends_on",
        "providers",
        "version",
    ];
    let mut calls = 0;
    for dir in module_dirs() {
        for call in blocks(&tf_module(&dir), "module") {
            calls += 1;
            let name = label(call);
            let Some(Expression::String(source)) = attr(call, "source") else {
                panic!(
                    "{}: module \"{name}\" needs a literal source",
                    dir.display()
                );
            };
            let target = dir.join(source);
            assert!(
                target.is_dir(),
                "{}: module \"{name}\": {source} does not exist",
                dir.display()
            );
            let module = tf_module(&target);
            let declared: BTreeMap<&str, bool> = blocks(&module, "variable")
                .map(|v| (label(v), attr(v, "default").is_some()))
                .collect();
            let passed: BTreeSet<&str> = call
                .body
                .attributes()
                .map(|a| a.key.as_str())
                .filter(|k| !META.contains(k))
                .collect();
            for arg in &passed {
                assert!(
                    declared.contains_key(arg),
                    "{}: module \"{name}\" gets `{arg}`, which {source} does not declare",
                    dir.display()
                );
            }
            for (var, has_default) in &declared {
                assert!(
                    *has_default || passed.contains(var),
                    "{}: module \"{name}\" lacks required `{var}`",
                    dir.display()
                );
            }
        }
    }
    assert!(calls >= 4, "each environment calls both modules");
}

/// Where `terraform test` finds the AWS provider offline: a directory laid out as a
/// `filesystem_mirror` (`registry.terraform.io/hashicorp/aws/…`).
const PROVIDER_MIRROR_ENV: &str = "DDMS_TF_PROVIDER_MIRROR";
const PROVIDER_MIRROR_DEFAULT: &str = "/opt/tf-plugins";

/// Every `terraform test` suite (environments and modules with a `tests/` directory) passes
/// with its mocked provider, when terraform and a provider mirror are at hand: the mocks
/// need the provider's schema, which cannot be downloaded here. Runs on a copy of
/// `terraform/`, so `init` leaves nothing in the tree.
#[test]
fn terraform_test_suites_pass_with_mocked_providers() {
    let mirror = std::env::var(PROVIDER_MIRROR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(PROVIDER_MIRROR_DEFAULT));
    let terraform_runs = Command::new("terraform").arg("version").output().is_ok();
    if !terraform_runs || !mirror.join("registry.terraform.io").is_dir() {
        eprintln!(
            "tidy: WARNING: terraform or a provider mirror ({}; set {PROVIDER_MIRROR_ENV}) is              missing: `terraform test` NOT run",
            mirror.display()
        );
        return;
    }
    let dir = super::tempdir("terraform-test");
    let copy = dir.join("terraform");
    let status = Command::new("cp")
        .arg("-r")
        .arg(root().join("terraform"))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success(), "copying terraform/");
    let config = dir.join("terraform.rc");
    fs::write(
        &config,
        format!(
            "provider_installation {{\n  filesystem_mirror {{\n    path = {:?}\n  }}\n}}\n",
            mirror.display().to_string()
        ),
    )
    .unwrap();
    let suites: Vec<PathBuf> = module_dirs()
        .into_iter()
        .filter(|d| d.join("tests").is_dir())
        .map(|d| copy.join(d.strip_prefix(root().join("terraform")).unwrap()))
        .collect();
    assert!(suites.len() >= 3, "test suites: {suites:?}");
    for suite in &suites {
        for args in [
            &["init", "-backend=false", "-input=false", "-no-color"][..],
            &["test", "-no-color"][..],
        ] {
            let output = Command::new("terraform")
                .args(args)
                .current_dir(suite)
                .env("TF_CLI_CONFIG_FILE", &config)
                .env("TF_IN_AUTOMATION", "1")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success(),
                "terraform {} in {}:\n{stdout}{}",
                args[0],
                suite.display(),
                String::from_utf8_lossy(&output.stderr)
            );
            if args[0] == "test" {
                assert!(
                    stdout.contains(" 0 failed"),
                    "{}: {stdout}",
                    suite.display()
                );
            }
        }
    }
    fs::remove_dir_all(dir).unwrap();
}

/// Every environment's `terraform test` (mocked provider; run by the CI terraform job, and
/// wherever a provider mirror is at hand) covers the three layouts and the refused ones.
#[test]
fn terraform_envs_test_every_layout() {
    for env in envs() {
        let file = env.dir.join("tests/layouts.tftest.hcl");
        let text = fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for needle in [
            "mock_provider \"aws\"",
            "database_tier       = \"rds\"",
            "single_host = true",
            "expect_failures = [terraform_data.layout]",
        ] {
            assert!(text.contains(needle), "{} lacks `{needle}`", file.display());
        }
    }
}
