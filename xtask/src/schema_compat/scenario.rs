//! The blue-green window on one database, through the binaries' real interfaces: the new
//! release migrates; the previous release, still serving, writes and reads (admin CLI, login,
//! a device, MQTT readings); the new release serves beside it on the same database and each
//! reads what the other wrote; both stop cleanly.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::services::{http, publish, wait_for, Ddms, Server};

const USER: &str = "compat-owner";
const PASSWORD: &str = "schema compat owner password";
const METRIC: &str = "temperature";

/// `migrations`: how many files the new tree's folder for this backend holds.
pub fn run(old: &Ddms, new: &Ddms, migrations: usize) -> Result<()> {
    let migrated = new.run(&["migrate"], "")?;
    println!("schema-compat: new `ddms migrate`: {migrated}");
    // "… N migration(s) applied now, M in total": a binary built before the newest migration
    // file was added would make this whole check vacuous.
    let total: usize = migrated
        .split(" in total")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("unexpected `ddms migrate` output: {migrated}"))?;
    ensure!(
        total == migrations,
        "the new ddms applied {total} migrations, the tree has {migrations}: the binary is stale"
    );

    // The previous release's admin CLI on the new schema (it migrates leniently first).
    old.run(
        &["user", "add", "--username", USER, "--role", "owner"],
        &format!("{PASSWORD}\n"),
    )?;
    let token = old.run(
        &["token", "create", "--name", "compat", "--role", "owner"],
        "",
    )?;
    ensure!(
        !token.is_empty(),
        "old `ddms token create` printed no token"
    );
    let bearer = format!("Bearer {token}");

    let old_server = old.serve()?;
    let mut servers = vec![old_server];
    let result = window(old, new, &bearer, &mut servers);
    if result.is_err() {
        for server in &servers {
            server.print_log();
        }
        return result;
    }
    // Stop in deploy order: the old slot drains after the switch, the new one keeps serving;
    // then the new one too (the scenario is over).
    for server in servers.drain(..) {
        let label = server.label.clone();
        server
            .stop()
            .with_context(|| format!("stopping the {label} release"))?;
    }
    Ok(())
}

fn window(old: &Ddms, new: &Ddms, bearer: &str, servers: &mut Vec<Server>) -> Result<()> {
    let old_port = servers[0].port;
    let old_label = &old.label;

    // Dashboard login and a device made through a session (cookie + CSRF token).
    let session = login(old_port)?;
    let me = http(old_port, "GET", "/api/me", &session.headers(), None)?;
    ensure!(
        me.status == 200 && me.body.contains(USER),
        "{old_label} GET /api/me: {} {}",
        me.status,
        me.body
    );
    let created = http(
        old_port,
        "POST",
        "/api/devices",
        &session.headers(),
        Some(&json!({ "name": "compat-from-old", "protocol": "mqtt" })),
    )?;
    ensure!(
        created.status == 201,
        "{old_label} POST /api/devices: {} {}",
        created.status,
        created.body
    );
    let created = created.json()?;
    let old_device = created["id"].as_str().context("device id")?.to_string();
    let old_values = [20.5, 21.25, 22.0];
    publish(
        &created["mqtt"],
        &format!("devices/{old_device}/telemetry"),
        &telemetry(&old_values, 120),
    )?;
    expect_readings(old_port, bearer, &old_device, &old_values, old_label)?;
    println!(
        "schema-compat: {old_label}: login, device, {} readings written and read back",
        old_values.len()
    );

    // The new release starts beside it on the same database: the blue-green window.
    servers.push(new.serve()?);
    let new_port = servers[1].port;
    let new_label = &new.label;
    let registered = http(
        new_port,
        "POST",
        "/api/devices/register",
        &[("X-Provisioning-Token", new.provisioning_token.as_str())],
        Some(&json!({ "name": "compat-from-new" })),
    )?;
    ensure!(
        registered.status == 201,
        "{new_label} POST /api/devices/register: {} {}",
        registered.status,
        registered.body
    );
    let registered = registered.json()?;
    let new_device = registered["device_id"]
        .as_str()
        .context("device_id")?
        .to_string();
    let new_values = [5.0, 6.5];
    publish(
        &registered["mqtt"],
        &format!("devices/{new_device}/telemetry"),
        &telemetry(&new_values, 90),
    )?;

    // Each reads what the other wrote; the old one keeps writing after the new one started.
    expect_readings(old_port, bearer, &new_device, &new_values, old_label)?;
    expect_readings(new_port, bearer, &old_device, &old_values, new_label)?;
    let more = [23.5];
    publish(
        &created["mqtt"],
        &format!("devices/{old_device}/telemetry"),
        &telemetry(&more, 60),
    )?;
    let all: Vec<f64> = old_values.iter().chain(&more).copied().collect();
    expect_readings(new_port, bearer, &old_device, &all, new_label)?;

    // The user, the token and the devices the old release wrote, through the new one.
    let new_session = login(new_port)?;
    for (port, label, headers) in [
        (old_port, old_label, vec![("Authorization", bearer)]),
        (new_port, new_label, new_session.headers()),
    ] {
        let list = http(port, "GET", "/api/devices", &headers, None)?;
        ensure!(
            list.status == 200
                && list.body.contains(&old_device)
                && list.body.contains(&new_device),
            "{label} GET /api/devices lacks a device: {} {}",
            list.status,
            list.body
        );
    }
    println!(
        "schema-compat: {new_label} beside {old_label}: a registered device's readings, and \
         each release read what the other wrote"
    );
    Ok(())
}

struct Session {
    cookie: String,
    csrf: String,
}

impl Session {
    fn headers(&self) -> Vec<(&str, &str)> {
        vec![("Cookie", &self.cookie), ("X-CSRF-Token", &self.csrf)]
    }
}

fn login(port: u16) -> Result<Session> {
    let answer = http(
        port,
        "POST",
        "/api/auth/login",
        &[],
        Some(&json!({ "username": USER, "password": PASSWORD })),
    )?;
    ensure!(
        answer.status == 200,
        "POST /api/auth/login: {} {}",
        answer.status,
        answer.body
    );
    let csrf = answer.json()?["csrf_token"]
        .as_str()
        .context("login answer without csrf_token")?
        .to_string();
    ensure!(!answer.set_cookies.is_empty(), "login set no cookie");
    Ok(Session {
        cookie: answer.set_cookies.join("; "),
        csrf,
    })
}

/// One telemetry payload per value, a second apart, starting `ago` seconds back (inside the
/// readings endpoint's default last hour).
fn telemetry(values: &[f64], ago: i64) -> Vec<String> {
    let start = OffsetDateTime::now_utc() - time::Duration::seconds(ago);
    values
        .iter()
        .enumerate()
        .map(|(i, value)| {
            let ts = (start + time::Duration::seconds(i as i64))
                .format(&Rfc3339)
                .expect("a current time formats as RFC 3339");
            json!({ "ts": ts, "metrics": { METRIC: value } }).to_string()
        })
        .collect()
}

/// The device's raw readings are exactly `values`, and its 1-minute rollups count them all.
/// Acknowledged readings are committed, but the other release may be asked first: wait.
fn expect_readings(
    port: u16,
    bearer: &str,
    device: &str,
    values: &[f64],
    label: &str,
) -> Result<()> {
    let auth = [("Authorization", bearer)];
    wait_for(
        &format!("{label} to read {} readings of {device}", values.len()),
        Duration::from_secs(30),
        || {
            let path = format!("/api/devices/{device}/readings?metric={METRIC}");
            let raw = http(port, "GET", &path, &auth, None)?;
            ensure!(
                raw.status == 200,
                "{label} GET {path}: {} {}",
                raw.status,
                raw.body
            );
            let got: Vec<f64> = raw
                .json()?
                .as_array()
                .context("readings are an array")?
                .iter()
                .filter_map(|p| p["value"].as_f64())
                .collect();
            ensure!(
                got == values,
                "{label} GET {path}: {got:?}, expected {values:?}"
            );
            let path = format!("{path}&step=1m");
            let buckets = http(port, "GET", &path, &auth, None)?;
            ensure!(
                buckets.status == 200,
                "{label} GET {path}: {} {}",
                buckets.status,
                buckets.body
            );
            let counted: u64 = buckets
                .json()?
                .as_array()
                .context("buckets are an array")?
                .iter()
                .filter_map(|b| b["count"].as_u64())
                .sum();
            ensure!(
                counted == values.len() as u64,
                "{label} GET {path}: rollups count {counted}, expected {}",
                values.len()
            );
            Ok(())
        },
    )
}
