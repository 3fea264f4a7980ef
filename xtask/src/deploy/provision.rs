//! `cargo xtask provision`: an Ansible inventory given or written by hand is provisioned as it
//! is; otherwise the Terraform path, from an empty account to a serving fleet:
//!
//! 1. `terraform init`, then the host names (`terraform console`: `local.host_names`) and an
//!    ed25519 SSH host key for each that has none yet (`<inventory>/host-keys/`, 0700), given
//!    to `terraform apply` as `TF_VAR_ssh_host_keys` (environment, not the command line);
//! 2. `terraform output -json` (or `--from-output FILE`: the same JSON, from anywhere) →
//!    the inventory in `ansible/inventories/<env>/` (`fleet.rs`): hosts.yml, group_vars,
//!    known_hosts; the inventory's own secrets are generated once (0600) and kept (one a
//!    newer layout owns is added to a plain file);
//! 3. TLS material for the fleet's names (`cargo xtask certs`, kept when present);
//! 4. every host's `cloud-init status --wait` over ssh, verified against the pinned keys;
//! 5. `ansible-playbook site.yml`.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use xshell::{cmd, Shell};

use super::fleet::{self, Fleet, GENERATED};
use super::Options;

pub fn provision(sh: &Shell, options: &Options) -> Result<()> {
    let root = crate::project_root();
    let site = root.join("ansible/site.yml");
    let args = &options.playbook_args;
    let env_inventory = root
        .join("ansible/inventories")
        .join(&options.env)
        .join("hosts.yml");
    if let Some(inventory) = &options.inventory {
        cmd!(sh, "ansible-playbook -i {inventory} {site} {args...}").run()?;
        return Ok(());
    }
    // A hand-written inventory for the environment wins; one this command wrote is
    // regenerated from Terraform.
    if options.from_output.is_none() && env_inventory.exists() && !generated(&env_inventory) {
        cmd!(sh, "ansible-playbook -i {env_inventory} {site} {args...}").run()?;
        return Ok(());
    }
    let dir = match &options.out {
        Some(dir) => std::path::absolute(dir)?,
        None => env_inventory.parent().expect("has a parent").to_path_buf(),
    };
    std::fs::create_dir_all(dir.join("group_vars/all"))?;
    let key = std::env::var_os("DDMS_DEPLOY_SSH_KEY").map(PathBuf::from);
    let outputs = match &options.from_output {
        Some(file) => {
            std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?
        }
        None => terraform_apply(sh, &root, options, &dir)?,
    };
    let fleet = fleet::parse(&outputs, key.as_deref())?;
    let inventory = write_inventory(&fleet, &dir)?;
    eprintln!("provision: inventory written to {}", dir.display());
    wait_for_cloud_init(&fleet, &dir.join("known_hosts"), options.cloud_init_timeout)?;
    cmd!(sh, "ansible-playbook -i {inventory} {site} {args...}").run()?;
    Ok(())
}

/// Whether `path` is an inventory `provision` wrote.
fn generated(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|text| text.starts_with(GENERATED))
}

/// init, host keys, apply; the outputs.
fn terraform_apply(sh: &Shell, root: &Path, options: &Options, inventory: &Path) -> Result<String> {
    let tf = root.join("terraform/envs").join(&options.env);
    ensure!(
        tf.is_dir(),
        "no Ansible inventory and no Terraform environment {}",
        tf.display()
    );
    cmd!(sh, "terraform -chdir={tf} init -input=false").run()?;
    let names = cmd!(sh, "terraform -chdir={tf} console")
        .stdin("jsonencode(local.host_names)\n")
        .quiet()
        .read()
        .context("terraform console: local.host_names")?;
    // console prints the JSON as an HCL string literal.
    let names: String = serde_json::from_str(names.trim()).context("host names")?;
    let names: Vec<String> = serde_json::from_str(&names).context("host names")?;
    let keys = host_keys(&inventory.join("host-keys"), &names)?;
    let approve = options.auto_approve.then_some("-auto-approve");
    cmd!(sh, "terraform -chdir={tf} apply -input=false {approve...}")
        .env("TF_VAR_ssh_host_keys", keys)
        .run()?;
    cmd!(sh, "terraform -chdir={tf} output -json")
        .quiet()
        .read()
        .context("terraform output -json")
}

/// The `ssh_host_keys` variable (JSON) for `names`, generating the keys that do not exist
/// yet. They stay: a host keeps its key across applies, and replacing a key is deleting its
/// file (and re-creating the host).
fn host_keys(dir: &Path, names: &[String]) -> Result<String> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let mut keys = serde_json::Map::new();
    for name in names {
        ensure!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "host name `{name}` cannot be a file name"
        );
        let file = dir.join(name);
        if !file.exists() {
            let status = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C"])
                .arg(format!("{name} host key"))
                .arg("-f")
                .arg(&file)
                .stdin(Stdio::null())
                .status()
                .context("run ssh-keygen")?;
            ensure!(status.success(), "ssh-keygen for {name}: {status}");
        }
        keys.insert(
            name.clone(),
            serde_json::json!({
                "private_key": std::fs::read_to_string(&file)?,
                "public_key": std::fs::read_to_string(file.with_extension("pub"))?,
            }),
        );
    }
    Ok(serde_json::Value::Object(keys).to_string())
}

/// Writes the inventory's files under `dir`; returns hosts.yml's path.
fn write_inventory(fleet: &Fleet, dir: &Path) -> Result<PathBuf> {
    let files = fleet::files(fleet, dir)?;
    let vars = dir.join("group_vars/all");
    std::fs::write(dir.join("hosts.yml"), &files.hosts)?;
    std::fs::write(vars.join("terraform.yml"), &files.vars)?;
    std::fs::write(dir.join("known_hosts"), &files.known_hosts)?;
    write_secret(
        &vars.join("terraform_secrets.yml"),
        &files.terraform_secrets,
    )?;
    // The inventory's own secrets: made once, never rewritten (rotating one is editing the
    // file; ansible-vault may encrypt it, after which this only checks that it exists). One
    // that a newer layout owns (RDS's `ddms_database_password`) is added to a plain file.
    let secrets = vars.join("secrets.yml");
    let names = fleet::owned_secret_names(fleet);
    let existed = secrets.exists();
    let (mut text, missing) = if !existed {
        let header =
            "---\n# Generated once by `cargo xtask provision`; kept. Secret: mode 0600, not in git.\n";
        (header.to_string(), names.to_vec())
    } else {
        let text = std::fs::read_to_string(&secrets)
            .with_context(|| format!("read {}", secrets.display()))?;
        if text.starts_with("$ANSIBLE_VAULT") {
            eprintln!(
                "provision: {} is encrypted; it must hold {}",
                secrets.display(),
                names.join(", ")
            );
            (text, Vec::new())
        } else {
            let missing = missing_secrets(&text, names)
                .with_context(|| format!("read {}", secrets.display()))?;
            (text, missing)
        }
    };
    if !missing.is_empty() {
        if !text.ends_with('\n') {
            text.push('\n');
        }
        for name in &missing {
            text.push_str(&format!("{name}: \"{}\"\n", random_hex(32)?));
        }
        write_secret(&secrets, &text)?;
        if existed {
            eprintln!(
                "provision: added {} to {}",
                missing.join(", "),
                secrets.display()
            );
        }
    }
    crate::certs::run(&crate::certs::Options {
        out: dir.join("certs"),
        hosts: fleet.certificate_names(),
        devices: Vec::new(),
        days: 825,
        force: false,
    })?;
    Ok(dir.join("hosts.yml"))
}

/// The names among `names` that the YAML mapping `text` (a plain secrets.yml) lacks.
fn missing_secrets<'a>(text: &str, names: &[&'a str]) -> Result<Vec<&'a str>> {
    let value: yaml_serde::Value = yaml_serde::from_str(text)?;
    let map = value.as_mapping();
    ensure!(
        map.is_some() || value.is_null(),
        "not a YAML mapping of secrets"
    );
    Ok(names
        .iter()
        .filter(|name| !map.is_some_and(|m| m.contains_key(**name)))
        .copied()
        .collect())
}

/// Writes `text` to `path` readable by its owner only (created so: never briefly wider).
fn write_secret(path: &Path, text: &str) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .context("read /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Waits until every host accepts ssh (verified against `known_hosts`) and cloud-init is done
/// there, `timeout_s` seconds at most in all. A host without cloud-init counts as done.
fn wait_for_cloud_init(fleet: &Fleet, known_hosts: &Path, timeout_s: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(timeout_s);
    let hosts = fleet
        .ddms
        .iter()
        .chain(fleet.service.iter().map(|s| &s.host));
    for host in hosts {
        eprintln!("provision: waiting for cloud-init on {}", host.name);
        loop {
            let mut ssh = Command::new("ssh");
            ssh.args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"])
                .arg("-o")
                .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
                .args(["-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"])
                .args(["-p", &host.port.to_string()]);
            if let Some(key) = &host.key {
                ssh.arg("-i").arg(key).args(["-o", "IdentitiesOnly=yes"]);
            }
            let target = match &host.user {
                Some(user) => format!("{user}@{}", host.address),
                None => host.address.clone(),
            };
            let output = ssh
                .arg(target)
                .arg("if command -v cloud-init >/dev/null 2>&1; then cloud-init status --wait >/dev/null; fi")
                .stdin(Stdio::null())
                .output()
                .context("run ssh")?;
            match output.status.code() {
                Some(0) => break,
                // cloud-init ≥ 23.4: done, with recoverable errors.
                Some(2) => {
                    eprintln!(
                        "provision: WARNING: cloud-init on {} finished with recoverable errors",
                        host.name
                    );
                    break;
                }
                Some(1) => bail!(
                    "cloud-init failed on {} (see /var/log/cloud-init-output.log there)",
                    host.name
                ),
                _ if Instant::now() > deadline => bail!(
                    "{} did not become reachable within {timeout_s} s: {}",
                    host.name,
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
                // Not up yet (or sshd not yet on its pinned key): retry.
                _ => std::thread::sleep(Duration::from_secs(5)),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::missing_secrets;

    /// An inventory made before RDS fleets had a role of their own gets the new password; the
    /// secrets it has are kept.
    #[test]
    fn only_the_secrets_a_kept_file_lacks_are_missing() {
        let kept = "---\n# Generated once\nmosquitto_ddms_password: \"a\"\nmosquitto_dynsec_admin_password: \"b\"\n";
        let names = [
            "ddms_database_password",
            "mosquitto_dynsec_admin_password",
            "mosquitto_ddms_password",
        ];
        assert_eq!(
            missing_secrets(kept, &names).unwrap(),
            ["ddms_database_password"]
        );
        assert_eq!(missing_secrets("---\n", &names).unwrap(), names);
        assert!(missing_secrets("- a list\n", &names).is_err());
    }
}
