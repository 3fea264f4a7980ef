//! The embedded MQTT broker (`mqtt.mode = "embedded"`): rmqtt in this process, with our hooks
//! deciding who may connect, what they may publish, and when a publish is acknowledged.
//!
//! - **Authentication** (`ClientAuthenticate`): username = device id, password checked against
//!   the stored SHA-256 hash; the client id must be the username (no one takes over another
//!   device's session); a last will may only name the device's own topics (rmqtt publishes
//!   wills without the publish ACL); no anonymous clients.
//! - **Publish ACL** (`MessagePublishCheckAcl`, first): a device publishes only under
//!   `devices/{its id}/…`. Anything else is refused and counted (MQTT 3.1.1: PUBACK, then
//!   dropped; MQTT 5: PUBACK 135 Not authorized).
//! - **Ingest** (`MessagePublishCheckAcl`, second): rmqtt sends the PUBACK only when this hook
//!   returns, so it hands the message to [`Inbound`] and waits for the commit. A message that
//!   could not be stored is not acknowledged: the connection is closed and the device sends it
//!   again. Refused input is acknowledged and dropped.
//! - **No subscriptions**: ddms is the only consumer and takes messages in the publish path, so
//!   nothing is routed and no queue can overflow (the Mosquitto pitfall: PUBACK, then a drop
//!   for a slow subscriber).
//! - **Blue-green hand-over**: in a slot (`DDMS_SLOT`), the listeners set `SO_REUSEPORT`, so
//!   the idle slot binds the broker port while the active one still serves it and the kernel
//!   spreads new connections over both. A stopping slot closes its listeners first (from then
//!   on every new connection reaches the other slot), then refuses to acknowledge, then lets
//!   each device go once its in-flight message is answered; the device reconnects to the new
//!   slot and sends again what was not acknowledged. Outside a slot the port stays exclusive:
//!   a second ddms on the same port is a start-up error, not a silent split of the devices.

use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use rmqtt::codec::v5::{PublishAckReason, SubscribeAckReason};
use rmqtt::context::ServerContext;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType, Type};
use rmqtt::net::Builder;
use rmqtt::server::MqttServer;
use rmqtt::types::{
    AuthResult, ConnectInfo, LastWill, PublishAclResult, PublishResult, Reason, SubscribeAclResult,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::directory::{DeviceDirectory, DeviceState, Verdict};
use super::inbound::{Inbound, IngestGate, LogThrottle, Outcome, RefusalKind, PROTOCOL};
use super::payload::Limits;
use crate::config::EmbeddedBrokerConfig;
use crate::ingest::{IngestHandle, IngestMetrics};
use crate::metrics::registered;
use crate::status::StatusBoard;
use crate::store::Store;

/// How long shutdown waits for connected devices to be let go (each waits for its in-flight
/// message to commit first).
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest MQTT packet accepted; the payload limit (64 KiB) is checked per message and
/// counted, a larger packet closes the connection.
const MAX_PACKET_BYTES: u32 = 1024 * 1024;

/// Whether a device may publish on (or leave a will on) `topic`: only under its own
/// `devices/{id}/…`, and never with wildcard characters.
pub fn topic_allowed(device: &str, topic: &str) -> bool {
    let Some(rest) = topic
        .strip_prefix("devices/")
        .and_then(|r| r.strip_prefix(device))
        .and_then(|r| r.strip_prefix('/'))
    else {
        return false;
    };
    !device.is_empty()
        && !device.contains(['/', '+', '#'])
        && !rest.is_empty()
        && !rest.contains(['+', '#'])
}

#[derive(Clone)]
struct BrokerMetrics {
    connections: IntGauge,
    connects_refused: IntCounterVec,
    dropped: IntCounterVec,
    subscriptions_refused: prometheus::IntCounter,
}

impl BrokerMetrics {
    fn register(registry: &Registry) -> Self {
        let connections = registered(
            registry,
            IntGauge::new(
                "ddms_mqtt_connections",
                "Devices connected to the embedded MQTT broker",
            ),
        );
        let connects_refused = registered(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "ddms_mqtt_connects_refused_total",
                    "CONNECTs the embedded broker refused, by reason",
                ),
                &["reason"],
            ),
        );
        let dropped = registered(registry, IntCounterVec::new(
            Opts::new(
                "ddms_mqtt_broker_dropped_total",
                "Messages the embedded broker dropped on its own (not refusals by ddms), by reason",
            ),
            &["reason"],
        ));
        let subscriptions_refused = registered(
            registry,
            prometheus::IntCounter::new(
                "ddms_mqtt_subscriptions_refused_total",
                "SUBSCRIBE requests refused (devices may not subscribe)",
            ),
        );
        BrokerMetrics {
            connections,
            connects_refused,
            dropped,
            subscriptions_refused,
        }
    }
}

/// What the broker needs from the rest of ddms.
pub struct BrokerContext {
    pub store: Arc<dyn Store>,
    pub ingest: IngestHandle,
    pub status: StatusBoard,
    pub registry: Registry,
    pub devices_changed: Arc<Notify>,
    pub credentials_changed: Arc<Notify>,
    /// Set while the broker accepts connections (`/ready`).
    pub ready: Arc<AtomicBool>,
    /// Share the listening ports with the other blue-green slot (`SO_REUSEPORT`): set when
    /// ddms runs as a slot.
    pub share_port: bool,
}

/// A bound, not yet serving broker. Binding in `Server::build` turns a port in use into a
/// start-up error that names the key.
pub struct EmbeddedBroker {
    server: MqttServer,
    scx: ServerContext,
    listen: SocketAddr,
    tls_listen: Option<SocketAddr>,
    inbound: Arc<Inbound>,
    /// The refusal logs' throttles, pruned while the broker runs.
    throttles: [Arc<LogThrottle>; 2],
    directory: DeviceDirectory,
    devices_changed: Arc<Notify>,
    credentials_changed: Arc<Notify>,
    ready: Arc<AtomicBool>,
}

impl EmbeddedBroker {
    pub async fn bind(
        config: &EmbeddedBrokerConfig,
        context: BrokerContext,
    ) -> anyhow::Result<EmbeddedBroker> {
        // rmqtt refuses connections while the host's CPU is busy unless told not to: on a
        // shared two-core machine that would lock devices out at random.
        let scx = ServerContext::new().busy_check_enable(false).build().await;
        let directory = DeviceDirectory::new(context.store.clone());
        if let Err(e) = directory.refresh().await {
            tracing::warn!(error = %e, "cannot load MQTT devices yet; looking them up as they connect");
        }
        let metrics = BrokerMetrics::register(&context.registry);
        let ingest_metrics: IngestMetrics = context.ingest.metrics().clone();
        let inbound = Arc::new(Inbound {
            directory: directory.clone(),
            gate: IngestGate::new(context.ingest),
            status: context.status,
            metrics: ingest_metrics.clone(),
            limits: Limits::default(),
            log: Arc::new(LogThrottle::default()),
        });
        let register = scx.extends.hook_mgr().register();
        let access = Arc::new(AccessControl {
            directory: directory.clone(),
            metrics,
            ingest_metrics,
            log: Arc::new(LogThrottle::default()),
        });
        let throttles = [inbound.log.clone(), access.log.clone()];
        for typ in [
            Type::ClientAuthenticate,
            Type::ClientSubscribeCheckAcl,
            Type::MessagePublishCheckAcl,
            Type::MessageDropped,
            Type::ClientConnected,
            Type::ClientDisconnected,
        ] {
            register
                .add_priority(typ, 100, Box::new(SharedHandler(access.clone())))
                .await;
        }
        // Lower priority runs later: only publishes the ACL allowed reach it.
        register
            .add_priority(
                Type::MessagePublishCheckAcl,
                50,
                Box::new(IngestHook {
                    inbound: inbound.clone(),
                }),
            )
            .await;
        register.start().await;

        let share_port = context.share_port;
        let plain = listener_builder("mqtt", config.listen, share_port)
            .bind()
            .with_context(|| {
                format!(
                    "cannot listen on {} (mqtt.embedded.listen; set mqtt.mode = \"off\" or another address if a broker already runs there){}",
                    config.listen,
                    shared_port_hint(share_port)
                )
            })?
            .tcp()
            .context("mqtt.embedded.listen")?;
        let listen = plain.local_addr().context("mqtt.embedded.listen")?;
        // Listener ids must be unique: the bound port (port 0 in tests means "any").
        let mut builder = MqttServer::new(scx.clone()).listener_by_id(plain, listen.port());
        let mut tls_listen = None;
        if let Some(addr) = config.tls_listen {
            let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) else {
                anyhow::bail!("mqtt.embedded.tls_listen needs mqtt.embedded.tls.cert and .key");
            };
            let tls = listener_builder("mqtts", addr, share_port)
                .tls_cert(Some(cert.display().to_string()))
                .tls_key(Some(key.display().to_string()))
                .bind()
                .with_context(|| {
                    format!(
                        "cannot listen on {addr} (mqtt.embedded.tls_listen){}",
                        shared_port_hint(share_port)
                    )
                })?
                .tls()
                .with_context(|| {
                    format!(
                        "cannot use the TLS certificate {} and key {} (mqtt.embedded.tls.cert, mqtt.embedded.tls.key)",
                        cert.display(),
                        key.display()
                    )
                })?;
            let bound = tls.local_addr().context("mqtt.embedded.tls_listen")?;
            builder = builder.listener_by_id(tls, bound.port());
            tls_listen = Some(bound);
        }
        Ok(EmbeddedBroker {
            server: builder.build(),
            scx,
            listen,
            tls_listen,
            inbound,
            throttles,
            directory,
            devices_changed: context.devices_changed,
            credentials_changed: context.credentials_changed,
            ready: context.ready,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listen
    }

    pub fn tls_local_addr(&self) -> Option<SocketAddr> {
        self.tls_listen
    }

    /// Serves until `stop`, then stops in the order that keeps "acknowledged = committed"
    /// and hands the devices over to the other blue-green slot: stop accepting (close the
    /// listening sockets: the kernel sends every new connection to the other slot's, when it
    /// shares the port), take the ingest handle away (later messages are not acknowledged),
    /// let each device go once its in-flight message has its answer. The batch writer is still
    /// running meanwhile, so that answer comes; this returns before the pipeline is flushed.
    pub async fn run(self, stop: CancellationToken) {
        let EmbeddedBroker {
            server,
            scx,
            listen,
            tls_listen,
            inbound,
            throttles,
            directory,
            devices_changed,
            credentials_changed,
            ready,
        } = self;
        let maintain =
            tokio::spawn(directory.maintain(devices_changed, credentials_changed, stop.clone()));
        let prune = tokio::spawn(prune_throttles(throttles, stop.clone()));
        // `run`, not `start`: rmqtt's `start` exits the process when a listener fails.
        let mut accept = tokio::spawn(async move {
            if let Err(e) = server.run().await {
                tracing::error!(error = %e, "the embedded MQTT broker stopped");
            }
        });
        ready.store(true, Ordering::SeqCst);
        let tls = tls_listen.map_or_else(|| "off".to_string(), |a| a.to_string());
        tracing::info!(mqtt.listen = %listen, mqtt.tls_listen = %tls, "embedded MQTT broker listening");
        tokio::select! {
            () = stop.cancelled() => {}
            _ = &mut accept => tracing::error!("the embedded MQTT broker stopped accepting connections"),
        }
        ready.store(false, Ordering::SeqCst);
        // Dropping the server closes its listening sockets: first, so that a device let go
        // below reconnects to the other slot rather than to this one.
        accept.abort();
        let _ = accept.await;
        inbound.gate.close();
        let _ = maintain.await;
        let _ = prune.await;
        let disconnected = tokio::time::timeout(DISCONNECT_TIMEOUT, disconnect_all(&scx)).await;
        match disconnected {
            Ok(count) => {
                tracing::info!(mqtt.clients = count, "embedded MQTT broker stopped");
            }
            Err(_) => tracing::warn!(
                "embedded MQTT broker stopped; some devices were still busy after {} s",
                DISCONNECT_TIMEOUT.as_secs()
            ),
        }
    }
}

/// Prunes the refusal logs' throttles every interval until `stop`.
async fn prune_throttles(throttles: [Arc<LogThrottle>; 2], stop: CancellationToken) {
    let mut tick = tokio::time::interval(throttles[0].interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => throttles.iter().for_each(|t| t.prune()),
        }
    }
}

/// What to check when a slot cannot bind: the other side must share the port too.
fn shared_port_hint(share_port: bool) -> &'static str {
    if share_port {
        "; blue-green slots share the port with SO_REUSEPORT, so the process holding it does not: another program, a ddms outside a slot, or the other slot running a release from before the shared port (stop that slot once, then activate again)"
    } else {
        ""
    }
}

fn listener_builder(name: &str, addr: SocketAddr, share_port: bool) -> Builder {
    Builder::new()
        .name(name)
        .laddr(addr)
        // A restart binds again at once, without waiting for TIME_WAIT.
        .reuseaddr(Some(true))
        // Both slots of a blue-green deploy listen at once (Linux only lets sockets of the
        // same user share a port).
        .reuseport(Some(share_port))
        .nodelay(true)
        .allow_anonymous(false)
        .max_packet_size(MAX_PACKET_BYTES)
        .handshake_timeout(Duration::from_secs(15))
        // Devices may not subscribe, so nothing is ever queued for them; these bound what a
        // session could hold if that changes, and keep it for a day rather than five minutes.
        .max_mqueue_len(1000)
        .max_inflight(NonZeroU16::new(16).expect("non-zero"))
        .session_expiry_interval(Duration::from_secs(3600))
        .message_expiry_interval(Duration::from_secs(24 * 3600))
}

/// Disconnects every client; each one leaves once its current message has been answered.
async fn disconnect_all(scx: &ServerContext) -> usize {
    let shared = scx.extends.shared().await;
    let ids: Vec<_> = shared.iter().map(|entry| entry.id()).collect();
    let kicks = ids.iter().map(|id| {
        let entry = shared.entry(id.clone());
        async move {
            if let Ok(mut locked) = entry.try_lock().await {
                let _ = locked.kick(true, true, true).await;
            }
        }
    });
    futures::future::join_all(kicks).await;
    ids.len()
}

fn username(connect: &ConnectInfo) -> Option<&str> {
    connect
        .username()
        .map(|u| u.as_ref() as &str)
        .filter(|u| !u.is_empty())
}

/// Authentication, the publish and subscribe ACLs, and the broker's own counters.
struct AccessControl {
    directory: DeviceDirectory,
    metrics: BrokerMetrics,
    ingest_metrics: IngestMetrics,
    log: Arc<LogThrottle>,
}

impl AccessControl {
    async fn authenticate(&self, connect: &ConnectInfo) -> AuthResult {
        let client_id: &str = connect.client_id().as_ref();
        let Some(username) = username(connect) else {
            return self.refuse(client_id, "anonymous", AuthResult::NotAuthorized);
        };
        let password: &[u8] = connect.password().map(|p| p.as_ref()).unwrap_or_default();
        let device_id = match self.directory.authenticate(username, password).await {
            Verdict::Allowed(device_id) => device_id,
            Verdict::BadCredentials => {
                return self.refuse(
                    username,
                    "bad_credentials",
                    AuthResult::BadUsernameOrPassword,
                )
            }
            Verdict::Unavailable(e) => {
                tracing::warn!(mqtt.username = %username, error = %e, "cannot check MQTT credentials: database unavailable");
                return self.refuse(username, "unavailable", AuthResult::NotAuthorized);
            }
        };
        // Another client id would let this device take over (kick) another client's session.
        if client_id != username {
            return self.refuse(username, "client_id_mismatch", AuthResult::NotAuthorized);
        }
        let will_topic = connect.last_will().map(|will| match will {
            LastWill::V3(w) => w.topic.as_ref() as &str,
            LastWill::V5(w) => w.topic.as_ref() as &str,
        });
        if let Some(topic) = will_topic {
            if !topic_allowed(username, topic) {
                return self.refuse(
                    username,
                    "will_topic_not_allowed",
                    AuthResult::NotAuthorized,
                );
            }
        }
        match self.directory.device(device_id).await {
            Ok(DeviceState::Active | DeviceState::Disabled) => {
                tracing::debug!(device.id = %device_id, "MQTT device connected");
                AuthResult::Allow(false, None)
            }
            Ok(DeviceState::Unknown) => {
                self.refuse(username, "unknown_device", AuthResult::NotAuthorized)
            }
            Err(e) => {
                tracing::warn!(device.id = %device_id, error = %e, "cannot look an MQTT device up: database unavailable");
                self.refuse(username, "unavailable", AuthResult::NotAuthorized)
            }
        }
    }

    fn refuse(&self, who: &str, reason: &'static str, result: AuthResult) -> AuthResult {
        self.metrics
            .connects_refused
            .with_label_values(&[reason])
            .inc();
        let who: String = who.chars().take(100).collect();
        if self
            .log
            .first_in_a_while(&format!("connect/{who}/{reason}"))
        {
            tracing::info!(mqtt.username = %who, reason, "MQTT connection refused (repeats are logged at debug for a minute)");
        } else {
            tracing::debug!(mqtt.username = %who, reason, "MQTT connection refused");
        }
        result
    }
}

/// rmqtt takes a `Box<dyn Handler>` per hook type; one `AccessControl` serves them all.
struct SharedHandler(Arc<AccessControl>);

#[async_trait]
impl Handler for SharedHandler {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        let access = &self.0;
        match param {
            Parameter::ClientAuthenticate(connect) => {
                let result = access.authenticate(connect).await;
                (false, Some(HookResult::AuthResult(result)))
            }
            Parameter::MessagePublishCheckAcl(session, publish) => {
                let username = session.id.username.as_deref().unwrap_or_default();
                let topic: &str = publish.topic.as_ref();
                if topic_allowed(username, topic) {
                    return (true, acc);
                }
                access.ingest_metrics.reject(PROTOCOL, "topic_not_allowed");
                if access.log.first_in_a_while(&format!("acl/{username}")) {
                    tracing::info!(mqtt.username = %username, mqtt.topic = %topic.chars().take(200).collect::<String>(), "MQTT publish outside the device's own topics refused (repeats are logged at debug for a minute)");
                } else {
                    tracing::debug!(mqtt.username = %username, mqtt.topic = %topic.chars().take(200).collect::<String>(), "MQTT publish refused");
                }
                (
                    false,
                    Some(HookResult::PublishAclResult(PublishAclResult::rejected(
                        false,
                        Some("a device may publish only under devices/{its id}/".into()),
                    ))),
                )
            }
            Parameter::ClientSubscribeCheckAcl(session, subscribe) => {
                access.metrics.subscriptions_refused.inc();
                tracing::debug!(mqtt.username = ?session.id.username, mqtt.topic_filter = %subscribe.topic_filter, "MQTT subscription refused");
                (
                    false,
                    Some(HookResult::SubscribeAclResult(
                        SubscribeAclResult::new_failure(SubscribeAckReason::NotAuthorized),
                    )),
                )
            }
            Parameter::MessageDropped(_, _, publish, reason) => {
                // Our own refusals come through here too; they are counted where decided.
                if !matches!(reason, Reason::PublishResult(_)) {
                    let label = drop_reason(reason);
                    access.metrics.dropped.with_label_values(&[label]).inc();
                    if access.log.first_in_a_while(&format!("dropped/{label}")) {
                        tracing::warn!(mqtt.topic = %publish.topic, reason = %reason, "the embedded MQTT broker dropped a message");
                    }
                }
                (true, acc)
            }
            Parameter::ClientConnected(_) => {
                access.metrics.connections.inc();
                (true, acc)
            }
            Parameter::ClientDisconnected(_, _) => {
                access.metrics.connections.dec();
                (true, acc)
            }
            _ => (true, acc),
        }
    }
}

fn drop_reason(reason: &Reason) -> &'static str {
    match reason {
        Reason::MessageExpiration => "expired",
        Reason::MessageQueueFull => "queue_full",
        Reason::InflightWindowFull => "inflight_full",
        _ => "other",
    }
}

/// Stores what the ACL let through, then answers: PUBACK only after the commit.
struct IngestHook {
    inbound: Arc<Inbound>,
}

#[async_trait]
impl Handler for IngestHook {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        let Parameter::MessagePublishCheckAcl(session, publish) = param else {
            return (true, acc);
        };
        if let Some(HookResult::PublishAclResult(result)) = &acc {
            if result.is_rejected() {
                return (false, acc);
            }
        }
        let username = session.id.username.as_deref().unwrap_or_default();
        let Ok(device_id) = Uuid::parse_str(username) else {
            // Authentication admits only device ids; refuse anything else outright.
            return (
                false,
                Some(HookResult::PublishAclResult(PublishAclResult::rejected(
                    true, None,
                ))),
            );
        };
        let result = match self
            .inbound
            .handle(device_id, publish.topic.as_ref(), &publish.payload)
            .await
        {
            Outcome::Stored => PublishAclResult::allow(),
            Outcome::Refused(refusal) => {
                let code = match refusal.kind {
                    RefusalKind::Topic => PublishAckReason::TopicNameInvalid,
                    RefusalKind::Payload => PublishAckReason::PayloadFormatInvalid,
                    RefusalKind::Device => PublishAckReason::NotAuthorized,
                };
                PublishAclResult(PublishResult::reason_code(
                    code,
                    Some(refusal.reason.into()),
                    false,
                ))
            }
            // MQTT 3.1.1 has no negative PUBACK: closing the connection without one is the
            // only way to make the device send the message again.
            Outcome::Retry(_) => PublishAclResult(PublishResult::reason_code(
                PublishAckReason::UnspecifiedError,
                Some("not stored; send again".into()),
                true,
            )),
        };
        (false, Some(HookResult::PublishAclResult(result)))
    }
}

#[cfg(test)]
mod tests {
    use super::topic_allowed;

    #[test]
    fn a_device_may_publish_only_under_its_own_topics() {
        let cases = [
            ("d1", "devices/d1/telemetry", true),
            ("d1", "devices/d1/heartbeat", true),
            ("d1", "devices/d1/anything/else", true),
            ("d1", "devices/d2/telemetry", false),
            ("d1", "devices/d1", false),
            ("d1", "devices/d1/", false),
            ("d1", "devices/d10/telemetry", false),
            ("d1", "devices/d1x/telemetry", false),
            ("d1", "devices//telemetry", false),
            ("d1", "Devices/d1/telemetry", false),
            ("d1", "$SYS/devices/d1/telemetry", false),
            ("d1", "devices/d1/+", false),
            ("d1", "devices/d1/#", false),
            ("", "devices//telemetry", false),
            ("d/1", "devices/d/1/telemetry", false),
            ("+", "devices/+/telemetry", false),
        ];
        for (device, topic, allowed) in cases {
            assert_eq!(topic_allowed(device, topic), allowed, "{device} → {topic}");
        }
    }
}
