//! Backup manifests: never a panic; accepted ones can be summarised and name only plain files.
#![no_main]

use ddms::backup::{is_plain_file_name, parse_manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = parse_manifest("fuzz", data) {
        let _ = manifest.summary();
        for file in &manifest.files {
            assert!(is_plain_file_name(&file.path), "{:?}", file.path);
        }
    }
});
