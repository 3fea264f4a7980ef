//! Modbus TCP: the register map of a device, the reads that fetch it, and the decoding of what
//! comes back (pure, synchronous code), then the I/O: a device's connection ([`connection`]),
//! one poller task per device ([`poller`]), the supervisor that runs exactly one poller per device across instances
//! ([`supervisor`]), and a simulated device for tests and the demo ([`simulator`]).
//!
//! Planning matters because many PLCs accept only a handful of connections and answer one
//! request at a time on each: every request costs a full round trip. Reading a device's whole map
//! in a few merged requests keeps one poll short and leaves the device's connections to others.

pub mod connection;
pub mod decode;
pub mod plan;
pub mod poller;
pub mod register_map;
pub mod simulator;
pub mod supervisor;

pub use decode::{decode, decode_bit, DecodeError};
pub use plan::{plan_reads, ReadRequest};
pub use poller::{ModbusMetrics, PollerContext};
pub use register_map::{
    FieldError, InvalidModbusConfig, ModbusConfig, RegisterKind, RegisterSpec, ValueType, WordOrder,
};
pub use simulator::{ModbusSimulator, SimulatedRegister, Waveform};
pub use supervisor::Supervisor;
