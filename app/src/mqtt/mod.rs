//! MQTT ingestion. So far: topic and payload parsing (`payload.rs`), the part that decides what a
//! message means and why it is refused. The client (rumqttc), the embedded broker and the
//! acknowledge-after-commit pipeline come next (issue #3).

pub mod payload;

pub use payload::{parse_message, Heartbeat, Limits, Message, Rejection, Telemetry, TopicKind};
