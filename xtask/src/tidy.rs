//! Repository rules, as tests (`cargo test -p xtask`).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    crate::project_root()
}

fn migration_names(backend: &str) -> BTreeSet<String> {
    fs::read_dir(root().join("migrations").join(backend))
        .unwrap_or_else(|e| panic!("migrations/{backend}: {e}"))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".sql"))
        .collect()
}

#[test]
fn every_migration_exists_for_both_backends() {
    let postgres = migration_names("postgres");
    let sqlite = migration_names("sqlite");
    assert!(!postgres.is_empty());
    let only_pg: Vec<_> = postgres.difference(&sqlite).collect();
    let only_sqlite: Vec<_> = sqlite.difference(&postgres).collect();
    assert!(
        only_pg.is_empty() && only_sqlite.is_empty(),
        "migrations for one backend only: postgres {only_pg:?}, sqlite {only_sqlite:?}"
    );
    for name in &postgres {
        let version = name.split('_').next().unwrap();
        assert!(
            version.len() == 4 && version.chars().all(|c| c.is_ascii_digit()),
            "{name}: migrations are named NNNN_description.sql"
        );
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_ignored_or_should_panic_tests() {
    // Built from pieces so this file does not match itself.
    let forbidden = [concat!("#[", "ignore"), concat!("#[", "should_panic")];
    let mut files = Vec::new();
    for dir in ["app", "xtask"] {
        rust_files(&root().join(dir), &mut files);
    }
    let mut offenders = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if forbidden.iter().any(|f| line.contains(f)) {
                offenders.push(format!("{}:{}", file.display(), n + 1));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "tests must not be skipped: {offenders:?}"
    );
}

#[test]
fn later_folders_say_what_will_live_there() {
    for dir in ["ops", "terraform", "ansible", "nix", "migrations"] {
        let readme = root().join(dir).join("README.md");
        assert!(readme.is_file(), "{} is missing", readme.display());
    }
}
