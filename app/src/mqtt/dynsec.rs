//! Per-device accounts on Mosquitto's dynamic-security plugin. ddms connects as a dynsec admin
//! and sends commands to `$CONTROL/dynamic-security/v1`: for each MQTT device a role
//! `ddms-device-{id}` that may publish only to `devices/{id}/#`, and a client (username = the
//! device id, password = the one ddms issued) holding that role.
//!
//! Each call is one short connection (connect, subscribe to the response topic, send, wait for
//! the answer, disconnect): accounts change rarely, and a call that fails tells the API so
//! at once, while the device still waits for its credentials.
//!
//! Dynsec in Mosquitto 2.0 has no `%u` substitution in ACL topics (measured), hence one role per
//! device rather than one shared role.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS, SubscribeReasonCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{AccountError, BrokerAccounts, BrokerConnection};
use crate::store::{Protocol, Store};

const CONTROL_TOPIC: &str = "$CONTROL/dynamic-security/v1";
const RESPONSE_TOPIC: &str = "$CONTROL/dynamic-security/v1/response";
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Marks the clients ddms manages, so reconciliation never touches an operator's own.
const MANAGED: &str = "managed by ddms";

pub fn role_name(device_id: Uuid) -> String {
    format!("ddms-device-{device_id}")
}

pub struct Dynsec {
    broker: BrokerConnection,
    username: String,
    password: SecretString,
    /// Admin connections are named `<prefix>-admin-<random>`: short-lived, clean sessions.
    client_prefix: String,
}

impl Dynsec {
    pub fn new(
        broker: BrokerConnection,
        username: String,
        password: SecretString,
        client_prefix: String,
    ) -> Self {
        Dynsec {
            broker,
            username,
            password,
            client_prefix,
        }
    }

    /// Sends `commands` in one message and returns their responses, in order.
    async fn call(&self, commands: Vec<Value>) -> Result<Vec<Value>, AccountError> {
        let correlation = Uuid::new_v4().simple().to_string();
        let count = commands.len();
        let commands: Vec<Value> = commands
            .into_iter()
            .enumerate()
            .map(|(i, mut command)| {
                command["correlationData"] = json!(format!("{correlation}-{i}"));
                command
            })
            .collect();
        let payload =
            serde_json::to_vec(&json!({ "commands": commands })).expect("JSON values serialise");
        let client_id = format!("{}-admin-{}", self.client_prefix, &correlation[..8]);
        let options = self
            .broker
            .options(&client_id, Some((&self.username, &self.password)));
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        let unreachable = |e: &dyn std::fmt::Display| AccountError::Unreachable(e.to_string());
        let exchange = async {
            loop {
                let event = eventloop.poll().await.map_err(|e| match e {
                    rumqttc::ConnectionError::ConnectionRefused(code) => AccountError::Refused {
                        command: "connect".into(),
                        error: format!("{code:?}"),
                    },
                    other => unreachable(&other),
                })?;
                match event {
                    Event::Incoming(Packet::ConnAck(_)) => client
                        .subscribe(RESPONSE_TOPIC, QoS::AtLeastOnce)
                        .await
                        .map_err(|e| unreachable(&e))?,
                    Event::Incoming(Packet::SubAck(ack)) => {
                        if ack.return_codes.contains(&SubscribeReasonCode::Failure) {
                            return Err(AccountError::Refused {
                                command: "subscribe".into(),
                                error: format!("not allowed to read {RESPONSE_TOPIC}"),
                            });
                        }
                        client
                            .publish(CONTROL_TOPIC, QoS::AtLeastOnce, false, payload.clone())
                            .await
                            .map_err(|e| unreachable(&e))?;
                    }
                    Event::Incoming(Packet::Publish(publish))
                        if publish.topic == RESPONSE_TOPIC =>
                    {
                        let body: Value = serde_json::from_slice(&publish.payload)
                            .map_err(|e| unreachable(&format!("unreadable response: {e}")))?;
                        let mut ours: Vec<(usize, Value)> = body["responses"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|r| {
                                let index = r["correlationData"]
                                    .as_str()?
                                    .strip_prefix(&correlation)?
                                    .strip_prefix('-')?
                                    .parse()
                                    .ok()?;
                                Some((index, r.clone()))
                            })
                            .collect();
                        if ours.len() == count {
                            ours.sort_by_key(|(i, _)| *i);
                            return Ok(ours.into_iter().map(|(_, r)| r).collect());
                        }
                    }
                    _ => {}
                }
            }
        };
        let result = tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .unwrap_or(Err(AccountError::Timeout(CALL_TIMEOUT.as_secs())));
        // A polite DISCONNECT, so the broker does not log a dropped connection each time.
        if client.try_disconnect().is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            })
            .await;
        }
        result
    }

    /// Removes the accounts of devices that no longer exist (deleted while the broker was
    /// unreachable). Returns how many were removed.
    pub async fn reconcile(&self, store: &dyn Store) -> Result<usize, AccountError> {
        // Broker first, store second: an account exists only after its device was stored, so a
        // device created meanwhile is in the store when we read it and its account is kept.
        let responses = self
            .call(vec![
                json!({ "command": "listClients", "verbose": true, "count": -1 }),
            ])
            .await?;
        let listed = responses.into_iter().next().unwrap_or_default();
        refused("listClients", &listed, &[])?;
        let devices = store
            .list_device_versions()
            .await
            .map_err(|e| AccountError::Unreachable(format!("database: {e}")))?;
        let known: HashSet<String> = devices
            .iter()
            .filter(|d| d.protocol == Protocol::Mqtt)
            .map(|d| d.id.to_string())
            .collect();
        let mut removed = 0;
        for client in listed["data"]["clients"].as_array().into_iter().flatten() {
            let Some(username) = client["username"].as_str() else {
                continue;
            };
            let managed = client["textdescription"] == MANAGED;
            let Ok(id) = Uuid::parse_str(username) else {
                continue;
            };
            if managed && !known.contains(username) {
                self.remove_device(id).await?;
                tracing::info!(device.id = %id, "removed the broker account of a deleted device");
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// The error of a response, unless it is one of `tolerated` (e.g. "already exists").
fn refused(command: &str, response: &Value, tolerated: &[&str]) -> Result<(), AccountError> {
    match response["error"].as_str() {
        None => Ok(()),
        Some(error) if tolerated.iter().any(|t| error.contains(t)) => Ok(()),
        Some(error) => Err(AccountError::Refused {
            command: command.into(),
            error: error.into(),
        }),
    }
}

#[async_trait]
impl BrokerAccounts for Dynsec {
    async fn put_device(
        &self,
        device_id: Uuid,
        password: &SecretString,
    ) -> Result<(), AccountError> {
        let username = device_id.to_string();
        let role = role_name(device_id);
        let responses = self
            .call(vec![
                json!({ "command": "createRole", "rolename": role,
                        "textdescription": MANAGED,
                        "acls": [{ "acltype": "publishClientSend",
                                   "topic": format!("devices/{device_id}/#"), "allow": true }] }),
                // The account connects only as client id = device id: without that, a device
                // could take over another's session — or ddms' own — by using its client id.
                json!({ "command": "createClient", "username": username,
                        "clientid": username,
                        "password": password.expose_secret(),
                        "textname": "ddms device", "textdescription": MANAGED,
                        "roles": [{ "rolename": role }] }),
            ])
            .await?;
        refused("createRole", &responses[0], &["already exists"])?;
        if responses[1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("already exists"))
        {
            // Credentials issued again for an existing account: new password, same role.
            let responses = self
                .call(vec![
                    json!({ "command": "setClientPassword", "username": username,
                            "password": password.expose_secret() }),
                    json!({ "command": "addClientRole", "username": username, "rolename": role }),
                    // Accounts made before client ids were bound get theirs now.
                    json!({ "command": "setClientId", "username": username,
                            "clientid": username }),
                ])
                .await?;
            refused("setClientPassword", &responses[0], &[])?;
            refused("addClientRole", &responses[1], &["already"])?;
            refused("setClientId", &responses[2], &[])?;
            return Ok(());
        }
        refused("createClient", &responses[1], &[])
    }

    async fn remove_device(&self, device_id: Uuid) -> Result<(), AccountError> {
        let responses = self
            .call(vec![
                json!({ "command": "deleteClient", "username": device_id.to_string() }),
                json!({ "command": "deleteRole", "rolename": role_name(device_id) }),
            ])
            .await?;
        refused("deleteClient", &responses[0], &["not found"])?;
        refused("deleteRole", &responses[1], &["not found"])
    }
}
