//! Terraform outputs → a complete Ansible inventory, as `cargo xtask provision` writes it: the
//! hosts in their groups (`ddms`, and `db` or `mosquitto` for the service host), group_vars
//! that tell the roles where the database and the broker are, the TLS files and the backup
//! bucket, and a known_hosts file with every host's pinned key. Pure: no files, no processes
//! (`provision.rs` does those), so every layout is unit-tested here.
//!
//! The outputs are those of `terraform/envs/*/outputs.tf` (README "Inventory contract").

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;

use super::inventory::{self, Host};

/// First line of every file this module writes; `provision` recognises a generated inventory
/// by it (and regenerates it, where a hand-written one is used as it is).
pub const GENERATED: &str = "# Written by `cargo xtask provision` from the Terraform outputs";

/// What `terraform output -json` says about the fleet.
#[derive(Debug)]
pub struct Fleet {
    pub ddms: Vec<Host>,
    pub service: Vec<ServiceHost>,
    pub private_addresses: BTreeMap<String, String>,
    pub host_keys: BTreeMap<String, String>,
    pub database: Database,
    /// RDS's generated password; `None` in the tiers where the inventory owns the secret.
    pub database_password: Option<String>,
    pub mqtt: Mqtt,
    pub load_balancer: Option<LoadBalancer>,
    pub backup_bucket: Option<Bucket>,
    pub single_host: bool,
}

#[derive(Debug)]
pub struct ServiceHost {
    pub host: Host,
    /// `db` (PostgreSQL and Mosquitto) or `mosquitto` (the broker alone, next to RDS).
    pub groups: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct Database {
    /// `host`, `rds` or `single_host`.
    pub tier: String,
    pub address: String,
    pub port: u16,
    pub name: String,
    pub username: String,
}

#[derive(Debug, Deserialize)]
pub struct Mqtt {
    pub address: String,
    pub port: u16,
    pub public_address: String,
}

#[derive(Debug, Deserialize)]
pub struct LoadBalancer {
    pub dns_name: String,
}

#[derive(Debug, Deserialize)]
pub struct Bucket {
    pub name: String,
    pub region: String,
}

/// Parses `terraform output -json` (each output is `{ "value": … }`). `key` is the deploy key
/// for every host (Terraform names only the EC2 key pair).
pub fn parse(text: &str, key: Option<&Path>) -> Result<Fleet> {
    let ddms = inventory::from_terraform_json(text, key)?;
    let outputs: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(text).context("`terraform output -json` is not a JSON object")?;
    fn output<T: serde::de::DeserializeOwned>(
        outputs: &BTreeMap<String, serde_json::Value>,
        name: &str,
    ) -> Result<T> {
        let value = outputs
            .get(name)
            .and_then(|o| o.get("value"))
            .with_context(|| {
                format!("terraform has no output `{name}` (an environment from before the fleet outputs: apply it again)")
            })?;
        serde_json::from_value(value.clone()).with_context(|| format!("terraform output `{name}`"))
    }
    #[derive(Deserialize)]
    struct TfService {
        name: String,
        address: String,
        ssh_user: Option<String>,
        ssh_port: Option<u16>,
        groups: Vec<String>,
    }
    let service: Vec<TfService> = output(&outputs, "service_hosts")?;
    let service = service
        .into_iter()
        .map(|s| {
            for group in &s.groups {
                ensure!(
                    group == "db" || group == "mosquitto",
                    "service host `{}`: unknown group `{group}`",
                    s.name
                );
            }
            let host = inventory::checked(Host {
                name: s.name,
                address: s.address,
                port: s.ssh_port.unwrap_or(22),
                user: s.ssh_user,
                key: key.map(Path::to_path_buf),
                ssh_args: Vec::new(),
            })?;
            Ok(ServiceHost {
                host,
                groups: s.groups,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let fleet = Fleet {
        ddms,
        service,
        private_addresses: output(&outputs, "private_addresses")?,
        host_keys: output(&outputs, "ssh_host_keys")?,
        database: output(&outputs, "database")?,
        database_password: output(&outputs, "database_password")?,
        mqtt: output(&outputs, "mqtt")?,
        load_balancer: output(&outputs, "load_balancer")?,
        backup_bucket: outputs
            .get("backup_bucket")
            .map(|_| output(&outputs, "backup_bucket"))
            .transpose()?,
        single_host: output(&outputs, "single_host")?,
    };
    check(&fleet)?;
    Ok(fleet)
}

/// What the roles cannot work without, refused before anything connects.
fn check(fleet: &Fleet) -> Result<()> {
    for host in fleet.all_hosts() {
        let Some(key) = fleet.host_keys.get(&host.name) else {
            bail!(
                "terraform output `ssh_host_keys` has no key for `{}`: deploys verify every host",
                host.name
            );
        };
        ensure!(
            key.starts_with("ssh-ed25519 ") && !key.contains(['\n', '\r']),
            "host key of `{}` is not one ssh-ed25519 public key",
            host.name
        );
        ensure!(
            fleet.single_host || fleet.private_addresses.contains_key(&host.name),
            "terraform output `private_addresses` lacks `{}`",
            host.name
        );
    }
    match fleet.database.tier.as_str() {
        "single_host" => ensure!(
            fleet.single_host && fleet.ddms.len() == 1 && fleet.service.is_empty(),
            "single-host mode needs exactly one ddms host and no service host"
        ),
        "host" => ensure!(
            fleet
                .service
                .iter()
                .any(|s| s.groups.iter().any(|g| g == "db")),
            "database tier `host` needs a service host in group `db`"
        ),
        "rds" => {
            ensure!(
                fleet.database_password.is_some(),
                "database tier `rds` needs the output `database_password`"
            );
            ensure!(
                fleet.database.username != RDS_DDMS_ROLE,
                "the RDS master user is `{RDS_DDMS_ROLE}`, the name of ddms' own role: give the master another name"
            );
        }
        other => bail!("unknown database tier `{other}`"),
    }
    Ok(())
}

impl Fleet {
    fn all_hosts(&self) -> impl Iterator<Item = &Host> {
        self.ddms.iter().chain(self.service.iter().map(|s| &s.host))
    }

    /// The names the TLS certificates must carry: the load balancer's, the broker's as ddms
    /// and devices reach it, and every host's addresses.
    pub fn certificate_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .load_balancer
            .iter()
            .map(|lb| lb.dns_name.clone())
            .chain([self.mqtt.address.clone(), self.mqtt.public_address.clone()])
            .chain(self.all_hosts().map(|h| h.address.clone()))
            .chain(self.private_addresses.values().cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// The generated inventory's files (relative to its directory).
#[derive(Debug)]
pub struct Files {
    /// `hosts.yml`.
    pub hosts: String,
    /// `group_vars/all/terraform.yml`: addresses, URLs, files; no secret.
    pub vars: String,
    /// `group_vars/all/terraform_secrets.yml` (0600): what Terraform generated (the RDS
    /// master's URL, which only the ddms role's database task uses).
    pub terraform_secrets: String,
    /// `known_hosts`.
    pub known_hosts: String,
}

/// The role ddms connects to RDS as: its own, not the master (Terraform's default master is
/// `ddms`, and renaming the master would replace the instance, so the role has another name).
pub const RDS_DDMS_ROLE: &str = "ddms_app";

/// The secrets the inventory itself owns (generated once by `provision`, kept in
/// `group_vars/all/secrets.yml`, 0600). With RDS the master's password is Terraform's, and
/// ddms' own role's password is the inventory's.
pub fn owned_secret_names(fleet: &Fleet) -> &'static [&'static str] {
    if fleet.database.tier == "rds" {
        &[
            "ddms_database_password",
            "mosquitto_dynsec_admin_password",
            "mosquitto_ddms_password",
        ]
    } else {
        &[
            "postgresql_ddms_password",
            "mosquitto_dynsec_admin_password",
            "mosquitto_ddms_password",
        ]
    }
}

/// The inventory for `fleet`, written to `dir` (absolute: the ssh options name its
/// known_hosts, and `cargo xtask deploy` reads them without Ansible's templating).
pub fn files(fleet: &Fleet, dir: &Path) -> Result<Files> {
    ensure!(dir.is_absolute(), "inventory dir must be absolute");
    let y = |s: &str| serde_json::to_string(s).expect("a string serializes");
    let mut hosts = format!(
        "{GENERATED}; regenerated on every run, edit group_vars/ instead.\nall:\n  children:\n"
    );
    let host_line = |h: &Host| {
        let mut line = format!(
            "        {}: {{ ansible_host: {}, ansible_port: {}",
            y(&h.name),
            y(&h.address),
            h.port
        );
        if let Some(user) = &h.user {
            line.push_str(&format!(", ansible_user: {}", y(user)));
        }
        if let Some(key) = &h.key {
            line.push_str(&format!(
                ", ansible_ssh_private_key_file: {}",
                y(&key.display().to_string())
            ));
        }
        line.push_str(" }\n");
        line
    };
    hosts.push_str("    ddms:\n      hosts:\n");
    for host in &fleet.ddms {
        hosts.push_str(&host_line(host));
    }
    for group in ["db", "mosquitto"] {
        let members: Vec<&Host> = if fleet.single_host && group == "db" {
            // Single-host mode: the one host is also the database and broker host.
            fleet.ddms.iter().collect()
        } else {
            fleet
                .service
                .iter()
                .filter(|s| s.groups.iter().any(|g| g == group))
                .map(|s| &s.host)
                .collect()
        };
        if members.is_empty() {
            continue;
        }
        hosts.push_str(&format!("    {group}:\n      hosts:\n"));
        for host in members {
            hosts.push_str(&host_line(host));
        }
    }

    let known_hosts_file = dir.join("known_hosts");
    let mut vars = format!("---\n{GENERATED}; regenerated on every run. Settings of your own go in another file of this directory.\n");
    vars.push_str(&format!(
        "ansible_ssh_common_args: {}\n",
        y(&format!(
            "-o StrictHostKeyChecking=yes -o UserKnownHostsFile={}",
            known_hosts_file.display()
        ))
    ));
    vars.push_str("ansible_python_interpreter: /usr/bin/python3\n");
    vars.push_str(&format!("# Database tier: {}.\n", fleet.database.tier));
    let mut terraform_secrets =
        format!("---\n{GENERATED}; regenerated on every run. Secret: mode 0600.\n");
    match fleet.database.tier.as_str() {
        "rds" => {
            // ddms connects as a role of its own (`ddms_database_password` is in secrets.yml),
            // which the ddms role makes with the master's URL (tasks/database_role.yml).
            vars.push_str(&format!("ddms_db_host: {}\n", y(&fleet.database.address)));
            vars.push_str(&format!("ddms_db_port: {}\n", fleet.database.port));
            vars.push_str(&format!(
                "ddms_database_name: {}\n",
                y(&fleet.database.name)
            ));
            vars.push_str(&format!("ddms_database_user: {}\n", y(RDS_DDMS_ROLE)));
            vars.push_str("ddms_database_sslmode: require\n");
            let password = fleet.database_password.as_deref().unwrap_or_default();
            let url = format!(
                "postgres://{}:{}@{}:{}/{}?sslmode=require",
                urlencode(&fleet.database.username),
                urlencode(password),
                fleet.database.address,
                fleet.database.port,
                urlencode(&fleet.database.name)
            );
            terraform_secrets.push_str(&format!("ddms_database_admin_url: {}\n", y(&url)));
        }
        tier => {
            // The postgresql role's database, reached at the address Terraform gives (the db
            // host's private one, or loopback on a single host) from the ddms hosts' private
            // addresses only.
            vars.push_str(&format!("ddms_db_host: {}\n", y(&fleet.database.address)));
            let clients: Vec<String> = if tier == "single_host" {
                vec!["127.0.0.1/32".into()]
            } else {
                fleet
                    .ddms
                    .iter()
                    .map(|h| format!("{}/32", fleet.private_addresses[&h.name]))
                    .collect()
            };
            vars.push_str(&format!(
                "postgresql_ddms_clients: {}\n",
                serde_json::to_string(&clients)?
            ));
            if tier == "single_host" {
                vars.push_str("postgresql_listen_addresses: \"127.0.0.1\"\n");
            }
        }
    }
    vars.push_str("ddms_mqtt_mode: external\n");
    vars.push_str(&format!(
        "ddms_mqtt_url: {}\n",
        y(&format!(
            "mqtts://{}:{}",
            fleet.mqtt.address, fleet.mqtt.port
        ))
    ));
    vars.push_str(&format!(
        "ddms_mqtt_public_url: {}\n",
        y(&format!(
            "mqtts://{}:{}",
            fleet.mqtt.public_address, fleet.mqtt.port
        ))
    ));
    if let Some(bucket) = &fleet.backup_bucket {
        vars.push_str(&format!("ddms_backup_s3_bucket: {}\n", y(&bucket.name)));
        vars.push_str(&format!("ddms_backup_s3_region: {}\n", y(&bucket.region)));
    }
    vars.push_str(
        "# TLS: `cargo xtask certs` material in certs/ next to this inventory (provision makes it\n\
         # for the names below; replace the files to use your own).\n",
    );
    for (var, file) in [
        ("nginx_tls_cert_src", "server.crt"),
        ("nginx_tls_key_src", "server.key"),
        ("mosquitto_tls_cert_src", "broker.crt"),
        ("mosquitto_tls_key_src", "broker.key"),
        ("mosquitto_tls_ca_src", "ca.crt"),
    ] {
        vars.push_str(&format!(
            "{var}: \"{{{{ inventory_dir }}}}/certs/{file}\"\n"
        ));
    }
    vars.push_str(&format!(
        "# Certificate names: {}\n",
        fleet.certificate_names().join(", ")
    ));

    let mut known_hosts = String::new();
    for host in fleet.all_hosts() {
        let key = &fleet.host_keys[&host.name];
        let pattern = if host.port == 22 {
            host.address.clone()
        } else {
            format!("[{}]:{}", host.address, host.port)
        };
        known_hosts.push_str(&format!("{pattern} {}\n", key.trim()));
    }
    Ok(Files {
        hosts,
        vars,
        terraform_secrets,
        known_hosts,
    })
}

/// Percent-encoding for a URL's user, password or path part.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
#[path = "fleet_tests.rs"]
mod tests;
