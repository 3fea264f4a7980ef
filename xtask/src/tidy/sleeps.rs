//! Tests wait for conditions, not for time (issue: "no test uses a fixed sleep to wait for a
//! condition"): a sleep standing in for "it has happened by now" flakes on a busy machine. Test
//! code — `app/tests`, `xtask/tests`, `*_tests.rs` files, modules declared `#[cfg(test)]` and
//! `#[cfg(test)]` inline modules — waits with `app/tests/support/wait.rs` (`eventually`), the one
//! place allowed to sleep without saying why. Anywhere else a sleep carries a marker comment,
//! `// sleep: <why time must pass here>`, on its line or in the comment lines right above it:
//! the poll interval of a loop with a deadline, a fake peer's pacing, or time passing that is
//! itself the subject (a TTL, an idle timeout) — slept past with a margin. See docs/testing.md.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use super::{root, rust_files};

/// The marker, built from pieces so this file's own text is not a justification.
fn marker() -> String {
    format!("{}{}", "// sleep", ":")
}

/// What counts as a sleep: `thread::sleep(`, `tokio::time::sleep(`, `sleep_until(`.
fn is_sleep_call(code: &str) -> bool {
    ["sleep(", "sleep_until("]
        .iter()
        .any(|call| code.contains(call))
}

/// The part of a line before a `//` comment (good enough for test code: no `//` in strings
/// next to a sleep).
fn code_part(line: &str) -> &str {
    line.split("//").next().unwrap_or(line)
}

/// The 1-based numbers of `lines` (the test code of one file, as (number, text)) that sleep
/// without a `// sleep: <why>` on their line or in the comment block right above.
fn unjustified_sleeps(lines: &[(usize, &str)]) -> Vec<usize> {
    let marker = marker();
    let justified = |at: usize| -> bool {
        let says_why = |line: &str| {
            line.split_once(&marker)
                .is_some_and(|(_, why)| why.trim().len() >= 10)
        };
        if says_why(lines[at].1) {
            return true;
        }
        lines[..at]
            .iter()
            .rev()
            .take_while(|(_, line)| line.trim_start().starts_with("//"))
            .any(|(_, line)| says_why(line))
    };
    lines
        .iter()
        .enumerate()
        .filter(|(_, (_, line))| is_sleep_call(code_part(line)))
        .filter(|(at, _)| !justified(*at))
        .map(|(_, (n, _))| *n)
        .collect()
}

/// Lines of `#[cfg(test)]` inline modules (`mod x {` … the `}` at its indentation) of a source
/// file, with their 1-based numbers.
fn cfg_test_module_lines(source: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut lines = source.lines().enumerate();
    let mut after_cfg_test = false;
    while let Some((_, line)) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            after_cfg_test = true;
            continue;
        }
        if after_cfg_test && trimmed.starts_with("#[") {
            continue;
        }
        let is_mod = trimmed.starts_with("mod ") || trimmed.starts_with("pub mod ");
        if after_cfg_test && is_mod && trimmed.trim_end().ends_with('{') {
            let indent = line.len() - trimmed.len();
            for (n, inner) in lines.by_ref() {
                let inner_trimmed = inner.trim_start();
                if inner.len() - inner_trimmed.len() == indent && inner_trimmed.starts_with('}') {
                    break;
                }
                out.push((n + 1, inner));
            }
        }
        after_cfg_test = false;
    }
    out
}

/// Files and folders of modules declared `#[cfg(test)] mod x;` in `file` (`#[path]` ones are
/// `*_tests.rs` files, caught by name).
fn test_only_modules(file: &Path, source: &str) -> Vec<PathBuf> {
    let name = file.file_stem().unwrap().to_string_lossy();
    let dir = if ["lib", "main", "mod"].contains(&name.as_ref()) {
        file.parent().unwrap().to_path_buf()
    } else {
        file.with_extension("")
    };
    let lines: Vec<&str> = source.lines().map(str::trim).collect();
    lines
        .windows(2)
        .filter(|pair| pair[0] == "#[cfg(test)]")
        .filter_map(|pair| {
            let module = pair[1].strip_prefix("pub ").unwrap_or(pair[1]);
            module.strip_prefix("mod ")?.strip_suffix(';')
        })
        .flat_map(|module| [dir.join(format!("{module}.rs")), dir.join(module)])
        .collect()
}

/// Every unjustified sleep in the test code under `dirs` (relative to the project root), as
/// `path:line`.
fn unjustified_sleeps_in(dirs: &[&str]) -> Vec<String> {
    let mut files = Vec::new();
    for dir in dirs {
        rust_files(&root().join(dir), &mut files);
    }
    let sources: Vec<(PathBuf, String)> = files
        .into_iter()
        .map(|file| {
            let text = fs::read_to_string(&file).unwrap();
            (file, text)
        })
        .collect();
    let test_only: BTreeSet<PathBuf> = sources
        .iter()
        .flat_map(|(file, text)| test_only_modules(file, text))
        .collect();
    // The polling helper, and this file (its examples are sleeps in strings).
    let allowed = [
        root().join("app/tests/support/wait.rs"),
        root().join("xtask/src/tidy/sleeps.rs"),
    ];
    let mut found = Vec::new();
    for (file, text) in &sources {
        if allowed.contains(file) {
            continue;
        }
        let relative = file.strip_prefix(root()).unwrap();
        let whole_file = relative.components().any(|c| c.as_os_str() == "tests")
            || file.to_string_lossy().ends_with("_tests.rs")
            || test_only.iter().any(|module| file.starts_with(module));
        let lines: Vec<(usize, &str)> = if whole_file {
            text.lines().enumerate().map(|(n, l)| (n + 1, l)).collect()
        } else {
            cfg_test_module_lines(text)
        };
        for n in unjustified_sleeps(&lines) {
            found.push(format!("{}:{n}", relative.display()));
        }
    }
    found.sort();
    found
}

#[test]
fn test_code_sleeps_only_with_a_reason() {
    let found = unjustified_sleeps_in(&["app/tests", "xtask"]);
    assert!(
        found.is_empty(),
        "test code that sleeps without saying why: wait for the condition with \
         support::wait::eventually (or a loop with a deadline), or say why time itself must pass \
         with `{} <why>` on the line or right above it (docs/testing.md): {found:#?}",
        marker()
    );
}

/// Test modules inside app/src are not all there yet: other work is under way in app/src, so
/// the count of their unjustified sleeps may only go down from this (events_tests.rs,
/// mqtt/inbound.rs, release/lock.rs, release/service.rs). Lower it when you fix one.
const APP_SRC_UNJUSTIFIED_SLEEPS_AT_MOST: usize = 8;

#[test]
fn app_src_test_modules_sleep_no_more_without_a_reason() {
    let found = unjustified_sleeps_in(&["app/src"]);
    assert!(
        found.len() <= APP_SRC_UNJUSTIFIED_SLEEPS_AT_MOST,
        "new sleeps without a reason in app/src's tests (at most \
         {APP_SRC_UNJUSTIFIED_SLEEPS_AT_MOST}): {found:#?}"
    );
}

#[test]
fn a_sleep_is_justified_on_its_line_or_in_the_comment_right_above() {
    let m = marker();
    let check = |text: &str| -> Vec<usize> {
        let lines: Vec<(usize, &str)> = text.lines().enumerate().map(|(n, l)| (n + 1, l)).collect();
        unjustified_sleeps(&lines)
    };
    assert_eq!(check("let a = 1;\nstd::thread::sleep(d);\n"), vec![2]);
    assert_eq!(check("tokio::time::sleep(d).await;\n"), vec![1]);
    assert_eq!(check("sleep_until(t).await;\n"), vec![1]);
    assert_eq!(
        check(&format!("sleep(d).await; {m} the lease's TTL runs out\n")),
        Vec::<usize>::new()
    );
    assert_eq!(
        check(&format!(
            "// A word first.\n{m} the TTL must pass,\n// with a margin.\nsleep(d).await;\n"
        )),
        Vec::<usize>::new()
    );
    // A code line between the comment and the sleep: the comment is about that line.
    assert_eq!(
        check(&format!(
            "{m} the TTL must pass\nlet a = 1;\nsleep(d).await;\n"
        )),
        vec![3]
    );
    // A marker that says nothing is no reason.
    assert_eq!(check(&format!("{m}\nsleep(d).await;\n")), vec![2]);
    // A sleep mentioned in a comment is not a sleep.
    assert_eq!(check("// never sleep(d) here\n"), Vec::<usize>::new());
}

#[test]
fn test_code_is_the_cfg_test_modules() {
    let source = "fn f() {\n    sleep(a);\n}\n#[cfg(test)]\nmod tests {\n    fn g() {\n        \
                  sleep(b);\n    }\n}\nfn h() {}\n";
    let lines = cfg_test_module_lines(source);
    let numbers: Vec<usize> = lines.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, vec![6, 7, 8]);
    assert_eq!(unjustified_sleeps(&lines), vec![7]);
    let modules = test_only_modules(
        Path::new("/x/src/lib.rs"),
        "#[cfg(test)]\nmod properties;\n",
    );
    assert_eq!(
        modules,
        vec![
            PathBuf::from("/x/src/properties.rs"),
            PathBuf::from("/x/src/properties")
        ]
    );
}
