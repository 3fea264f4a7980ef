//! The README, ARCHITECTURE.md and the guides in docs/: the README stays a short front page,
//! ARCHITECTURE.md a map (the detail lives in docs/internals.md), and every relative link in
//! them leads to a file of this repository (and to a heading there, when it names one); the
//! configuration reference names exactly the keys of `ddms.example.toml`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Component, Path, PathBuf};

use super::root;

/// README.md is the front page: what ddms is, the two commands, what you see, where to read on.
/// Everything else lives in docs/ (issue: "README.md ≤ 6 KB").
const README_MAX_BYTES: usize = 6 * 1024;

#[test]
fn readme_is_at_most_6_kib() {
    let size = fs::metadata(root().join("README.md")).unwrap().len() as usize;
    assert!(
        size <= README_MAX_BYTES,
        "README.md is {size} bytes, more than {README_MAX_BYTES}: move the detail to docs/ \
         (docs/operating.md, docs/deploying.md, docs/testing.md, docs/benchmarks.md) and link it"
    );
}

/// ARCHITECTURE.md is the map: bird's-eye view, entry points, code map, invariants, the walks.
/// Module-level detail lives in docs/internals.md, so the map stays readable in one sitting.
const ARCHITECTURE_MAX_BYTES: usize = 20 * 1024;

#[test]
fn architecture_is_at_most_20_kib() {
    let size = fs::metadata(root().join("ARCHITECTURE.md")).unwrap().len() as usize;
    assert!(
        size <= ARCHITECTURE_MAX_BYTES,
        "ARCHITECTURE.md is {size} bytes, more than {ARCHITECTURE_MAX_BYTES}: keep it a map (one or \
         two lines per module, short invariants and walks), move the detail to docs/internals.md \
         (or the topical guide in docs/ it belongs to) and link it"
    );
}

/// Relative links of README.md, ARCHITECTURE.md and every docs/*.md point at a file inside the
/// repository, and `#anchor`s at a heading of the target Markdown file.
#[test]
fn readme_and_docs_links_resolve() {
    let mut files = vec![root().join("README.md"), root().join("ARCHITECTURE.md")];
    for entry in fs::read_dir(root().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = fs::read_to_string(file).unwrap();
        let name = file.strip_prefix(root()).unwrap().display().to_string();
        for target in links(&text) {
            checked += 1;
            if let Err(why) = check_link(file, &target) {
                broken.push(format!("{name}: ({target}) {why}"));
            }
        }
    }
    assert!(checked >= 10, "found too few links to check: {checked}");
    assert!(broken.is_empty(), "broken links: {broken:#?}");
}

fn check_link(from: &Path, target: &str) -> Result<(), String> {
    let (path, anchor) = match target.split_once('#') {
        Some((path, anchor)) => (path, Some(anchor)),
        None => (target, None),
    };
    let file = if path.is_empty() {
        from.to_path_buf()
    } else {
        let joined = normalise(&from.parent().unwrap().join(path));
        if !joined.starts_with(root()) {
            return Err("leads outside the repository".into());
        }
        if !joined.exists() {
            return Err("no such file".into());
        }
        joined
    };
    if let Some(anchor) = anchor {
        if file.extension().is_none_or(|e| e != "md") {
            return Err("an anchor into a file that is not Markdown".into());
        }
        let text = fs::read_to_string(&file).map_err(|e| e.to_string())?;
        if !anchors(&text).contains(anchor) {
            return Err(format!("no heading #{anchor} in {}", file.display()));
        }
    }
    Ok(())
}

/// `a/./b/../c` → `a/c`, without touching the file system.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The targets of inline links `[text](target)` outside fenced code blocks and code spans,
/// other than URLs with a scheme.
fn links(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Code spans: drop the text between pairs of backticks.
        let prose: String = line
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, part)| part)
            .collect::<Vec<_>>()
            .join(" ");
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            let target = after[..end].trim();
            let target = target.split_whitespace().next().unwrap_or_default();
            if !target.is_empty() && !target.contains("://") && !target.starts_with("mailto:") {
                out.push(target.to_string());
            }
            rest = &after[end..];
        }
    }
    out
}

/// The anchors GitHub gives a Markdown file's headings: lower case, spaces to `-`, punctuation
/// other than `-` and `_` dropped; a repeated heading gets `-1`, `-2`, …
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#');
        if !title.starts_with(' ') {
            continue;
        }
        let slug: String = title
            .trim()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                '-' | '_' => Some(c),
                c if c.is_alphanumeric() => Some(c),
                _ => None,
            })
            .flat_map(char::to_lowercase)
            .collect();
        let mut unique = slug.clone();
        let mut n = 0;
        while out.contains(&unique) {
            n += 1;
            unique = format!("{slug}-{n}");
        }
        out.insert(unique);
    }
    out
}

#[test]
fn the_link_checker_reads_links_and_anchors_as_github_does() {
    let text = "# Schema changes: expand, then contract\n\
                ## The previous release (every `cargo xtask test`)\n## Figures\n## Figures\n\
                ```sh\n# not a heading\n[not](a-link.md)\n```\n\
                See [a](docs/x.md), [b](#figures-1), `[c](code.md)` and [d](https://example.com).\n";
    assert_eq!(links(text), ["docs/x.md", "#figures-1"]);
    let anchors = anchors(text);
    for anchor in [
        "schema-changes-expand-then-contract",
        "the-previous-release-every-cargo-xtask-test",
        "figures",
        "figures-1",
    ] {
        assert!(anchors.contains(anchor), "{anchor}: {anchors:?}");
    }
    assert!(!anchors.contains("not-a-heading"));
    let readme = root().join("README.md");
    assert!(check_link(&readme, "docs/testing.md").is_ok());
    assert!(check_link(&readme, "docs/none.md").is_err());
    assert!(check_link(&readme, "../outside/contract.md").is_err());
    assert!(check_link(&readme, "ARCHITECTURE.md#no-such-heading").is_err());
}

/// The keys of `ddms.example.toml`, commented ones included, as dotted paths. The app's own
/// tests hold the example to the configuration types: it parses with every key known
/// (`config::load::check_example`), and every key the defaults and the optional fields know is in
/// it.
fn example_config_keys() -> BTreeSet<String> {
    let text = fs::read_to_string(root().join("ddms.example.toml")).expect("ddms.example.toml");
    let mut section = String::new();
    let mut keys = BTreeSet::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = format!("{name}.");
            continue;
        }
        // `key = value`, or commented out as `# key = value`; prose never starts so.
        let line = line.strip_prefix("# ").unwrap_or(line);
        let Some((key, _)) = line.split_once(" = ") else {
            continue;
        };
        if !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            keys.insert(format!("{section}{key}"));
        }
    }
    keys
}

/// The keys in the first column of docs/configuration.md's tables.
fn reference_config_keys() -> BTreeSet<String> {
    let text =
        fs::read_to_string(root().join("docs/configuration.md")).expect("docs/configuration.md");
    text.lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`').map(|(key, _)| key.to_owned()))
        .collect()
}

#[test]
fn the_configuration_reference_names_every_key_of_the_example_and_no_other() {
    let example = example_config_keys();
    let reference = reference_config_keys();
    assert!(example.len() > 70, "the example parse found {example:?}");
    let missing: Vec<_> = example.difference(&reference).collect();
    let unknown: Vec<_> = reference.difference(&example).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "docs/configuration.md lacks {missing:?} and names keys ddms.example.toml does not \
         have: {unknown:?}"
    );
}
