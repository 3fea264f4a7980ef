//! The JSON report of one `cargo xtask deploy` or `rollback` run: per host the steps with
//! their durations, the host's own deploy record (`ddms release activate`'s JSON line) and a
//! result; overall the result, who, which release and its digest.

use serde::{Deserialize, Serialize};

/// How one host, or the whole run, ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunResult {
    /// The release is live (or already was) and passed the host's watch.
    Ok,
    /// Another deploy holds a host's lock; nothing changed there.
    Refused,
    /// Failed before traffic moved; the old release kept serving.
    Aborted,
    /// Traffic had moved and is back on the previous release (the host's own way back or our
    /// rollback after a later host failed).
    RolledBack,
    /// Not attempted: an earlier batch failed or the run was interrupted.
    Skipped,
    /// The state is unknown or could not be restored: needs an operator.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// `upload`, `install`, `activate`, `rollback`, `status`.
    pub name: String,
    pub duration_ms: u64,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostReport {
    pub name: String,
    pub address: String,
    pub result: RunResult,
    pub steps: Vec<Step>,
    /// The release name the host's `ddms release install` gave the artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// The host's deploy record of this run's activate (or of the rollback command).
    pub record: Option<serde_json::Value>,
    /// The host's record of the rollback this run did after a later host failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_record: Option<serde_json::Value>,
    pub error: Option<String>,
}

impl HostReport {
    pub fn new(name: &str, address: &str) -> HostReport {
        HostReport {
            name: name.to_string(),
            address: address.to_string(),
            result: RunResult::Skipped,
            steps: Vec::new(),
            release: None,
            record: None,
            rollback_record: None,
            error: None,
        }
    }

    /// This run moved traffic to the new release here (so a later failure must undo it).
    pub fn switched(&self) -> bool {
        self.result == RunResult::Ok && record_result(self.record.as_ref()) == Some("ok")
    }
}

/// The `result` of a host's deploy record (`ok`, `unchanged`, `refused`, `aborted`,
/// `rolled_back`, `failed`).
pub fn record_result(record: Option<&serde_json::Value>) -> Option<&str> {
    record?.get("result")?.as_str()
}

/// A host's result from the exit status of `ddms release activate|rollback` and its record.
pub fn host_result(code: Option<i32>, record: Option<&serde_json::Value>) -> RunResult {
    match (code, record_result(record)) {
        (Some(0), Some("ok" | "unchanged")) => RunResult::Ok,
        (Some(3), _) | (_, Some("refused")) => RunResult::Refused,
        (_, Some("aborted")) => RunResult::Aborted,
        (_, Some("rolled_back")) => RunResult::RolledBack,
        _ => RunResult::Failed,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `deploy` or `rollback`.
    pub command: String,
    pub env: String,
    pub actor: String,
    pub inventory: serde_json::Value,
    pub release: Option<String>,
    pub artifact: Option<String>,
    pub artifact_sha256: Option<String>,
    pub batch: usize,
    pub started_at: String,
    pub finished_at: String,
    pub duration_ms: u64,
    pub result: RunResult,
    /// The signal that stopped the run early, if any.
    pub interrupted_by: Option<String>,
    /// Why the run did not end `ok`, in one line.
    pub error: Option<String>,
    pub hosts: Vec<HostReport>,
}

/// The overall result of a run from its hosts' results and whether it was interrupted: `ok`
/// only when every host is; `failed` if any host needs an operator; `rolled_back` if traffic
/// moved anywhere and came back; `refused` when hosts were only refused (lock held); else
/// `aborted`.
pub fn overall(hosts: &[HostReport], interrupted: bool) -> RunResult {
    let any = |r: RunResult| hosts.iter().any(|h| h.result == r);
    if !interrupted && hosts.iter().all(|h| h.result == RunResult::Ok) {
        RunResult::Ok
    } else if any(RunResult::Failed) {
        RunResult::Failed
    } else if any(RunResult::RolledBack) {
        RunResult::RolledBack
    } else if any(RunResult::Refused) && !any(RunResult::Aborted) {
        RunResult::Refused
    } else {
        RunResult::Aborted
    }
}

/// One line naming each host that did not end `ok` and why.
pub fn summary(hosts: &[HostReport]) -> Option<String> {
    let parts: Vec<String> = hosts
        .iter()
        .filter(|h| !matches!(h.result, RunResult::Ok | RunResult::Skipped))
        .map(|h| {
            let result = serde_json::to_value(h.result).expect("serializes");
            format!(
                "{}: {}{}",
                h.name,
                result.as_str().unwrap_or("failed"),
                h.error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            )
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Exit status of a run: 0 ok, 3 when only refused (another deploy holds a lock), 1 otherwise —
/// the same as the host's `ddms release activate`.
pub fn exit_code(result: RunResult) -> i32 {
    match result {
        RunResult::Ok => 0,
        RunResult::Refused => 3,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn host(name: &str, result: RunResult, record: Option<serde_json::Value>) -> HostReport {
        HostReport {
            result,
            record,
            ..HostReport::new(name, "192.0.2.1")
        }
    }

    #[test]
    fn host_results_follow_exit_status_and_record() {
        let rec = |r: &str| json!({"result": r});
        let table = [
            (Some(0), Some(rec("ok")), RunResult::Ok),
            (Some(0), Some(rec("unchanged")), RunResult::Ok),
            (Some(3), Some(rec("refused")), RunResult::Refused),
            (Some(1), Some(rec("aborted")), RunResult::Aborted),
            (Some(1), Some(rec("rolled_back")), RunResult::RolledBack),
            (Some(1), Some(rec("failed")), RunResult::Failed),
            // Exit 0 without a record, or ssh lost: the state is unknown.
            (Some(0), None, RunResult::Failed),
            (None, None, RunResult::Failed),
        ];
        for (code, record, want) in table {
            assert_eq!(
                host_result(code, record.as_ref()),
                want,
                "{code:?} {record:?}"
            );
        }
    }

    #[test]
    fn only_hosts_this_run_switched_count_as_switched() {
        assert!(host("a", RunResult::Ok, Some(json!({"result": "ok"}))).switched());
        assert!(!host("a", RunResult::Ok, Some(json!({"result": "unchanged"}))).switched());
        assert!(!host(
            "a",
            RunResult::RolledBack,
            Some(json!({"result": "rolled_back"}))
        )
        .switched());
    }

    #[test]
    fn overall_result_is_ok_only_when_every_host_is() {
        use RunResult::*;
        let run = |results: &[RunResult], interrupted: bool| {
            let hosts: Vec<_> = results.iter().map(|r| host("h", *r, None)).collect();
            overall(&hosts, interrupted)
        };
        assert_eq!(run(&[Ok, Ok], false), Ok);
        assert_eq!(run(&[Ok, Ok], true), Aborted);
        assert_eq!(run(&[RolledBack, Aborted, Skipped], false), RolledBack);
        assert_eq!(run(&[RolledBack, Failed], false), Failed);
        assert_eq!(run(&[Refused, Skipped], false), Refused);
        assert_eq!(run(&[Aborted, Skipped], false), Aborted);
        assert_eq!(exit_code(Ok), 0);
        assert_eq!(exit_code(Refused), 3);
        assert_eq!(exit_code(RolledBack), 1);
    }

    #[test]
    fn report_serializes_to_the_documented_shape() {
        let mut web1 = host("web1", RunResult::RolledBack, Some(json!({"result": "ok"})));
        web1.steps.push(Step {
            name: "upload".into(),
            duration_ms: 120,
            ok: true,
            detail: None,
        });
        web1.rollback_record = Some(json!({"result": "ok", "command": "rollback"}));
        web1.error = Some("rolled back after web2 failed".into());
        let mut web2 = host(
            "web2",
            RunResult::RolledBack,
            Some(json!({"result": "rolled_back"})),
        );
        web2.error = Some("watch: /ready answered 503".into());
        let report = Report {
            command: "deploy".into(),
            env: "staging".into(),
            actor: "ci".into(),
            inventory: json!({"kind": "ansible", "path": "hosts.yml"}),
            release: Some("0.2.0".into()),
            artifact: Some("ddms-0.2.0-x86_64-linux.tar.gz".into()),
            artifact_sha256: Some("ab".repeat(32)),
            batch: 1,
            started_at: "2026-01-01T00:00:00Z".into(),
            finished_at: "2026-01-01T00:01:00Z".into(),
            duration_ms: 60000,
            result: overall(&[web1.clone(), web2.clone()], false),
            interrupted_by: None,
            error: summary(&[web1.clone(), web2.clone()]),
            hosts: vec![web1, web2],
        };
        let value = serde_json::to_value(&report).unwrap();
        assert_eq!(value["result"], "rolled_back");
        assert_eq!(
            value["error"],
            "web1: rolled_back (rolled back after web2 failed); web2: rolled_back (watch: /ready answered 503)"
        );
        assert_eq!(value["hosts"][0]["steps"][0]["name"], "upload");
        assert_eq!(value["hosts"][0]["steps"][0]["duration_ms"], 120);
        assert_eq!(value["hosts"][0]["rollback_record"]["command"], "rollback");
        assert!(value["hosts"][1].get("rollback_record").is_none());
        let mut keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "actor",
                "artifact",
                "artifact_sha256",
                "batch",
                "command",
                "duration_ms",
                "env",
                "error",
                "finished_at",
                "hosts",
                "interrupted_by",
                "inventory",
                "release",
                "result",
                "started_at"
            ]
        );
        let back: Report = serde_json::from_value(value).unwrap();
        assert_eq!(back, report);
    }
}
