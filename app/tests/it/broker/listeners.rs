//! The embedded broker's listeners: TLS with certificates made for the test, a port in use as a
//! start-up error naming the key, the two blue-green slots sharing the broker port.

use super::*;

#[tokio::test]
async fn devices_connect_over_tls_with_certificates_made_for_the_test() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ddms test CA");
    let ca = ca_params.clone().self_signed(&ca_key).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let mut server_params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    server_params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
    let ca_path = dir.path().join("ca.pem");
    let cert_path = dir.path().join("broker.crt");
    let key_path = dir.path().join("broker.key");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    std::fs::write(&cert_path, server_cert.pem()).unwrap();
    std::fs::write(&key_path, server_key.serialize_pem()).unwrap();

    let app = spawn_broker_app(
        Db::Sqlite,
        &format!(
            "tls_listen = \"127.0.0.1:0\"
[mqtt.embedded.tls]\ncert = {:?}\nkey = {:?}\n",
            cert_path.display().to_string(),
            key_path.display().to_string()
        ),
        "",
    )
    .await;
    let admin = app.token(Role::Admin).await;
    let viewer = app.token(Role::Viewer).await;
    let tls_port = app.mqtts_addr.expect("TLS listener").port();
    let response = app
        .post_json(
            "/api/devices",
            Some(&admin),
            &json!({ "name": "secure", "protocol": "mqtt" }),
        )
        .await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["mqtt"]["tls"], true,
        "credentials point at the TLS listener"
    );
    let device = Device {
        id: body["id"].as_str().unwrap().to_string(),
        password: body["mqtt"]["password"].as_str().unwrap().to_string(),
    };
    let topic = format!("devices/{}/telemetry", device.id);
    let cafile = ca_path.display().to_string();

    let sent = publish(
        tls_port,
        &device,
        &topic,
        r#"{"t": 1}"#,
        &["--cafile", &cafile],
    )
    .await;
    assert_eq!(sent.code, 0, "{}", sent.output);
    assert_eq!(readings(&app, &viewer, &device, "t").await.len(), 1);
    // The ACL holds over TLS too.
    let other = create_device(&app, &admin, "other").await;
    let spoof = publish(
        tls_port,
        &device,
        &format!("devices/{}/telemetry", other.id),
        r#"{"t": 2}"#,
        &["--cafile", &cafile],
    )
    .await;
    assert_eq!(spoof.code, 0, "{}", spoof.output);
    assert!(readings(&app, &viewer, &other, "t").await.is_empty());
    // Plain MQTT on the TLS port gets nowhere.
    let plain = publish(tls_port, &device, &topic, r#"{"t": 3}"#, &["-k", "5"]).await;
    assert_ne!(plain.code, 0, "{}", plain.output);
    assert_eq!(readings(&app, &viewer, &device, "t").await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_broker_port_in_use_is_a_start_up_error_that_names_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = ddms::config::from_toml(&format!(
        "data_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n[mqtt]\nmode = \"embedded\"\n\
         [mqtt.embedded]\nlisten = \"{addr}\"\n",
        dir.path().display().to_string()
    ))
    .unwrap();
    let error = match ddms::server::Server::build(config).await {
        Ok(_) => panic!("built while {addr} is taken"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("mqtt.embedded.listen"), "{error}");
    assert!(error.contains(&addr.to_string()), "{error}");
}

/// Blue and green both bind the broker port during a deploy (SO_REUSEPORT); a ddms outside a
/// slot does not share it, so it can neither join the two slots nor be joined by one.
#[tokio::test]
async fn the_two_slots_share_the_broker_port_and_nothing_else_does() {
    let dir = tempfile::tempdir().unwrap();
    let config = |slot: &str, port: u16| {
        ddms::config::from_toml(&format!(
            "{slot}data_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n[mqtt]\nmode = \"embedded\"\n\
             [mqtt.embedded]\nlisten = \"127.0.0.1:{port}\"\n",
            dir.path().display().to_string()
        ))
        .unwrap()
    };
    let port = crate::support::services::free_port().unwrap();
    let blue = ddms::server::Server::build(config("slot = \"blue\"\n", port))
        .await
        .expect("blue binds");
    let green = ddms::server::Server::build(config("slot = \"green\"\n", port))
        .await
        .expect("green binds the port blue holds");
    let error = match ddms::server::Server::build(config("", port)).await {
        Ok(_) => panic!("a ddms outside a slot bound the slots' port {port}"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("mqtt.embedded.listen"), "{error}");
    drop((blue, green));

    let port = crate::support::services::free_port().unwrap();
    let _alone = ddms::server::Server::build(config("", port))
        .await
        .expect("binds");
    let error = match ddms::server::Server::build(config("slot = \"blue\"\n", port)).await {
        Ok(_) => panic!("a slot bound the port of a ddms outside a slot"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("SO_REUSEPORT"), "{error}");
}
