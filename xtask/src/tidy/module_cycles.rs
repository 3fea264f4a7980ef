//! Imports between the top-level modules of the `ddms` library (`app/src/*`) point downward:
//! no module uses another that, directly or through others, uses it back (issue: "No import
//! cycles"). The graph is built from the source text — every `crate::<module>` path (and
//! `super::<module>` in a top-level file) is an edge — and its strongly connected components are
//! the cycles. Test code may import anything: `*_tests.rs` files, `#[cfg(test)]` inline modules
//! and modules declared `#[cfg(test)]` in lib.rs are not scanned.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use super::{root, rust_files};

/// Edges allowed to close a cycle, each as (from, to, why it is there and what would remove
/// it). The check fails on a cycle through any other edge, and on an entry here that no longer
/// exists, so the list only shrinks. Empty since the last four (backup, ingest, status and
/// retention → `alerts`) gave way to `signals::SignalSink`: rather than adding an entry, move
/// the code down or hand in an interface from a lower module the same way.
const ALLOWED_EDGES: &[(&str, &str, &str)] = &[];

/// module → used module → one example `file:line` of the use.
type Graph = BTreeMap<String, BTreeMap<String, String>>;

/// Lines of `source` that are not test code or comments, with their 1-based numbers: lines
/// starting with `//` and `#[cfg(test)]` inline modules (`mod x {` … the `}` at its indentation)
/// are left out.
fn production_lines(source: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut lines = source.lines().enumerate().peekable();
    let mut after_cfg_test = false;
    while let Some((n, line)) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("//") {
            continue;
        }
        if trimmed.starts_with("#[cfg(test)]") {
            after_cfg_test = true;
            continue;
        }
        if after_cfg_test && trimmed.starts_with("#[") {
            continue;
        }
        if after_cfg_test {
            after_cfg_test = false;
            let is_mod = trimmed.starts_with("mod ") || trimmed.starts_with("pub mod ");
            if is_mod && trimmed.trim_end().ends_with('{') {
                let indent = line.len() - trimmed.len();
                for (_, inner) in lines.by_ref() {
                    let inner_trimmed = inner.trim_start();
                    if inner.len() - inner_trimmed.len() == indent && inner_trimmed.starts_with('}')
                    {
                        break;
                    }
                }
                continue;
            }
        }
        out.push((n + 1, line));
    }
    out
}

/// The modules named right after each `crate::` (or `super::` when `super_is_crate`), with the
/// line they are on; `crate::{a, b::c}` names `a` and `b`, also across lines.
fn used_modules(source: &str, super_is_crate: bool) -> Vec<(String, usize)> {
    let lines = production_lines(source);
    // One string, each character tagged with its line number.
    let mut text = String::new();
    let mut line_of = Vec::new();
    for (n, line) in lines {
        for c in line.chars().chain(std::iter::once('\n')) {
            text.push(c);
            line_of.push(n);
        }
    }
    let chars: Vec<char> = text.chars().collect();
    let ident_at = |mut i: usize| -> (String, usize) {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let start = i;
        while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
            i += 1;
        }
        (chars[start..i].iter().collect(), start)
    };
    let mut prefixes = vec!["crate::"];
    if super_is_crate {
        prefixes.push("super::");
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let Some(prefix) = prefixes.iter().find(|p| {
            let p: Vec<char> = p.chars().collect();
            chars[i..].starts_with(&p)
                && (i == 0 || !(chars[i - 1].is_ascii_alphanumeric() || chars[i - 1] == '_'))
        }) else {
            i += 1;
            continue;
        };
        i += prefix.len();
        if chars.get(i) == Some(&'{') {
            // A group: the first identifier after `{` and after each comma at depth 1.
            let mut depth = 0;
            let mut item_start = true;
            while i < chars.len() {
                match chars[i] {
                    '{' => {
                        depth += 1;
                        if depth == 1 {
                            item_start = true;
                        }
                    }
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => item_start = true,
                    c if depth == 1 && item_start && !c.is_whitespace() => {
                        item_start = false;
                        let (name, at) = ident_at(i);
                        if !name.is_empty() {
                            out.push((name, line_of[at]));
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        } else {
            let (name, at) = ident_at(i);
            if !name.is_empty() {
                out.push((name, line_of[at]));
            }
        }
    }
    out
}

/// The top-level modules of app/src and, for each, the modules it uses.
fn app_graph() -> Graph {
    let src = root().join("app/src");
    let lib = fs::read_to_string(src.join("lib.rs")).unwrap();
    // `#[cfg(test)] mod x;` in lib.rs: a test-only module (app/src/properties).
    let mut test_only = BTreeSet::new();
    let lib_lines: Vec<&str> = lib.lines().map(str::trim).collect();
    for pair in lib_lines.windows(2) {
        if pair[0] == "#[cfg(test)]" {
            if let Some(name) = pair[1]
                .strip_prefix("mod ")
                .and_then(|rest| rest.strip_suffix(';'))
            {
                test_only.insert(name.to_string());
            }
        }
    }
    let mut modules = BTreeSet::new();
    for entry in fs::read_dir(&src).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let name = name.strip_suffix(".rs").unwrap_or(&name).to_string();
        if name != "lib" && name != "main" && !test_only.contains(&name) {
            modules.insert(name);
        }
    }
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: Graph = modules
        .iter()
        .map(|m| (m.clone(), BTreeMap::new()))
        .collect();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let first = relative.components().next().unwrap();
        let first = first.as_os_str().to_string_lossy();
        let module = first.strip_suffix(".rs").unwrap_or(&first).to_string();
        let file_name = relative.file_name().unwrap().to_string_lossy();
        if !modules.contains(&module) || file_name.ends_with("_tests.rs") {
            continue;
        }
        let top_level = relative.components().count() == 1
            || (relative.components().count() == 2 && file_name == "mod.rs");
        let source = fs::read_to_string(&file).unwrap();
        for (used, line) in used_modules(&source, top_level) {
            if used != module && modules.contains(&used) {
                graph
                    .get_mut(&module)
                    .unwrap()
                    .entry(used)
                    .or_insert_with(|| format!("{}:{line}", display(&file)));
            }
        }
    }
    graph
}

fn display(file: &Path) -> String {
    file.strip_prefix(root()).unwrap().display().to_string()
}

/// The strongly connected components of more than one node (Tarjan), each sorted; a component
/// is a set of modules that all reach each other, i.e. the union of some cycles.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, node: &'a str) {
        let i = s.index.len();
        s.index.insert(node, i);
        s.low.insert(node, i);
        s.stack.push(node);
        s.on_stack.insert(node);
        let targets = s.graph.get(node).into_iter().flat_map(|t| t.keys());
        for next in targets {
            let next = next.as_str();
            if !s.index.contains_key(next) {
                visit(s, next);
                let low = s.low[node].min(s.low[next]);
                s.low.insert(node, low);
            } else if s.on_stack.contains(next) {
                let low = s.low[node].min(s.index[next]);
                s.low.insert(node, low);
            }
        }
        if s.low[node] == s.index[node] {
            let mut component = Vec::new();
            loop {
                let member = s.stack.pop().unwrap();
                s.on_stack.remove(member);
                component.push(member.to_string());
                if member == node {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.out.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for node in graph.keys() {
        if !state.index.contains_key(node.as_str()) {
            visit(&mut state, node);
        }
    }
    state.out.sort();
    state.out
}

/// `Err` with what to fix when `graph`, without the `allowed` edges, has a cycle, or when an
/// allowed edge is not in `graph` (any more).
fn check(mut graph: Graph, allowed: &[(&str, &str, &str)]) -> Result<(), String> {
    let mut stale = Vec::new();
    for (from, to, _why) in allowed {
        if graph.get_mut(*from).and_then(|t| t.remove(*to)).is_none() {
            stale.push(format!("{from} → {to}"));
        }
    }
    if !stale.is_empty() {
        return Err(format!(
            "allowed edges that no longer exist (remove them from ALLOWED_EDGES): {stale:?}"
        ));
    }
    let found = cycles(&graph);
    if found.is_empty() {
        return Ok(());
    }
    let report: Vec<String> = found
        .iter()
        .map(|component| {
            let edges: Vec<String> = component
                .iter()
                .flat_map(|from| {
                    graph[from]
                        .iter()
                        .filter(|(to, _)| component.contains(to))
                        .map(move |(to, at)| format!("  {from} → {to} ({at})"))
                })
                .collect();
            format!(
                "cycle among {}:\n{}",
                component.join(", "),
                edges.join("\n")
            )
        })
        .collect();
    Err(format!(
        "imports between app/src's top-level modules must point downward; move the code so no \
         module uses one that uses it back:\n{}",
        report.join("\n")
    ))
}

#[test]
fn top_level_modules_of_the_library_have_no_import_cycles() {
    let graph = app_graph();
    assert!(
        graph.len() > 15 && graph.values().map(BTreeMap::len).sum::<usize>() > 30,
        "app/src's modules and their imports are what this test looks at: {graph:?}"
    );
    if let Err(problem) = check(graph, ALLOWED_EDGES) {
        panic!("{problem}");
    }
}

#[test]
fn a_new_cycle_fails_the_check_unless_its_edge_is_allowed() {
    let mut graph = Graph::new();
    for (from, to, at) in [
        ("alerts", "ingest", "app/src/alerts/evaluator.rs:23"),
        ("ingest", "store", "app/src/ingest.rs:20"),
        ("ingest", "alerts", "app/src/ingest.rs:245"),
        ("store", "config", "app/src/store/mod.rs:9"),
    ] {
        graph
            .entry(from.to_string())
            .or_default()
            .insert(to.to_string(), at.to_string());
        graph.entry(to.to_string()).or_default();
    }
    let problem = check(graph.clone(), &[]).unwrap_err();
    assert!(
        problem.contains("cycle among alerts, ingest:")
            && problem.contains("alerts → ingest (app/src/alerts/evaluator.rs:23)")
            && problem.contains("ingest → alerts (app/src/ingest.rs:245)")
            && !problem.contains("store"),
        "{problem}"
    );
    let allowed = [("ingest", "alerts", "why")];
    assert_eq!(check(graph.clone(), &allowed), Ok(()));
    // An allowed edge that is gone fails too, so the list only shrinks.
    graph.get_mut("ingest").unwrap().remove("alerts");
    assert_eq!(check(graph.clone(), &[]), Ok(()));
    let problem = check(graph, &allowed).unwrap_err();
    assert!(
        problem.contains("no longer exist") && problem.contains("ingest → alerts"),
        "{problem}"
    );
}

#[test]
fn the_cycle_finder_finds_components_and_only_those() {
    let graph = |edges: &[(&str, &str)]| {
        let mut graph = Graph::new();
        for (from, to) in edges {
            graph
                .entry(from.to_string())
                .or_default()
                .insert(to.to_string(), String::new());
            graph.entry(to.to_string()).or_default();
        }
        graph
    };
    let names = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // A chain and a diamond point downward: no cycle.
    assert!(cycles(&graph(&[("a", "b"), ("b", "c"), ("a", "c"), ("c", "d")])).is_empty());
    // Two separate cycles, one of them long, plus a tail leading into one.
    assert_eq!(
        cycles(&graph(&[
            ("a", "b"),
            ("b", "a"),
            ("c", "d"),
            ("d", "e"),
            ("e", "c"),
            ("f", "c"),
            ("e", "g"),
        ])),
        vec![names(&["a", "b"]), names(&["c", "d", "e"])]
    );
}

#[test]
fn uses_are_read_from_paths_groups_and_top_level_super() {
    let source = "//! Doc.\nuse crate::{\n    alerts::Rule,\n    store::{Store, X},\n};\n\
                  // crate::comment\nfn f() { crate::events::emit(); super::auth::check(); }\n\
                  #[cfg(test)]\nmod tests {\n    use crate::http;\n}\nuse crate::status;\n";
    let names = |super_is_crate| {
        used_modules(source, super_is_crate)
            .into_iter()
            .map(|(name, line)| format!("{name}:{line}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(false),
        ["alerts:3", "store:4", "events:7", "status:12"]
    );
    assert_eq!(
        names(true),
        ["alerts:3", "store:4", "events:7", "auth:7", "status:12"]
    );
}
