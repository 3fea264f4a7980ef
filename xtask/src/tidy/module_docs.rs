//! Every Rust file of the project opens with a `//!` comment that says what the module is for,
//! so a reader (or ARCHITECTURE.md's code map) never has to guess from the code.

use std::fs;

use super::{root, rust_files};

/// Whether `source` opens with an inner doc comment: its first non-blank line is `//!`.
fn opens_with_module_doc(source: &str) -> bool {
    source
        .lines()
        .find(|line| !line.trim().is_empty())
        .is_some_and(|line| line.trim_start().starts_with("//!"))
}

/// Every `.rs` file under app/ and xtask/ (sources, tests, examples, build script, fuzz
/// targets) has a module doc.
#[test]
fn every_rust_file_opens_with_a_module_doc() {
    let mut files = Vec::new();
    for dir in ["app", "xtask"] {
        rust_files(&root().join(dir), &mut files);
    }
    assert!(
        files.len() > 100,
        "app/ and xtask/ are where the Rust files are: found {}",
        files.len()
    );
    let mut missing: Vec<String> = files
        .iter()
        .filter(|file| !opens_with_module_doc(&fs::read_to_string(file).unwrap()))
        .map(|file| file.strip_prefix(root()).unwrap().display().to_string())
        .collect();
    missing.sort();
    assert!(
        missing.is_empty(),
        "files whose first non-blank line is not a `//!` comment saying what the module is for: \
         {missing:#?}"
    );
}

#[test]
fn a_module_doc_is_the_first_non_blank_line() {
    assert!(opens_with_module_doc("//! Things.\n\nuse std::fs;\n"));
    assert!(opens_with_module_doc("\n  \n//! Things.\n"));
    assert!(!opens_with_module_doc("use std::fs;\n//! Too late.\n"));
    assert!(!opens_with_module_doc(
        "/// An item's doc, not the module's.\nfn f() {}\n"
    ));
    assert!(!opens_with_module_doc(
        "// A plain comment.\n//! Too late.\n"
    ));
    assert!(!opens_with_module_doc(""));
}
