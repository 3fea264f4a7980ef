//! Backup manifests (`backup::parse_manifest`).

use proptest::prelude::*;
use serde_json::json;

use crate::backup::{is_plain_file_name, parse_manifest};

/// Manifests of the right shape with hostile values: huge counts, odd names, any format.
fn manifest_json() -> impl Strategy<Value = serde_json::Value> {
    let table = ("\\PC{0,12}", any::<u64>())
        .prop_map(|(name, rows)| json!({"name": name, "rows": rows, "columns": []}));
    let file = (
        prop_oneof![
            "[a-z.]{1,8}",
            "\\PC{0,16}",
            Just("../x".to_string()),
            Just("/etc/x".to_string())
        ],
        any::<u64>(),
    )
        .prop_map(|(path, bytes)| json!({"path": path, "bytes": bytes, "sha256": "00"}));
    (any::<u32>(), prop::collection::vec(table, 0..5), prop::collection::vec(file, 0..4), prop_oneof![3 => Just(String::new()), 1 => "\\PC{0,30}"], prop::collection::vec(prop_oneof!["[a-z.]{1,8}", Just("..".to_string()), Just("a/b".to_string())], 0..3)).prop_map(
        |(format, tables, files, created_at, snapshot_files)| json!({
            "format": format % 4,
            "name": "ddms-backup-x",
            "created_at": if created_at.is_empty() { "2026-01-01T00:00:00Z".to_string() } else { created_at },
            "ddms_version": "0.1.0",
            "git_sha": "abc",
            "snapshot": {"backend": "sqlite", "migrations": [1], "tables": tables, "files": snapshot_files, "readings_span": null},
            "files": files,
        }),
    )
}

proptest! {
    #![proptest_config(super::config())]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_manifest("b", &bytes);
    }

    #[test]
    fn arbitrary_json_never_panics(value in super::any_json()) {
        let _ = parse_manifest("b", value.to_string().as_bytes());
    }

    #[test]
    fn accepted_manifests_can_be_summarised(value in manifest_json()) {
        if let Ok(manifest) = parse_manifest("b", value.to_string().as_bytes()) {
            // `backup list` and `backup verify` print these for whatever the archive declares.
            let _ = manifest.rows();
            let _ = manifest.summary();
            for path in manifest.files.iter().map(|f| &f.path).chain(&manifest.snapshot.files) {
                prop_assert!(is_plain_file_name(path) && !path.contains('/'), "{path:?}");
            }
        }
    }
}
