//! Repository rules for the deployment distribution that cannot run for real here: Terraform
//! providers and GitHub are out of reach, so what can be checked locally is checked with the
//! real parsers (terraform fmt, hcl-rs, a YAML parser, cargo-dist); `terraform validate` and
//! tflint run in the GitHub `ci` workflow. The Nix files have their own module, `nix.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use hcl::expr::{Expression, ObjectKey, TraversalOperator};
use hcl::{Block, Body};
use yaml_serde::Value;

use super::root;

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

// ── GitHub workflows ────────────────────────────────────────────────────────────────────────

fn workflow(name: &str) -> Value {
    let path = root().join(".github/workflows").join(name);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

fn get<'a>(value: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(value, |v, key| {
        v.get(*key)
            .unwrap_or_else(|| panic!("missing `{}`", path.join(".")))
    })
}

fn text(value: &Value) -> String {
    yaml_serde::to_string(value).unwrap()
}

/// Every workflow parses and has a trigger and jobs; each job runs somewhere and each step
/// runs or uses something. actionlint, when installed, checks them fully.
#[test]
fn workflows_are_well_formed() {
    let names = workflow_names();
    for expected in ["ci.yml", "deploy.yml", "release.yml"] {
        assert!(names.iter().any(|n| n == expected), "no {expected}");
    }
    for name in &names {
        let wf = workflow(name);
        assert!(wf.get("on").is_some(), "{name}: no `on` trigger");
        let jobs = get(&wf, &["jobs"])
            .as_mapping()
            .unwrap_or_else(|| panic!("{name}: jobs is not a mapping"));
        assert!(!jobs.is_empty(), "{name}: no jobs");
        for (id, job) in jobs {
            let id = id.as_str().unwrap();
            if job.get("uses").is_some() {
                continue; // a reusable workflow call
            }
            assert!(
                job.get("runs-on").is_some(),
                "{name}: job {id} has no runs-on"
            );
            let steps = get(job, &["steps"]).as_sequence().unwrap();
            for step in steps {
                assert!(
                    step.get("run").is_some() || step.get("uses").is_some(),
                    "{name}: job {id} has a step that neither runs nor uses: {step:?}"
                );
            }
        }
    }
    match Command::new("actionlint")
        .arg("-no-color")
        .current_dir(root())
        .output()
    {
        Ok(output) => assert!(
            output.status.success(),
            "actionlint:\n{}",
            String::from_utf8_lossy(&output.stdout)
        ),
        Err(_) => eprintln!(
            "tidy: WARNING: actionlint is not on PATH: workflows only parsed here \
             (the GitHub lint job runs actionlint)"
        ),
    }
}

fn workflow_names() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(root().join(".github/workflows"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yml") || name.ends_with(".yaml"))
        .collect();
    names.sort();
    names
}

/// Every `uses:` of a workflow (steps and reusable-workflow jobs), as the YAML parser reads it.
fn uses_of(workflow: &Value) -> Vec<String> {
    let mut uses = Vec::new();
    let Some(jobs) = workflow.get("jobs").and_then(Value::as_mapping) else {
        return uses;
    };
    for job in jobs.values() {
        uses.extend(job.get("uses").and_then(Value::as_str).map(str::to_owned));
        for step in job
            .get("steps")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            uses.extend(step.get("uses").and_then(Value::as_str).map(str::to_owned));
        }
    }
    uses
}

/// A remote action or reusable workflow pinned by commit: `owner/repo[/path]@<40 hex>`.
struct Pin {
    action: String,
    commit: String,
}

/// The `uses:` lines of `text` that do not pin a remote action by full commit SHA with the
/// release named in a trailing comment (`owner/repo@<sha> # v1.2.3`, as Dependabot keeps
/// them); local (`./`) actions and `docker://` images are not actions to pin this way. A tag
/// or branch can be moved to other code by whoever controls the action's repository; a commit
/// cannot. Also returns the pins, and fails when the lines and the YAML disagree (a `uses:`
/// written in a form this line scan does not see).
fn check_action_pins(name: &str, text: &str) -> (Vec<Pin>, Vec<String>) {
    let mut pins = Vec::new();
    let mut offences = Vec::new();
    let mut seen = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.trim_start().trim_start_matches("- ").trim_start();
        let Some(rest) = code.strip_prefix("uses:") else {
            continue;
        };
        let (value, comment) = match rest.split_once(" #") {
            Some((value, comment)) => (value, comment.trim()),
            None => (rest, ""),
        };
        let value = value.trim().trim_matches(['"', '\'']);
        seen.push(value.to_owned());
        if value.starts_with("./") || value.starts_with("docker://") {
            continue;
        }
        let at = format!("{name}:{}: `{}`", n + 1, line.trim());
        match value.split_once('@') {
            Some((action, commit))
                if commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                if comment.is_empty() {
                    offences.push(format!("{at}: no `# <release>` comment after the commit"));
                }
                pins.push(Pin {
                    action: action.to_ascii_lowercase(),
                    commit: commit.to_ascii_lowercase(),
                });
            }
            _ => offences.push(format!("{at}: not pinned by a full commit SHA")),
        }
    }
    let parsed: Value = yaml_serde::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut from_yaml = uses_of(&parsed);
    from_yaml.sort();
    seen.sort();
    assert_eq!(
        seen, from_yaml,
        "{name}: the `uses:` lines differ from what the YAML holds (write each `uses:` on its own line)"
    );
    (pins, offences)
}

/// Every remote action is pinned by commit (see `check_action_pins`).
#[test]
fn actions_are_pinned_by_commit() {
    let mut offences = Vec::new();
    for name in workflow_names() {
        let text = fs::read_to_string(root().join(".github/workflows").join(&name)).unwrap();
        offences.extend(check_action_pins(&name, &text).1);
    }
    assert!(
        offences.is_empty(),
        "pin each action by the commit of a release tag, the tag in a comment (`git ls-remote \
         https://github.com/OWNER/REPO 'refs/tags/vX.Y.Z*'`: the `^{{}}` line of an annotated \
         tag); release.yml's pins are [dist.github-action-commits] in dist-workspace.toml:\n{}",
        offences.join("\n")
    );
}

#[test]
fn a_tag_pinned_action_is_refused() {
    let workflow = "on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n      \
                    - uses: actions/checkout@v6\n      \
                    - uses: actions/checkout@d23441a48e516b6c34aea4fa41551a30e30af803\n      \
                    - uses: \"actions/cache@0123456789abcdef0123456789abcdef01234567\" # v5.0.0\n      \
                    - uses: ./.github/actions/local\n      \
                    - uses: docker://alpine:3\n  \
                    b:\n    uses: octo/wf/.github/workflows/x.yml@main\n";
    let (pins, offences) = check_action_pins("test.yml", workflow);
    assert_eq!(pins.len(), 2, "the two commit pins");
    assert_eq!(offences.len(), 3, "{offences:#?}");
    assert!(offences[0].contains("test.yml:6") && offences[0].contains("not pinned"));
    assert!(offences[1].contains("test.yml:7") && offences[1].contains("no `# <release>`"));
    assert!(offences[2].contains("test.yml:12") && offences[2].contains("not pinned"));
}

/// One commit per action across all workflows: Dependabot moves the pins of every workflow but
/// release.yml, which dist generates from `[dist.github-action-commits]` in
/// dist-workspace.toml; this is what tells to move that one too.
#[test]
fn every_action_is_pinned_to_one_commit() {
    let mut commits: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for name in workflow_names() {
        let text = fs::read_to_string(root().join(".github/workflows").join(&name)).unwrap();
        for pin in check_action_pins(&name, &text).0 {
            let files = commits
                .entry(pin.action)
                .or_default()
                .entry(pin.commit)
                .or_default();
            if !files.contains(&name) {
                files.push(name.clone());
            }
        }
    }
    let split: Vec<String> = commits
        .iter()
        .filter(|(_, by_commit)| by_commit.len() > 1)
        .map(|(action, by_commit)| format!("{action}: {by_commit:?}"))
        .collect();
    assert!(
        split.is_empty(),
        "actions pinned to more than one commit (for release.yml: set the commit in \
         dist-workspace.toml [dist.github-action-commits], then `dist generate`):\n{}",
        split.join("\n")
    );
}

/// zizmor's security audit of the workflows and dependabot.yml finds nothing: no template
/// injection, no credentials left in checkouts, least-privilege permissions, no caches where a
/// release is published, pinned actions. Offline, its online audits aside (this machine reaches
/// no GitHub). What is accepted is ignored with its reason: inline, or in .github/zizmor.yml
/// for the generated release.yml.
#[test]
fn workflows_pass_zizmor() {
    let output = Command::new("zizmor")
        .args([
            "--offline",
            "--strict-collection",
            "--no-progress",
            "--color=never",
            ".",
        ])
        .current_dir(root())
        .output()
        .expect("zizmor is installed (`pip install zizmor==1.33.1`; .ci/run does it)");
    assert!(
        output.status.success(),
        "zizmor finds problems in the GitHub workflows (fix them, or ignore one with \
         `# zizmor: ignore[<audit>]` and the reason it is safe):\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// compose.yaml runs, unless told otherwise, the image that the Release workflow publishes for
/// this version: `ghcr.io/<the GitHub owner of Cargo.toml's repository>/ddms:<version>`, which is
/// what publish-image.yml pushes. A version bump moves both.
#[test]
fn compose_defaults_to_the_published_image() {
    let manifest = fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let field = |key: &str| {
        manifest
            .lines()
            .find_map(|line| {
                line.strip_prefix(key)?
                    .trim()
                    .strip_prefix('=')?
                    .trim()
                    .strip_prefix('"')?
                    .strip_suffix('"')
            })
            .unwrap_or_else(|| panic!("Cargo.toml: no {key}"))
            .to_owned()
    };
    let version = field("version");
    let repository = field("repository");
    let owner = repository
        .strip_prefix("https://github.com/")
        .and_then(|path| path.split('/').next())
        .unwrap_or_else(|| panic!("Cargo.toml: repository {repository} is not on GitHub"))
        .to_ascii_lowercase();
    let expected = format!("${{APP_IMAGE:-ghcr.io/{owner}/ddms:{version}}}");
    let compose = fs::read_to_string(root().join("ops/container/compose.yaml")).unwrap();
    assert!(
        compose.contains(&format!("image: {expected}")),
        "ops/container/compose.yaml: ddms' image is `{expected}` (this version's release)"
    );
    let publish = text(get(&workflow("publish-image.yml"), &["jobs"]));
    assert!(
        publish.contains("ghcr.io/${GITHUB_REPOSITORY_OWNER,,}/ddms")
            && publish.contains("$IMAGE:$VERSION"),
        "publish-image.yml pushes ghcr.io/<owner>/ddms:<version>"
    );
}

/// Dependabot keeps the action pins and the crates moving, and leaves release.yml to dist.
#[test]
fn dependabot_updates_actions_and_crates() {
    let path = root().join(".github/dependabot.yml");
    let config: Value = yaml_serde::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    let updates = get(&config, &["updates"]).as_sequence().unwrap();
    let of = |ecosystem: &str| {
        updates
            .iter()
            .find(|u| u.get("package-ecosystem").and_then(Value::as_str) == Some(ecosystem))
            .unwrap_or_else(|| panic!("dependabot.yml: no {ecosystem} updates"))
    };
    assert_eq!(
        get(of("cargo"), &["directory"]).as_str(),
        Some("/"),
        "the workspace's Cargo.lock"
    );
    let excluded = text(get(of("github-actions"), &["exclude-paths"]));
    assert!(
        excluded.contains(".github/workflows/release.yml"),
        "release.yml is dist's to write: {excluded}"
    );
}

/// The deploy workflow: manual (environment + version) and after a successful Release run of a
/// pushed `v*` tag, one deploy per environment at a time and never cancelled halfway, protected
/// by a GitHub environment, the SSH key from a secret, `cargo xtask deploy` doing the work, the
/// report kept.
#[test]
fn deploy_workflow_is_protected_and_serialised() {
    let wf = workflow("deploy.yml");
    let on = get(&wf, &["on"]);
    let inputs = get(on, &["workflow_dispatch", "inputs"]);
    let options: Vec<&str> = get(inputs, &["environment", "options"])
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(options, ["staging", "production"]);
    assert!(inputs.get("version").is_some(), "no version input");
    // workflow_run names the workflow it follows by its `name:`: a renamed release.yml would
    // silently stop the deploys.
    let release_name = get(&workflow("release.yml"), &["name"]).clone();
    let after = get(on, &["workflow_run"]);
    assert_eq!(
        get(after, &["workflows"]).as_sequence().map(Vec::as_slice),
        Some(&[release_name][..]),
        "deploy.yml follows release.yml's runs"
    );
    assert_eq!(text(get(after, &["types"])).trim(), "- completed");

    let jobs = get(&wf, &["jobs"]).as_mapping().unwrap();
    let deploys: Vec<&Value> = jobs
        .values()
        .filter(|job| text(job).contains("cargo xtask deploy"))
        .collect();
    assert_eq!(deploys.len(), 1, "one job runs `cargo xtask deploy`");
    let job = deploys[0];
    assert!(
        job.get("environment").is_some(),
        "deploy job: no environment"
    );
    let condition = get(job, &["if"]).as_str().unwrap();
    for needle in [
        "github.event.workflow_run.conclusion == 'success'",
        "github.event.workflow_run.event == 'push'",
        "startsWith(github.event.workflow_run.head_branch, 'v')",
    ] {
        assert!(
            condition.contains(needle),
            "deploy job runs only after a released tag: no `{needle}` in {condition}"
        );
    }
    let concurrency = get(job, &["concurrency"]);
    let group = get(concurrency, &["group"]).as_str().unwrap();
    assert!(
        group.starts_with("deploy-") && group.contains("environment"),
        "concurrency group per environment: {group}"
    );
    assert_eq!(
        get(concurrency, &["cancel-in-progress"]).as_bool(),
        Some(false),
        "a running deploy is never cancelled"
    );
    let job_text = text(job);
    for needle in [
        "secrets.DEPLOY_SSH_KEY",
        "chmod 600",
        "known_hosts",
        "--env",
        "--version",
        "actions/upload-artifact",
    ] {
        assert!(job_text.contains(needle), "deploy job lacks `{needle}`");
    }
}

/// ci.yml runs what cannot run here: `nix flake check`, `terraform validate`, tflint, and
/// cargo-deny with the RustSec advisories (deny.toml).
#[test]
fn ci_workflow_checks_nix_and_terraform() {
    let wf = workflow("ci.yml");
    let all = text(get(&wf, &["jobs"]));
    for needle in [
        "nix flake check",
        "terraform validate",
        "tflint",
        "terraform -chdir=\"$dir\" test",
        "actionlint",
        "EmbarkStudios/cargo-deny-action",
    ] {
        assert!(all.contains(needle), "ci.yml lacks `{needle}`");
    }
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

/// The ci workflow's test job is the project's own CI script, `.ci/run`, with nothing
/// installed beside it: what it needs is installed by the script, for both.
#[test]
fn ci_workflow_runs_the_ci_script() {
    let wf = workflow("ci.yml");
    let jobs = get(&wf, &["jobs"]).as_mapping().unwrap();
    let runs = |job: &Value| -> Vec<String> {
        job.get("steps")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .filter_map(|step| step.get("run").and_then(Value::as_str))
            .map(str::to_owned)
            .collect()
    };
    let script_jobs: Vec<&Value> = jobs
        .values()
        .filter(|job| runs(job).iter().any(|run| run.trim() == "bash .ci/run"))
        .collect();
    assert_eq!(script_jobs.len(), 1, "one ci.yml job runs `bash .ci/run`");
    for run in runs(script_jobs[0]) {
        for installer in ["apt-get", "apt ", "pip ", "pipx", "cargo install", "npm "] {
            assert!(
                !run.contains(installer),
                "the .ci/run job installs beside the script (`{installer}` in `{run}`): \
                 install it in .ci/run instead, so both CIs have it"
            );
        }
    }
}

// ── Release (cargo-dist) ────────────────────────────────────────────────────────────────────

/// The dist plan is generated, and `.github/workflows/release.yml` is exactly what `dist
/// generate` makes from the configuration (dist from PyPI; .ci/run installs it).
#[test]
fn dist_plan_is_generated() {
    let dist = || {
        let mut cmd = Command::new("dist");
        cmd.current_dir(root());
        cmd
    };
    let output = dist()
        .args(["plan", "--output-format=json", "--no-local-paths"])
        .output()
        .expect(
            "dist is installed (`pip install astral-dev-toolchain-cargo-dist==0.33.0`; .ci/run does it)",
        );
    assert!(
        output.status.success(),
        "dist plan: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&output.stdout).expect("a JSON plan");
    let artifacts = plan["artifacts"].to_string();
    for target in ["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"] {
        assert!(
            artifacts.contains(&format!("ddms-{target}.tar.gz")),
            "dist plan has no ddms tarball for {target}"
        );
        assert!(
            artifacts.contains(&format!("ddms-{target}.tar.gz.sha256")),
            "dist plan has no checksum for {target}"
        );
    }
    let output = dist().args(["generate", "--check"]).output().unwrap();
    assert!(
        output.status.success(),
        "release.yml is not what `dist generate` makes (run it):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
