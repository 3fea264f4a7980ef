//! Property tests of everything an outsider can feed ddms (issue 12, "close the class"): each
//! parser never panics on arbitrary input, and what it accepts is within the documented limits
//! (`docs/limits.md`). Case counts stay modest so the suite stays fast; `cargo xtask fuzz` runs
//! the same parsers for longer.

mod backup;
mod config;
mod modbus;
mod mqtt;
mod readings;
mod release;

use proptest::prelude::*;

/// Cases per property: enough to find the shallow defects on every run, cheap on 2 busy cores.
const CASES: u32 = 256;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Any JSON value, nested a few levels, with numbers of every magnitude (as JSON text allows).
fn any_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "\\PC{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
