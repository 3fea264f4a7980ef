//! `ddms release` end to end, with real parts: release tarballs of the real binary (or shell
//! wrappers of it that misbehave), a real nginx running the shipped site configuration, the
//! `direct` service manager, SQLite in a temp root. See `support/release.rs`.

mod install;

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::release::{
    artifacts, assert_nothing_installed, files_under, Load, ReleaseHost,
};
use crate::support::wait::eventually;

/// Reads an SSE stream to its end: (what came, how it ended, when).
async fn read_event_stream(
    url: String,
    token: String,
    opened: tokio::sync::oneshot::Sender<()>,
) -> (String, Result<(), String>, Instant) {
    let client = crate::support::release::insecure_client_without_timeout();
    let mut response = match client.get(&url).bearer_auth(&token).send().await {
        Ok(response) if response.status().is_success() => {
            let _ = opened.send(());
            response
        }
        Ok(response) => {
            return (
                String::new(),
                Err(response.status().to_string()),
                Instant::now(),
            )
        }
        Err(e) => return (String::new(), Err(format!("{e:?}")), Instant::now()),
    };
    let mut text = String::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => text.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(None) => return (text, Ok(()), Instant::now()),
            Err(e) => return (text, Err(format!("{e:?}")), Instant::now()),
        }
    }
}

/// Follows a running deploy's log (its stderr) until it says `step` is done (`<step> done`):
/// the deploy has then moved on to the next step.
async fn wait_for_step(deploy: &mut tokio::process::Child, step: &str) {
    let mut lines = BufReader::new(deploy.stderr.take().expect("stderr piped")).lines();
    let done = format!("{step} done");
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let found = line.contains(&done);
            seen.push(line);
            if found {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        found == Ok(true),
        "the deploy never logged `{done}`: {seen:#?}"
    );
    // The rest of the log is read and dropped, so the deploy never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
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
async fn activating_a_release_while_clients_read_through_nginx_drops_no_request_and_rollback_returns_to_the_previous_one(
) {
    let artifacts = artifacts();
    let host = ReleaseHost::start().await.unwrap();
    let (v1, v2) = (&artifacts.good[0], &artifacts.good[1]);

    let first = host.deploy(v1).await;
    let record = first.json();
    assert_eq!(record["result"], "ok", "{record}");
    assert_eq!(record["release"], "v1");
    let v1_slot = record["to_slot"].as_str().unwrap().to_string();
    assert_eq!(host.serving_slot().await.as_deref(), Some(v1_slot.as_str()));

    let token = host.viewer_token().await;
    let fresh = Load::start(&host, &token, false);
    let kept_alive = Load::start(&host, &token, true);
    let (opened, stream_open) = tokio::sync::oneshot::channel();
    let stream = tokio::spawn(read_event_stream(
        host.public_url("/api/stream"),
        token.clone(),
        opened,
    ));
    tokio::time::timeout(Duration::from_secs(30), stream_open)
        .await
        .expect("the event stream opens")
        .expect("the event stream opens");
    eventually(
        "both loads answered by v1's slot",
        Duration::from_secs(30),
        || async { fresh.answered_by(&v1_slot) > 0 && kept_alive.answered_by(&v1_slot) > 0 },
    )
    .await;

    let started = Instant::now();
    let run = host.deploy(v2).await;
    let elapsed = started.elapsed();
    // The live stream opened before the switch stayed on the old slot through the reload and
    // ended cleanly when that slot stopped, having told the client to come back within 1 s.
    let (text, end, ended) = tokio::time::timeout(Duration::from_secs(30), stream)
        .await
        .expect("the event stream ends once the old slot stops")
        .unwrap();
    assert!(end.is_ok(), "the stream broke instead of ending: {end:?}");
    assert!(
        text.starts_with("retry: 1000") || text.contains("\nretry: 1000"),
        "{text:?}"
    );
    let stream_lived = ended - started;
    assert!(
        stream_lived < elapsed,
        "the stream outlived the deploy: {stream_lived:?} vs {elapsed:?}"
    );
    let record = run.json();
    assert_eq!(record["result"], "ok", "{record}");
    assert_eq!(record["from_release"], "v1");
    assert_eq!(record["from_slot"], v1_slot.as_str());
    let v2_slot = record["to_slot"].as_str().unwrap().to_string();
    eventually(
        "both loads answered by v2's slot",
        Duration::from_secs(30),
        || async { fresh.answered_by(&v2_slot) > 0 && kept_alive.answered_by(&v2_slot) > 0 },
    )
    .await;
    let (during_v2, during_v2_kept) = (fresh.take(), kept_alive.take());
    assert_ne!(v2_slot, v1_slot);
    assert_eq!(
        step_names(&record),
        [
            "lock:ok",
            "resolve:ok",
            "migrate:ok",
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
    assert_eq!(record["actor"], "release-test");
    assert!(record["artifact_digest"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    for report in [&during_v2, &during_v2_kept] {
        assert!(
            report.failures.is_empty(),
            "failed requests during the switch: {:?}",
            report.failures
        );
        assert!(report.ok > 50, "{report:?}");
    }
    assert!(during_v2.retried.is_empty());
    // Both slots answered while the switch happened, and the new one answers now.
    assert!(
        during_v2.slots.contains_key(&v1_slot) && during_v2.slots.contains_key(&v2_slot),
        "{during_v2:?}"
    );
    assert_eq!(host.serving_slot().await.as_deref(), Some(v2_slot.as_str()));
    println!(
        "install + activate v2: {} ms, the live stream ended cleanly after {} ms (switch {} ms, route {} ms: {}; stop_old {} ms); {} requests on fresh and {} on kept-alive connections, none failed, {} sent twice after an idle connection closed",
        elapsed.as_millis(),
        stream_lived.as_millis(),
        run.step_ms("switch"),
        run.step_ms("route"),
        record["steps"][8]["detail"],
        run.step_ms("stop_old"),
        during_v2.ok,
        during_v2_kept.ok,
        during_v2_kept.retried.len()
    );

    let status = host.status().await;
    assert_eq!(status["active_slot"], v2_slot.as_str());
    assert_eq!(status["slots"][&v2_slot]["release"], "v2");
    assert_eq!(status["slots"][&v2_slot]["ready"], true);
    assert_eq!(
        status["slots"][&v1_slot]["running"], false,
        "the old slot was stopped: {status}"
    );
    assert_eq!(status["last_known_good"], "v2");
    assert_eq!(status["previous_known_good"], "v1");
    assert_eq!(status["lock"], Value::Null);
    assert_eq!(status["last_deploy"]["result"], "ok");

    // Rollback: back to v1 through the same gates, also without a failed request.
    let run = host.release(&["rollback"]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let record = run.json();
    // The loads go on until v1's slot, rolled back to, has answered each.
    eventually(
        "both loads answered by v1's slot again",
        Duration::from_secs(30),
        || async { fresh.answered_by(&v1_slot) > 0 && kept_alive.answered_by(&v1_slot) > 0 },
    )
    .await;
    let (report, report_kept) = (fresh.stop().await, kept_alive.stop().await);
    assert_eq!(record["command"], "rollback");
    assert_eq!(record["release"], "v1");
    assert_eq!(record["from_release"], "v2");
    assert!(
        step_names(&record).contains(&"migrate:skipped".to_string()),
        "{record}"
    );
    for report in [&report, &report_kept] {
        assert!(
            report.failures.is_empty(),
            "failed requests during the rollback: {:?}",
            report.failures
        );
    }
    println!(
        "rollback: {} ms; {} + {} requests, none failed, {} sent twice",
        record["duration_ms"],
        report.ok,
        report_kept.ok,
        report_kept.retried.len()
    );
    assert_eq!(host.serving_slot().await.as_deref(), Some(v1_slot.as_str()));
    let status = host.status().await;
    assert_eq!(status["slots"][&v1_slot]["release"], "v1");
    assert_eq!(status["last_known_good"], "v1");

    let deploys = host.deploys();
    assert_eq!(deploys.len(), 3);
    assert_eq!(
        deploys
            .iter()
            .map(|d| d["command"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["activate", "activate", "rollback"]
    );
}

/// Requests nginx proxied to `port` since the access log had `from` bytes.
fn proxied_to(host: &ReleaseHost, port: u16, from: usize) -> Vec<String> {
    let log = host.access_log();
    let needle = format!(" 127.0.0.1:{port} ");
    log[from.min(log.len())..]
        .lines()
        .filter(|line| line.contains(&needle))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn a_release_that_never_becomes_ready_gets_no_traffic_and_the_deploy_fails() {
    let artifacts = artifacts();
    let mut host = ReleaseHost::start().await.unwrap();
    let v1 = &artifacts.good[0];
    let v1_slot = host.deploy(v1).await.json()["to_slot"]
        .as_str()
        .unwrap()
        .to_string();
    let token = host.viewer_token().await;
    let load = Load::start(&host, &token, false);

    let bad = &artifacts.never_ready;
    assert_eq!(host.install(bad).await.code, 0);
    host.set("--ready-timeout", "6");
    let log_start = host.access_log().len();
    let run = host.release(&["activate", &bad.release]).await;
    // The load goes on until the good slot has answered after the aborted deploy too.
    let answered = load.answered_by(&v1_slot);
    eventually(
        "the load answered by v1's slot after the abort",
        Duration::from_secs(30),
        || async { load.answered_by(&v1_slot) > answered },
    )
    .await;
    let report = load.stop().await;

    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let record = run.json();
    assert_eq!(record["result"], "aborted", "{record}");
    let bad_slot = record["to_slot"].as_str().unwrap().to_string();
    assert_ne!(bad_slot, v1_slot);
    assert_eq!(
        step_names(&record),
        [
            "lock:ok",
            "resolve:ok",
            "migrate:ok",
            "link:ok",
            "start:ok",
            "ready:failed",
            "stop_new:ok"
        ]
    );
    let error = record["error"].as_str().unwrap();
    assert!(error.contains("did not become ready within 6 s"), "{error}");
    assert!(run.stderr.contains("deploy aborted"), "{}", run.stderr);

    // Nothing reached the bad slot; the good one served throughout and still does.
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(
        report.slots.keys().collect::<Vec<_>>(),
        [&v1_slot],
        "{report:?}"
    );
    let leaked = proxied_to(&host, host.port(&bad_slot), log_start);
    assert!(
        leaked.is_empty(),
        "nginx sent requests to the unready slot: {leaked:?}"
    );
    assert_eq!(host.serving_slot().await.as_deref(), Some(v1_slot.as_str()));
    let status = host.status().await;
    assert_eq!(status["active_slot"], v1_slot.as_str());
    assert_eq!(status["slots"][&bad_slot]["running"], false, "{status}");
    assert_eq!(status["last_known_good"], "v1");
    assert_eq!(status["last_deploy"]["result"], "aborted");
}

#[tokio::test]
async fn a_release_that_crashes_during_the_watch_is_rolled_back_automatically() {
    let artifacts = artifacts();
    let mut host = ReleaseHost::start().await.unwrap();
    let v1 = &artifacts.good[0];
    let v1_slot = host.deploy(v1).await.json()["to_slot"]
        .as_str()
        .unwrap()
        .to_string();

    let bad = &artifacts.crashes_after_switch;
    assert_eq!(host.install(bad).await.code, 0);
    // It crashes a second after the switch: well inside a 20 s watch.
    host.set("--watch", "20");
    let started = Instant::now();
    let run = host.release(&["activate", &bad.release]).await;
    let elapsed = started.elapsed();

    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let record = run.json();
    assert_eq!(record["result"], "rolled_back", "{record}");
    assert_eq!(
        step_names(&record),
        [
            "lock:ok",
            "resolve:ok",
            "migrate:ok",
            "link:ok",
            "start:ok",
            "ready:ok",
            "version:ok",
            "switch:ok",
            "route:ok",
            "watch:failed",
            "switch_back:ok",
            "stop_new:ok"
        ]
    );
    let error = record["error"].as_str().unwrap();
    assert!(error.contains("unhealthy after the switch"), "{error}");
    assert!(run.stderr.contains("deploy rolled_back"), "{}", run.stderr);
    assert!(
        elapsed < Duration::from_secs(20),
        "the rollback did not wait for the end of the watch: {elapsed:?}"
    );
    let bad_slot = record["to_slot"].as_str().unwrap().to_string();

    // Traffic is back on v1, which kept running; the crashed slot is stopped.
    assert_eq!(host.serving_slot().await.as_deref(), Some(v1_slot.as_str()));
    let status = host.status().await;
    assert_eq!(status["active_slot"], v1_slot.as_str(), "{status}");
    assert_eq!(status["recorded_active_slot"], v1_slot.as_str(), "{status}");
    assert_eq!(status["slots"][&v1_slot]["ready"], true);
    assert_eq!(status["slots"][&bad_slot]["running"], false);
    assert_eq!(status["last_known_good"], "v1");
    assert_eq!(host.deploys().last().unwrap(), &record);
    println!(
        "crash in the watch → rolled back: {} ms in all, watch failed after {} ms, switch back {} ms",
        elapsed.as_millis(),
        run.step_ms("watch"),
        run.step_ms("switch_back")
    );
}

#[tokio::test]
async fn a_killed_activate_leaves_a_lock_that_the_next_activate_takes_after_the_ttl() {
    let artifacts = artifacts();
    let mut host = ReleaseHost::start().await.unwrap();
    let (v1, v2, v3) = (&artifacts.good[0], &artifacts.good[1], &artifacts.good[2]);
    let v1_slot = host.deploy(v1).await.json()["to_slot"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(host.install(v2).await.code, 0);
    assert_eq!(host.install(v3).await.code, 0);

    // A deploy that switched and is watching, killed outright (no chance to clean up).
    host.set("--lock-ttl", "3");
    host.set("--watch", "120");
    let mut doomed = host.command(&["activate", "v2"]).spawn().unwrap();
    let doomed_pid = doomed.id().unwrap();
    // Switched and routed: the deploy is watching.
    wait_for_step(&mut doomed, "route").await;
    kill(Pid::from_raw(doomed_pid as i32), Signal::SIGKILL).unwrap();
    let _ = doomed.wait().await;
    let killed_at = Instant::now();

    // While the lease runs, the next deploy is refused, naming the holder.
    let refused = host.release(&["activate", "v3"]).await;
    assert_eq!(refused.code, 3, "{}\n{}", refused.stdout, refused.stderr);
    assert!(
        refused.stderr.contains("another deploy holds the lock")
            && refused.stderr.contains("release-test")
            && refused.stderr.contains(&format!("pid {doomed_pid}")),
        "{}",
        refused.stderr
    );
    assert_eq!(refused.json()["result"], "refused");
    let status = host.status().await;
    assert_eq!(status["lock"]["pid"], doomed_pid, "{status}");
    assert_eq!(status["lock"]["command"], "activate v2");

    // After the TTL the lock is free; the next deploy cleans up and goes through.
    let wait =
        Duration::from_secs(3).saturating_sub(killed_at.elapsed()) + Duration::from_millis(500);
    // sleep: the subject is the lock's lease (3 s) running out: slept past it with a margin.
    tokio::time::sleep(wait).await;
    host.set("--watch", "3");
    let run = host.release(&["activate", "v3"]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let record = run.json();
    assert_eq!(record["result"], "ok", "{record}");
    // The killed deploy had moved traffic to v2's slot; v1's slot, still running, is idle now.
    assert_eq!(record["from_release"], "v2");
    assert_eq!(record["to_slot"], v1_slot.as_str());
    assert!(
        step_names(&record).contains(&"stop_idle:ok".to_string()),
        "{record}"
    );

    let status = host.status().await;
    let slots = status["slots"].as_object().unwrap();
    let active: Vec<_> = slots.iter().filter(|(_, s)| s["active"] == true).collect();
    let running: Vec<_> = slots.iter().filter(|(_, s)| s["running"] == true).collect();
    assert_eq!(active.len(), 1, "{status}");
    assert_eq!(running.len(), 1, "{status}");
    assert_eq!(active[0].0, running[0].0);
    assert_eq!(status["active_slot"], v1_slot.as_str());
    assert_eq!(status["slots"][&v1_slot]["release"], "v3");
    assert_eq!(status["lock"], Value::Null);
    assert_eq!(host.serving_slot().await.as_deref(), Some(v1_slot.as_str()));
}

#[tokio::test]
async fn prune_keeps_the_newest_releases_but_never_the_active_or_last_known_good_one() {
    let artifacts = artifacts();
    let host = ReleaseHost::start().await.unwrap();
    let good = &artifacts.good;
    host.deploy(&good[0]).await;
    host.deploy(&good[1]).await;
    for artifact in &good[2..] {
        assert_eq!(host.install(artifact).await.code, 0);
    }
    assert_eq!(host.releases(), ["v1", "v2", "v3", "v4"]);

    // v4 is the newest; v2 is active and last known good; v1 is the rollback target.
    let run = host.release(&["prune", "--keep", "1"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["removed"], serde_json::json!(["v3"]), "{report}");
    assert_eq!(host.releases(), ["v1", "v2", "v4"]);

    let run = host.release(&["prune", "--keep", "0"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(host.releases(), ["v1", "v2"]);
    let status = host.status().await;
    assert_eq!(status["last_known_good"], "v2");
    assert_eq!(status["releases"], serde_json::json!(["v2", "v1"]));

    // And the rollback target is still there to roll back to.
    let run = host.release(&["rollback"]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.json()["release"], "v1");
}

#[tokio::test]
async fn a_deploy_cancelled_with_sigterm_switches_back_and_frees_the_lock_at_once() {
    let artifacts = artifacts();
    let mut host = ReleaseHost::start().await.unwrap();
    let (v1, v2) = (&artifacts.good[0], &artifacts.good[1]);
    let v1_slot = host.deploy(v1).await.json()["to_slot"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(host.install(v2).await.code, 0);

    // A CI job cancelled while its deploy watches the new slot.
    host.set("--watch", "120");
    host.set("--lock-ttl", "120");
    let mut deploy = host.command(&["activate", "v2"]).spawn().unwrap();
    let pid = deploy.id().unwrap();
    // Switched and routed: the deploy is watching.
    wait_for_step(&mut deploy, "route").await;
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    let output = tokio::time::timeout(Duration::from_secs(60), deploy.wait_with_output())
        .await
        .expect("the cancelled deploy ends")
        .unwrap();

    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let record: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(record["result"], "rolled_back", "{record}");
    assert_eq!(record["error"], "interrupted by SIGTERM");
    let steps = step_names(&record);
    assert!(
        steps.ends_with(&[
            "watch:failed".to_string(),
            "switch_back:ok".to_string(),
            "stop_new:ok".to_string()
        ]),
        "{steps:?}"
    );
    // No lock left behind: the next deploy need not wait for the lease to run out.
    let status = host.status().await;
    assert_eq!(status["lock"], Value::Null, "{status}");
    assert_eq!(status["active_slot"], v1_slot.as_str());
    assert_eq!(host.serving_slot().await.as_deref(), Some(v1_slot.as_str()));
    host.set("--watch", "3");
    let run = host.release(&["activate", "v2"]).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
}
