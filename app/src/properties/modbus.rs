//! Register maps (`modbus::register_map`) and decoding (`modbus::decode`).

use proptest::prelude::*;
use serde_json::{json, Value};

use crate::ingest::limits::MAX_ABS_VALUE;
use crate::modbus::register_map::{ModbusConfig, RegisterKind, RegisterSpec, ValueType, WordOrder};
use crate::modbus::{decode, decode_bit, DecodeError};

/// A number of any magnitude, as a register map's JSON may hold it.
fn any_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<f64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        Just(json!(1e15)),
        Just(json!(-1e15)),
        Just(json!(f64::MAX)),
    ]
}

/// One register entry, mostly well-formed so that the validator's range checks are reached.
fn register_json() -> impl Strategy<Value = Value> {
    (
        "[a-z_]{1,8}",
        prop::sample::select(RegisterKind::ALL.to_vec()),
        any::<u16>(),
        prop::sample::select(ValueType::ALL.to_vec()),
        prop::sample::select(WordOrder::ALL.to_vec()),
        any::<bool>(),
        prop::option::of(any_number()),
        prop::option::of(any_number()),
    )
        .prop_map(
            |(metric, kind, address, value_type, order, swap, scale, offset)| {
                let mut register = json!({
                    "metric": metric,
                    "kind": kind.as_str(),
                    "address": address,
                    "type": value_type.as_str(),
                    "word_order": order.as_str(),
                    "byte_swap": swap,
                });
                if let Some(scale) = scale {
                    register["scale"] = scale;
                }
                if let Some(offset) = offset {
                    register["offset"] = offset;
                }
                register
            },
        )
}

fn map_json() -> impl Strategy<Value = Value> {
    prop_oneof![
        super::any_json(),
        (
            prop::collection::vec(register_json(), 0..6),
            any::<u16>(),
            any::<u64>()
        )
            .prop_map(|(registers, port, interval)| json!({
                "host": "127.0.0.1",
                "port": port,
                "poll_interval_ms": interval % 200_000,
                "registers": registers,
            })),
    ]
}

/// The words of `value_type` holding the big-endian bytes `bytes`, laid out as the register map
/// says: written here from the documented word orders (ABCD, BADC with `byte_swap`, CDAB with
/// `little`, DCBA with both), not with the decoder's code.
fn encode(bytes: &[u8], word_order: WordOrder, byte_swap: bool) -> Vec<u16> {
    let mut words: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|pair| {
            let (high, low) = if byte_swap {
                (pair[1], pair[0])
            } else {
                (pair[0], pair[1])
            };
            u16::from(high) << 8 | u16::from(low)
        })
        .collect();
    if word_order == WordOrder::Little {
        words.reverse();
    }
    words
}

/// A value of every numeric type: its big-endian bytes and the reading it stands for.
fn typed_value() -> impl Strategy<Value = (ValueType, Vec<u8>, f64)> {
    prop_oneof![
        any::<u16>().prop_map(|v| (ValueType::U16, v.to_be_bytes().to_vec(), f64::from(v))),
        any::<i16>().prop_map(|v| (ValueType::I16, v.to_be_bytes().to_vec(), f64::from(v))),
        any::<u32>().prop_map(|v| (ValueType::U32, v.to_be_bytes().to_vec(), f64::from(v))),
        any::<i32>().prop_map(|v| (ValueType::I32, v.to_be_bytes().to_vec(), f64::from(v))),
        any::<u64>().prop_map(|v| (ValueType::U64, v.to_be_bytes().to_vec(), v as f64)),
        any::<i64>().prop_map(|v| (ValueType::I64, v.to_be_bytes().to_vec(), v as f64)),
        any::<f32>().prop_map(|v| (ValueType::F32, v.to_be_bytes().to_vec(), f64::from(v))),
        any::<f64>().prop_map(|v| (ValueType::F64, v.to_be_bytes().to_vec(), v)),
    ]
}

fn is_reading(value: f64) -> bool {
    value.is_finite() && value.abs() <= MAX_ABS_VALUE
}

proptest! {
    #![proptest_config(super::config())]

    #[test]
    fn validated_maps_never_decode_to_an_unreported_bad_value(
        map in map_json(),
        words in prop::collection::vec(any::<u16>(), 0..6),
        bit in any::<bool>(),
    ) {
        let Ok(config) = ModbusConfig::from_json(&map) else { return Ok(()) };
        for register in &config.registers {
            prop_assert!(register.scale.is_finite() && register.offset.is_finite());
            prop_assert!(u16::try_from(register.last_address()).is_ok());
            let results = if register.kind.is_bit() {
                vec![decode_bit(register, bit)]
            } else {
                let width = usize::from(register.width());
                vec![decode(register, &words), decode(register, &words[..width.min(words.len())])]
            };
            for result in results {
                match result {
                    Ok(value) => prop_assert!(is_reading(value), "{}: {value}", register.metric),
                    // A refused value is reported with its reason; a misfit map is not a value.
                    Err(DecodeError::NotFinite { .. } | DecodeError::ScaledOutOfRange { .. }
                        | DecodeError::WrongWordCount { .. } | DecodeError::BitReadAsWords { .. }) => {}
                }
            }
        }
    }

    #[test]
    fn encode_then_decode_gives_the_value_back(
        (value_type, bytes, value) in typed_value(),
        word_order in prop::sample::select(WordOrder::ALL.to_vec()),
        byte_swap in any::<bool>(),
    ) {
        let mut register = RegisterSpec::new("m", RegisterKind::Holding, 0, value_type);
        register.word_order = word_order;
        register.byte_swap = byte_swap;
        let words = encode(&bytes, word_order, byte_swap);
        match decode(&register, &words) {
            Ok(decoded) => {
                prop_assert!(is_reading(value));
                prop_assert_eq!(decoded, value);
            }
            Err(DecodeError::NotFinite { .. }) => prop_assert!(!value.is_finite()),
            Err(DecodeError::ScaledOutOfRange { .. }) => {
                prop_assert!(value.is_finite() && value.abs() > MAX_ABS_VALUE);
            }
            Err(other) => prop_assert!(false, "{other}"),
        }
    }
}
