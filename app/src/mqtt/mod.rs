//! MQTT ingestion. `payload.rs` decides what a message means and why it is refused;
//! `inbound.rs` takes one message from a device to the database (parse, check the device,
//! submit, wait for the commit); `directory.rs` caches which devices exist and their
//! credentials; `broker.rs` is the embedded broker (`mqtt.mode = "embedded"`), whose hooks
//! authenticate devices, confine each to its own topics and acknowledge only after the commit.

pub mod broker;
pub mod directory;
pub mod inbound;
pub mod payload;

pub use broker::EmbeddedBroker;
pub use payload::{parse_message, Heartbeat, Limits, Message, Rejection, Telemetry, TopicKind};
