//! The real binary: configuration errors and exit codes, `_file` secrets that never show,
//! migrate + serve on PostgreSQL, graceful shutdown with a request in flight, JSON logs that
//! carry the request id, and the user/token commands.

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::app::{ddms_command, postgres, DdmsProcess};
use crate::support::services::Provider;
use crate::support::wait::eventually;

async fn run(
    dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &str,
) -> (i32, String, String) {
    let mut child = ddms_command(dir)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ddms");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("ddms finishes")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn version_names_version_and_git_sha() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, _) = run(dir.path(), &["--version"], &[], "").await;
    assert_eq!(code, 0);
    assert!(
        out.starts_with(&format!("ddms {} (git ", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
}

#[tokio::test]
async fn invalid_config_exits_2_naming_the_key_and_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run(
        dir.path(),
        &["config", "check"],
        &[("DDMS_HTTP__LISTEN", "nowhere")],
        "",
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("http.listen") && err.contains("DDMS_HTTP__LISTEN"),
        "{err}"
    );

    std::fs::write(
        dir.path().join("ddms.toml"),
        "[database]\nmax_connections = -3\n",
    )
    .unwrap();
    let (code, _, err) = run(dir.path(), &["config", "check"], &[], "").await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("database.max_connections") && err.contains("ddms.toml"),
        "{err}"
    );

    // Every command validates first, serve included.
    let (code, _, err) = run(dir.path(), &["serve"], &[], "").await;
    assert_eq!(code, 2, "{err}");

    std::fs::write(
        dir.path().join("ddms.toml"),
        "[mqtt]\nmode = \"external\"\n",
    )
    .unwrap();
    let (code, _, err) = run(dir.path(), &["config", "check"], &[], "").await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("mqtt.url") && err.contains("required"),
        "{err}"
    );

    let (code, _, err) = run(
        dir.path(),
        &["--config", "missing.toml", "config", "check"],
        &[],
        "",
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("missing.toml"), "{err}");
}

#[tokio::test]
async fn config_check_prints_the_effective_config_with_file_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let token = "prov-token-6b1d0c7e";
    std::fs::write(dir.path().join("token"), format!("{token}\n")).unwrap();
    std::fs::write(
        dir.path().join("ddms.toml"),
        "[production.http]\nlisten = \"0.0.0.0:9443\"\n[default.http]\nlisten = \"127.0.0.1:9000\"\n",
    )
    .unwrap();
    let env = [
        ("DDMS_PROFILE", "production"),
        ("DDMS_PROVISIONING__TOKEN_FILE", "token"),
        ("DDMS_MQTT__PASSWORD", "mqtt-pw-91f3aa"),
    ];
    let (code, out, err) = run(dir.path(), &["config", "check"], &env, "").await;
    assert_eq!(code, 0, "{err}");
    let effective: toml::Table = out.parse().unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(effective["profile"].as_str(), Some("production"));
    assert_eq!(effective["http"]["listen"].as_str(), Some("0.0.0.0:9443"));
    assert_eq!(
        effective["provisioning"]["token"].as_str(),
        Some("[redacted]")
    );
    assert_eq!(effective["mqtt"]["password"].as_str(), Some("[redacted]"));
    for secret in [token, "mqtt-pw-91f3aa"] {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "secret leaked: {out}{err}"
        );
    }
}

/// A PostgreSQL role whose password is unique to this test, so any leak is found by grep.
async fn database_with_secret_password(provider: Provider) -> (String, String) {
    let server = postgres(provider).await;
    let admin_url = server.create_database().await.unwrap();
    let db = admin_url.rsplit('/').next().unwrap().to_string();
    let role = format!("r_{}", uuid::Uuid::new_v4().simple());
    let password = format!("pw{}", uuid::Uuid::new_v4().simple());
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url)
        .await
        .unwrap();
    for sql in [
        format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'"),
        format!("ALTER DATABASE \"{db}\" OWNER TO {role}"),
        format!("ALTER SCHEMA public OWNER TO {role}"),
    ] {
        sqlx::query(&sql).execute(&mut conn).await.unwrap();
    }
    (
        format!(
            "postgres://{role}:{password}@127.0.0.1:{}/{db}",
            server.port()
        ),
        password,
    )
}

#[tokio::test]
async fn migrate_then_serve_on_postgres_never_shows_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let (url, password) = database_with_secret_password(Provider::from_env().await).await;
    std::fs::write(dir.path().join("db_url"), &url).unwrap();
    let env = [
        ("DDMS_DATABASE__URL_FILE", "db_url"),
        ("DDMS_LOG__LEVEL", "debug"),
    ];

    // The URL straight from the environment for the first run, from a file afterwards.
    let direct = [
        ("DDMS_DATABASE__URL", url.as_str()),
        ("DDMS_LOG__LEVEL", "debug"),
    ];
    let (code, out, err) = run(dir.path(), &["migrate"], &direct, "").await;
    assert_eq!(code, 0, "{out}{err}");
    let migrations = std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../migrations/postgres"
    ))
    .unwrap()
    .filter(|e| {
        e.as_ref()
            .unwrap()
            .path()
            .extension()
            .is_some_and(|x| x == "sql")
    })
    .count();
    assert!(
        out.contains(&format!(
            "postgres database: {migrations} migration(s) applied now"
        )),
        "{out}"
    );
    assert!(out.contains("reading partition(s) created"), "{out}");
    let (code, out2, err2) = run(dir.path(), &["migrate"], &env, "").await;
    assert_eq!(code, 0, "{out2}{err2}");
    assert!(out2.contains("0 migration(s) applied now"), "{out2}");

    let mut env_serve = env.to_vec();
    env_serve.push(("DDMS_DATABASE__MIGRATE_ON_START", "false"));
    let mut ddms = DdmsProcess::serve(dir.path(), &env_serve).await.unwrap();
    let ready = reqwest::get(ddms.url("/ready")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["components"]["database"]["backend"], "postgres");

    let (code, check, check_err) = run(dir.path(), &["config", "check"], &env, "").await;
    assert_eq!(code, 0);
    assert!(check.contains("[redacted]"), "{check}");

    ddms.signal(Signal::SIGTERM);
    assert!(ddms.wait_exit(Duration::from_secs(30)).await.success());
    let logs = ddms.logs.lock().unwrap().join("\n");
    let stderr = ddms.stderr.lock().unwrap().join("\n");
    for text in [&out, &err, &out2, &err2, &check, &check_err, &logs, &stderr] {
        assert!(!text.contains(&password), "password leaked: {text}");
    }
    assert!(!logs.is_empty());
}

#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let (code, token, err) = run(
        dir.path(),
        &["token", "create", "--name", "ops", "--role", "owner"],
        &[],
        "",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let token = token.trim().to_string();
    let (code, watcher, err) = run(
        dir.path(),
        &["token", "create", "--name", "watcher", "--role", "owner"],
        &[],
        "",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let watcher = watcher.trim().to_string();
    let mut ddms = DdmsProcess::serve(dir.path(), &[]).await.unwrap();

    // A request whose body is still arriving when the signal comes.
    let body = r#"{"name":"in-flight","role":"viewer"}"#;
    let (first, rest) = body.split_at(10);
    let mut stream = tokio::net::TcpStream::connect(ddms.addr).await.unwrap();
    let head = format!(
        "POST /api/tokens HTTP/1.1\r\nHost: ddms\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{first}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // The server has the request when it has checked its token, which marks the token used
    // (the other token watches).
    let client = reqwest::Client::new();
    eventually(
        "the in-flight request's token marked used",
        Duration::from_secs(30),
        || async {
            let tokens: Value = client
                .get(ddms.url("/api/tokens"))
                .bearer_auth(&watcher)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            tokens
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["name"] == "ops" && !t["last_used_at"].is_null())
        },
    )
    .await;
    drop(client);
    ddms.signal(Signal::SIGTERM);
    eventually(
        "new connections refused once the signal is handled",
        Duration::from_secs(10),
        || async {
            reqwest::Client::new()
                .get(ddms.url("/health"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_err()
        },
    )
    .await;
    assert!(ddms.child.try_wait().unwrap().is_none(), "still draining");
    // New connections are no longer accepted.
    let refused = reqwest::Client::new()
        .get(ddms.url("/health"))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(refused.is_err(), "a new request was served during shutdown");

    stream.write_all(rest.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    assert!(response.contains("\"in-flight\""), "{response}");

    let status = ddms.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0));
    let messages: Vec<String> = ddms
        .json_logs()
        .iter()
        .filter_map(|l| l["message"].as_str().map(String::from))
        .collect();
    assert!(
        messages.iter().any(|m| m == "shutdown complete"),
        "{messages:?}"
    );
}

#[tokio::test]
async fn healthcheck_exits_0_while_the_instance_is_ready_and_1_when_nothing_answers() {
    let dir = tempfile::tempdir().unwrap();
    let mut ddms = DdmsProcess::serve(dir.path(), &[]).await.unwrap();
    let listen = ddms.addr.to_string();
    // What the image does: the same DDMS_* environment as the server, a wildcard listen
    // address probed on loopback.
    let wildcard = format!("0.0.0.0:{}", ddms.addr.port());
    for (env_listen, args) in [
        (&listen, &["healthcheck"][..]),
        (&wildcard, &["healthcheck", "--live"][..]),
    ] {
        let env = [
            ("DDMS_HTTP__LISTEN", env_listen.as_str()),
            ("DDMS_MQTT__MODE", "off"),
        ];
        let (code, out, err) = run(dir.path(), args, &env, "").await;
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        assert!(out.contains(": 200 {"), "{args:?}: {out}");
    }
    let (_, ready, _) = run(
        dir.path(),
        &["healthcheck"],
        &[
            ("DDMS_HTTP__LISTEN", listen.as_str()),
            ("DDMS_MQTT__MODE", "off"),
        ],
        "",
    )
    .await;
    assert!(ready.contains("/ready: 200"), "{ready}");

    ddms.signal(Signal::SIGTERM);
    assert_eq!(
        ddms.wait_exit(Duration::from_secs(30)).await.code(),
        Some(0)
    );
    let (code, out, err) = run(
        dir.path(),
        &["healthcheck", "--timeout", "2"],
        &[("DDMS_HTTP__LISTEN", listen.as_str())],
        "",
    )
    .await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("ddms healthcheck:"), "{out}");
}

#[tokio::test]
async fn every_log_line_of_a_request_carries_its_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let (_, viewer, _) = run(
        dir.path(),
        &["token", "create", "--name", "v", "--role", "viewer"],
        &[],
        "",
    )
    .await;
    let (_, owner, _) = run(
        dir.path(),
        &["token", "create", "--name", "o", "--role", "owner"],
        &[],
        "",
    )
    .await;
    let mut ddms = DdmsProcess::serve(dir.path(), &[("DDMS_LOG__LEVEL", "debug")])
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let body = serde_json::json!({"name": "logged", "role": "viewer"});
    let requests = [
        ("req-refused-1", viewer.trim()),
        ("req-created-2", owner.trim()),
        ("req-unknown-3", "ddms_not_a_token"),
    ];
    for (id, token) in requests {
        client
            .post(ddms.url("/api/tokens"))
            .header("x-request-id", id)
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
    }
    client
        .get(ddms.url("/ready"))
        .header("x-request-id", "req-ready-4")
        .send()
        .await
        .unwrap();
    ddms.signal(Signal::SIGTERM);
    ddms.wait_exit(Duration::from_secs(30)).await;

    let logs = ddms.json_logs();
    // Every line written inside a request's span names it; there are no others from handlers.
    let mut per_request = std::collections::HashMap::<String, Vec<String>>::new();
    for line in &logs {
        match line["span"]["request_id"].as_str() {
            Some(id) => per_request
                .entry(id.to_string())
                .or_default()
                .push(line["message"].as_str().unwrap_or_default().to_string()),
            None => assert!(
                line["span"].is_null()
                    && !line["target"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with("ddms::http"),
                "a request's log line without its id: {line}"
            ),
        }
    }
    let has = |id: &str, message: &str| {
        per_request
            .get(id)
            .is_some_and(|m| m.iter().any(|x| x.contains(message)))
    };
    assert!(
        has("req-refused-1", "request refused: role too weak"),
        "{per_request:?}"
    );
    assert!(has("req-refused-1", "request completed"), "{per_request:?}");
    assert!(has("req-created-2", "API token created"), "{per_request:?}");
    assert!(
        has("req-unknown-3", "unknown or revoked API token"),
        "{per_request:?}"
    );
    assert!(has("req-ready-4", "request completed"), "{per_request:?}");
}

#[tokio::test]
async fn user_add_reads_the_password_from_stdin_or_generates_one() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run(
        dir.path(),
        &["user", "add", "--username", "ada", "--role", "owner"],
        &[],
        "a long enough password\n",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "created owner `ada`");

    let (code, out, err) = run(
        dir.path(),
        &["user", "add", "--username", "bob", "--role", "viewer"],
        &[],
        "",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let generated = out.trim().rsplit(' ').next().unwrap();
    assert!(
        out.contains("password (shown once)") && generated.len() >= 20,
        "{out}"
    );

    let (code, _, err) = run(
        dir.path(),
        &["user", "add", "--username", "ada", "--role", "owner"],
        &[],
        "another long password\n",
    )
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("already exists"), "{err}");
    let (code, _, err) = run(
        dir.path(),
        &["user", "add", "--username", "eve", "--role", "admin"],
        &[],
        "short\n",
    )
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("at least 12 characters"), "{err}");
    let (code, _, err) = run(
        dir.path(),
        &["user", "add", "--username", "eve", "--role", "root"],
        &[],
        "",
    )
    .await;
    assert_eq!(code, 2, "usage errors exit 2: {err}");

    // The stored hash verifies the password and is argon2id.
    let url = format!("sqlite://{}", dir.path().join("data/ddms.db").display());
    let store = ddms::store::connect(&url.into(), 2, Duration::from_secs(5))
        .await
        .unwrap();
    let ada = store.find_user("ada").await.unwrap();
    assert!(ada.password_hash.starts_with("$argon2id$"));
    assert!(ddms::auth::verify_password(
        "a long enough password",
        &ada.password_hash
    ));
    let bob = store.find_user("bob").await.unwrap();
    assert!(ddms::auth::verify_password(generated, &bob.password_hash));
}

#[tokio::test]
async fn config_check_hides_secrets_in_every_url_it_prints() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        (
            "DDMS_DATABASE__URL",
            "postgres://ddms@db.example/ddms?sslmode=require&password=pg-query-pw-5e1a&sslpassword=pg-key-pw-77c0&application_name=ddms",
        ),
        ("DDMS_MQTT__MODE", "external"),
        (
            "DDMS_MQTT__URL",
            "mqtt://ingest:mqtt-url-pw-0d4b@broker.example:1883",
        ),
        ("DDMS_BACKUP__S3__BUCKET", "backups"),
        (
            "DDMS_BACKUP__S3__ENDPOINT",
            "https://AKIA-ENDPOINT-KEY:s3-endpoint-pw-9f2c@minio.example:9000/?X-Amz-Security-Token=s3-session-tok-31aa",
        ),
    ];
    let (code, out, err) = run(dir.path(), &["config", "check"], &env, "").await;
    assert_eq!(code, 0, "{err}");
    for secret in [
        "pg-query-pw-5e1a",
        "pg-key-pw-77c0",
        "mqtt-url-pw-0d4b",
        "s3-endpoint-pw-9f2c",
        "s3-session-tok-31aa",
        "AKIA-ENDPOINT-KEY",
    ] {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "{secret} leaked: {out}{err}"
        );
    }
    let effective: toml::Table = out.parse().unwrap_or_else(|e| panic!("{e}: {out}"));
    let database_url = effective["database"]["url"].as_str().unwrap();
    assert!(
        database_url.contains("sslmode=require") && database_url.contains("application_name=ddms"),
        "harmless parameters stay: {database_url}"
    );
    assert!(
        effective["backup"]["s3"]["endpoint"]
            .as_str()
            .unwrap()
            .contains("minio.example:9000"),
        "{out}"
    );
}
