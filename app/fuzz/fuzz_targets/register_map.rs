//! Register maps as JSON, then decoding: never a panic; a validated map decodes only to
//! readings within range, or reports why not.
#![no_main]

use ddms::modbus::register_map::ModbusConfig;
use ddms::modbus::{decode, decode_bit};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Up to the first NUL: the map; after it: the words the device answers.
    let (map, rest) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(map) else {
        return;
    };
    let Ok(config) = ModbusConfig::from_json(&value) else {
        return;
    };
    let words: Vec<u16> = rest
        .chunks_exact(2)
        .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
        .collect();
    for register in &config.registers {
        let results = if register.kind.is_bit() {
            vec![decode_bit(register, true), decode_bit(register, false)]
        } else {
            let width = usize::from(register.width()).min(words.len());
            vec![decode(register, &words[..width]), decode(register, &words)]
        };
        for value in results.into_iter().flatten() {
            assert!(
                value.is_finite() && value.abs() <= 1e15,
                "{}: {value}",
                register.metric
            );
        }
    }
});
