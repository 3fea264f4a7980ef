//! Turning the words or bit of one register into a reading: raw value × scale + offset.

use super::register_map::{RegisterSpec, ValueType, WordOrder};
use crate::ingest::limits::{check_value, MAX_ABS_VALUE};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("{metric}: a {value_type} needs {expected} registers, got {got}")]
    WrongWordCount {
        metric: String,
        value_type: ValueType,
        expected: usize,
        got: usize,
    },
    #[error("{metric}: a bool is read from a bit with decode_bit, not from registers")]
    BitReadAsWords { metric: String },
    /// A float register holding NaN or an infinity: a reading must be a finite number.
    #[error("{metric}: the device sent {raw}, not a finite number")]
    NotFinite { metric: String, raw: f64 },
    /// Scaled, the value is infinite or beyond the reading range
    /// ([`crate::ingest::limits::MAX_ABS_VALUE`]).
    #[error("{metric}: {raw} × {scale} + {offset} is not a finite number within ±{max:e}", max = MAX_ABS_VALUE)]
    ScaledOutOfRange {
        metric: String,
        raw: f64,
        scale: f64,
        offset: f64,
    },
}

impl DecodeError {
    /// The `reason` label of `ddms_readings_rejected_total` for a value the device sent that
    /// cannot be a reading; `None` for a register map that does not fit the answer.
    pub fn rejection_reason(&self) -> Option<&'static str> {
        match self {
            DecodeError::NotFinite { .. } => Some("not_finite"),
            DecodeError::ScaledOutOfRange { .. } => Some("value_out_of_range"),
            DecodeError::WrongWordCount { .. } | DecodeError::BitReadAsWords { .. } => None,
        }
    }
}

/// Decodes a number from exactly [`RegisterSpec::width`] words, as received (each word in the
/// Modbus big-endian byte order of the wire), honouring `word_order` and `byte_swap`.
///
/// 64-bit integers beyond ±2^53 are rounded to the nearest `f64`.
pub fn decode(register: &RegisterSpec, words: &[u16]) -> Result<f64, DecodeError> {
    let value_type = register.value_type;
    let bit_read_as_words = || DecodeError::BitReadAsWords {
        metric: register.metric.clone(),
    };
    if value_type == ValueType::Bool {
        return Err(bit_read_as_words());
    }
    let expected = usize::from(value_type.width());
    if words.len() != expected {
        return Err(DecodeError::WrongWordCount {
            metric: register.metric.clone(),
            value_type,
            expected,
            got: words.len(),
        });
    }

    let Some(raw) = raw_value(value_type, words, register.word_order, register.byte_swap) else {
        return Err(bit_read_as_words());
    };
    if !raw.is_finite() {
        return Err(DecodeError::NotFinite {
            metric: register.metric.clone(),
            raw,
        });
    }
    scaled(register, raw)
}

/// Decodes a coil or discrete input: 1.0 for on, 0.0 for off, then scale and offset (checked
/// like any other reading: a register map written before scale and offset were bounded may
/// still hold huge ones).
pub fn decode_bit(register: &RegisterSpec, bit: bool) -> Result<f64, DecodeError> {
    let raw = if bit { 1.0 } else { 0.0 };
    scaled(register, raw)
}

fn scaled(register: &RegisterSpec, raw: f64) -> Result<f64, DecodeError> {
    let value = raw * register.scale + register.offset;
    if check_value(value).is_ok() {
        Ok(value)
    } else {
        Err(DecodeError::ScaledOutOfRange {
            metric: register.metric.clone(),
            raw,
            scale: register.scale,
            offset: register.offset,
        })
    }
}

/// The number the words hold, or `None` for `bool`, which is no number of words.
fn raw_value(
    value_type: ValueType,
    words: &[u16],
    word_order: WordOrder,
    byte_swap: bool,
) -> Option<f64> {
    let b = big_endian_bytes(words, word_order, byte_swap);
    let raw = match value_type {
        ValueType::U16 => f64::from(u16::from_be_bytes([b[0], b[1]])),
        ValueType::I16 => f64::from(i16::from_be_bytes([b[0], b[1]])),
        ValueType::U32 => f64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        ValueType::I32 => f64::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        ValueType::F32 => f64::from(f32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        // Readings are f64: 64-bit integers beyond 2^53 are rounded to the nearest f64.
        ValueType::U64 => u64::from_be_bytes(b) as f64,
        ValueType::I64 => i64::from_be_bytes(b) as f64,
        ValueType::F64 => f64::from_be_bytes(b),
        ValueType::Bool => return None,
    };
    Some(raw)
}

/// The value's bytes, most significant first, in the first `2 × words.len()` bytes (up to 4
/// words). Little word order puts the least significant word first, so its words are reversed;
/// byte swap exchanges the two bytes inside each word.
fn big_endian_bytes(words: &[u16], word_order: WordOrder, byte_swap: bool) -> [u8; 8] {
    let mut ordered = [0u16; 4];
    for (slot, word) in ordered.iter_mut().zip(words) {
        *slot = if byte_swap { word.swap_bytes() } else { *word };
    }
    let ordered = &mut ordered[..words.len().min(4)];
    if word_order == WordOrder::Little {
        ordered.reverse();
    }
    let mut bytes = [0u8; 8];
    for (pair, word) in bytes.chunks_exact_mut(2).zip(ordered.iter()) {
        pair.copy_from_slice(&word.to_be_bytes());
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::register_map::RegisterKind;

    /// The four byte layouts of the industry's naming: A is the most significant byte.
    #[derive(Debug, Clone, Copy)]
    enum Layout {
        Abcd,
        Badc,
        Cdab,
        Dcba,
    }

    fn register(value_type: ValueType, layout: Layout) -> RegisterSpec {
        let (word_order, byte_swap) = match layout {
            Layout::Abcd => (WordOrder::Big, false),
            Layout::Badc => (WordOrder::Big, true),
            Layout::Cdab => (WordOrder::Little, false),
            Layout::Dcba => (WordOrder::Little, true),
        };
        RegisterSpec {
            word_order,
            byte_swap,
            ..RegisterSpec::new("m", RegisterKind::Holding, 0, value_type)
        }
    }

    #[test]
    fn every_type_decodes_in_every_layout() {
        use Layout::*;
        use ValueType::*;
        let f32_123_456 = f64::from(123.456_f32);
        let u64_0102 = 0x0102_0304_0506_0708_u64 as f64;
        let i64_minus_1234 = -1_234_567_890_123_456_789_i64 as f64;
        // (type, layout, words as received, expected raw value)
        let cases: &[(ValueType, Layout, &[u16], f64)] = &[
            // 16-bit values have one word, so only the byte swap matters.
            (U16, Abcd, &[0x1234], 4660.0),
            (U16, Badc, &[0x3412], 4660.0),
            (U16, Cdab, &[0x1234], 4660.0),
            (U16, Dcba, &[0x3412], 4660.0),
            (U16, Abcd, &[0xFFFF], 65535.0),
            (I16, Abcd, &[0xFFFE], -2.0),
            (I16, Badc, &[0xFEFF], -2.0),
            (I16, Cdab, &[0xFFFE], -2.0),
            (I16, Dcba, &[0xFEFF], -2.0),
            (I16, Abcd, &[0x8000], -32768.0),
            (I16, Abcd, &[0x7FFF], 32767.0),
            // u32 0x12345678
            (U32, Abcd, &[0x1234, 0x5678], 305_419_896.0),
            (U32, Badc, &[0x3412, 0x7856], 305_419_896.0),
            (U32, Cdab, &[0x5678, 0x1234], 305_419_896.0),
            (U32, Dcba, &[0x7856, 0x3412], 305_419_896.0),
            (U32, Abcd, &[0xFFFF, 0xFFFF], 4_294_967_295.0),
            // i32 -123456789 = 0xF8A432EB
            (I32, Abcd, &[0xF8A4, 0x32EB], -123_456_789.0),
            (I32, Badc, &[0xA4F8, 0xEB32], -123_456_789.0),
            (I32, Cdab, &[0x32EB, 0xF8A4], -123_456_789.0),
            (I32, Dcba, &[0xEB32, 0xA4F8], -123_456_789.0),
            // f32 123.456 = 0x42F6E979
            (F32, Abcd, &[0x42F6, 0xE979], f32_123_456),
            (F32, Badc, &[0xF642, 0x79E9], f32_123_456),
            (F32, Cdab, &[0xE979, 0x42F6], f32_123_456),
            (F32, Dcba, &[0x79E9, 0xF642], f32_123_456),
            // f32 -0.15625 = 0xBE200000 (exact in binary)
            (F32, Abcd, &[0xBE20, 0x0000], -0.15625),
            (F32, Cdab, &[0x0000, 0xBE20], -0.15625),
            // u64 0x0102030405060708
            (U64, Abcd, &[0x0102, 0x0304, 0x0506, 0x0708], u64_0102),
            (U64, Badc, &[0x0201, 0x0403, 0x0605, 0x0807], u64_0102),
            (U64, Cdab, &[0x0708, 0x0506, 0x0304, 0x0102], u64_0102),
            (U64, Dcba, &[0x0807, 0x0605, 0x0403, 0x0201], u64_0102),
            (U64, Abcd, &[0x0000, 0x0000, 0x0001, 0x0000], 65536.0),
            // i64 -1234567890123456789 = 0xEEDDEF0B82167EEB
            (I64, Abcd, &[0xEEDD, 0xEF0B, 0x8216, 0x7EEB], i64_minus_1234),
            (I64, Badc, &[0xDDEE, 0x0BEF, 0x1682, 0xEB7E], i64_minus_1234),
            (I64, Cdab, &[0x7EEB, 0x8216, 0xEF0B, 0xEEDD], i64_minus_1234),
            (I64, Dcba, &[0xEB7E, 0x1682, 0x0BEF, 0xDDEE], i64_minus_1234),
            (I64, Abcd, &[0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE], -2.0),
            // f64 1234.5678 = 0x40934A456D5CFAAD
            (F64, Abcd, &[0x4093, 0x4A45, 0x6D5C, 0xFAAD], 1234.5678),
            (F64, Badc, &[0x9340, 0x454A, 0x5C6D, 0xADFA], 1234.5678),
            (F64, Cdab, &[0xFAAD, 0x6D5C, 0x4A45, 0x4093], 1234.5678),
            (F64, Dcba, &[0xADFA, 0x5C6D, 0x454A, 0x9340], 1234.5678),
        ];
        // The raw value: 64-bit cases lie beyond the reading range, which `decode` refuses.
        for &(value_type, layout, words, expected) in cases {
            let spec = register(value_type, layout);
            let decoded = raw_value(value_type, words, spec.word_order, spec.byte_swap);
            assert_eq!(
                decoded,
                Some(expected),
                "{value_type} {layout:?} {words:04X?}"
            );
        }
    }

    #[test]
    fn scale_and_offset_apply_to_the_raw_value() {
        use ValueType::*;
        // (type, words, scale, offset, expected reading)
        let cases: &[(ValueType, &[u16], f64, f64, f64)] = &[
            (U16, &[100], 0.5, -40.0, 10.0),
            (I16, &[0xFFFE], 0.5, 0.0, -1.0),
            (I16, &[0xFFFE], -3.0, 1.0, 7.0),
            (U32, &[0x0001, 0x0000], 0.25, 0.0, 16384.0),
            (F32, &[0xBE20, 0x0000], 2.0, 1.0, 0.6875),
            (F64, &[0x3FF8, 0x0000, 0x0000, 0x0000], 4.0, -1.5, 4.5), // 1.5
        ];
        for &(value_type, words, scale, offset, expected) in cases {
            let spec = RegisterSpec {
                scale,
                offset,
                ..RegisterSpec::new("m", RegisterKind::Input, 0, value_type)
            };
            assert_eq!(
                decode(&spec, words),
                Ok(expected),
                "{value_type} {words:04X?}"
            );
        }
    }

    #[test]
    fn bits_decode_to_one_or_zero_then_scale_and_offset() {
        // (scale, offset, bit, expected reading)
        let cases = [
            (1.0, 0.0, true, 1.0),
            (1.0, 0.0, false, 0.0),
            (100.0, 0.0, true, 100.0),
            (-1.0, 1.0, true, 0.0),
            (-1.0, 1.0, false, 1.0),
        ];
        for (scale, offset, bit, expected) in cases {
            let spec = RegisterSpec {
                scale,
                offset,
                ..RegisterSpec::new("pump", RegisterKind::Coil, 0, ValueType::Bool)
            };
            assert_eq!(
                decode_bit(&spec, bit),
                Ok(expected),
                "{scale} {offset} {bit}"
            );
        }
    }

    #[test]
    fn a_word_count_other_than_the_type_width_is_an_error() {
        let cases: &[(ValueType, &[u16])] = &[
            (ValueType::U16, &[]),
            (ValueType::I16, &[1, 2]),
            (ValueType::F32, &[0x42F6]),
            (ValueType::I32, &[1, 2, 3]),
            (ValueType::U64, &[1, 2, 3]),
            (ValueType::F64, &[1, 2, 3, 4, 5]),
        ];
        for &(value_type, words) in cases {
            let spec = RegisterSpec::new("m", RegisterKind::Holding, 0, value_type);
            assert_eq!(
                decode(&spec, words),
                Err(DecodeError::WrongWordCount {
                    metric: "m".to_owned(),
                    value_type,
                    expected: usize::from(value_type.width()),
                    got: words.len(),
                }),
                "{value_type} {words:?}"
            );
        }
    }

    #[test]
    fn floats_that_are_not_finite_are_errors() {
        let cases: &[(ValueType, &[u16])] = &[
            (ValueType::F32, &[0x7FC0, 0x0000]),                 // NaN
            (ValueType::F32, &[0x7F80, 0x0000]),                 // +infinity
            (ValueType::F32, &[0xFF80, 0x0000]),                 // -infinity
            (ValueType::F64, &[0x7FF8, 0x0000, 0x0000, 0x0000]), // NaN
            (ValueType::F64, &[0xFFF0, 0x0000, 0x0000, 0x0000]), // -infinity
        ];
        for &(value_type, words) in cases {
            let spec = RegisterSpec::new("m", RegisterKind::Holding, 0, value_type);
            let result = decode(&spec, words);
            assert!(
                matches!(result, Err(DecodeError::NotFinite { .. })),
                "{value_type} {words:04X?}: {result:?}"
            );
        }
    }

    #[test]
    fn values_beyond_the_reading_range_are_errors_for_words_and_bits() {
        // A register map stored before scale and offset were bounded may hold huge ones.
        let huge_scale = RegisterSpec {
            scale: 1.7e308,
            ..RegisterSpec::new("pump", RegisterKind::Coil, 0, ValueType::Bool)
        };
        let err = decode_bit(&huge_scale, true).unwrap_err();
        assert_eq!(err.rejection_reason(), Some("value_out_of_range"));
        assert_eq!(decode_bit(&huge_scale, false), Ok(0.0));
        let huge_offset = RegisterSpec {
            offset: f64::MAX,
            ..RegisterSpec::new("pump", RegisterKind::Coil, 0, ValueType::Bool)
        };
        assert!(decode_bit(&huge_offset, false).is_err());

        let f64_1e308 = 1e308_f64.to_bits().to_be_bytes();
        let words: Vec<u16> = f64_1e308
            .chunks(2)
            .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
            .collect();
        let spec = RegisterSpec::new("m", RegisterKind::Holding, 0, ValueType::F64);
        let err = decode(&spec, &words).unwrap_err();
        assert_eq!(err.rejection_reason(), Some("value_out_of_range"));
        // A u64 counter beyond the range is refused; scaled into it, it is a reading.
        let u64_max = [0xFFFF; 4];
        let counter = RegisterSpec::new("m", RegisterKind::Holding, 0, ValueType::U64);
        assert!(decode(&counter, &u64_max).is_err());
        let scaled = RegisterSpec {
            scale: 1e-6,
            ..counter
        };
        assert!(decode(&scaled, &u64_max).is_ok());
    }

    #[test]
    fn scaling_beyond_the_f64_range_is_an_error() {
        let spec = RegisterSpec {
            scale: 10.0,
            ..RegisterSpec::new("m", RegisterKind::Holding, 0, ValueType::F64)
        };
        let f64_max = [0x7FEF, 0xFFFF, 0xFFFF, 0xFFFF];
        assert_eq!(
            decode(&spec, &f64_max),
            Err(DecodeError::ScaledOutOfRange {
                metric: "m".to_owned(),
                raw: f64::MAX,
                scale: 10.0,
                offset: 0.0,
            })
        );
    }

    #[test]
    fn a_bool_register_cannot_be_decoded_from_words() {
        let spec = RegisterSpec::new("pump", RegisterKind::Coil, 0, ValueType::Bool);
        for words in [&[1][..], &[0, 1]] {
            assert_eq!(
                decode(&spec, words),
                Err(DecodeError::BitReadAsWords {
                    metric: "pump".to_owned()
                })
            );
        }
    }
}
