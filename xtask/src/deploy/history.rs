//! `cargo xtask history`: the fleet's deploys, newest first, from each host's own record —
//! the `deploys.jsonl` that every `ddms release activate` and `rollback` appends to under the
//! host's release state directory (`<root>/var/lib/ddms`). Read-only.

use anyhow::Result;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use xshell::Shell;

use super::inventory::Host;
use super::{hosts, per_host, remote_env, ssh, table, Options};

/// How many of each host's newest records are read unless `--last` says otherwise.
pub const DEFAULT_LAST: usize = 20;

/// The newest `last` lines of the host's deploy log (nothing when there is none yet).
fn script(last: usize) -> String {
    format!(
        r#"set -u
root="${{DDMS_RELEASE_ROOT:-/}}"; root="${{root%/}}"
log="$root/var/lib/ddms/deploys.jsonl"
if [ -f "$log" ]; then tail -n {last} "$log"; fi
"#
    )
}

/// One host's records, each with `inventory_host` (the inventory's name for the host; the
/// record's own `host` is the machine's hostname). Lines that are not JSON objects are skipped:
/// the log is append-only and a torn last line must not hide the rest.
pub fn parse(host: &str, stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .filter(Value::is_object)
        .map(|mut record| {
            record["inventory_host"] = Value::String(host.to_string());
            record
        })
        .collect()
}

fn started(record: &Value) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(record.get("started_at")?.as_str()?, &Rfc3339).ok()
}

/// Every host's records as one list, newest first (by start time, not text: timestamps may
/// differ in their fraction digits); records without a readable time go last.
pub fn merge(per_host: Vec<Vec<Value>>) -> Vec<Value> {
    let mut all: Vec<Value> = per_host.into_iter().flatten().collect();
    all.sort_by(|a, b| {
        started(b)
            .cmp(&started(a))
            .then_with(|| text(a, "inventory_host").cmp(&text(b, "inventory_host")))
            .then_with(|| text(b, "id").cmp(&text(a, "id")))
    });
    all
}

fn text(record: &Value, key: &str) -> String {
    record
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The history as a table.
pub fn render(records: &[Value]) -> String {
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            let when = started(r)
                .map(|t| {
                    format!(
                        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
                        t.year(),
                        u8::from(t.month()),
                        t.day(),
                        t.hour(),
                        t.minute(),
                        t.second()
                    )
                })
                .unwrap_or_else(|| "?".into());
            let or_dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
            let ms = r.get("duration_ms").and_then(Value::as_u64).unwrap_or(0);
            vec![
                when,
                text(r, "inventory_host"),
                text(r, "command"),
                format!(
                    "{} → {}",
                    or_dash(text(r, "from_release")),
                    or_dash(text(r, "release"))
                ),
                text(r, "result"),
                text(r, "actor"),
                format!("{:.1} s", ms as f64 / 1000.0),
                text(r, "error"),
            ]
        })
        .collect();
    table::render(
        &[
            "STARTED (UTC)",
            "HOST",
            "COMMAND",
            "FROM → TO",
            "RESULT",
            "ACTOR",
            "TIME",
            "ERROR",
        ],
        &rows,
    )
}

fn read(host: &Host, env: &[(String, String)], last: usize) -> Result<Vec<Value>, String> {
    match ssh::run(host, env, &script(last)) {
        Ok(out) if out.ok() => Ok(parse(&host.name, &out.stdout)),
        Ok(out) => Err(out.reason()),
        Err(e) => Err(format!("{e:#}")),
    }
}

/// Prints the fleet's history; exit status 1 when a host could not be read (the others are
/// still shown).
pub fn run(sh: &Shell, options: &Options, last: usize, json: bool) -> Result<i32> {
    let (hosts, _) = hosts(sh, options)?;
    let env = remote_env(&super::actor())?;
    let results = per_host(&hosts, |host| read(host, &env, last));
    let mut records = Vec::new();
    let mut code = 0;
    for (host, result) in hosts.iter().zip(results) {
        match result {
            Ok(list) => records.push(list),
            Err(e) => {
                eprintln!(
                    "history: {}: cannot read its deploy records: {e}",
                    host.name
                );
                code = 1;
            }
        }
    }
    let records = merge(records);
    if json {
        for record in &records {
            println!("{}", serde_json::to_string(record)?);
        }
    } else if records.is_empty() {
        println!("no deploys recorded on the {} host(s)", hosts.len());
    } else {
        print!("{}", render(&records));
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(id: &str, at: &str, release: &str) -> String {
        json!({"id": id, "command": "activate", "actor": "ci", "started_at": at,
               "release": release, "from_release": "0.1.0", "result": "ok", "duration_ms": 1200})
        .to_string()
    }

    #[test]
    fn records_of_all_hosts_merge_newest_first_by_time() {
        let web1 = format!(
            "{}\n{}\n{{\"id\": \"torn",
            record("a1", "2026-01-01T10:00:00Z", "0.2.0"),
            record("a2", "2026-01-02T10:00:00.5Z", "0.3.0"),
        );
        let web2 = format!(
            "{}\n{}\n",
            record("b1", "2026-01-01T09:00:00Z", "0.2.0"),
            // Later than a2 although it sorts before it as text.
            record("b2", "2026-01-02T10:00:00.45+00:00", "0.3.0"),
        );
        let web1 = parse("web1", &web1);
        assert_eq!(web1.len(), 2, "the torn line is skipped");
        let merged = merge(vec![web1, parse("web2", &web2)]);
        let order: Vec<String> = merged.iter().map(|r| text(r, "id")).collect();
        assert_eq!(order, ["a2", "b2", "a1", "b1"]);
        assert_eq!(text(&merged[0], "inventory_host"), "web1");

        let table = render(&merged);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("STARTED (UTC)"), "{table}");
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "2026-01-02",
                "10:00:00",
                "web1",
                "activate",
                "0.1.0",
                "→",
                "0.3.0",
                "ok",
                "ci",
                "1.2",
                "s"
            ],
            "{table}"
        );
        assert_eq!(lines.len(), 5);
    }

    #[test]
    fn the_script_is_valid_shell_and_reads_the_newest_lines() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("var/lib/ddms")).unwrap();
        let out = std::process::Command::new("sh")
            .args(["-c", &script(2)])
            .env("DDMS_RELEASE_ROOT", root.path())
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stdout.is_empty(),
            "no log yet: nothing"
        );
        std::fs::write(root.path().join("var/lib/ddms/deploys.jsonl"), "1\n2\n3\n").unwrap();
        let out = std::process::Command::new("sh")
            .args(["-c", &script(2)])
            .env("DDMS_RELEASE_ROOT", root.path())
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), "2\n3\n");
    }
}
