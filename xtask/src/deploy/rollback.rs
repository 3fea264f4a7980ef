//! `cargo xtask rollback`: every host back to its previous known-good release, or `--to` an
//! installed one, batch by batch.

use super::*;

/// `cargo xtask rollback`: every host back to its previous known-good release, or with `--to`
/// to that installed release (`ddms release activate`, the same gates; its migrations are
/// already applied, and a release's `ddms migrate` ignores newer ones).
pub fn rollback(sh: &Shell, options: &Options) -> Result<i32> {
    let started_at = now_rfc3339();
    let started = Instant::now();
    let (hosts, source) = hosts(sh, options)?;
    let actor = actor();
    let env = remote_env(&actor)?;
    if options.dry_run {
        let change = match &options.to {
            Some(to) => plan::Change::RollbackTo(to.clone()),
            None => plan::Change::Rollback,
        };
        return plan::run(options, &source, &hosts, &env, change);
    }
    if let Some(to) = &options.to {
        // Every host must have the release before any host moves.
        let missing = plan::hosts_without(&hosts, &env, to);
        ensure!(
            missing.is_empty(),
            "rollback --to {to}: {}; nothing was changed",
            missing.join("; ")
        );
    }
    let mut reports = Vec::new();
    let batches = hosts.len().div_ceil(options.batch);
    for (index, batch) in hosts.chunks(options.batch).enumerate() {
        progress_batch("rollback", index, batches, batch);
        let done = per_host(batch, |host| {
            let report = match &options.to {
                Some(to) => rollback_to_host(host, &env, to),
                None => {
                    let mut report = HostReport::new(&host.name, &host.address);
                    rollback_host(host, &env, &mut report);
                    let code = report.steps.last().filter(|s| s.ok).map(|_| 0).or(Some(1));
                    report.record = report.rollback_record.take();
                    report.result = report::host_result(code, report.record.as_ref());
                    report
                }
            };
            progress_host("rollback", &report);
            report
        });
        let failed = done.iter().any(|r| r.result != report::RunResult::Ok);
        reports.extend(done);
        // Each host's own rollback is independent; a fleet moving to one chosen release stops
        // at the first batch that did not get there.
        if failed && options.to.is_some() {
            break;
        }
    }
    for host in &hosts[reports.len()..] {
        reports.push(HostReport::new(&host.name, &host.address));
    }
    let result = report::overall(&reports, false);
    let report = Report {
        command: "rollback".into(),
        env: options.env.clone(),
        actor,
        inventory: serde_json::to_value(&source)?,
        release: options.to.clone(),
        artifact: None,
        artifact_sha256: None,
        batch: options.batch,
        started_at,
        finished_at: now_rfc3339(),
        duration_ms: started.elapsed().as_millis() as u64,
        result,
        interrupted_by: None,
        error: report::summary(&reports),
        hosts: reports,
    };
    finish(sh, options, &report)
}

/// `ddms release activate TO` on one host (an installed release).
fn rollback_to_host(host: &Host, env: &[(String, String)], to: &str) -> HostReport {
    let mut report = HostReport::new(&host.name, &host.address);
    report.release = Some(to.to_string());
    let Some(activate) = remote_step(&mut report, "activate", || {
        ssh::run(host, env, &ssh::activate_script(to))
    }) else {
        return report;
    };
    report.record = last_json(&activate.stdout);
    report.result = report::host_result(activate.code, report.record.as_ref());
    if report.result != report::RunResult::Ok {
        report.error = Some(
            report
                .record
                .as_ref()
                .and_then(|r| r.get("error"))
                .and_then(|e| e.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| activate.reason()),
        );
    }
    report
}
