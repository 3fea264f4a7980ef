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

        let host = self.required_text(object, ROOT, "host");
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

        let metric = self
            .required_text(object, path, "metric")
            .and_then(|metric| {
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

    /// The string `key` of `object`: required, and refused when blank.
    fn required_text(
        &mut self,
        object: &Map<String, Value>,
        path: &str,
        key: &str,
    ) -> Option<String> {
        let field = format!("{path}.{key}");
        let value = self.required(object, path, key)?;
        let text = self.string(value, &field)?;
        if text.trim().is_empty() {
            self.error(&field, "must not be empty");
            return None;
        }
        Some(text)
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
#[path = "register_map_tests.rs"]
mod tests;
