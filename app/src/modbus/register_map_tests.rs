//! Tests of the register map: the contract's example, defaults, every field's bounds, all
//! errors reported at once, the serde round trip.

use serde_json::json;

use super::*;

fn contract_example() -> Value {
    json!({"host": "10.0.0.5", "port": 502, "unit_id": 1, "poll_interval_ms": 1000,
        "registers": [
            {"metric": "temperature", "kind": "holding", "address": 0, "type": "f32",
             "word_order": "big", "scale": 1.0, "offset": 0.0, "unit": "°C"}]})
}

/// The contract example with `value` set at the slash-separated `pointer` (created if absent).
fn example_with(pointer: &str, value: Value) -> Value {
    let mut config = contract_example();
    let (parent, key) = pointer.rsplit_once('/').expect("pointer has a parent");
    let parent = config.pointer_mut(parent).expect("parent exists");
    match parent {
        Value::Object(object) => {
            object.insert(key.to_owned(), value);
        }
        Value::Array(array) => {
            let index: usize = key.parse().expect("array index");
            array[index] = value;
        }
        _ => panic!("parent of {pointer} is neither an object nor an array"),
    }
    config
}

fn fields(errors: &[FieldError]) -> Vec<&str> {
    errors.iter().map(|error| error.field.as_str()).collect()
}

#[test]
fn the_contract_example_parses_to_its_values() {
    let config = ModbusConfig::from_json(&contract_example()).expect("valid");
    let mut temperature =
        RegisterSpec::new("temperature", RegisterKind::Holding, 0, ValueType::F32);
    temperature.unit = Some("°C".to_owned());
    assert_eq!(
        config,
        ModbusConfig {
            host: "10.0.0.5".to_owned(),
            port: 502,
            unit_id: 1,
            poll_interval_ms: 1000,
            max_gap: DEFAULT_MAX_GAP,
            registers: vec![temperature],
        }
    );
}

#[test]
fn omitted_optional_fields_take_their_defaults() {
    let config = ModbusConfig::from_json(&json!({
        "host": "plc",
        "registers": [{"metric": "pump", "kind": "coil", "address": 7, "type": "bool"}]
    }))
    .expect("valid");
    assert_eq!(
        (
            config.port,
            config.unit_id,
            config.poll_interval_ms,
            config.max_gap
        ),
        (502, 1, 1000, 8)
    );
    assert_eq!(
        config.registers,
        vec![RegisterSpec::new(
            "pump",
            RegisterKind::Coil,
            7,
            ValueType::Bool
        )]
    );
}

#[test]
fn null_optional_fields_count_as_absent() {
    let config =
        ModbusConfig::from_json(&example_with("/registers/0/unit", Value::Null)).expect("valid");
    assert_eq!(config.registers[0].unit, None);
}

#[test]
fn byte_swap_and_little_word_order_are_read() {
    let mut config = example_with("/registers/0/word_order", json!("little"));
    config["registers"][0]["byte_swap"] = json!(true);
    let register = &ModbusConfig::from_json(&config).expect("valid").registers[0];
    assert_eq!(
        (register.word_order, register.byte_swap),
        (WordOrder::Little, true)
    );
}

#[test]
fn values_at_the_edges_of_their_ranges_are_accepted() {
    let cases: &[(&str, Value)] = &[
        ("/port", json!(1)),
        ("/port", json!(65535)),
        ("/unit_id", json!(0)),
        ("/unit_id", json!(255)),
        ("/poll_interval_ms", json!(100)),
        ("/poll_interval_ms", json!(86_400_000)),
        ("/max_gap", json!(0)),
        ("/registers/0/address", json!(65534)),
        ("/registers/0/metric", json!("m".repeat(100))),
        ("/registers/0/scale", json!(-0.001)),
        ("/registers/0/offset", json!(-273.15)),
        ("/registers/0/scale", json!(1e15)),
        ("/registers/0/offset", json!(-1e15)),
        ("/registers/0/unit", json!("°".repeat(32))),
    ];
    for (pointer, value) in cases {
        let result = ModbusConfig::from_json(&example_with(pointer, value.clone()));
        assert!(result.is_ok(), "{pointer} = {value}: {result:?}");
    }
}

#[test]
fn each_invalid_field_is_named_with_a_reason() {
    // (pointer to change, new value, field named in the error, part of its message)
    #[rustfmt::skip]
    let cases: &[(&str, Value, &str, &str)] = &[
        ("/host", json!(""), "modbus.host", "must not be empty"),
        ("/host", json!(5), "modbus.host", "must be a string"),
        ("/port", json!(0), "modbus.port", "from 1 to 65535"),
        ("/port", json!(65536), "modbus.port", "from 1 to 65535"),
        ("/port", json!("502"), "modbus.port", "integer"),
        ("/unit_id", json!(256), "modbus.unit_id", "from 0 to 255"),
        ("/unit_id", json!(-1), "modbus.unit_id", "from 0 to 255"),
        ("/poll_interval_ms", json!(99), "modbus.poll_interval_ms", "from 100"),
        ("/poll_interval_ms", json!(86_400_001), "modbus.poll_interval_ms", "86400000"),
        ("/poll_interval_ms", json!(1000.5), "modbus.poll_interval_ms", "integer"),
        ("/max_gap", json!(65536), "modbus.max_gap", "from 0 to 65535"),
        ("/registers", json!([]), "modbus.registers", "at least one"),
        ("/registers", json!({}), "modbus.registers", "must be an array"),
        ("/registers/0", json!("temperature"), "modbus.registers[0]", "must be an object"),
        ("/registers/0/metric", json!(""), "modbus.registers[0].metric", "must not be empty"),
        ("/registers/0/metric", json!("m".repeat(101)), "modbus.registers[0].metric", "at most 100"),
        ("/registers/0/kind", json!("register"), "modbus.registers[0].kind", "one of holding, input, coil, discrete"),
        ("/registers/0/address", json!(65536), "modbus.registers[0].address", "from 0 to 65535"),
        ("/registers/0/address", json!(65535), "modbus.registers[0].address", "must be at most 65534"),
        ("/registers/0/type", json!("float"), "modbus.registers[0].type", "one of u16, i16, u32"),
        ("/registers/0/type", json!("bool"), "modbus.registers[0].type", "holds a number"),
        ("/registers/0/kind", json!("coil"), "modbus.registers[0].type", "must be bool"),
        ("/registers/0/kind", json!("discrete"), "modbus.registers[0].type", "must be bool"),
        ("/registers/0/word_order", json!("middle"), "modbus.registers[0].word_order", "one of big, little"),
        ("/registers/0/byte_swap", json!("yes"), "modbus.registers[0].byte_swap", "true or false"),
        ("/registers/0/scale", json!(0), "modbus.registers[0].scale", "must not be zero"),
        ("/registers/0/scale", json!("x10"), "modbus.registers[0].scale", "finite number"),
        ("/registers/0/offset", json!(true), "modbus.registers[0].offset", "finite number"),
        ("/registers/0/scale", json!(1.7e308), "modbus.registers[0].scale", "from -1e15 to 1e15"),
        ("/registers/0/offset", json!(-2e15), "modbus.registers[0].offset", "from -1e15 to 1e15"),
        ("/registers/0/unit", json!("u".repeat(33)), "modbus.registers[0].unit", "at most 32 characters"),
        ("/registers/0/unit", json!(1), "modbus.registers[0].unit", "must be a string"),
        ("/colour", json!("red"), "modbus.colour", "unknown field"),
        ("/registers/0/adress", json!(3), "modbus.registers[0].adress", "unknown field"),
    ];
    for (pointer, value, field, message) in cases {
        let errors = ModbusConfig::from_json(&example_with(pointer, value.clone()))
            .expect_err(&format!("{pointer} = {value} is invalid"));
        assert_eq!(
            fields(&errors),
            vec![*field],
            "{pointer} = {value}: {errors:?}"
        );
        assert!(
            errors[0].message.contains(message),
            "{pointer} = {value}: `{}` lacks `{message}`",
            errors[0].message
        );
    }
}

#[test]
fn missing_required_fields_are_named() {
    let errors = ModbusConfig::from_json(&json!({"registers": [{}]})).expect_err("invalid");
    assert_eq!(
        fields(&errors),
        vec![
            "modbus.host",
            "modbus.registers[0].metric",
            "modbus.registers[0].kind",
            "modbus.registers[0].address",
            "modbus.registers[0].type",
        ]
    );
    assert!(errors.iter().all(|error| error.message == "is required"));
}

#[test]
fn a_configuration_that_is_not_an_object_is_named_as_modbus() {
    let errors = ModbusConfig::from_json(&json!([1, 2])).expect_err("invalid");
    assert_eq!(fields(&errors), vec!["modbus"]);
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let errors = ModbusConfig::from_json(&json!({
        "host": "", "port": 0, "extra": 1,
        "registers": [
            {"metric": "a", "kind": "holding", "address": 0, "type": "f32"},
            {"metric": "b", "kind": "coil", "address": 0, "type": "u16"},
            {"metric": "a", "kind": "input", "address": 65535, "type": "u64"},
            {"metric": "c", "kind": "holding", "address": 1, "type": "i16", "scale": 0}
        ]
    }))
    .expect_err("invalid");
    assert_eq!(
        fields(&errors),
        vec![
            "modbus.extra",
            "modbus.host",
            "modbus.port",
            "modbus.registers[1].type",
            "modbus.registers[2].address",
            "modbus.registers[3].scale",
            "modbus.registers[2].metric",
        ]
    );
}

#[test]
fn a_repeated_metric_names_the_register_it_duplicates() {
    let config = json!({"host": "plc", "registers": [
        {"metric": "flow", "kind": "input", "address": 0, "type": "u16"},
        {"metric": "flow", "kind": "input", "address": 1, "type": "u16"},
        {"metric": "flow", "kind": "input", "address": 2, "type": "u16"}
    ]});
    let errors = ModbusConfig::from_json(&config).expect_err("invalid");
    assert_eq!(
        errors,
        vec![
            FieldError {
                field: "modbus.registers[1].metric".to_owned(),
                message: "duplicates the metric of modbus.registers[0]".to_owned(),
            },
            FieldError {
                field: "modbus.registers[2].metric".to_owned(),
                message: "duplicates the metric of modbus.registers[0]".to_owned(),
            },
        ]
    );
}

#[test]
fn more_than_a_thousand_registers_are_refused() {
    let registers: Vec<Value> = (0..=MAX_REGISTERS)
        .map(|index| {
            json!({"metric": format!("m{index}"), "kind": "holding", "address": index,
                "type": "u16"})
        })
        .collect();
    let errors = ModbusConfig::from_json(&json!({"host": "plc", "registers": registers}))
        .expect_err("invalid");
    assert_eq!(fields(&errors), vec!["modbus.registers"]);
    assert!(errors[0].message.contains("at most 1000"), "{errors:?}");
}

#[test]
fn serialized_configuration_parses_back_to_itself() {
    let mut config = example_with("/max_gap", json!(0));
    config["registers"][0]["byte_swap"] = json!(true);
    config["registers"][0]["word_order"] = json!("little");
    config["registers"][0]["scale"] = json!(0.1);
    let parsed = ModbusConfig::from_json(&config).expect("valid");
    let serialized = serde_json::to_value(&parsed).expect("serializes");
    assert_eq!(ModbusConfig::from_json(&serialized), Ok(parsed.clone()));
    assert_eq!(
        serde_json::from_value::<ModbusConfig>(serialized).expect("deserializes"),
        parsed
    );
}

#[test]
fn deserializing_an_invalid_configuration_names_every_field() {
    let error = serde_json::from_value::<ModbusConfig>(json!({"port": 0, "registers": []}))
        .expect_err("invalid");
    assert_eq!(
        error.to_string(),
        "invalid Modbus configuration: modbus.host: is required; \
         modbus.port: must be an integer from 1 to 65535; \
         modbus.registers: must list at least one register"
    );
}

#[test]
fn enum_names_match_their_serde_names() {
    for kind in RegisterKind::ALL {
        assert_eq!(serde_json::to_value(kind).ok(), Some(json!(kind.as_str())));
    }
    for value_type in ValueType::ALL {
        assert_eq!(
            serde_json::to_value(value_type).ok(),
            Some(json!(value_type.as_str()))
        );
    }
    for word_order in WordOrder::ALL {
        assert_eq!(
            serde_json::to_value(word_order).ok(),
            Some(json!(word_order.as_str()))
        );
    }
}
