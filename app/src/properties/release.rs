//! Release artifact names (`release::artifact`, `release::state`).

use proptest::prelude::*;

use crate::release::artifact::{parse_version_output, release_name};
use crate::release::state::valid_release_name;

fn name_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,40}",
        "(ddms-)?[-./a-z0-9+_]{0,20}(-x86_64-linux|-x86_64-unknown-linux-gnu)?",
        "[-.]{1,4}[a-z0-9]{0,4}",
    ]
}

proptest! {
    #![proptest_config(super::config())]

    #[test]
    fn accepted_release_names_are_one_harmless_path_component(top in name_text(), version in name_text()) {
        let name = release_name(&top, &version);
        if valid_release_name(&name) {
            prop_assert!(!name.contains('/'), "{name:?}");
            prop_assert!(!name.contains(".."), "{name:?}");
            // A leading `-` would read as an option to the commands that take the path.
            prop_assert!(!name.starts_with('-'), "{name:?}");
        }
    }

    #[test]
    fn version_output_never_panics(text in "\\PC{0,60}", version in name_text(), sha in "\\PC{0,10}") {
        let _ = parse_version_output(&text);
        let shaped = format!("ddms {version} (git {sha})");
        let _ = parse_version_output(&shaped);
    }
}
