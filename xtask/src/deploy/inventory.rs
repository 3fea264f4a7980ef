//! Which hosts an environment has: an Ansible inventory (group `ddms`) or the Terraform output
//! `ddms_hosts`. An Ansible inventory is read through `ansible-inventory --list`, as Ansible
//! itself sees it (group_vars/, host_vars/, vault, inventory plugins); without Ansible the
//! YAML file is read directly. Pure parsing here; `resolve` picks the source.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use yaml_serde::{Mapping, Value};

/// The inventory group whose hosts run ddms.
pub const GROUP: &str = "ddms";

/// One host to deploy to, reached with system OpenSSH.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Host {
    /// The inventory name (used in reports).
    pub name: String,
    /// Where ssh connects (`ansible_host`, else the name).
    pub address: String,
    pub port: u16,
    /// `ansible_user`; None leaves it to ssh's own configuration.
    pub user: Option<String>,
    /// `ansible_ssh_private_key_file`.
    pub key: Option<PathBuf>,
    /// `ansible_ssh_common_args` and `ansible_ssh_extra_args`, split on whitespace.
    pub ssh_args: Vec<String>,
}

/// Where the hosts came from, for the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "path", rename_all = "snake_case")]
pub enum Source {
    Ansible(PathBuf),
    Terraform(PathBuf),
}

/// Hosts of group `ddms` in an Ansible YAML inventory, in file order. The group may sit at the
/// top level or under any `children:`; its child groups' hosts count too. Variables apply from
/// `all` down to the host (the nearer wins). A relative key path is taken from `base_dir`, as
/// Ansible takes it from where it runs; callers pass the inventory's directory.
pub fn from_ansible_yaml(text: &str, base_dir: &Path) -> Result<Vec<Host>> {
    let doc: Value = yaml_serde::from_str(text).context("the inventory is not valid YAML")?;
    let top = doc
        .as_mapping()
        .context("the inventory must be a YAML mapping of groups")?;
    let all_vars = top
        .get("all")
        .and_then(|all| all.get("vars"))
        .and_then(Value::as_mapping)
        .cloned()
        .unwrap_or_default();
    let Some((group, inherited)) = find_group(top, GROUP, &all_vars) else {
        bail!("the inventory has no group `{GROUP}`");
    };
    let mut hosts: Vec<(String, Mapping)> = Vec::new();
    collect_hosts(group, &inherited, &mut hosts);
    if hosts.is_empty() {
        bail!("group `{GROUP}` of the inventory has no hosts");
    }
    hosts
        .into_iter()
        .map(|(name, vars)| host_from_vars(name, &vars, base_dir))
        .collect()
}

/// Hosts of group `ddms` (and its child groups, depth first) in the JSON of
/// `ansible-inventory --list`, with every variable Ansible resolved for them.
pub fn from_ansible_inventory_json(text: &str, base_dir: &Path) -> Result<Vec<Host>> {
    let doc: serde_json::Value =
        serde_json::from_str(text).context("`ansible-inventory --list` printed no JSON object")?;
    let mut names: Vec<String> = Vec::new();
    fn collect(
        doc: &serde_json::Value,
        group: &str,
        seen: &mut Vec<String>,
        out: &mut Vec<String>,
    ) {
        if seen.iter().any(|g| g == group) {
            return;
        }
        seen.push(group.to_string());
        let Some(entry) = doc.get(group) else { return };
        let list = |key: &str| {
            entry
                .get(key)
                .and_then(serde_json::Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_else(Vec::new)
        };
        for host in list("hosts") {
            if !out.contains(&host) {
                out.push(host);
            }
        }
        for child in list("children") {
            collect(doc, &child, seen, out);
        }
    }
    if doc.get(GROUP).is_none() {
        bail!("the inventory has no group `{GROUP}`");
    }
    collect(&doc, GROUP, &mut Vec::new(), &mut names);
    if names.is_empty() {
        bail!("group `{GROUP}` of the inventory has no hosts");
    }
    let hostvars = doc.pointer("/_meta/hostvars");
    names
        .into_iter()
        .map(|name| {
            let vars = hostvars
                .and_then(|h| h.get(&name))
                .map(|v| yaml_serde::to_value(v).expect("JSON is YAML"))
                .and_then(|v| v.as_mapping().cloned())
                .unwrap_or_default();
            host_from_vars(name, &vars, base_dir)
        })
        .collect()
}

/// Depth-first search for group `name` among `groups` (a mapping of group name → group),
/// carrying the variables of the groups above it.
fn find_group<'a>(groups: &'a Mapping, name: &str, vars: &Mapping) -> Option<(&'a Value, Mapping)> {
    for (key, group) in groups {
        let vars = merged(vars, group.get("vars"));
        if key.as_str() == Some(name) {
            return Some((group, vars));
        }
        if let Some(children) = group.get("children").and_then(Value::as_mapping) {
            if let Some(found) = find_group(children, name, &vars) {
                return Some(found);
            }
        }
    }
    None
}

fn collect_hosts(group: &Value, vars: &Mapping, out: &mut Vec<(String, Mapping)>) {
    if let Some(hosts) = group.get("hosts").and_then(Value::as_mapping) {
        for (name, host_vars) in hosts {
            let Some(name) = scalar(name) else { continue };
            let vars = merged(vars, Some(host_vars));
            match out.iter_mut().find(|(n, _)| *n == name) {
                Some((_, existing)) => *existing = merged(existing, Some(&Value::Mapping(vars))),
                None => out.push((name, vars)),
            }
        }
    }
    if let Some(children) = group.get("children").and_then(Value::as_mapping) {
        for child in children.values() {
            let vars = merged(vars, child.get("vars"));
            collect_hosts(child, &vars, out);
        }
    }
}

fn merged(base: &Mapping, over: Option<&Value>) -> Mapping {
    let mut out = base.clone();
    if let Some(Value::Mapping(over)) = over {
        for (k, v) in over {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

/// The variables that say how to reach a host.
const CONNECTION_VARS: [&str; 9] = [
    "ansible_host",
    "ansible_port",
    "ansible_ssh_port",
    "ansible_user",
    "ansible_ssh_user",
    "ansible_ssh_private_key_file",
    "ansible_private_key_file",
    "ansible_ssh_common_args",
    "ansible_ssh_extra_args",
];

/// A YAML scalar as text (`ansible_port: 2222` and `ansible_port: "2222"` alike).
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn host_from_vars(name: String, vars: &Mapping, base_dir: &Path) -> Result<Host> {
    for key in CONNECTION_VARS {
        if let Some(value) = vars.get(key).and_then(scalar).filter(|v| v.contains("{{")) {
            bail!(
                "host `{name}`: {key} is a template (`{}`), which only Ansible evaluates: give \
                 the value itself",
                value.escape_debug()
            );
        }
    }
    let get = |key: &str| vars.get(key).and_then(scalar);
    let port = match get("ansible_port").or_else(|| get("ansible_ssh_port")) {
        Some(port) => port
            .parse()
            .with_context(|| format!("host `{name}`: ansible_port `{port}` is not a port"))?,
        None => 22,
    };
    let key = get("ansible_ssh_private_key_file")
        .or_else(|| get("ansible_private_key_file"))
        .map(|k| base_dir.join(k));
    let ssh_args = ["ansible_ssh_common_args", "ansible_ssh_extra_args"]
        .iter()
        .filter_map(|k| get(k))
        .flat_map(|args| {
            args.split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    checked(Host {
        address: get("ansible_host").unwrap_or_else(|| name.clone()),
        user: get("ansible_user").or_else(|| get("ansible_ssh_user")),
        port,
        key,
        ssh_args,
        name,
    })
}

/// Refuses a host whose address or user ssh and scp could read as an option (`-oProxyCommand=…`
/// runs a command here): they are passed after `--` as well, but such a name is a mistake or
/// an attack either way.
pub(crate) fn checked(host: Host) -> Result<Host> {
    let name = &host.name;
    if host.address.is_empty() || host.address.starts_with('-') {
        bail!(
            "host `{name}`: address `{}` is not a host name (it must not be empty or start with '-')",
            host.address.escape_debug()
        );
    }
    if let Some(user) = &host.user {
        if user.is_empty() || user.starts_with('-') {
            bail!(
                "host `{name}`: user `{}` is not a user name (it must not be empty or start with '-')",
                user.escape_debug()
            );
        }
        // `@` would shift where ssh splits user from host.
        if user.contains('@') {
            bail!(
                "host `{name}`: user `{}` must not contain '@'",
                user.escape_debug()
            );
        }
    }
    Ok(host)
}

/// Hosts from `terraform output -json`: output `ddms_hosts`, a list of
/// `{name, address, ssh_user, ssh_port}`. Terraform has no key file to give: `key` (e.g. from
/// `DDMS_DEPLOY_SSH_KEY`) applies to every host, else ssh's own configuration decides.
pub fn from_terraform_json(text: &str, key: Option<&Path>) -> Result<Vec<Host>> {
    #[derive(serde::Deserialize)]
    struct Output {
        value: Vec<TfHost>,
    }
    #[derive(serde::Deserialize)]
    struct TfHost {
        name: String,
        address: String,
        ssh_user: Option<String>,
        ssh_port: Option<u16>,
    }
    let outputs: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(text).context("`terraform output -json` is not a JSON object")?;
    let Some(output) = outputs.get("ddms_hosts") else {
        bail!("terraform has no output `ddms_hosts` (apply the environment first)");
    };
    let output: Output = serde_json::from_value(output.clone())
        .context("output `ddms_hosts` must be a list of {name, address, ssh_user, ssh_port}")?;
    if output.value.is_empty() {
        bail!("terraform output `ddms_hosts` is empty");
    }
    output
        .value
        .into_iter()
        .map(|h| {
            checked(Host {
                name: h.name,
                address: h.address,
                port: h.ssh_port.unwrap_or(22),
                user: h.ssh_user,
                key: key.map(Path::to_path_buf),
                ssh_args: Vec::new(),
            })
        })
        .collect()
}

/// How an Ansible inventory file is listed: runs `ansible-inventory -i FILE --list` and returns
/// its standard output, or `None` when the program is not installed — then the YAML file itself
/// is read (group_vars/ and host_vars/ do not apply). [`ansible_inventory_list`] in use.
pub type ListInventory<'a> = &'a dyn Fn(&Path) -> Result<Option<String>>;

/// Hosts of an Ansible inventory file.
pub fn read_ansible(path: &Path, list: ListInventory) -> Result<Vec<Host>> {
    let base = path.parent().unwrap_or(Path::new("."));
    if let Some(json) = list(path)? {
        return from_ansible_inventory_json(&json, base)
            .with_context(|| format!("inventory {} (ansible-inventory --list)", path.display()));
    }
    eprintln!(
        "warning: ansible-inventory is not installed: reading {} as plain YAML \
         (group_vars/, host_vars/ and vault do not apply)",
        path.display()
    );
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read inventory {}", path.display()))?;
    from_ansible_yaml(&text, base).with_context(|| format!("inventory {}", path.display()))
}

/// `ansible-inventory -i FILE --list`; `None` when ansible-inventory is not installed.
pub fn ansible_inventory_list(path: &Path) -> Result<Option<String>> {
    let output = match std::process::Command::new("ansible-inventory")
        .arg("-i")
        .arg(path)
        .arg("--list")
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context("run ansible-inventory"),
    };
    if !output.status.success() {
        bail!(
            "ansible-inventory -i {} --list failed ({}): {}",
            path.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout)
        .map(Some)
        .context("ansible-inventory printed no UTF-8")
}

/// The hosts of environment `env`: `--inventory FILE`, else `ansible/inventories/<env>/hosts.yml`,
/// else `terraform output -json` in `terraform/envs/<env>`.
pub fn resolve(
    root: &Path,
    env: &str,
    inventory: Option<&Path>,
    list: ListInventory,
    terraform_output: impl FnOnce(&Path) -> Result<String>,
) -> Result<(Vec<Host>, Source)> {
    let ansible = inventory
        .map(Path::to_path_buf)
        .unwrap_or_else(|| root.join("ansible/inventories").join(env).join("hosts.yml"));
    if inventory.is_some() || ansible.exists() {
        let hosts = read_ansible(&ansible, list)?;
        return Ok((hosts, Source::Ansible(ansible)));
    }
    let tf_dir = root.join("terraform/envs").join(env);
    if !tf_dir.is_dir() {
        bail!(
            "no inventory for environment `{env}`: neither {} nor {} exists (or pass --inventory)",
            ansible.display(),
            tf_dir.display()
        );
    }
    let text = terraform_output(&tf_dir)?;
    let key = std::env::var_os("DDMS_DEPLOY_SSH_KEY").map(PathBuf::from);
    let hosts = from_terraform_json(&text, key.as_deref())
        .with_context(|| format!("terraform outputs of {}", tf_dir.display()))?;
    Ok((hosts, Source::Terraform(tf_dir)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, address: &str, port: u16, user: Option<&str>) -> Host {
        Host {
            name: name.into(),
            address: address.into(),
            port,
            user: user.map(str::to_string),
            key: None,
            ssh_args: Vec::new(),
        }
    }

    #[test]
    fn ansible_group_under_all_children_gives_its_hosts_in_file_order_with_inherited_vars() {
        let text = r#"
all:
  vars:
    ansible_user: deploy
    ansible_ssh_common_args: "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
  children:
    db:
      hosts:
        db1: { ansible_host: 10.0.0.9 }
    ddms:
      vars:
        ansible_ssh_private_key_file: keys/id_ed25519
      hosts:
        web2:
          ansible_host: 10.0.0.2
          ansible_port: 2222
        web1:
          ansible_host: 10.0.0.1
          ansible_user: root
          ansible_port: "22"
"#;
        let hosts = from_ansible_yaml(text, Path::new("/inv")).unwrap();
        let args: Vec<String> = [
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            hosts,
            vec![
                Host {
                    key: Some("/inv/keys/id_ed25519".into()),
                    ssh_args: args.clone(),
                    ..host("web2", "10.0.0.2", 2222, Some("deploy"))
                },
                Host {
                    key: Some("/inv/keys/id_ed25519".into()),
                    ssh_args: args,
                    ..host("web1", "10.0.0.1", 22, Some("root"))
                },
            ]
        );
    }

    #[test]
    fn ansible_group_at_top_level_with_child_groups_and_absolute_key() {
        let text = r"
ddms:
  hosts:
    a.example.org:
  children:
    canary:
      vars: { ansible_port: 2200 }
      hosts:
        b.example.org:
          ansible_ssh_private_key_file: /abs/key
";
        let hosts = from_ansible_yaml(text, Path::new("/inv")).unwrap();
        assert_eq!(
            hosts,
            vec![
                host("a.example.org", "a.example.org", 22, None),
                Host {
                    key: Some("/abs/key".into()),
                    ..host("b.example.org", "b.example.org", 2200, None)
                },
            ]
        );
    }

    #[test]
    fn ansible_inventory_without_the_group_or_hosts_is_an_error_naming_it() {
        let no_group = "all:\n  children:\n    web:\n      hosts:\n        a:\n";
        let err = from_ansible_yaml(no_group, Path::new(".")).unwrap_err();
        assert!(err.to_string().contains("no group `ddms`"), "{err}");
        let empty = "ddms:\n  hosts: {}\n";
        let err = from_ansible_yaml(empty, Path::new(".")).unwrap_err();
        assert!(err.to_string().contains("has no hosts"), "{err}");
        let bad_port = "ddms:\n  hosts:\n    a:\n      ansible_port: ssh\n";
        let err = from_ansible_yaml(bad_port, Path::new(".")).unwrap_err();
        assert!(err.to_string().contains("not a port"), "{err}");
    }

    #[test]
    fn terraform_output_ddms_hosts_becomes_hosts_with_the_shared_key() {
        let text = r#"{
  "backup_bucket": {"sensitive": false, "type": "string", "value": "b"},
  "ddms_hosts": {
    "sensitive": false,
    "type": ["list", ["object", {"address": "string", "name": "string", "ssh_port": "number", "ssh_user": "string"}]],
    "value": [
      {"name": "ddms-staging-1", "address": "203.0.113.10", "ssh_user": "admin", "ssh_port": 22},
      {"name": "ddms-staging-2", "address": "203.0.113.11", "ssh_user": "admin", "ssh_port": 2222}
    ]
  }
}"#;
        let hosts = from_terraform_json(text, Some(Path::new("/k"))).unwrap();
        assert_eq!(
            hosts,
            vec![
                Host {
                    key: Some("/k".into()),
                    ..host("ddms-staging-1", "203.0.113.10", 22, Some("admin"))
                },
                Host {
                    key: Some("/k".into()),
                    ..host("ddms-staging-2", "203.0.113.11", 2222, Some("admin"))
                },
            ]
        );
    }

    #[test]
    fn hosts_and_users_that_ssh_would_read_as_options_are_refused() {
        for (yaml, needle) in [
            (
                "ddms:\n  hosts:\n    \"-oProxyCommand=touch /tmp/x\":\n",
                "address `-oProxyCommand=touch /tmp/x`",
            ),
            (
                "ddms:\n  hosts:\n    a:\n      ansible_host: -oProxyCommand=x\n",
                "host `a`: address `-oProxyCommand=x`",
            ),
            (
                "ddms:\n  hosts:\n    a:\n      ansible_user: -oProxyCommand=x\n",
                "host `a`: user `-oProxyCommand=x`",
            ),
            (
                "ddms:\n  hosts:\n    a:\n      ansible_ssh_user: \"-F/tmp/c\"\n",
                "user `-F/tmp/c`",
            ),
            ("ddms:\n  hosts:\n    a:\n      ansible_user: x@y\n", "'@'"),
        ] {
            let err = from_ansible_yaml(yaml, Path::new(".")).unwrap_err();
            assert!(format!("{err:#}").contains(needle), "{yaml}: {err:#}");
        }
        let tf = |address: &str, user: &str| {
            format!(
                r#"{{"ddms_hosts": {{"value": [{{"name": "t", "address": "{address}", "ssh_user": "{user}"}}]}}}}"#
            )
        };
        let err = from_terraform_json(&tf("-oProxyCommand=x", "admin"), None).unwrap_err();
        assert!(
            err.to_string()
                .contains("must not be empty or start with '-'"),
            "{err}"
        );
        let err = from_terraform_json(&tf("192.0.2.1", "-lroot"), None).unwrap_err();
        assert!(err.to_string().contains("user `-lroot`"), "{err}");
        // A '-' inside a name is fine.
        assert!(from_terraform_json(&tf("web-1.example.org", "ops-admin"), None).is_ok());
    }

    #[test]
    fn terraform_output_without_ddms_hosts_is_an_error() {
        let err = from_terraform_json("{}", None).unwrap_err();
        assert!(err.to_string().contains("no output `ddms_hosts`"), "{err}");
        let empty = r#"{"ddms_hosts": {"value": []}}"#;
        assert!(from_terraform_json(empty, None).is_err());
    }

    /// The real ansible-inventory: the example inventory's `ansible_user: deploy` sits in
    /// group_vars/all.yml, which a plain YAML read of hosts.yml never sees.
    fn listed(path: &Path) -> Vec<Host> {
        let list = |p: &Path| {
            ansible_inventory_list(p).map(|o| {
                Some(o.expect("ansible-inventory is installed (ansible-core; `cargo xtask setup` installs it)"))
            })
        };
        read_ansible(path, &list).unwrap()
    }

    #[test]
    fn group_vars_apply_through_ansible_inventory() {
        let example = crate::project_root().join("ansible/inventories/example/hosts.yml");
        // What reading the file alone gave (the bug): no user at all.
        let plain =
            from_ansible_yaml(&std::fs::read_to_string(&example).unwrap(), Path::new(".")).unwrap();
        assert!(plain.iter().all(|h| h.user.is_none()), "{plain:?}");
        let hosts = listed(&example);
        assert_eq!(
            hosts,
            vec![
                host("ddms-1.example.net", "192.0.2.11", 22, Some("deploy")),
                host("ddms-2.example.net", "192.0.2.12", 22, Some("deploy")),
            ]
        );

        // group_vars of the group, host_vars of one host (the nearer wins), a child group.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("group_vars")).unwrap();
        std::fs::create_dir_all(dir.path().join("host_vars")).unwrap();
        std::fs::write(
            dir.path().join("hosts.yml"),
            "all:\n  children:\n    ddms:\n      hosts:\n        b: { ansible_host: 192.0.2.2 }\n        a: { ansible_host: 192.0.2.1 }\n      children:\n        canary:\n          hosts:\n            c: { ansible_host: 192.0.2.3 }\n    db:\n      hosts:\n        d: {}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("group_vars/ddms.yml"),
            "ansible_user: deploy\nansible_port: 2222\nansible_ssh_private_key_file: keys/id\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("host_vars/a.yml"), "ansible_user: ops\n").unwrap();
        let hosts = listed(&dir.path().join("hosts.yml"));
        let key = Some(dir.path().join("keys/id"));
        let names: Vec<(&str, Option<&str>, u16)> = hosts
            .iter()
            .map(|h| (h.name.as_str(), h.user.as_deref(), h.port))
            .collect();
        assert_eq!(
            names,
            [
                ("b", Some("deploy"), 2222),
                ("a", Some("ops"), 2222),
                ("c", Some("deploy"), 2222)
            ]
        );
        assert!(hosts.iter().all(|h| h.key == key), "{hosts:?}");

        // A connection variable only Ansible could evaluate is refused, naming it.
        std::fs::write(
            dir.path().join("host_vars/b.yml"),
            "ansible_host: \"{{ lookup('env', 'B') }}\"\n",
        )
        .unwrap();
        let list = |p: &Path| ansible_inventory_list(p);
        let err = read_ansible(&dir.path().join("hosts.yml"), &list).unwrap_err();
        assert!(
            format!("{err:#}").contains("host `b`: ansible_host is a template"),
            "{err:#}"
        );
    }

    #[test]
    fn ansible_inventory_json_without_the_group_is_an_error() {
        let err = from_ansible_inventory_json(
            r#"{"all": {"children": ["web"]}, "web": {"hosts": ["a"]}}"#,
            Path::new("."),
        )
        .unwrap_err();
        assert!(err.to_string().contains("no group `ddms`"), "{err}");
        let err = from_ansible_inventory_json(r#"{"ddms": {}}"#, Path::new(".")).unwrap_err();
        assert!(err.to_string().contains("has no hosts"), "{err}");
    }

    #[test]
    fn resolve_prefers_the_environment_ansible_inventory_over_terraform() {
        let dir = std::env::temp_dir().join(format!("xtask-inv-{}", std::process::id()));
        let inv = dir.join("ansible/inventories/staging");
        std::fs::create_dir_all(&inv).unwrap();
        std::fs::write(inv.join("hosts.yml"), "ddms:\n  hosts:\n    s1:\n").unwrap();
        let (hosts, source) = resolve(&dir, "staging", None, &|_| Ok(None), |_| {
            panic!("terraform must not be asked when an Ansible inventory exists")
        })
        .unwrap();
        assert_eq!(hosts, vec![host("s1", "s1", 22, None)]);
        assert_eq!(source, Source::Ansible(inv.join("hosts.yml")));

        std::fs::create_dir_all(dir.join("terraform/envs/production")).unwrap();
        let (hosts, source) = resolve(&dir, "production", None, &|_| Ok(None), |_| {
            Ok(r#"{"ddms_hosts": {"value": [{"name": "p1", "address": "192.0.2.7", "ssh_user": "admin", "ssh_port": 22}]}}"#.into())
        })
        .unwrap();
        assert_eq!(hosts[0].address, "192.0.2.7");
        assert_eq!(
            source,
            Source::Terraform(dir.join("terraform/envs/production"))
        );
        assert!(resolve(&dir, "nowhere", None, &|_| Ok(None), |_| unreachable!()).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
