//! `ddms release restart`: a changed ddms.toml reaches traffic through the blue-green machine
//! (the live release started again in the idle slot), with the same gates and way back as
//! `activate`. Real parts as in `release.rs`: the real binary, nginx, the `direct` manager.

use std::time::Duration;

use serde_json::Value;

use crate::support::release::{artifacts, insecure_client, Load, ReleaseHost};

const ORIGIN: &str = "https://scada.example.net";

/// The CORS origin the slot nginx routes to allows, if any: `http.cors.allowed_origins` of the
/// configuration that process read when it started.
async fn allowed_origin(host: &ReleaseHost) -> Option<String> {
    let response = insecure_client()
        .get(host.public_url("/api/version"))
        .header("origin", ORIGIN)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    response
        .headers()
        .get("access-control-allow-origin")
        .map(|v| v.to_str().unwrap().to_string())
}

fn append_to_config(host: &ReleaseHost, toml: &str) {
    use std::io::Write;
    let path = host.root.join("etc/ddms/ddms.toml");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    file.write_all(toml.as_bytes()).unwrap();
}

fn step_names(record: &Value) -> Vec<String> {
    record["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{}:{}",
                s["name"].as_str().unwrap(),
                s["result"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test]
async fn restart_puts_a_changed_setting_live_without_a_failed_request() {
    let artifacts = artifacts();
    let host = ReleaseHost::start().await.unwrap();

    // Nothing live yet: refused, and said so, in the record and on stderr.
    let run = host.release(&["restart"]).await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let record = run.json();
    assert_eq!(record["command"], "restart");
    assert_eq!(record["result"], "aborted", "{record}");
    assert!(
        record["error"]
            .as_str()
            .unwrap()
            .contains("nothing is live to restart"),
        "{record}"
    );
    assert!(
        run.stderr.contains("nothing is live to restart"),
        "{}",
        run.stderr
    );

    let v1 = &artifacts.good[0];
    let v1_slot = host.deploy(v1).await.json()["to_slot"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(allowed_origin(&host).await, None);

    // The operator (or the Ansible role) changes a setting: the running slot does not see it.
    append_to_config(
        &host,
        &format!("[http.cors]\nallowed_origins = [{ORIGIN:?}]\n"),
    );
    let token = host.viewer_token().await;
    let fresh = Load::start(&host, &token, false);
    let kept_alive = Load::start(&host, &token, true);
    let run = host.release(&["restart"]).await;
    let (fresh, kept_alive) = (fresh.stop().await, kept_alive.stop().await);

    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let record = run.json();
    assert_eq!(record["command"], "restart");
    assert_eq!(record["result"], "restarted", "{record}");
    assert_eq!(record["release"], "v1");
    assert_eq!(record["from_release"], "v1");
    assert_eq!(record["from_slot"], v1_slot.as_str());
    let new_slot = record["to_slot"].as_str().unwrap().to_string();
    assert_ne!(new_slot, v1_slot);
    assert_eq!(
        step_names(&record),
        [
            "lock:ok",
            "resolve:ok",
            "migrate:skipped",
            "link:ok",
            "start:ok",
            "ready:ok",
            "version:ok",
            "switch:ok",
            "route:ok",
            "watch:ok",
            "stop_old:ok",
            "commit:ok"
        ]
    );
    for report in [&fresh, &kept_alive] {
        assert!(
            report.failures.is_empty(),
            "failed requests during the restart: {:?}",
            report.failures
        );
        assert!(report.ok > 50, "{report:?}");
    }
    assert!(
        fresh.slots.contains_key(&v1_slot) && fresh.slots.contains_key(&new_slot),
        "{fresh:?}"
    );
    assert_eq!(allowed_origin(&host).await.as_deref(), Some(ORIGIN));
    assert_eq!(
        host.serving_slot().await.as_deref(),
        Some(new_slot.as_str())
    );

    let status = host.status().await;
    assert_eq!(status["active_slot"], new_slot.as_str());
    assert_eq!(status["slots"][&new_slot]["release"], "v1");
    assert_eq!(status["slots"][&v1_slot]["running"], false, "{status}");
    assert_eq!(status["last_known_good"], "v1");
    assert_eq!(status["last_deploy"]["result"], "restarted");
    let commands: Vec<_> = host
        .deploys()
        .iter()
        .map(|d| format!("{}:{}", d["command"], d["result"]))
        .collect();
    assert_eq!(
        commands,
        [
            r#""restart":"aborted""#,
            r#""activate":"ok""#,
            r#""restart":"restarted""#
        ]
    );
    println!(
        "restart: {} ms (ready {} ms, route {} ms); {} + {} requests, none failed",
        record["duration_ms"],
        run.step_ms("ready"),
        run.step_ms("route"),
        fresh.ok,
        kept_alive.ok
    );
}

#[tokio::test]
async fn a_restart_whose_configuration_fails_the_gate_leaves_the_old_slot_serving() {
    let artifacts = artifacts();
    let host = ReleaseHost::start().await.unwrap();
    append_to_config(
        &host,
        &format!("[http.cors]\nallowed_origins = [{ORIGIN:?}]\n"),
    );
    let v1_slot = host.deploy(&artifacts.good[0]).await.json()["to_slot"]
        .as_str()
        .unwrap()
        .to_string();
    let token = host.viewer_token().await;
    let load = Load::start(&host, &token, false);

    // A setting the application refuses: the new process exits at start.
    let config = host.root.join("etc/ddms/ddms.toml");
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, good.replace(&format!("{ORIGIN:?}"), "\"*\"")).unwrap();
    let run = host.release(&["restart"]).await;
    let report = load.stop().await;

    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let record = run.json();
    assert_eq!(record["result"], "aborted", "{record}");
    assert_eq!(
        step_names(&record),
        [
            "lock:ok",
            "resolve:ok",
            "migrate:skipped",
            "link:ok",
            "start:ok",
            "ready:failed",
            "stop_new:ok"
        ]
    );
    let error = record["error"].as_str().unwrap();
    // The slot's own last words name the setting.
    assert!(
        error.contains("process exited") && error.contains("allowed_origins"),
        "{error}"
    );
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(
        report.slots.keys().collect::<Vec<_>>(),
        [&v1_slot],
        "{report:?}"
    );
    // Still the old process, with the configuration it started with.
    assert_eq!(host.serving_slot().await.as_deref(), Some(v1_slot.as_str()));
    assert_eq!(allowed_origin(&host).await.as_deref(), Some(ORIGIN));
    let status = host.status().await;
    assert_eq!(status["active_slot"], v1_slot.as_str());
    assert_eq!(status["last_deploy"]["result"], "aborted");

    // Fixed, the next restart goes through.
    std::fs::write(&config, good).unwrap();
    let run = host.release(&["restart"]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.json()["result"], "restarted");
    assert_ne!(run.json()["to_slot"], v1_slot.as_str());
    tokio::time::timeout(Duration::from_secs(5), async {
        while allowed_origin(&host).await.as_deref() != Some(ORIGIN) {
            // sleep: the poll interval of this wait with a deadline (bounded by the timeout around it)
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the restarted slot serves the fixed configuration");
}
