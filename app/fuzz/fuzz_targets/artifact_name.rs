//! Release artifact names: never a panic; accepted names are one harmless path component.
#![no_main]

use ddms::release::{parse_version_output, release_name, valid_release_name};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = parse_version_output(text);
    let (top, version) = text.split_once('\n').unwrap_or((text, "0.1.0"));
    let name = release_name(top, version);
    if valid_release_name(&name) {
        assert!(
            !name.contains('/') && !name.contains("..") && !name.starts_with('-'),
            "{name:?}"
        );
    }
});
