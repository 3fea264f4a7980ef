//! The typed Modbus device configuration (the `modbus` object of a device, see the contract's
//! device shapes) and its validation.
//!
//! Validation walks the JSON by hand instead of deriving `Deserialize`, because serde stops at
//! the first error while the API must name every bad field at once (422 with the field's path).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub const DEFAULT_PORT: u16 = 502;
pub const DEFAULT_UNIT_ID: u8 = 1;
pub const DEFAULT_POLL_INTERVAL_MS: u64 = 1000;
/// Registers (or bits) a merged read may skip between two wanted ranges; see [`super::plan`].
pub const DEFAULT_MAX_GAP: u16 = 8;
pub const POLL_INTERVAL_MS: RangeInclusive<u64> = 100..=86_400_000;
pub const MAX_REGISTERS: usize = 1000;
pub use crate::ingest::limits::{MAX_METRIC_CHARS, MAX_UNIT_CHARS};
/// The largest magnitude of `scale` and `offset`: a coil's "on" (1 × scale + offset) must be a
/// reading the pipeline accepts; see [`crate::ingest::limits::MAX_ABS_VALUE`].
pub const MAX_ABS_SCALE_OR_OFFSET: f64 = crate::ingest::limits::MAX_ABS_VALUE;

/// The JSON key the configuration sits under in a device; every field path starts with it.
const ROOT: &str = "modbus";

/// One invalid input, named by a JSON-path-like field such as `modbus.registers[2].type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Every error of one configuration, for callers that need a single `Error` value (serde).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Modbus configuration: {}", join(.0))]
pub struct InvalidModbusConfig(pub Vec<FieldError>);

fn join(errors: &[FieldError]) -> String {
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    messages.join("; ")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegisterKind {
    Holding,
    Input,
    Coil,
    Discrete,
}

impl RegisterKind {
    pub const ALL: [RegisterKind; 4] = [Self::Holding, Self::Input, Self::Coil, Self::Discrete];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Holding => "holding",
            Self::Input => "input",
            Self::Coil => "coil",
            Self::Discrete => "discrete",
        }
    }

    /// Coils and discrete inputs are read as bits, holding and input registers as 16-bit words.
    pub fn is_bit(self) -> bool {
        matches!(self, Self::Coil | Self::Discrete)
    }

    /// The most one request may read, per the Modbus specification (FC 1/2: 2000 bits,
    /// FC 3/4: 125 registers).
    pub fn max_read_count(self) -> u16 {
        if self.is_bit() {
            2000
        } else {
            125
        }
    }
}

impl fmt::Display for RegisterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    Bool,
}

impl ValueType {
    pub const ALL: [ValueType; 9] = [
        Self::U16,
        Self::I16,
        Self::U32,
        Self::I32,
        Self::U64,
        Self::I64,
        Self::F32,
        Self::F64,
        Self::Bool,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::U16 => "u16",
            Self::I16 => "i16",
            Self::U32 => "u32",
            Self::I32 => "i32",
            Self::U64 => "u64",
            Self::I64 => "i64",
            Self::F32 => "f32",
            Self::F64 => "f64",
            Self::Bool => "bool",
        }
    }

    /// Addresses one value occupies: 16-bit words for numbers, one bit for `bool`.
    pub fn width(self) -> u16 {
        match self {
            Self::U16 | Self::I16 | Self::Bool => 1,
            Self::U32 | Self::I32 | Self::F32 => 2,
            Self::U64 | Self::I64 | Self::F64 => 4,
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Order of the 16-bit words of a multi-word value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WordOrder {
    /// High word first (the Modbus convention).
    #[default]
    Big,
    /// Low word first.
    Little,
}

impl WordOrder {
    pub const ALL: [WordOrder; 2] = [Self::Big, Self::Little];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Big => "big",
            Self::Little => "little",
        }
    }
}

impl fmt::Display for WordOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One metric read from a device. Build it through [`ModbusConfig::from_json`] to have it
/// validated; [`super::plan_reads`] and [`super::decode`] rely on that validation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegisterSpec {
    pub metric: String,
    pub kind: RegisterKind,
    pub address: u16,
    #[serde(rename = "type")]
    pub value_type: ValueType,
    pub word_order: WordOrder,
    /// Swap the two bytes inside each word: with `word_order` this expresses all four 32-bit
    /// layouts ABCD, BADC (`byte_swap`), CDAB (`little`) and DCBA (`little` + `byte_swap`).
    pub byte_swap: bool,
    pub scale: f64,
    pub offset: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

impl RegisterSpec {
    /// A register with the defaults of every optional field.
    pub fn new(
        metric: impl Into<String>,
        kind: RegisterKind,
        address: u16,
        value_type: ValueType,
    ) -> Self {
        RegisterSpec {
            metric: metric.into(),
            kind,
            address,
            value_type,
            word_order: WordOrder::Big,
            byte_swap: false,
            scale: 1.0,
            offset: 0.0,
            unit: None,
        }
    }

    /// Addresses the value occupies (registers or bits).
    pub fn width(&self) -> u16 {
        self.value_type.width()
    }

    /// The last address the value occupies, as `u32` so that an unvalidated spec cannot overflow.
    pub fn last_address(&self) -> u32 {
        u32::from(self.address) + u32::from(self.width()) - 1
    }
}

/// The `modbus` object of a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Value")]
pub struct ModbusConfig {
    pub host: String,
    pub port: u16,
    /// 0 and 255 are accepted: Modbus TCP gateways often ignore the unit id or expect one of these.
    pub unit_id: u8,
    pub poll_interval_ms: u64,
    pub max_gap: u16,
    pub registers: Vec<RegisterSpec>,
}

impl TryFrom<Value> for ModbusConfig {
    type Error = InvalidModbusConfig;

    fn try_from(value: Value) -> Result<Self, Self::Error> {
        ModbusConfig::from_json(&value).map_err(InvalidModbusConfig)
    }
}

const CONFIG_FIELDS: &[&str] = &[
    "host",
    "port",
    "unit_id",
    "poll_interval_ms",
    "max_gap",
    "registers",
];
const REGISTER_FIELDS: &[&str] = &[
    "metric",
    "kind",
    "address",
    "type",
    "word_order",
    "byte_swap",
    "scale",
    "offset",
    "unit",
];

impl ModbusConfig {
    /// Validates the `modbus` object of a device, returning every invalid field, not just the
    /// first. A `null` field counts as absent.
    pub fn from_json(value: &Value) -> Result<ModbusConfig, Vec<FieldError>> {
        let mut check = Checker::default();
        let config = check.config(value);
        match config {
            Some(config) if check.errors.is_empty() => Ok(config),
            _ => Err(check.errors),
        }
    }
}

/// Collects errors while walking the JSON. A parsing method returns `None` only after recording
/// an error, so "no errors" implies every field was parsed.
#[derive(Default)]
struct Checker {
    errors: Vec<FieldError>,
}

impl Checker {
    fn error(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.to_owned(),
            message: message.into(),
        });
    }

    fn config(&mut self, value: &Value) -> Option<ModbusConfig> {
        let object = self.object(value, ROOT)?;
        self.refuse_unknown(object, ROOT, CONFIG_FIELDS);
        let field = |key: &str| format!("{ROOT}.{key}");

        let host = self.required(object, ROOT, "host").and_then(|value| {
            let host = self.string(value, &field("host"))?;
            if host.trim().is_empty() {
                self.error(&field("host"), "must not be empty");
                return None;
            }
            Some(host)
        });
        let port = self.integer_or(object, ROOT, "port", DEFAULT_PORT.into(), 1..=65535);
        let unit_id = self.integer_or(object, ROOT, "unit_id", DEFAULT_UNIT_ID.into(), 0..=255);
        let poll_interval_ms = self.integer_or(
            object,
            ROOT,
            "poll_interval_ms",
            DEFAULT_POLL_INTERVAL_MS,
            POLL_INTERVAL_MS,
        );
        let max_gap = self.integer_or(object, ROOT, "max_gap", DEFAULT_MAX_GAP.into(), 0..=65535);
        let registers = self
            .required(object, ROOT, "registers")
            .and_then(|value| self.registers(value, &field("registers")));

        Some(ModbusConfig {
            host: host?,
            port: u16::try_from(port?).ok()?,
            unit_id: u8::try_from(unit_id?).ok()?,
            poll_interval_ms: poll_interval_ms?,
            max_gap: u16::try_from(max_gap?).ok()?,
            registers: registers?,
        })
    }

    fn registers(&mut self, value: &Value, field: &str) -> Option<Vec<RegisterSpec>> {
        let Some(items) = value.as_array() else {
            self.error(field, "must be an array");
            return None;
        };
        if items.is_empty() {
            self.error(field, "must list at least one register");
        } else if items.len() > MAX_REGISTERS {
            self.error(
                field,
                format!(
                    "must list at most {MAX_REGISTERS} registers, got {}",
                    items.len()
                ),
            );
        }
        let registers: Vec<Option<RegisterSpec>> = items
            .iter()
            .enumerate()
            .map(|(index, item)| self.register(item, &format!("{field}[{index}]")))
            .collect();

        // Metrics name series, so two registers of one device must not share a name.
        let mut first_index_of_metric: HashMap<&str, usize> = HashMap::new();
        for (index, register) in registers.iter().enumerate() {
            let Some(register) = register else { continue };
            match first_index_of_metric.entry(&register.metric) {
                Entry::Vacant(entry) => {
                    entry.insert(index);
                }
                Entry::Occupied(first) => self.error(
                    &format!("{field}[{index}].metric"),
                    format!("duplicates the metric of {field}[{}]", first.get()),
                ),
            }
        }

        if items.is_empty() || items.len() > MAX_REGISTERS {
            return None;
        }
        registers.into_iter().collect()
    }

    fn register(&mut self, value: &Value, path: &str) -> Option<RegisterSpec> {
        let object = self.object(value, path)?;
        self.refuse_unknown(object, path, REGISTER_FIELDS);
        let field = |key: &str| format!("{path}.{key}");

        let metric = self.required(object, path, "metric").and_then(|value| {
            let metric = self.string(value, &field("metric"))?;
            if metric.trim().is_empty() {
                self.error(&field("metric"), "must not be empty");
                return None;
            }
            if metric.chars().count() > MAX_METRIC_CHARS {
                self.error(
                    &field("metric"),
                    format!("must be at most {MAX_METRIC_CHARS} characters"),
                );
                return None;
            }
            Some(metric)
        });
        let kind = self.required(object, path, "kind").and_then(|value| {
            self.one_of(value, &field("kind"), &RegisterKind::ALL, |k| k.as_str())
        });
        let address = self
            .required(object, path, "address")
            .and_then(|value| self.integer(value, &field("address"), 0..=65535))
            .and_then(|address| u16::try_from(address).ok());
        let value_type = self
            .required(object, path, "type")
            .and_then(|value| self.one_of(value, &field("type"), &ValueType::ALL, |t| t.as_str()));
        let word_order = match optional(object, "word_order") {
            None => Some(WordOrder::default()),
            Some(value) => {
                self.one_of(value, &field("word_order"), &WordOrder::ALL, |o| o.as_str())
            }
        };
        let byte_swap = match optional(object, "byte_swap") {
            None => Some(false),
            Some(value) => self.boolean(value, &field("byte_swap")),
        };
        let scale = match optional(object, "scale") {
            None => Some(1.0),
            Some(value) => self.bounded(value, &field("scale")).and_then(|scale| {
                if scale == 0.0 {
                    // A zero scale would turn every reading into the offset, hiding the device.
                    self.error(&field("scale"), "must not be zero");
                    return None;
                }
                Some(scale)
            }),
        };
        let offset = match optional(object, "offset") {
            None => Some(0.0),
            Some(value) => self.bounded(value, &field("offset")),
        };
        let unit = match optional(object, "unit") {
            None => Some(None),
            Some(value) => self.string(value, &field("unit")).and_then(|unit| {
                if unit.chars().count() > MAX_UNIT_CHARS {
                    self.error(
                        &field("unit"),
                        format!("must be at most {MAX_UNIT_CHARS} characters"),
                    );
                    return None;
                }
                Some(Some(unit))
            }),
        };

        if let (Some(kind), Some(value_type)) = (kind, value_type) {
            if kind.is_bit() && value_type != ValueType::Bool {
                self.error(
                    &field("type"),
                    format!("a {kind} holds one bit, so its type must be bool"),
                );
            } else if !kind.is_bit() && value_type == ValueType::Bool {
                self.error(
                    &field("type"),
                    format!(
                        "a {kind} register holds a number; read bits from a coil or discrete input"
                    ),
                );
            }
        }
        if let (Some(address), Some(value_type)) = (address, value_type) {
            let highest_start = 65536 - u32::from(value_type.width());
            if u32::from(address) > highest_start {
                self.error(
                    &field("address"),
                    format!(
                        "a {value_type} takes {} registers, so its address must be at most \
                         {highest_start}",
                        value_type.width()
                    ),
                );
            }
        }

        Some(RegisterSpec {
            metric: metric?,
            kind: kind?,
            address: address?,
            value_type: value_type?,
            word_order: word_order?,
            byte_swap: byte_swap?,
            scale: scale?,
            offset: offset?,
            unit: unit?,
        })
    }

    fn object<'v>(&mut self, value: &'v Value, field: &str) -> Option<&'v Map<String, Value>> {
        let object = value.as_object();
        if object.is_none() {
            self.error(field, "must be an object");
        }
        object
    }

    fn refuse_unknown(&mut self, object: &Map<String, Value>, path: &str, known: &[&str]) {
        for key in object.keys() {
            if !known.contains(&key.as_str()) {
                self.error(
                    &format!("{path}.{key}"),
                    format!("unknown field; expected one of {}", known.join(", ")),
                );
            }
        }
    }

    fn required<'v>(
        &mut self,
        object: &'v Map<String, Value>,
        path: &str,
        key: &str,
    ) -> Option<&'v Value> {
        let value = optional(object, key);
        if value.is_none() {
            self.error(&format!("{path}.{key}"), "is required");
        }
        value
    }

    fn string(&mut self, value: &Value, field: &str) -> Option<String> {
        let string = value.as_str().map(str::to_owned);
        if string.is_none() {
            self.error(field, "must be a string");
        }
        string
    }

    fn boolean(&mut self, value: &Value, field: &str) -> Option<bool> {
        let boolean = value.as_bool();
        if boolean.is_none() {
            self.error(field, "must be true or false");
        }
        boolean
    }

    fn integer(&mut self, value: &Value, field: &str, range: RangeInclusive<u64>) -> Option<u64> {
        match value.as_u64() {
            Some(number) if range.contains(&number) => Some(number),
            _ => {
                let (min, max) = (range.start(), range.end());
                self.error(field, format!("must be an integer from {min} to {max}"));
                None
            }
        }
    }

    fn integer_or(
        &mut self,
        object: &Map<String, Value>,
        path: &str,
        key: &str,
        default: u64,
        range: RangeInclusive<u64>,
    ) -> Option<u64> {
        match optional(object, key) {
            None => Some(default),
            Some(value) => self.integer(value, &format!("{path}.{key}"), range),
        }
    }

    /// A finite number within ±[`MAX_ABS_SCALE_OR_OFFSET`].
    fn bounded(&mut self, value: &Value, field: &str) -> Option<f64> {
        match value.as_f64() {
            Some(number) if number.is_finite() && number.abs() <= MAX_ABS_SCALE_OR_OFFSET => {
                Some(number)
            }
            _ => {
                self.error(
                    field,
                    format!("must be a finite number from -{MAX_ABS_SCALE_OR_OFFSET:e} to {MAX_ABS_SCALE_OR_OFFSET:e}"),
                );
                None
            }
        }
    }

    fn one_of<T: Copy>(
        &mut self,
        value: &Value,
        field: &str,
        choices: &[T],
        name: impl Fn(T) -> &'static str,
    ) -> Option<T> {
        let chosen = value.as_str().and_then(|given| {
            choices
                .iter()
                .copied()
                .find(|&choice| name(choice) == given)
        });
        if chosen.is_none() {
            let names: Vec<&str> = choices.iter().map(|&choice| name(choice)).collect();
            self.error(field, format!("must be one of {}", names.join(", ")));
        }
        chosen
    }
}

/// A field's value, with `null` counting as absent.
fn optional<'v>(object: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
    object.get(key).filter(|value| !value.is_null())
}

#[cfg(test)]
mod tests {
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
        let config = ModbusConfig::from_json(&example_with("/registers/0/unit", Value::Null))
            .expect("valid");
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
}
