//! Plain-text tables for people: the summary at the end of a deploy or rollback (the JSON
//! report stays in its file), the dry-run plan and the fleet history.

use super::report::{HostReport, Report, RunResult};

/// Left-aligned columns two spaces apart; the last column is not padded.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let columns = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(cell);
                out.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

pub fn result_name(result: RunResult) -> String {
    serde_json::to_value(result)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// One host's line of a summary.
pub struct HostRow {
    pub result: String,
    pub from: String,
    pub to: String,
}

fn field(record: Option<&serde_json::Value>, key: &str) -> Option<String> {
    record?.get(key)?.as_str().map(str::to_string)
}

/// Where the host was and where it is now: the host's own record says (for a host this run
/// switched and then rolled back, the rollback's record).
pub fn host_row(report: &HostReport) -> HostRow {
    let record = report.record.as_ref();
    let from = field(record, "from_release");
    let to = match report.result {
        RunResult::Ok => field(record, "release").or_else(|| report.release.clone()),
        RunResult::Skipped => None,
        // The state is unknown: an operator must look.
        RunResult::Failed => Some("?".into()),
        // This run switched the host, then rolled it back: where the rollback took it.
        _ if report.rollback_record.is_some() => field(report.rollback_record.as_ref(), "release"),
        // Refused, aborted, or the host's own way back: it stays where it was.
        _ => from.as_ref().map(|f| format!("{f} (kept)")),
    };
    HostRow {
        result: result_name(report.result),
        from: from.unwrap_or_else(|| "-".into()),
        to: to.unwrap_or_else(|| "-".into()),
    }
}

/// The table printed when a deploy or rollback ends.
pub fn summary(report: &Report) -> String {
    let rows: Vec<Vec<String>> = report
        .hosts
        .iter()
        .map(|h| {
            let row = host_row(h);
            let ms: u64 = h.steps.iter().map(|s| s.duration_ms).sum();
            vec![
                h.name.clone(),
                row.result,
                row.from,
                row.to,
                if h.steps.is_empty() {
                    "-".into()
                } else {
                    format!("{:.1} s", ms as f64 / 1000.0)
                },
                h.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let mut out = format!(
        "{} of `{}`{}: {} in {:.1} s\n\n",
        report.command,
        report.env,
        report
            .release
            .as_deref()
            .map(|r| format!(" to {r}"))
            .unwrap_or_default(),
        result_name(report.result),
        report.duration_ms as f64 / 1000.0
    );
    out.push_str(&render(
        &["HOST", "RESULT", "FROM", "TO", "TIME", "NOTE"],
        &rows,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn columns_line_up_and_lines_have_no_trailing_space() {
        let out = render(
            &["HOST", "RESULT", "NOTE"],
            &[
                vec!["web1".into(), "ok".into(), String::new()],
                vec!["web-two".into(), "rolled_back".into(), "watch: 503".into()],
            ],
        );
        assert_eq!(
            out,
            "HOST     RESULT       NOTE\n\
             web1     ok\n\
             web-two  rolled_back  watch: 503\n"
        );
    }

    #[test]
    fn the_summary_names_each_host_with_where_it_came_from_and_went() {
        let mut ok = HostReport::new("web1", "192.0.2.1");
        ok.result = RunResult::Ok;
        ok.record = Some(json!({"result": "ok", "release": "0.2.0", "from_release": "0.1.0"}));
        ok.steps.push(super::super::report::Step {
            name: "activate".into(),
            duration_ms: 1500,
            ok: true,
            detail: None,
        });
        // Switched, then undone after web2 failed.
        let mut undone = HostReport::new("web2", "192.0.2.2");
        undone.result = RunResult::RolledBack;
        undone.record = Some(json!({"result": "ok", "release": "0.2.0", "from_release": "0.1.0"}));
        undone.rollback_record = Some(json!({"result": "ok", "release": "0.1.0"}));
        undone.error = Some("rolled back: web3 failed".into());
        // Failed its own watch: the host went back by itself.
        let mut own = HostReport::new("web3", "192.0.2.3");
        own.result = RunResult::RolledBack;
        own.record =
            Some(json!({"result": "rolled_back", "release": "0.2.0", "from_release": "0.1.0"}));
        let skipped = HostReport::new("web4", "192.0.2.4");
        let report = Report {
            command: "deploy".into(),
            env: "staging".into(),
            actor: "ci".into(),
            inventory: json!(null),
            release: Some("0.2.0".into()),
            artifact: None,
            artifact_sha256: None,
            batch: 1,
            started_at: String::new(),
            finished_at: String::new(),
            duration_ms: 61_000,
            result: RunResult::RolledBack,
            interrupted_by: None,
            error: None,
            hosts: vec![ok, undone, own, skipped],
        };
        let text = summary(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "deploy of `staging` to 0.2.0: rolled_back in 61.0 s"
        );
        let cells = |line: &str| {
            line.split_whitespace()
                .take(4)
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(cells(lines[3]), "web1 ok 0.1.0 0.2.0");
        assert_eq!(cells(lines[4]), "web2 rolled_back 0.1.0 0.1.0");
        assert!(lines[4].ends_with("rolled back: web3 failed"), "{text}");
        assert_eq!(cells(lines[5]), "web3 rolled_back 0.1.0 0.1.0");
        assert!(lines[5].contains("0.1.0 (kept)"), "{text}");
        assert_eq!(cells(lines[6]), "web4 skipped - -");
    }
}
