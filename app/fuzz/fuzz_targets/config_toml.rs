//! Configuration TOML: never a panic; an accepted configuration renders (as `ddms config check`
//! prints it) as valid TOML.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(config) = ddms::config::from_toml(text) {
        let shown = config.redacted_toml();
        assert!(shown.parse::<toml::Table>().is_ok(), "{shown}");
    }
});
