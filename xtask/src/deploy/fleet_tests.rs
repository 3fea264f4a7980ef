//! Tests of `fleet.rs` on made-up `terraform output -json` for each database tier (host, RDS,
//! single host): the inventory's groups and variables read back as YAML, the certificates'
//! names, and the outputs it refuses.

use super::*;
use serde_json::{json, Value};

/// `terraform output -json` of an environment in `tier`, shaped like envs/*/outputs.tf.
fn outputs(tier: &str) -> Value {
    let single = tier == "single_host";
    let service = match tier {
        "host" => {
            json!([{ "name": "db", "address": "192.0.2.30", "ssh_user": "admin", "ssh_port": 22, "groups": ["db"] }])
        }
        "rds" => {
            json!([{ "name": "db", "address": "192.0.2.30", "ssh_user": "admin", "ssh_port": 22, "groups": ["mosquitto"] }])
        }
        _ => json!([]),
    };
    let hosts = if single {
        json!([{ "name": "web1", "address": "192.0.2.10", "ssh_user": "admin", "ssh_port": 22 }])
    } else {
        json!([
            { "name": "web1", "address": "192.0.2.10", "ssh_user": "admin", "ssh_port": 22 },
            { "name": "web2", "address": "192.0.2.11", "ssh_user": "admin", "ssh_port": 2222 },
        ])
    };
    let mut keys = json!({ "web1": "ssh-ed25519 AAAA1", "web2": "ssh-ed25519 AAAA2", "db": "ssh-ed25519 AAAAdb" });
    let mut private = json!({ "web1": "10.0.1.10", "web2": "10.0.1.11", "db": "10.0.1.30" });
    if single {
        keys = json!({ "web1": "ssh-ed25519 AAAA1" });
        private = json!({ "web1": "10.0.1.10" });
    }
    let (db_address, mqtt_address, public) = match tier {
        "single_host" => ("127.0.0.1", "127.0.0.1", "192.0.2.10"),
        "rds" => (
            "ddms.abc.eu-central-1.rds.amazonaws.com",
            "10.0.1.30",
            "lb.example.net",
        ),
        _ => ("10.0.1.30", "10.0.1.30", "lb.example.net"),
    };
    let v = |value: Value| json!({ "sensitive": false, "type": "any", "value": value });
    json!({
        "ddms_hosts": v(hosts),
        "backup_bucket": v(json!({ "name": "bkt", "region": "eu-central-1" })),
        "single_host": v(json!(single)),
        "service_hosts": v(service),
        "private_addresses": v(private),
        "ssh_host_keys": v(keys),
        "database": v(json!({ "tier": tier, "address": db_address, "port": 5432, "name": "ddms", "username": "ddms" })),
        "database_password": v(if tier == "rds" { json!("p@ss/word") } else { Value::Null }),
        "mqtt": v(json!({ "address": mqtt_address, "port": 8883, "public_address": public })),
        "load_balancer": v(if single { Value::Null } else { json!({ "dns_name": "lb.example.net", "zone_id": "Z1" }) }),
    })
}

fn generate(tier: &str) -> (Fleet, Files) {
    let fleet = parse(&outputs(tier).to_string(), Some(Path::new("/keys/deploy"))).unwrap();
    let files = files(&fleet, Path::new("/inv/staging")).unwrap();
    (fleet, files)
}

fn yaml(text: &str) -> yaml_serde::Value {
    yaml_serde::from_str(text).unwrap_or_else(|e| panic!("{e}:\n{text}"))
}

fn group_hosts(hosts: &yaml_serde::Value, group: &str) -> Vec<String> {
    hosts["all"]["children"][group]["hosts"]
        .as_mapping()
        .map(|m| m.keys().map(|k| k.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

#[test]
fn host_tier_puts_postgresql_and_mosquitto_on_the_db_host_reached_privately() {
    let (_, files) = generate("host");
    let hosts = yaml(&files.hosts);
    assert_eq!(group_hosts(&hosts, "ddms"), ["web1", "web2"]);
    assert_eq!(group_hosts(&hosts, "db"), ["db"]);
    assert!(group_hosts(&hosts, "mosquitto").is_empty());
    let web2 = &hosts["all"]["children"]["ddms"]["hosts"]["web2"];
    assert_eq!(web2["ansible_port"].as_u64(), Some(2222));
    assert_eq!(web2["ansible_user"].as_str(), Some("admin"));
    assert_eq!(
        web2["ansible_ssh_private_key_file"].as_str(),
        Some("/keys/deploy")
    );
    let vars = yaml(&files.vars);
    assert_eq!(vars["ddms_db_host"].as_str(), Some("10.0.1.30"));
    assert_eq!(
        yaml_serde::to_string(&vars["postgresql_ddms_clients"])
            .unwrap()
            .trim(),
        "- 10.0.1.10/32\n- 10.0.1.11/32"
    );
    assert_eq!(
        vars["ddms_mqtt_url"].as_str(),
        Some("mqtts://10.0.1.30:8883")
    );
    assert_eq!(
        vars["ddms_mqtt_public_url"].as_str(),
        Some("mqtts://lb.example.net:8883")
    );
    assert_eq!(vars["ddms_backup_s3_bucket"].as_str(), Some("bkt"));
    assert_eq!(
        vars["nginx_tls_cert_src"].as_str(),
        Some("{{ inventory_dir }}/certs/server.crt")
    );
    assert_eq!(
        vars["ansible_ssh_common_args"].as_str(),
        Some("-o StrictHostKeyChecking=yes -o UserKnownHostsFile=/inv/staging/known_hosts")
    );
    assert!(vars.get("ddms_database_url").is_none());
    assert!(!files.terraform_secrets.contains("ddms_database_url"));
    assert!(!files.terraform_secrets.contains("ddms_database_admin_url"));
    assert_eq!(
        files.known_hosts,
        "192.0.2.10 ssh-ed25519 AAAA1\n[192.0.2.11]:2222 ssh-ed25519 AAAA2\n192.0.2.30 ssh-ed25519 AAAAdb\n"
    );
}

#[test]
fn rds_tier_gives_the_master_url_only_in_the_secret_file_and_the_broker_its_own_group() {
    let (_, files) = generate("rds");
    let hosts = yaml(&files.hosts);
    assert!(group_hosts(&hosts, "db").is_empty());
    assert_eq!(group_hosts(&hosts, "mosquitto"), ["db"]);
    let secrets = yaml(&files.terraform_secrets);
    assert_eq!(
        secrets["ddms_database_admin_url"].as_str(),
        Some("postgres://ddms:p%40ss%2Fword@ddms.abc.eu-central-1.rds.amazonaws.com:5432/ddms?sslmode=require")
    );
    for public in [&files.hosts, &files.vars, &files.known_hosts] {
        assert!(
            !public.contains("p@ss") && !public.contains("p%40ss"),
            "{public}"
        );
    }
}

/// ddms itself connects to RDS as a role of its own with a password the inventory owns, over
/// TLS; the master's URL is never its database URL.
#[test]
fn rds_tier_has_ddms_connect_as_its_own_role_not_the_master() {
    let (fleet, files) = generate("rds");
    let secrets = yaml(&files.terraform_secrets);
    assert!(secrets.get("ddms_database_url").is_none(), "{secrets:?}");
    let vars = yaml(&files.vars);
    assert!(vars.get("ddms_database_url").is_none());
    assert_eq!(
        vars["ddms_db_host"].as_str(),
        Some("ddms.abc.eu-central-1.rds.amazonaws.com")
    );
    assert_eq!(vars["ddms_db_port"].as_u64(), Some(5432));
    assert_eq!(vars["ddms_database_name"].as_str(), Some("ddms"));
    assert_eq!(vars["ddms_database_user"].as_str(), Some(RDS_DDMS_ROLE));
    assert_ne!(RDS_DDMS_ROLE, fleet.database.username);
    assert_eq!(vars["ddms_database_sslmode"].as_str(), Some("require"));
    assert_eq!(
        owned_secret_names(&fleet),
        [
            "ddms_database_password",
            "mosquitto_dynsec_admin_password",
            "mosquitto_ddms_password"
        ]
    );
}

#[test]
fn an_rds_master_named_like_ddms_own_role_is_refused() {
    let mut out = outputs("rds");
    out["database"]["value"]["username"] = json!(RDS_DDMS_ROLE);
    let err = parse(&out.to_string(), None).unwrap_err();
    assert!(err.to_string().contains("master user"), "{err:#}");
}

#[test]
fn single_host_is_in_every_group_on_loopback_without_a_load_balancer() {
    let (fleet, files) = generate("single_host");
    let hosts = yaml(&files.hosts);
    assert_eq!(group_hosts(&hosts, "ddms"), ["web1"]);
    assert_eq!(group_hosts(&hosts, "db"), ["web1"]);
    let vars = yaml(&files.vars);
    assert_eq!(vars["ddms_db_host"].as_str(), Some("127.0.0.1"));
    assert_eq!(
        vars["postgresql_listen_addresses"].as_str(),
        Some("127.0.0.1")
    );
    assert_eq!(
        vars["ddms_mqtt_url"].as_str(),
        Some("mqtts://127.0.0.1:8883")
    );
    assert_eq!(
        vars["ddms_mqtt_public_url"].as_str(),
        Some("mqtts://192.0.2.10:8883")
    );
    assert_eq!(files.known_hosts, "192.0.2.10 ssh-ed25519 AAAA1\n");
    assert!(fleet.certificate_names().contains(&"127.0.0.1".to_string()));
    assert_eq!(owned_secret_names(&fleet).len(), 3);
}

#[test]
fn certificates_name_the_load_balancer_and_every_address() {
    let (fleet, _) = generate("host");
    let names = fleet.certificate_names();
    for name in ["lb.example.net", "10.0.1.30", "192.0.2.10", "10.0.1.11"] {
        assert!(names.contains(&name.to_string()), "{names:?}");
    }
}

#[test]
fn a_host_without_a_pinned_key_or_a_bad_key_is_refused() {
    let mut out = outputs("host");
    out["ssh_host_keys"]["value"]
        .as_object_mut()
        .unwrap()
        .remove("db");
    let err = parse(&out.to_string(), None).unwrap_err();
    assert!(err.to_string().contains("no key for `db`"), "{err:#}");
    let mut out = outputs("host");
    out["ssh_host_keys"]["value"]["web1"] = json!("ssh-ed25519 AAAA\nevil.example ssh-rsa X");
    assert!(parse(&out.to_string(), None).is_err());
}

#[test]
fn inconsistent_layouts_and_old_outputs_are_refused() {
    let mut out = outputs("host");
    out["service_hosts"]["value"] = json!([]);
    assert!(parse(&out.to_string(), None).is_err());
    let mut out = outputs("rds");
    out["database_password"]["value"] = Value::Null;
    assert!(parse(&out.to_string(), None).is_err());
    let mut out = outputs("host");
    out.as_object_mut().unwrap().remove("mqtt");
    let err = parse(&out.to_string(), None).unwrap_err();
    assert!(format!("{err:#}").contains("no output `mqtt`"), "{err:#}");
    let mut out = outputs("host");
    out["service_hosts"]["value"][0]["groups"] = json!(["web"]);
    assert!(parse(&out.to_string(), None).is_err());
}

#[test]
fn generated_files_say_so_on_their_first_line() {
    let (_, files) = generate("host");
    assert!(files.hosts.starts_with(GENERATED));
    assert!(files.vars.lines().nth(1).unwrap().starts_with(GENERATED));
}

/// `cargo xtask deploy` reads the written hosts.yml back as the same ddms hosts (odd names
/// and ports included).
#[test]
fn hosts_yml_reads_back_as_the_same_ddms_hosts() {
    let mut out = outputs("host");
    out["ddms_hosts"]["value"][1]["name"] = json!("web: 2");
    out["ssh_host_keys"]["value"]["web: 2"] = json!("ssh-ed25519 AAAA2");
    out["private_addresses"]["value"]["web: 2"] = json!("10.0.1.11");
    let fleet = parse(&out.to_string(), Some(Path::new("/k/id"))).unwrap();
    let files = files(&fleet, Path::new("/inv")).unwrap();
    let read = inventory::from_ansible_yaml(&files.hosts, Path::new("/inv")).unwrap();
    assert_eq!(read, fleet.ddms);
}
