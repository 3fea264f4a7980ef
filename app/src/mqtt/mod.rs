//! MQTT ingestion, through the embedded broker (`mqtt.mode = "embedded"`, the default) or an
//! external one (`mqtt.mode = "external"`):
//! - `broker.rs` is the embedded broker (rmqtt): its hooks authenticate devices, confine each
//!   to its own topics and acknowledge only after the commit; `inbound.rs` takes one message
//!   from a device to the database; `directory.rs` caches devices and their credentials;
//! - `payload.rs` decides what a message means, or exactly why it is refused;
//! - `connection.rs` turns `mqtt.url`/`mqtt.tls.*` into rumqttc options (rustls);
//! - `ingester.rs` subscribes in a persistent session and acknowledges each message only after
//!   its readings are committed;
//! - `dynsec.rs` keeps per-device accounts on Mosquitto's dynamic-security plugin;
//! - `simulator.rs` is a device that registers itself and publishes (demo, tests, benchmarks).

pub mod broker;
pub mod connection;
pub mod directory;
pub mod dynsec;
pub mod inbound;
pub mod ingester;
pub mod payload;
pub mod silence;
pub mod simulator;

use async_trait::async_trait;
use secrecy::SecretString;
use uuid::Uuid;

pub use broker::EmbeddedBroker;
pub use connection::{ingester_client_id, BrokerConnection};
pub use ingester::{Ingester, IngesterSettings};
pub use payload::{parse_message, Heartbeat, Limits, Message, Rejection, Telemetry, TopicKind};

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("broker unreachable: {0}")]
    Unreachable(String),
    #[error("broker refused `{command}`: {error}")]
    Refused { command: String, error: String },
    #[error("no answer from the broker within {0} s")]
    Timeout(u64),
}

/// Device accounts on the broker. The API calls it where it issues and revokes credentials:
/// the plaintext password exists only at issuance, so this is an explicit call, not a reaction
/// to `credentials_changed`.
#[async_trait]
pub trait BrokerAccounts: Send + Sync + 'static {
    /// Creates (or resets) the device's account: this password, publish only under
    /// `devices/{id}/`.
    async fn put_device(
        &self,
        device_id: Uuid,
        password: &SecretString,
    ) -> Result<(), AccountError>;
    /// Removes the device's account; an account that does not exist is not an error.
    async fn remove_device(&self, device_id: Uuid) -> Result<(), AccountError>;
}
