//! Notification channels against real receivers: a Python HTTP server that checks HMAC
//! signatures and Discord's and Slack's documented JSON shapes itself, and (email) aiosmtpd.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ddms::alerts::channels::{
    validate, Channel, ChannelKind, Deliverer, GroupedAlert, Message, MessageState, Outcome,
    Severity,
};
use ddms::config::alerts::AlertsConfig;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::webhook::WebhookReceiver as Receiver;

const SECRET: &str = "s3cr3t-hmac-key";

/// Every request the receiver recorded so far to `path` (with its query).
fn requests_to(receiver: &Receiver, path: &str) -> Vec<Value> {
    receiver
        .requests()
        .into_iter()
        .filter(|r| r["path"] == path)
        .collect()
}

/// Allows private targets in the configuration (the receivers are on loopback).
fn config(allow_private_targets: bool) -> AlertsConfig {
    AlertsConfig {
        allow_private_targets,
        ..AlertsConfig::default()
    }
}

fn channel(kind: ChannelKind, settings: Value, allow_private: bool) -> Channel {
    Channel {
        id: uuid::Uuid::new_v4(),
        name: "test channel".into(),
        kind,
        settings,
        secret: Some(SECRET.to_string().into()),
        allow_private,
    }
}

fn webhook(url: String, allow_private: bool) -> Channel {
    channel(
        ChannelKind::Webhook,
        json!({"url": url, "headers": {"X-Api-Key": "k-123"}}),
        allow_private,
    )
}

fn message() -> Message {
    Message {
        idempotency_key: format!(
            "{}:3:{}",
            uuid::Uuid::from_u128(1),
            uuid::Uuid::from_u128(9)
        ),
        alert_id: Some(uuid::Uuid::from_u128(1)),
        rule_id: Some(uuid::Uuid::from_u128(2)),
        rule_name: "boiler too hot".into(),
        state: MessageState::Firing,
        severity: Severity::Critical,
        device_id: Some(uuid::Uuid::from_u128(3)),
        device_name: Some("boiler-1".into()),
        metric: Some("temperature".into()),
        value: Some(55.5),
        threshold: Some(50.0),
        started_at: Some("2026-12-05T10:00:00Z".parse().unwrap()),
        at: "2026-12-05T10:01:00Z".parse().unwrap(),
        summary: "temperature 55.5 above 50 on boiler-1".into(),
        link: Some(format!(
            "https://ddms.example.com/devices/{}",
            uuid::Uuid::from_u128(3)
        )),
        acknowledged_by: None,
        comment: None,
        grouped: vec![],
    }
}

/// A grouped message with texts far beyond every receiver's limits.
fn oversized_grouped_message() -> Message {
    let long = "Ω<&>@everyone ".repeat(2000);
    Message {
        alert_id: None,
        device_id: None,
        device_name: None,
        metric: None,
        value: None,
        rule_name: long.clone(),
        summary: long.clone(),
        comment: Some(long.clone()),
        acknowledged_by: Some(long.clone()),
        grouped: (0..300)
            .map(|i| GroupedAlert {
                alert_id: uuid::Uuid::from_u128(100 + i),
                device_id: Some(uuid::Uuid::from_u128(200 + i)),
                device_name: Some(long.clone()),
                metric: Some("temperature".into()),
                value: Some(i as f64),
            })
            .collect(),
        ..message()
    }
}

fn is_permanent(outcome: &Outcome, containing: &str) -> bool {
    matches!(outcome, Outcome::Permanent { reason } if reason.contains(containing))
}

#[tokio::test]
async fn webhook_posts_the_signed_message_and_classifies_the_answers() {
    let receiver = Receiver::start(SECRET).await;
    let config = config(true);
    let deliverer = Deliverer::new(&config);
    let channel = webhook(receiver.url("/ok"), true);
    validate(channel.kind, &channel.settings, true, &config).unwrap();

    let outcome = deliverer.deliver(&channel, &message()).await;
    assert_eq!(outcome, Outcome::Delivered);
    let requests = requests_to(&receiver, "/ok");
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request["signature_valid"], true, "{request}");
    let headers = &request["headers"];
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-ddms-idempotency-key"], message().idempotency_key);
    assert_eq!(headers["x-api-key"], "k-123");
    assert_eq!(headers["user-agent"], format!("ddms/{}", ddms::VERSION));
    let body = &request["body"];
    assert_eq!(body["alert_id"], uuid::Uuid::from_u128(1).to_string());
    assert_eq!(body["rule_id"], uuid::Uuid::from_u128(2).to_string());
    assert_eq!(body["device_id"], uuid::Uuid::from_u128(3).to_string());
    assert_eq!(body["state"], "firing");
    assert_eq!(body["severity"], "critical");
    assert_eq!(body["metric"], "temperature");
    assert_eq!(body["value"], 55.5);
    assert_eq!(body["threshold"], 50.0);
    assert_eq!(body["started_at"], "2026-12-05T10:00:00Z");
    assert_eq!(body["idempotency_key"], message().idempotency_key);
    assert_eq!(body["link"], message().link.unwrap());
    assert_eq!(body["acknowledged_by"], Value::Null);

    // Without a secret: no signature header at all.
    let unsigned = Channel {
        secret: None,
        ..channel.clone()
    };
    assert_eq!(
        deliverer.deliver(&unsigned, &message()).await,
        Outcome::Delivered
    );
    assert_eq!(
        requests_to(&receiver, "/ok")[1]["signature_valid"],
        Value::Null
    );

    // The receiver's answer decides what happens next.
    let answer = |path: &str| webhook(receiver.url(path), true);
    let outcome = deliverer.deliver(&answer("/status/500"), &message()).await;
    assert!(
        matches!(&outcome, Outcome::Retry { after: None, reason } if reason.contains("500")),
        "{outcome:?}"
    );
    let outcome = deliverer
        .deliver(&answer("/status/429?retry_after=7"), &message())
        .await;
    assert!(
        matches!(outcome, Outcome::Retry { after: Some(d), .. } if d == Duration::from_secs(7)),
        "{outcome:?}"
    );
    let outcome = deliverer
        .deliver(&answer("/status/503?retry_after=86400"), &message())
        .await;
    assert!(
        matches!(outcome, Outcome::Retry { after: Some(d), .. } if d == Duration::from_secs(3600)),
        "Retry-After is capped at an hour: {outcome:?}"
    );
    let outcome = deliverer.deliver(&answer("/status/408"), &message()).await;
    assert!(matches!(outcome, Outcome::Retry { .. }), "{outcome:?}");
    let outcome = deliverer.deliver(&answer("/status/404"), &message()).await;
    assert!(is_permanent(&outcome, "404"), "{outcome:?}");
    assert!(is_permanent(&outcome, "receiver says no"), "{outcome:?}");
    // A retried one gets through once the receiver recovers.
    let flaky = answer("/status/503?times=1");
    assert!(matches!(
        deliverer.deliver(&flaky, &message()).await,
        Outcome::Retry { .. }
    ));
    assert_eq!(
        deliverer.deliver(&flaky, &message()).await,
        Outcome::Delivered
    );
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let receiver = Receiver::start(SECRET).await;
    let deliverer = Deliverer::new(&config(true));
    let outcome = deliverer
        .deliver(&webhook(receiver.url("/redirect"), true), &message())
        .await;
    assert!(is_permanent(&outcome, "302"), "{outcome:?}");
    assert_eq!(requests_to(&receiver, "/redirect").len(), 1);
    assert!(requests_to(&receiver, "/redirected").is_empty());
}

#[tokio::test]
async fn loopback_targets_need_the_config_and_the_channel_to_allow_them() {
    let receiver = Receiver::start(SECRET).await;
    let url = receiver.url("/ok");
    // (config allows, channel allows)
    for (config_allows, channel_allows) in [(false, false), (true, false), (false, true)] {
        let config = config(config_allows);
        let channel = webhook(url.clone(), channel_allows);
        let errors = validate(channel.kind, &channel.settings, channel_allows, &config)
            .expect_err("refused");
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert!(
            fields.contains(&"settings.url") || fields.contains(&"allow_private"),
            "{errors:?}"
        );
        let outcome = Deliverer::new(&config).deliver(&channel, &message()).await;
        assert!(
            matches!(outcome, Outcome::Permanent { .. }),
            "config {config_allows}, channel {channel_allows}: {outcome:?}"
        );
    }
    // Over https, so that only the address decides.
    let https = format!("https://127.0.0.1:{}/ok", receiver.port());
    let outcome = Deliverer::new(&config(true))
        .deliver(&webhook(https, false), &message())
        .await;
    assert!(
        is_permanent(&outcome, "127.0.0.1 is a loopback address"),
        "{outcome:?}"
    );
    assert!(
        requests_to(&receiver, "/ok").is_empty(),
        "nothing reached the receiver"
    );

    let config = config(true);
    let channel = webhook(url, true);
    validate(channel.kind, &channel.settings, true, &config).unwrap();
    assert_eq!(
        Deliverer::new(&config).deliver(&channel, &message()).await,
        Outcome::Delivered
    );
    assert_eq!(requests_to(&receiver, "/ok").len(), 1);
}

#[tokio::test]
async fn the_metadata_address_is_refused_even_when_private_targets_are_allowed() {
    let config = config(true);
    for url in [
        "https://169.254.169.254/latest/meta-data/",
        "http://169.254.169.254/latest/meta-data/",
        "https://[::ffff:169.254.169.254]/latest/meta-data/",
    ] {
        let channel = webhook(url.into(), true);
        let errors = validate(channel.kind, &channel.settings, true, &config).unwrap_err();
        assert_eq!(errors[0].field, "settings.url", "{url}");
        let outcome = Deliverer::new(&config).deliver(&channel, &message()).await;
        assert!(is_permanent(&outcome, "metadata"), "{url}: {outcome:?}");
    }
}

#[tokio::test]
async fn a_slow_receiver_times_out_and_is_retried() {
    let receiver = Receiver::start(SECRET).await;
    let config = AlertsConfig {
        delivery_timeout: Duration::from_secs(1),
        ..config(true)
    };
    let outcome = Deliverer::new(&config)
        .deliver(&webhook(receiver.url("/slow/600"), true), &message())
        .await;
    assert!(
        matches!(&outcome, Outcome::Retry { reason, .. } if reason.contains("timed out")),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn discord_and_slack_payloads_have_the_documented_shapes() {
    let receiver = Receiver::start(SECRET).await;
    let config = config(true);
    let deliverer = Deliverer::new(&config);
    let mut resolved = message();
    resolved.state = MessageState::Resolved;
    resolved.link = None;
    let mut acknowledged = message();
    acknowledged.state = MessageState::Acknowledged;
    acknowledged.acknowledged_by = Some("alice".into());
    acknowledged.comment = Some("on it\nsecond line".into());
    let messages = [
        message(),
        resolved,
        acknowledged,
        oversized_grouped_message(),
    ];
    for (kind, path) in [
        (ChannelKind::Discord, "/discord/123/token"),
        (ChannelKind::Slack, "/slack/T000/B000/XXX"),
    ] {
        let channel = channel(kind, json!({"url": receiver.url(path)}), true);
        validate(kind, &channel.settings, true, &config).unwrap();
        for m in &messages {
            let outcome = deliverer.deliver(&channel, m).await;
            assert_eq!(outcome, Outcome::Delivered, "{kind:?} {:?}", m.state);
        }
        let requests = requests_to(&receiver, path);
        assert_eq!(requests.len(), messages.len());
        for r in &requests {
            assert_eq!(r["errors"], json!([]), "{kind:?}: {r}");
        }
        if kind == ChannelKind::Discord {
            let embed = &requests[0]["body"]["embeds"][0];
            assert_eq!(embed["title"], "[FIRING] boiler too hot");
            assert_eq!(embed["color"], 0xE01E5A);
            assert_eq!(requests[1]["body"]["embeds"][0]["color"], 0x2EB67D);
            assert_eq!(requests[0]["body"]["allowed_mentions"]["parse"], json!([]));
        } else {
            let body = &requests[0]["body"];
            assert!(
                body["text"].as_str().unwrap().contains("boiler too hot"),
                "{body}"
            );
            assert_eq!(body["blocks"][0]["type"], "header");
            // mrkdwn escaped (plain_text, as in the header, is shown literally).
            let summary = requests[3]["body"]["blocks"][1]["text"]["text"]
                .as_str()
                .unwrap();
            assert!(summary.starts_with("Ω&lt;&amp;&gt;@everyone"), "{summary}");
        }
    }
    // Discord says how long to wait in its 429 body.
    let limited = channel(
        ChannelKind::Discord,
        json!({"url": receiver.url("/discord-429/1/t")}),
        true,
    );
    let outcome = deliverer.deliver(&limited, &message()).await;
    assert!(
        matches!(outcome, Outcome::Retry { after: Some(d), .. } if d == Duration::from_millis(2500)),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn invalid_settings_name_their_fields() {
    let config = config(false);
    for (kind, settings, field) in [
        (ChannelKind::Webhook, json!({}), "settings.url"),
        (
            ChannelKind::Webhook,
            json!({"url": "ftp://x.example"}),
            "settings.url",
        ),
        (
            ChannelKind::Webhook,
            json!({"url": "https://x.example", "headers": {"Host": "y"}}),
            "settings.headers.Host",
        ),
        (
            ChannelKind::Discord,
            json!({"url": "http://discord.example/api/webhooks/1/t"}),
            "settings.url",
        ),
        (
            ChannelKind::Slack,
            json!({"url": "https://hooks.example", "channel": "#x"}),
            "settings.channel",
        ),
        (
            ChannelKind::Email,
            json!({"smtp_host": "smtp.example.com", "from": "ddms@example.com", "to": ["nope"]}),
            "settings.to[0]",
        ),
    ] {
        let errors = validate(kind, &settings, false, &config).unwrap_err();
        assert_eq!(errors[0].field, field, "{kind:?} {settings}: {errors:?}");
    }
}

/// `ddms config check` shows the `[alerts]` section and `http.public_url`, which the
/// environment can set; a bad value names its key and the variable it came from.
#[tokio::test]
async fn config_check_shows_the_alerts_section_and_takes_it_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let check = |env: Vec<(&'static str, &'static str)>| {
        let dir = dir.path().to_path_buf();
        async move {
            let out = crate::support::app::ddms_command(&dir)
                .args(["config", "check"])
                .envs(env)
                .output()
                .await
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let (code, out, err) = check(vec![
        ("DDMS_ALERTS__DELIVERY_TIMEOUT", "3"),
        ("DDMS_ALERTS__ALLOW_PRIVATE_TARGETS", "true"),
        ("DDMS_HTTP__PUBLIC_URL", "https://ddms.example.com/plant"),
    ])
    .await;
    assert_eq!(code, Some(0), "{err}");
    let effective: toml::Table = out.parse().unwrap();
    let alerts = &effective["alerts"];
    assert_eq!(alerts["delivery_timeout"].as_float(), Some(3.0), "{out}");
    assert_eq!(alerts["allow_private_targets"].as_bool(), Some(true));
    assert_eq!(alerts["delivery_expiry"].as_float(), Some(86400.0));
    assert_eq!(alerts["group_threshold"].as_integer(), Some(5));
    assert_eq!(
        effective["http"]["public_url"].as_str(),
        Some("https://ddms.example.com/plant")
    );

    for (key, value, named) in [
        (
            "DDMS_ALERTS__DELIVERY_TIMEOUT",
            "0",
            "alerts.delivery_timeout",
        ),
        (
            "DDMS_HTTP__PUBLIC_URL",
            "https://x.example/?a=1",
            "http.public_url",
        ),
        (
            "DDMS_HTTP__PUBLIC_URL",
            "ftp://x.example",
            "http.public_url",
        ),
    ] {
        let (code, _, err) = check(vec![(key, value)]).await;
        assert_eq!(code, Some(2), "{key}={value}: {err}");
        assert!(
            err.contains(named) && err.contains(key),
            "{key}={value}: {err}"
        );
    }
}

/// `tests/support/smtp_receiver.py` (aiosmtpd), killed on drop, with a certificate for
/// `localhost` from a CA made here.
struct SmtpReceiver {
    _child: tokio::process::Child,
    port: u16,
    log: PathBuf,
    ca_file: PathBuf,
    _dir: tempfile::TempDir,
}

const SMTP_USER: &str = "ddms-mailer";
const SMTP_PASSWORD: &str = "smtp-pw-5c2e9d";

impl SmtpReceiver {
    async fn start(mode: &str) -> SmtpReceiver {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::default();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ddms smtp test CA");
        let ca = ca_params.clone().self_signed(&ca_key).unwrap();
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&server_key, &rcgen::Issuer::new(ca_params, ca_key))
            .unwrap();
        let (ca_file, cert, key) = (
            dir.path().join("ca.pem"),
            dir.path().join("server.pem"),
            dir.path().join("server.key"),
        );
        std::fs::write(&ca_file, ca.pem()).unwrap();
        std::fs::write(&cert, server.pem()).unwrap();
        std::fs::write(&key, server_key.serialize_pem()).unwrap();
        let log = dir.path().join("mail.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_receiver.py");
        let mut child = tokio::process::Command::new("python3")
            .arg(&script)
            .args([&log, Path::new(mode), &cert, &key])
            .args([SMTP_USER, SMTP_PASSWORD])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("SMTP server starts within 30 s")
            .unwrap()
            .expect(
                "SMTP server prints its port; is aiosmtpd==1.4.6 installed (`cargo xtask setup`)?",
            );
        SmtpReceiver {
            _child: child,
            port: ready.strip_prefix("ready ").unwrap().parse().unwrap(),
            log,
            ca_file,
            _dir: dir,
        }
    }

    fn mails(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn channel(&self, tls: &str, password: &str) -> Channel {
        Channel {
            secret: Some(password.to_string().into()),
            ..channel(
                ChannelKind::Email,
                json!({
                    "smtp_host": "localhost", "smtp_port": self.port, "tls": tls,
                    "username": SMTP_USER, "from": "ddms <ddms@example.com>",
                    "to": ["ops@example.com", "On Call <oncall@example.com>"],
                }),
                true,
            )
        }
    }

    fn config(&self) -> AlertsConfig {
        AlertsConfig {
            smtp_ca_file: Some(self.ca_file.clone()),
            ..config(true)
        }
    }
}

#[tokio::test]
async fn email_is_sent_over_starttls_with_auth_to_a_real_smtp_server() {
    let smtp = SmtpReceiver::start("starttls").await;
    let config = smtp.config();
    assert_eq!(config.validate(), []);
    let channel = smtp.channel("starttls", SMTP_PASSWORD);
    validate(channel.kind, &channel.settings, true, &config).unwrap();
    let deliverer = Deliverer::new(&config);

    assert_eq!(
        deliverer.deliver(&channel, &message()).await,
        Outcome::Delivered
    );
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert_eq!(mail["starttls"], true, "{mail}");
    assert!(
        mail["tls_version"].as_str().unwrap().starts_with("TLSv1."),
        "{mail}"
    );
    assert_eq!(mail["authenticated"], true);
    assert_eq!(mail["login"], SMTP_USER);
    assert_eq!(mail["mail_from"], "ddms@example.com");
    assert_eq!(
        mail["rcpt_tos"],
        json!(["ops@example.com", "oncall@example.com"])
    );
    assert_eq!(
        mail["subject"],
        "[ddms] FIRING critical: temperature 55.5 above 50 on boiler-1"
    );
    let body = mail["body"].as_str().unwrap();
    assert!(
        body.contains("temperature 55.5 above 50 on boiler-1"),
        "{body}"
    );
    assert!(body.contains("Value: 55.5"), "{body}");
    assert!(
        body.contains(&format!("Open in ddms: {}", message().link.unwrap())),
        "{body}"
    );
    assert!(mail["headers"]["content-type"]
        .as_str()
        .unwrap()
        .starts_with("text/plain"));

    // The server refuses the password for good.
    let outcome = deliverer
        .deliver(&smtp.channel("starttls", "wrong-password"), &message())
        .await;
    assert!(matches!(outcome, Outcome::Permanent { .. }), "{outcome:?}");
    // Without our CA the server's certificate is not trusted: nothing is sent.
    let untrusting = Deliverer::new(&AlertsConfig {
        smtp_ca_file: None,
        ..config.clone()
    });
    let outcome = untrusting.deliver(&channel, &message()).await;
    assert!(
        matches!(&outcome, Outcome::Retry { reason, .. } if reason.to_lowercase().contains("certificate")),
        "{outcome:?}"
    );
    // Without both allow flags, the relay on loopback is out of reach.
    let refused = Deliverer::new(&AlertsConfig {
        allow_private_targets: false,
        ..smtp.config()
    })
    .deliver(&channel, &message())
    .await;
    assert!(
        is_permanent(&refused, "alerts.allow_private_targets"),
        "{refused:?}"
    );
    assert_eq!(smtp.mails().len(), 1);
}

#[tokio::test]
async fn email_is_sent_over_implicit_tls() {
    let smtp = SmtpReceiver::start("tls").await;
    let deliverer = Deliverer::new(&smtp.config());
    let mut grouped = oversized_grouped_message();
    grouped.state = MessageState::Resolved;
    assert_eq!(
        deliverer
            .deliver(&smtp.channel("tls", SMTP_PASSWORD), &grouped)
            .await,
        Outcome::Delivered
    );
    let mails = smtp.mails();
    assert_eq!(mails[0]["starttls"], false);
    assert!(mails[0]["tls_version"]
        .as_str()
        .unwrap()
        .starts_with("TLSv1."));
    assert_eq!(mails[0]["login"], SMTP_USER);
    let subject = mails[0]["subject"].as_str().unwrap();
    assert!(
        subject.starts_with("[ddms] RESOLVED critical: Ω<&>@everyone"),
        "{subject}"
    );
    assert!(subject.chars().count() <= 200, "{subject}");
    let body = mails[0]["body"].as_str().unwrap();
    assert_eq!(
        body.lines().filter(|l| l.starts_with("- ")).count(),
        100,
        "{body}"
    );
}

#[tokio::test]
async fn starttls_is_required_and_plain_smtp_is_only_for_a_local_relay() {
    let relay = SmtpReceiver::start("plain").await;
    let deliverer = Deliverer::new(&relay.config());
    // The relay offers no STARTTLS: nothing may go out in clear text.
    let outcome = deliverer
        .deliver(&relay.channel("starttls", SMTP_PASSWORD), &message())
        .await;
    assert_ne!(outcome, Outcome::Delivered);
    assert!(relay.mails().is_empty());

    let mut plain = relay.channel("none", SMTP_PASSWORD);
    plain.settings["username"] = Value::Null;
    let errors = validate(plain.kind, &plain.settings, false, &config(false)).unwrap_err();
    assert!(
        errors.iter().any(|e| e.field == "settings.tls"),
        "{errors:?}"
    );
    validate(plain.kind, &plain.settings, true, &relay.config()).unwrap();
    assert_eq!(
        deliverer.deliver(&plain, &message()).await,
        Outcome::Delivered
    );
    let mails = relay.mails();
    assert_eq!(mails[0]["tls_version"], Value::Null);
    assert_eq!(mails[0]["authenticated"], false);
}
