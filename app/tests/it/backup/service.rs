//! Backups as the service makes them: the CLI, the owner-only API (audited), the schedule, a
//! backup in progress at SIGTERM, and the S3 copy (moto's S3 server).

use super::*;

pub(super) async fn ddms(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let output = ddms_command(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run ddms");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_creates_lists_verifies_and_restores_backups() {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    let target = work.path().join("target");
    let source_arg = source.display().to_string();
    let target_arg = target.display().to_string();
    let (ok, _, stderr) = ddms(
        work.path(),
        &[
            "--data-dir",
            &source_arg,
            "user",
            "add",
            "--username",
            "olga",
            "--role",
            "owner",
        ],
    )
    .await;
    assert!(ok, "{stderr}");

    let (ok, stdout, stderr) = ddms(
        work.path(),
        &["--data-dir", &source_arg, "backup", "create"],
    )
    .await;
    assert!(ok, "{stderr}");
    let created: Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    let name = created["name"].as_str().unwrap().to_string();
    let archive = source.join("backups").join(&name);
    assert!(archive.is_file(), "{stdout}");
    assert_eq!(created["locations"], json!(["local"]));

    let (ok, stdout, stderr) =
        ddms(work.path(), &["--data-dir", &source_arg, "backup", "list"]).await;
    assert!(ok, "{stderr}");
    let listing: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listing["backups"][0]["name"], json!(name), "{listing}");

    let (ok, stdout, stderr) = ddms(
        work.path(),
        &["--data-dir", &source_arg, "backup", "verify", &name],
    )
    .await;
    assert!(ok, "{stderr}");
    assert!(stderr.contains("is intact"), "{stderr}");
    let manifest: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(manifest["snapshot"]["backend"], "sqlite");

    // Into another data directory, from the archive's path.
    let archive_arg = archive.display().to_string();
    let (ok, stdout, stderr) = ddms(
        work.path(),
        &["--data-dir", &target_arg, "backup", "restore", &archive_arg],
    )
    .await;
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(&format!("restored backup {name}")),
        "{stdout}"
    );
    let restored = open_sqlite_file(&target.join("ddms.db")).await;
    assert_eq!(restored.find_user("olga").await.unwrap().role, Role::Owner);
    let actions: Vec<String> = restored
        .list_audit(10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    // The restored log (the backup's own entry came after its snapshot) and the restore.
    assert_eq!(actions, ["backup.restore", "user.create"]);
    let source_store = open_sqlite_file(&source.join("ddms.db")).await;
    let created_entry = source_store.list_audit(1).await.unwrap().remove(0);
    assert_eq!(created_entry.action, "backup.create");
    assert_eq!(created_entry.actor, "cli");
    assert_eq!(created_entry.target, Some(format!("backup:{name}")));

    // Not again into a database with contents, unless --force.
    let (ok, _, stderr) = ddms(
        work.path(),
        &["--data-dir", &target_arg, "backup", "restore", &archive_arg],
    )
    .await;
    assert!(!ok);
    assert!(
        stderr.contains("not empty") && stderr.contains("--force"),
        "{stderr}"
    );
    let (ok, _, stderr) = ddms(
        work.path(),
        &[
            "--data-dir",
            &target_arg,
            "backup",
            "restore",
            "--force",
            &archive_arg,
        ],
    )
    .await;
    assert!(ok, "{stderr}");

    // A damaged file is named as such.
    let garbage = work.path().join("ddms-backup-20261203T000000.000Z.tar.gz");
    std::fs::write(&garbage, b"not gzip").unwrap();
    let (ok, _, stderr) = ddms(
        work.path(),
        &[
            "--data-dir",
            &target_arg,
            "backup",
            "verify",
            &garbage.display().to_string(),
        ],
    )
    .await;
    assert!(!ok);
    assert!(stderr.contains("is damaged"), "{stderr}");
}

#[tokio::test]
async fn owners_trigger_and_list_backups_through_the_api_and_the_trigger_is_audited() {
    let app = spawn_app(Db::Sqlite, "").await;
    let owner = app.token(Role::Owner).await;
    let admin = app.token(Role::Admin).await;
    let viewer = app.token(Role::Viewer).await;
    for token in [&admin, &viewer] {
        let denied = app
            .post_json("/api/system/backup", Some(token), &json!({}))
            .await;
        assert_eq!(denied.status(), 403);
        assert_eq!(
            app.get_with_token("/api/system/backups", token)
                .await
                .status(),
            403
        );
    }
    assert_eq!(
        app.post_json("/api/system/backup", None, &json!({}))
            .await
            .status(),
        401
    );

    let started = app
        .post_json("/api/system/backup", Some(&owner), &json!({}))
        .await;
    assert_eq!(started.status(), 202);
    let started: Value = started.json().await.unwrap();
    let name = started["name"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let listing = loop {
        let listing = backup_listing(&app, &owner).await;
        if listing["last"]["name"] == json!(name) || Instant::now() > deadline {
            break listing;
        }
        // sleep: the poll interval of this wait with a deadline (the listing is then checked)
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(listing["last"]["ok"], true, "{listing}");
    assert_eq!(listing["running"], Value::Null, "{listing}");
    assert_eq!(listing["backups"][0]["name"], json!(name), "{listing}");
    assert_eq!(listing["backups"][0]["locations"], json!(["local"]));
    assert_eq!(listing["schedule"], "off");
    assert_eq!(listing["next_due"], Value::Null);

    let audit: Value = app
        .get_with_token("/api/audit", &owner)
        .await
        .json()
        .await
        .unwrap();
    let entry = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "backup.create")
        .cloned()
        .expect("the trigger is audited");
    assert_eq!(entry["target"], json!(format!("backup:{name}")), "{entry}");
    assert_eq!(entry["actor"], "token:test-owner", "{entry}");
    assert!(entry["remote_addr"].is_string(), "{entry}");

    let metrics = app.get("/metrics").await.text().await.unwrap();
    let last_success = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ddms_backup_last_success_timestamp_seconds "))
        .expect("backup metric");
    assert_ne!(last_success.trim(), "0", "{metrics}");

    // A schedule shows when the next backup is due.
    let response = app
        .put_json(
            "/api/system/config",
            &owner,
            &json!({"backup_schedule": "daily 02:30"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let listing = backup_listing(&app, &owner).await;
    let due: DateTime<Utc> = serde_json::from_value(listing["next_due"].clone()).unwrap();
    assert_eq!(due.format("%H:%M:%S").to_string(), "02:30:00");
    assert!(due > Utc::now() && due <= Utc::now() + chrono::Duration::days(1));
    app.stop().await;
}

#[tokio::test]
async fn a_scheduled_backup_runs_when_due_and_is_audited() {
    use chrono::{DurationRound, Timelike};
    let app = spawn_app(Db::Sqlite, "").await;
    let owner = app.token(Role::Owner).await;
    // The first whole minute at least 10 s away (a daily schedule due then): 10 to 70 s.
    let due = (Utc::now() + chrono::Duration::seconds(10))
        .duration_trunc(chrono::Duration::minutes(1))
        .unwrap()
        + chrono::Duration::minutes(1);
    let schedule = format!("daily {:02}:{:02}", due.hour(), due.minute());
    let response = app
        .put_json(
            "/api/system/config",
            &owner,
            &json!({ "backup_schedule": schedule }),
        )
        .await;
    assert_eq!(response.status(), 200);
    let listing = backup_listing(&app, &owner).await;
    assert_eq!(listing["next_due"], json!(due), "{listing}");
    assert_eq!(listing["backups"], json!([]), "nothing before it is due");

    let deadline = Instant::now() + (due - Utc::now()).to_std().unwrap() + Duration::from_secs(30);
    let listing = loop {
        let listing = backup_listing(&app, &owner).await;
        if !listing["last"].is_null() || Instant::now() > deadline {
            break listing;
        }
        // sleep: the poll interval of this wait with a deadline (until the schedule is due and some)
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(listing["last"]["trigger"], "schedule", "{listing}");
    assert_eq!(listing["last"]["ok"], true, "{listing}");
    let name = listing["last"]["name"].as_str().unwrap().to_string();
    let created: DateTime<Utc> =
        serde_json::from_value(listing["backups"][0]["created_at"].clone()).unwrap();
    assert!(created >= due, "not before it was due: {created} < {due}");
    assert_eq!(listing["backups"][0]["name"], json!(name));
    // Tomorrow's is next.
    assert_eq!(
        listing["next_due"],
        json!(due + chrono::Duration::days(1)),
        "{listing}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let entry = loop {
        let audit = app.store.list_audit(20).await.unwrap();
        if let Some(entry) = audit.into_iter().find(|e| e.action == "backup.create") {
            break entry;
        }
        assert!(Instant::now() < deadline, "the scheduled backup is audited");
        // sleep: the poll interval of this wait with a deadline (the audit entry)
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(entry.actor, "schedule");
    assert_eq!(entry.target, Some(format!("backup:{name}")));
    assert_eq!(entry.detail["schedule"], json!(schedule));
    app.stop().await;
}

#[tokio::test]
async fn a_backup_in_progress_completes_before_the_process_exits_on_sigterm() {
    use crate::support::app::DdmsProcess;
    let dir = tempfile::tempdir().unwrap();
    let (ok, token, stderr) = ddms(
        dir.path(),
        &["token", "create", "--name", "ops", "--role", "owner"],
    )
    .await;
    assert!(ok, "{stderr}");
    let token = token.trim().to_string();
    {
        // Enough data that the backup outlasts the rest of the shutdown (about half a
        // second): 60 MB that do not compress, to write and to upload.
        let store = open_sqlite_file(&dir.path().join("data/ddms.db")).await;
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let filler: String = (0..60_000_000 / 16)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                format!("{state:016x}")
            })
            .collect();
        store
            .put_setting("test_filler", &json!(filler))
            .await
            .unwrap();
    }
    // The off-host copy is the last step: it too must be done when the process exits.
    let s3 = S3Server::start().await;
    s3.create_bucket("plant-backups").await;
    let mut process = DdmsProcess::serve(
        dir.path(),
        &[
            ("DDMS_BACKUP__S3__BUCKET", "plant-backups"),
            ("DDMS_BACKUP__S3__ENDPOINT", &s3.endpoint),
            ("DDMS_BACKUP__S3__FORCE_PATH_STYLE", "true"),
            ("AWS_ACCESS_KEY_ID", "key"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    )
    .await
    .unwrap();
    let response = reqwest::Client::new()
        .post(process.url("/api/system/backup"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let started: Value = response.json().await.unwrap();
    let name = started["name"].as_str().unwrap().to_string();
    process.signal(nix::sys::signal::Signal::SIGTERM);
    let status = process.wait_exit(Duration::from_secs(60)).await;
    assert!(status.success(), "{status:?}");
    let backups_dir = dir.path().join("data/backups");
    let left: Vec<String> = std::fs::read_dir(&backups_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left,
        std::slice::from_ref(&name),
        "the archive, complete, and nothing else"
    );
    assert_eq!(s3.keys("plant-backups").await, [format!("ddms/{name}")]);
    let (ok, _, stderr) = ddms(dir.path(), &["backup", "verify", &name]).await;
    assert!(ok, "{stderr}");
    assert!(
        process
            .json_logs()
            .iter()
            .any(|l| l["message"] == "shutting down: waiting for the backup in progress"),
        "{:?}",
        process.json_logs()
    );
}

/// moto's S3 server on a free port, stopped when dropped.
pub(super) struct S3Server {
    child: tokio::process::Child,
    endpoint: String,
}

impl S3Server {
    async fn start() -> S3Server {
        let port = free_port().unwrap();
        let child = tokio::process::Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("moto_server (pip install 'moto[s3,server]'; `cargo xtask setup` installs it)");
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = reqwest::Client::new();
        while client.get(&endpoint).send().await.is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            // sleep: the poll interval of this wait with a deadline (moto_server answering)
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        S3Server { child, endpoint }
    }

    async fn create_bucket(&self, bucket: &str) {
        let response = reqwest::Client::new()
            .put(format!("{}/{bucket}", self.endpoint))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{response:?}");
    }

    async fn keys(&self, bucket: &str) -> Vec<String> {
        let body = reqwest::get(format!("{}/{bucket}?list-type=2", self.endpoint))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        body.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[tokio::test]
async fn backups_are_uploaded_to_s3_and_restored_from_there_when_the_disk_is_lost() {
    let s3 = S3Server::start().await;
    s3.create_bucket("plant-backups").await;
    let s3_config = format!(
        "[backup.s3]\nbucket = \"plant-backups\"\nprefix = \"site-a/\"\nendpoint = {:?}\n\
         force_path_style = true\naccess_key_id = \"test\"\nsecret_access_key = \"test\"\n",
        s3.endpoint
    );
    let (source, _source_dir) = open(&Db::Sqlite).await;
    populate(source.as_ref()).await;
    let expected = contents(source.as_ref()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = ddms::config::from_toml(&format!(
        "data_dir = {data:?}\n[backup]\ndir = {data:?}\nkeep = 2\n{s3_config}",
        data = dir.path().display().to_string(),
    ))
    .unwrap();
    let backups_of_source = Arc::new(Backups::new(source.clone(), &config).await);
    let mut names = Vec::new();
    for _ in 0..3 {
        let info = backups_of_source.create(Trigger::Cli).await.unwrap();
        assert_eq!(info.locations.len(), 2, "{info:?}");
        names.push(info.name);
    }
    // The directory keeps the newest two; the bucket keeps every copy (its lifecycle rule
    // expires them: ddms' role may not delete).
    let mut keys = s3.keys("plant-backups").await;
    keys.sort();
    let expected_keys: Vec<String> = names.iter().map(|n| format!("site-a/{n}")).collect();
    assert_eq!(keys, expected_keys);
    let listing = backups_of_source.list().await.unwrap();
    assert_eq!(listing.s3_error, None);
    let listed: Vec<(String, Value)> = listing
        .backups
        .iter()
        .map(|b| (b.name.clone(), json!(b.locations)))
        .collect();
    assert_eq!(
        listed,
        [
            (names[2].clone(), json!(["local", "s3"])),
            (names[1].clone(), json!(["local", "s3"])),
            (names[0].clone(), json!(["s3"])),
        ]
    );

    // The disk is lost: the bucket still has them, and a restore fetches the archive.
    for name in &names[1..] {
        std::fs::remove_file(dir.path().join(name)).unwrap();
    }
    let listing = backups_of_source.list().await.unwrap();
    assert_eq!(listing.backups[0].locations.len(), 1);
    assert_eq!(json!(listing.backups[0].locations), json!(["s3"]));
    let (target, _target_dir) = open(&Db::Sqlite).await;
    let empty_dir = tempfile::tempdir().unwrap();
    let config = ddms::config::from_toml(&format!(
        "data_dir = {data:?}\n[backup]\ndir = {data:?}\n{s3_config}",
        data = empty_dir.path().display().to_string(),
    ))
    .unwrap();
    let backups_of_target = Backups::new(target.clone(), &config).await;
    let err = backups_of_target
        .verify("ddms-backup-20200101T000000.000Z.tar.gz")
        .await
        .unwrap_err();
    assert!(
        matches!(err, BackupError::NotFound(_)),
        "in neither place: {err}"
    );
    backups_of_target.restore(&names[2], false).await.unwrap();
    assert_eq!(contents(target.as_ref()).await, expected);

    // The binary, configured through the environment, with credentials from the AWS default
    // chain (here its environment variables) rather than from ddms.toml.
    let cli_data = tempfile::tempdir().unwrap();
    let output = ddms_command(cli_data.path())
        .args([
            "--data-dir",
            &cli_data.path().display().to_string(),
            "backup",
            "create",
        ])
        .env("DDMS_BACKUP__S3__BUCKET", "plant-backups")
        .env("DDMS_BACKUP__S3__PREFIX", "from-cli/")
        .env("DDMS_BACKUP__S3__ENDPOINT", &s3.endpoint)
        .env("DDMS_BACKUP__S3__FORCE_PATH_STYLE", "true")
        .env("AWS_ACCESS_KEY_ID", "cli-key")
        .env("AWS_SECRET_ACCESS_KEY", "cli-secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let created: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(created["locations"], json!(["local", "s3"]));
    assert!(s3
        .keys("plant-backups")
        .await
        .contains(&format!("from-cli/{}", created["name"].as_str().unwrap())));

    // A bucket that does not exist: the backup fails with the store's answer, and the local
    // copy stays.
    let config = ddms::config::from_toml(&format!(
        "data_dir = {data:?}\n[backup]\ndir = {data:?}\n{}",
        s3_config.replace("bucket = \"plant-backups\"", "bucket = \"no-such-bucket\""),
        data = empty_dir.path().display().to_string(),
    ))
    .unwrap();
    let failing = Arc::new(Backups::new(source.clone(), &config).await);
    let err = failing.create(Trigger::Cli).await.unwrap_err();
    assert!(matches!(err, BackupError::S3(_)), "{err}");
    assert!(err.to_string().contains("no-such-bucket"), "{err}");
    assert!(!failing.status().last.unwrap().ok);
    let listing = failing.list().await.unwrap();
    assert!(listing.s3_error.is_some());
    assert_eq!(listing.backups.len(), 1, "the local archive is kept");
}
