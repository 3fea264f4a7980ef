//! ddms on the shipped Mosquitto configuration: mutual TLS with certificates made in the test,
//! per-device accounts through the dynamic-security plugin, topics a device may not use.

use super::*;

pub(super) fn free_port() -> u16 {
    crate::support::services::free_port().unwrap()
}

pub(super) fn mosquitto_ctrl(port: u16, password: &str, args: &[&str]) {
    let output = std::process::Command::new("mosquitto_ctrl")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-u", "admin", "-P", password, "dynsec"])
        .args(args)
        .output()
        .expect("mosquitto_ctrl is installed");
    assert!(
        output.status.success(),
        "mosquitto_ctrl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `ops/mosquitto/mosquitto.conf` with this machine's paths and ports, so the config we ship is
/// the config under test. The harness adds its own plain listener, persistence dir and log.
pub(super) fn shipped_mosquitto_conf(tls_port: u16, pki: &TestPki, dynsec_state: &Path) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/mosquitto/mosquitto.conf");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut replaced = BTreeSet::new();
    let mut out = String::new();
    for line in text.lines() {
        let key = line.split_whitespace().next().unwrap_or("");
        let line = match (key, line) {
            (_, "listener 8883") => format!("listener {tls_port} 127.0.0.1"),
            (_, "listener 1883 127.0.0.1") | ("persistence_location" | "log_dest", _) => {
                replaced.insert(key.to_string());
                continue;
            }
            ("certfile", _) => format!("certfile {}", pki.path("server.pem").display()),
            ("keyfile", _) => format!("keyfile {}", pki.path("server.key").display()),
            ("cafile", _) => format!("cafile {}", pki.path("ca.pem").display()),
            ("plugin_opt_config_file", _) => {
                format!("plugin_opt_config_file {}", dynsec_state.display())
            }
            _ => {
                out.push_str(line);
                out.push('\n');
                continue;
            }
        };
        replaced.insert(key.to_string());
        out.push_str(&line);
        out.push('\n');
    }
    for key in [
        "listener",
        "certfile",
        "keyfile",
        "cafile",
        "plugin_opt_config_file",
        "persistence_location",
    ] {
        assert!(
            replaced.contains(key),
            "{} has no `{key}` line any more",
            path.display()
        );
    }
    out
}

/// Mosquitto on the shipped config with dynsec (admin `admin`/`admin-secret`) and ddms' ingest
/// account `ddms`/`ingest-secret`; a TLS listener for ddms, the harness's plain one for devices.
pub(super) struct DynsecBroker {
    broker: Mosquitto,
    pki: TestPki,
    tls_port: u16,
}

impl DynsecBroker {
    async fn start() -> DynsecBroker {
        // Local process: the plugin and the TLS listener read files this test prepares.
        let pki = TestPki::generate();
        let state = pki.path("dynamic-security.json");
        let init = std::process::Command::new("mosquitto_ctrl")
            .args(["dynsec", "init"])
            .arg(&state)
            .args(["admin", "admin-secret"])
            .output()
            .unwrap();
        assert!(init.status.success(), "{init:?}");
        let tls_port = free_port();
        let broker = Mosquitto::start(
            Provider::Local,
            &shipped_mosquitto_conf(tls_port, &pki, &state),
        )
        .await
        .unwrap();
        // ddms' own account: read the device topics, nothing else.
        for args in [
            &["createRole", "ddms-ingester"][..],
            &[
                "addRoleACL",
                "ddms-ingester",
                "subscribePattern",
                "devices/#",
                "allow",
            ],
            &[
                "addRoleACL",
                "ddms-ingester",
                "publishClientReceive",
                "devices/#",
                "allow",
            ],
            &["createClient", "ddms", "-p", "ingest-secret"],
            &["addClientRole", "ddms", "ddms-ingester"],
        ] {
            mosquitto_ctrl(broker.port(), "admin-secret", args);
        }
        DynsecBroker {
            broker,
            pki,
            tls_port,
        }
    }

    /// ddms' `[mqtt]` settings for this broker, over TLS.
    fn ddms_toml(&self, client_id: &str, admin_password: &str) -> String {
        mqtt_toml(
            &format!("mqtts://127.0.0.1:{}", self.tls_port),
            client_id,
            &format!(
                "username = \"ddms\"\npassword = \"ingest-secret\"\n\
                 [mqtt.tls]\nca = {:?}\n\
                 [mqtt.dynsec]\nenabled = true\nusername = \"admin\"\npassword = {admin_password:?}\n\
                 [provisioning]\ntoken = \"prov-token\"\n",
                self.pki.path("ca.pem").display().to_string()
            ),
        )
    }
}

#[tokio::test]
async fn on_the_shipped_mosquitto_config_a_device_publishes_only_under_its_own_topic() {
    let setup = DynsecBroker::start().await;
    let port = setup.broker.port();
    let app = spawn_app(Db::Sqlite, &setup.ddms_toml("ddms-dynsec", "admin-secret")).await;
    wait_ready(&app.url("/ready")).await;

    let registered: Value = app
        .client
        .post(app.url("/api/devices/register"))
        .header("X-Provisioning-Token", "prov-token")
        .json(&json!({"name": "field-sensor"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let a: Uuid = registered["device_id"].as_str().unwrap().parse().unwrap();
    let user = registered["mqtt"]["username"].as_str().unwrap().to_string();
    let password = registered["mqtt"]["password"].as_str().unwrap().to_string();
    assert_eq!(user, a.to_string());
    let (b, created) = create_mqtt_device(&app, "neighbour").await;
    assert!(created["mqtt"]["password"].is_string());

    // Into the neighbour's topic first: the broker accepts the packet but delivers nothing.
    assert!(
        publish(
            port,
            &format!("devices/{b}/telemetry"),
            br#"{"intruder": 1}"#,
            Some((&user, &password))
        )
        .await
    );
    assert!(
        publish(
            port,
            &format!("devices/{a}/telemetry"),
            br#"{"own": 7}"#,
            Some((&user, &password))
        )
        .await
    );
    eventually("own reading stored", Duration::from_secs(15), || async {
        !readings(app.store.as_ref(), a, "own").await.is_empty()
    })
    .await;
    assert_eq!(readings(app.store.as_ref(), a, "own").await[0].value, 7.0);
    assert!(
        app.store.latest_readings(b).await.unwrap().is_empty(),
        "a device wrote into another device's topic"
    );
    assert!(
        !publish(
            port,
            &format!("devices/{a}/telemetry"),
            br#"{"own": 8}"#,
            Some((&user, "wrong-password"))
        )
        .await,
        "a wrong password is refused"
    );
    // The right password under another client id (ddms' own, or the neighbour's) is refused:
    // a device cannot take over another client's session.
    for impostor in ["ddms-dynsec".to_string(), b.to_string()] {
        assert!(
            !publish_as(
                port,
                &format!("devices/{a}/telemetry"),
                br#"{"own": 8}"#,
                Some((&user, &password)),
                Some(&impostor),
            )
            .await,
            "device {a} connected as client id {impostor}"
        );
    }

    // Deleting the device deletes its broker account.
    let admin = app.token(Role::Admin).await;
    assert_eq!(
        app.delete(&format!("/api/devices/{a}"), &admin)
            .await
            .status(),
        204
    );
    assert!(
        !publish(
            port,
            &format!("devices/{a}/telemetry"),
            br#"{"own": 9}"#,
            Some((&user, &password))
        )
        .await,
        "a deleted device's credentials still work"
    );
    app.stop().await;
}

#[tokio::test]
async fn broker_accounts_are_all_or_nothing_and_stale_ones_are_reconciled_away() {
    let setup = DynsecBroker::start().await;
    let port = setup.broker.port();
    let toml = setup.ddms_toml("ddms-reconcile", "admin-secret");

    // An admin the broker refuses: the device API creates nothing and says why.
    let refused = spawn_app(Db::Sqlite, &setup.ddms_toml("ddms-bad-admin", "wrong")).await;
    let admin = refused.token(Role::Admin).await;
    let response = refused
        .post_json(
            "/api/devices",
            Some(&admin),
            &json!({"name": "orphan", "protocol": "mqtt"}),
        )
        .await;
    assert_eq!(response.status(), 503);
    assert!(refused.store.list_devices().await.unwrap().is_empty());
    refused.stop().await;

    // Accounts whose device no longer exists (deleted while the broker was away) go: at start…
    let config = ddms::config::from_toml(&toml).unwrap();
    let dynsec = ddms::mqtt::dynsec::Dynsec::new(
        ddms::mqtt::BrokerConnection::from_config(&config).unwrap(),
        "admin".into(),
        SecretString::from("admin-secret"),
        "ddms-test".into(),
    );
    let dynsec = &dynsec;
    let ghost_account = |id: Uuid| async move {
        ddms::mqtt::BrokerAccounts::put_device(dynsec, id, &SecretString::from("ghost-pw"))
            .await
            .unwrap();
        id
    };
    let works = |id: Uuid, password: String| async move {
        let topic = format!("devices/{id}/telemetry");
        publish(
            port,
            &topic,
            br#"{"t": 1}"#,
            Some((&id.to_string(), &password)),
        )
        .await
    };
    let ghost = ghost_account(Uuid::new_v4()).await;
    assert!(
        works(ghost, "ghost-pw".into()).await,
        "a ghost account works before"
    );
    let app = spawn_app(Db::Sqlite, &toml).await;
    eventually(
        "the ghost account removed at start",
        Duration::from_secs(20),
        || async move { !works(ghost, "ghost-pw".into()).await },
    )
    .await;
    // …and whenever reconciliation runs, leaving live devices alone.
    let (kept, created) = create_mqtt_device(&app, "kept").await;
    let password = created["mqtt"]["password"].as_str().unwrap().to_string();
    let ghost = ghost_account(Uuid::new_v4()).await;
    assert_eq!(dynsec.reconcile(app.store.as_ref()).await.unwrap(), 1);
    assert!(
        !works(ghost, "ghost-pw".into()).await,
        "the stale account still works"
    );
    assert!(
        works(kept, password).await,
        "a live device's account was removed"
    );
    app.stop().await;
}

pub(super) struct TestPki {
    dir: tempfile::TempDir,
}

impl TestPki {
    /// A CA, a server certificate for 127.0.0.1 and a client certificate, in a temp dir.
    fn generate() -> TestPki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "ddms test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        write("ca.pem", ca_cert.pem());
        for (name, sans) in [
            (
                "server",
                vec!["127.0.0.1".to_string(), "localhost".to_string()],
            ),
            ("client", vec!["ddms".to_string()]),
        ] {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(sans).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.signed_by(&key, &issuer).unwrap();
            write(&format!("{name}.pem"), cert.pem());
            write(&format!("{name}.key"), key.serialize_pem());
        }
        TestPki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

#[tokio::test]
async fn ddms_reads_from_mosquitto_over_mutual_tls_with_certificates_made_in_the_test() {
    let pki = TestPki::generate();
    let tls_port = free_port();
    // Local process: the listener reads the certificate files from this machine's temp dir.
    let broker = Mosquitto::start(
        Provider::Local,
        &format!(
            "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            pki.path("ca.pem").display(),
            pki.path("server.pem").display(),
            pki.path("server.key").display(),
        ),
    )
    .await
    .unwrap();
    let app = spawn_app(
        Db::Sqlite,
        &mqtt_toml(
            &format!("mqtts://127.0.0.1:{tls_port}"),
            "ddms-tls",
            &format!(
                "[mqtt.tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
                pki.path("ca.pem").display().to_string(),
                pki.path("client.pem").display().to_string(),
                pki.path("client.key").display().to_string(),
            ),
        ),
    )
    .await;
    wait_ready(&app.url("/ready")).await;
    let body: Value = app.get("/ready").await.json().await.unwrap();
    assert_eq!(body["components"]["mqtt"]["connected"], true, "{body}");

    let (device, _) = create_mqtt_device(&app, "tls-sensor").await;
    // Devices use the plain listener here; ddms' own connection is the TLS one.
    assert!(
        publish(
            broker.port(),
            &format!("devices/{device}/telemetry"),
            br#"{"metrics": {"pressure": 1.5}}"#,
            None
        )
        .await
    );
    eventually("reading via TLS", Duration::from_secs(15), || async {
        !readings(app.store.as_ref(), device, "pressure")
            .await
            .is_empty()
    })
    .await;
    app.stop().await;
}
