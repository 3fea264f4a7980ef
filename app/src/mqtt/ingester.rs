//! The MQTT ingester: subscribes with QoS 1 in a persistent session under a stable client id,
//! turns each message into readings, and acknowledges it only after the batch holding them has
//! committed. A message that is refused (bad topic or payload, unknown device) is acknowledged
//! at once and counted — never redelivered forever, never blocking the devices that behave.
//!
//! Three tasks, so that nothing can wait on itself:
//! - the *link* drives rumqttc's event loop (the only place network I/O happens), reconnects
//!   with back-off, and hands incoming publishes over a bounded channel;
//! - the *ingester* (this module's `run`) parses, resolves devices, tracks last-seen and
//!   offline devices, and submits readings to the pipeline (waiting there is backpressure);
//! - the *acknowledger* turns commit callbacks into PUBACKs. The batch writer calls back
//!   through an unbounded channel, so it never waits for the network; outstanding acks are
//!   bounded by the broker's in-flight window anyway.
//!
//! An acknowledgement is only sent on the connection its message arrived on: after a reconnect
//! the broker redelivers every unacknowledged message of the session, and the redelivered copy
//! is acknowledged instead (readings are idempotent on (series, ts)).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use rumqttc::{AsyncClient, Publish, QoS};
use secrecy::SecretString;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

mod link;

use super::{parse_message, BrokerConnection, Limits, Message};
use crate::backoff::Backoff;
use crate::ingest::{IngestError, IngestHandle, Sample};
use crate::metrics::registered_unless_taken;
use crate::settings::RuntimeSettings;
use crate::status::StatusBoard;
use crate::store::{Protocol, Status, Store, StoreError};

const PROTOCOL: &str = "mqtt";
/// Shared-subscription group: instances subscribed in it split the stream.
const SHARE_GROUP: &str = "ddms";
const TOPICS: [&str; 2] = ["devices/+/telemetry", "devices/+/heartbeat"];
/// Requests (acks, subscriptions) queued for the link. Acks are bounded by the broker's
/// in-flight window; this only needs to be well above it for bursts.
const REQUEST_CAPACITY: usize = 4096;
/// Publishes handed from the link to the ingester.
const EVENT_CAPACITY: usize = 1024;
/// Reconnecting to the broker, and looking a device up while the store is unavailable.
const RETRY: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
/// While the broker stays unreachable, one warning per this many attempts (debug otherwise).
const WARN_EVERY_ATTEMPTS: u64 = 20;
/// A device's last-seen time is reported to the status board at most this often.
const SEEN_REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// How long an id that is not an MQTT device is remembered as unknown before the store is asked
/// again (other instances may have created it meanwhile).
const UNKNOWN_DEVICE_TTL: Duration = Duration::from_secs(10);
/// Devices are re-read this often even without a local change (other instances share the store).
const DEVICE_REFRESH: Duration = Duration::from_secs(60);

pub struct IngesterSettings {
    pub broker: BrokerConnection,
    pub client_id: String,
    pub credentials: Option<(String, SecretString)>,
    pub shared_subscription: bool,
    /// `offline_after` comes from here: owners change it at run time.
    pub runtime: watch::Receiver<RuntimeSettings>,
    pub limits: Limits,
    /// At shutdown, how long to wait for the acks of messages already submitted.
    pub drain_timeout: Duration,
}

impl IngesterSettings {
    /// The topic filters to subscribe, and the other variant's, to drop from a resumed session
    /// when `mqtt.shared_subscription` was switched.
    fn filters(&self) -> (Vec<String>, Vec<String>) {
        let plain: Vec<String> = TOPICS.iter().map(|t| t.to_string()).collect();
        let shared: Vec<String> = TOPICS
            .iter()
            .map(|t| format!("$share/{SHARE_GROUP}/{t}"))
            .collect();
        if self.shared_subscription {
            (shared, plain)
        } else {
            (plain, shared)
        }
    }
}

#[derive(Clone)]
struct MqttMetrics {
    connected: IntGauge,
    messages: IntCounterVec,
    connection_errors: IntCounter,
}

impl MqttMetrics {
    fn register(registry: &Registry) -> Self {
        // A second ingester in one process (tests) leaves the first one's series in place.
        let connected = registered_unless_taken(
            registry,
            IntGauge::new(
                "ddms_mqtt_connected",
                "1 while the MQTT ingester is connected to the broker and subscribed",
            ),
        );
        let messages = registered_unless_taken(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "ddms_mqtt_messages_total",
                    "MQTT messages received, by outcome (accepted, rejected)",
                ),
                &["outcome"],
            ),
        );
        let connection_errors = registered_unless_taken(
            registry,
            IntCounter::new(
                "ddms_mqtt_connection_errors_total",
                "Failed connection attempts and lost connections to the MQTT broker",
            ),
        );
        MqttMetrics {
            connected,
            messages,
            connection_errors,
        }
    }
}

/// What the link tells the ingester.
enum LinkEvent {
    Connected,
    Disconnected,
    Publish { publish: Publish, epoch: u64 },
}

/// One message waiting for its acknowledgement decision.
struct PendingAck {
    publish: Publish,
    epoch: u64,
    committed: bool,
}

/// Sends the ack decision exactly once: when the commit callback runs, or — if the submission
/// is dropped unsent (shutdown) — as "not committed", so no message is ever counted as
/// outstanding forever.
struct AckGuard {
    pending: Option<(Publish, u64)>,
    acks: mpsc::UnboundedSender<PendingAck>,
}

impl AckGuard {
    fn finish(mut self, committed: bool) {
        if let Some((publish, epoch)) = self.pending.take() {
            let _ = self.acks.send(PendingAck {
                publish,
                epoch,
                committed,
            });
        }
    }
}

impl Drop for AckGuard {
    fn drop(&mut self) {
        if let Some((publish, epoch)) = self.pending.take() {
            let _ = self.acks.send(PendingAck {
                publish,
                epoch,
                committed: false,
            });
        }
    }
}

/// What the ingester knows about one device it has heard from.
struct Seen {
    last_message: Instant,
    last_reported: Option<Instant>,
    /// Set once silence was reported; the next message reports recovery at once.
    last_failure: Option<Instant>,
}

enum Resolution {
    Device(Uuid),
    Refused(&'static str),
    /// Shutting down while the store was unreachable: leave the message unacknowledged.
    Dropped,
}

pub struct Ingester {
    settings: IngesterSettings,
    store: Arc<dyn Store>,
    status: StatusBoard,
    ingest: IngestHandle,
    devices_changed: Arc<Notify>,
    connected: watch::Sender<bool>,
    metrics: MqttMetrics,
}

impl Ingester {
    pub fn new(
        settings: IngesterSettings,
        store: Arc<dyn Store>,
        status: StatusBoard,
        ingest: IngestHandle,
        devices_changed: Arc<Notify>,
        registry: &Registry,
    ) -> Self {
        Ingester {
            settings,
            store,
            status,
            ingest,
            devices_changed,
            connected: watch::Sender::new(false),
            metrics: MqttMetrics::register(registry),
        }
    }

    /// Whether the ingester's session with the broker is up now (for `/ready`).
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.subscribe()
    }

    /// Runs until `cancel`, then drains: no new messages are taken, the acks of what was
    /// submitted are sent (within `drain_timeout`), and the session is closed with DISCONNECT.
    /// Whatever stays unacknowledged the broker redelivers to the next run.
    pub async fn run(self, cancel: CancellationToken) {
        let mut options = self.settings.broker.options(
            &self.settings.client_id,
            self.settings
                .credentials
                .as_ref()
                .map(|(user, password)| (user.as_str(), password)),
        );
        // `inflight` bounds what ddms publishes (nothing but subscriptions); how many messages
        // the broker sends ahead of our acks is its own setting (max_inflight_messages).
        options
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_inflight(100);
        let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        let epoch = Arc::new(AtomicU64::new(0));
        let outstanding = Arc::new(AtomicUsize::new(0));
        let (events_tx, mut events) = mpsc::channel(EVENT_CAPACITY);
        let (acks_tx, acks_rx) = mpsc::unbounded_channel();
        let stop_link = CancellationToken::new();
        let closing = Arc::new(AtomicBool::new(false));
        tracing::info!(
            mqtt.host = %self.settings.broker.host,
            mqtt.port = self.settings.broker.port,
            mqtt.tls = self.settings.broker.uses_tls(),
            mqtt.client_id = %self.settings.client_id,
            mqtt.shared_subscription = self.settings.shared_subscription,
            "MQTT ingester starting"
        );
        let mut link = tokio::spawn(link::drive_link(
            eventloop,
            events_tx,
            epoch.clone(),
            self.connected.clone(),
            self.metrics.clone(),
            closing.clone(),
            stop_link.clone(),
        ));
        tokio::spawn(link::acknowledge(
            acks_rx,
            client.clone(),
            epoch.clone(),
            outstanding.clone(),
            cancel.clone(),
        ));

        let mut work = Work {
            ingester: &self,
            client: &client,
            acks: acks_tx,
            outstanding: outstanding.clone(),
            devices: HashMap::new(),
            unknown: HashMap::new(),
            seen: HashMap::new(),
            connected_since: None,
            cancel: cancel.clone(),
        };
        work.reload_devices().await;
        let mut runtime = self.settings.runtime.clone();
        let mut offline_check =
            super::silence::check_interval(runtime.borrow_and_update().offline_after);
        let mut refresh = tokio::time::interval(DEVICE_REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        refresh.reset();
        let devices_changed = self.devices_changed.clone();
        let mut changed = Box::pin(devices_changed.notified());
        changed.as_mut().enable();

        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                event = events.recv() => match event {
                    Some(event) => work.handle(event).await,
                    None => {
                        tracing::error!("the MQTT link stopped unexpectedly");
                        break;
                    }
                },
                () = &mut changed => {
                    changed = Box::pin(devices_changed.notified());
                    changed.as_mut().enable();
                    work.reload_devices().await;
                }
                _ = refresh.tick() => work.reload_devices().await,
                _ = offline_check.tick() => work.check_silence().await,
                Ok(()) = runtime.changed() => {
                    offline_check = super::silence::check_interval(runtime.borrow_and_update().offline_after);
                }
            }
        }

        // Drain: keep the link running (so acks reach the broker) but take nothing new; a
        // publish received now stays unacknowledged and comes back to the next run.
        let deadline = Instant::now() + self.settings.drain_timeout;
        while outstanding.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            tokio::select! {
                event = events.recv() => if event.is_none() { break },
                () = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
        let left = outstanding.load(Ordering::Acquire);
        if left > 0 {
            tracing::warn!(
                mqtt.unacknowledged = left,
                "shutdown: messages whose readings were not confirmed in time stay unacknowledged; the broker redelivers them"
            );
        }
        drop(work);
        // DISCONNECT goes after every ack already queued (one FIFO), then the link ends.
        closing.store(true, Ordering::Release);
        let _ = client.try_disconnect();
        let finished = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                tokio::select! {
                    _ = &mut link => break,
                    event = events.recv() => if event.is_none() { let _ = (&mut link).await; break },
                }
            }
        })
        .await;
        if finished.is_err() {
            stop_link.cancel();
            let _ = link.await;
        }
        self.connected.send_replace(false);
        self.metrics.connected.set(0);
        tracing::info!("MQTT ingester stopped");
    }
}

/// The ingester's working state (owned by its task alone: no locks).
struct Work<'a> {
    ingester: &'a Ingester,
    client: &'a AsyncClient,
    acks: mpsc::UnboundedSender<PendingAck>,
    outstanding: Arc<AtomicUsize>,
    /// Enabled flag of every MQTT device.
    devices: HashMap<Uuid, bool>,
    /// Ids recently found not to be MQTT devices.
    unknown: HashMap<Uuid, Instant>,
    seen: HashMap<Uuid, Seen>,
    connected_since: Option<Instant>,
    cancel: CancellationToken,
}

impl Work<'_> {
    async fn handle(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Connected => {
                self.connected_since = Some(Instant::now());
                self.subscribe();
            }
            LinkEvent::Disconnected => self.connected_since = None,
            LinkEvent::Publish { publish, epoch } => self.on_publish(publish, epoch).await,
        }
    }

    /// Subscribes on every connection: a resumed session keeps its subscriptions, but a broker
    /// that lost its state (no persistence) would otherwise leave us deaf. Runs in its own task:
    /// the request queue is drained by the link, which may be waiting for us.
    fn subscribe(&self) {
        let (wanted, stale) = self.ingester.settings.filters();
        let client = self.client.clone();
        tokio::spawn(async move {
            let subscriptions = wanted
                .iter()
                .map(|topic| rumqttc::SubscribeFilter::new(topic.clone(), QoS::AtLeastOnce));
            if let Err(e) = client.subscribe_many(subscriptions).await {
                tracing::warn!(error = %e, "cannot queue the MQTT subscription");
            }
            for topic in stale {
                let _ = client.unsubscribe(topic).await;
            }
        });
    }

    async fn on_publish(&mut self, publish: Publish, epoch: u64) {
        let ingester = self.ingester;
        let limits = &ingester.settings.limits;
        let metrics = ingester.ingest.metrics();
        // A retained publish is the broker's stored copy of an old message, handed to every new
        // subscription — after each reconnect. Live messages arrive without the flag (MQTT
        // 3.1.1 §3.3.1.3), so refusing flagged ones loses nothing and stores nothing twice.
        if publish.retain {
            tracing::debug!(mqtt.topic = %truncate(&publish.topic), "retained MQTT message ignored");
            metrics.reject(PROTOCOL, "retained");
            return self.refuse(publish, epoch);
        }
        let message = match parse_message(&publish.topic, &publish.payload, Utc::now(), limits) {
            Ok(message) => message,
            Err(rejection) => {
                tracing::debug!(mqtt.topic = %truncate(&publish.topic), reason = rejection.reason(), error = %rejection, "MQTT message refused");
                metrics.reject(PROTOCOL, rejection.reason());
                return self.refuse(publish, epoch);
            }
        };
        let (device_id, telemetry) = match message {
            Message::Telemetry {
                device_id,
                telemetry,
            } => (device_id, Some(telemetry)),
            Message::Heartbeat { device_id, .. } => (device_id, None),
        };
        let id = match self.resolve(&device_id).await {
            Resolution::Device(id) => id,
            Resolution::Refused(reason) => {
                tracing::debug!(mqtt.topic = %truncate(&publish.topic), reason, "MQTT message refused");
                metrics.reject(PROTOCOL, reason);
                return self.refuse(publish, epoch);
            }
            Resolution::Dropped => return,
        };
        self.ingester
            .metrics
            .messages
            .with_label_values(&["accepted"])
            .inc();
        self.mark_seen(id).await;
        let Some(telemetry) = telemetry else {
            // A heartbeat carries no readings: acknowledged once last-seen is recorded.
            return self.ack_now(publish, epoch);
        };
        let samples = telemetry
            .metrics
            .into_iter()
            .map(|(metric, value)| Sample {
                device_id: id,
                metric,
                unit: None,
                ts: telemetry.ts,
                value,
            })
            .collect();
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        let guard = AckGuard {
            pending: Some((publish, epoch)),
            acks: self.acks.clone(),
        };
        let submit = self.ingester.ingest.submit_then(
            PROTOCOL,
            samples,
            // Readings the writer refused for good are acknowledged (and were counted there):
            // redelivering them would only fail again.
            Box::new(move |result| {
                guard.finish(
                    result
                        .as_ref()
                        .map_or_else(IngestError::is_refusal, |()| true),
                );
            }),
        );
        // Waiting here is the backpressure: the link stops reading, the broker queues.
        tokio::select! {
            _ = submit => {}
            // Dropping the submission drops its guard: "not committed", no ack.
            () = self.cancel.cancelled() => {}
        }
    }

    fn refuse(&self, publish: Publish, epoch: u64) {
        self.ingester
            .metrics
            .messages
            .with_label_values(&["rejected"])
            .inc();
        // Acknowledged at once: a refused message would otherwise come back forever.
        self.ack_now(publish, epoch);
    }

    fn ack_now(&self, publish: Publish, epoch: u64) {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        let _ = self.acks.send(PendingAck {
            publish,
            epoch,
            committed: true,
        });
    }

    /// The topic's device id must be an existing, enabled MQTT device.
    async fn resolve(&mut self, device_id: &str) -> Resolution {
        // Only the canonical form, the one ddms issues and the broker ACLs name.
        let Some(id) = Uuid::parse_str(device_id)
            .ok()
            .filter(|id| id.hyphenated().to_string() == device_id)
        else {
            return Resolution::Refused("unknown_device");
        };
        match self.devices.get(&id) {
            Some(true) => return Resolution::Device(id),
            Some(false) => return Resolution::Refused("device_disabled"),
            None => {}
        }
        if self
            .unknown
            .get(&id)
            .is_some_and(|at| at.elapsed() < UNKNOWN_DEVICE_TTL)
        {
            return Resolution::Refused("unknown_device");
        }
        // Not cached: perhaps created through another instance sharing the store.
        let mut retries = RETRY.retries();
        loop {
            match self.ingester.store.get_device(id).await {
                Ok(device) if device.protocol == Protocol::Mqtt => {
                    self.devices.insert(id, device.enabled);
                    return if device.enabled {
                        Resolution::Device(id)
                    } else {
                        Resolution::Refused("device_disabled")
                    };
                }
                Ok(_) | Err(StoreError::NotFound) => {
                    if self.unknown.len() > 10_000 {
                        self.unknown
                            .retain(|_, at| at.elapsed() < UNKNOWN_DEVICE_TTL);
                        // Ids come from topics anyone allowed to publish may invent: when all
                        // are recent, forget them (only a cache of lookups is lost).
                        if self.unknown.len() > 10_000 {
                            self.unknown.clear();
                        }
                    }
                    self.unknown.insert(id, Instant::now());
                    return Resolution::Refused("unknown_device");
                }
                Err(e) => {
                    // The readings could not be committed now either: wait, like the writer.
                    let delay = retries.next_delay();
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot look up an MQTT device; holding the message");
                    tokio::select! {
                        () = self.cancel.cancelled() => return Resolution::Dropped,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn mark_seen(&mut self, id: Uuid) {
        let now = Instant::now();
        let seen = self.seen.entry(id).or_insert(Seen {
            last_message: now,
            last_reported: None,
            last_failure: None,
        });
        seen.last_message = now;
        let report = seen.last_failure.is_some()
            || seen
                .last_reported
                .is_none_or(|at| now - at >= SEEN_REPORT_INTERVAL);
        if report {
            seen.last_reported = Some(now);
            seen.last_failure = None;
            self.ingester.status.record_success(id, Utc::now()).await;
        }
    }

    /// Marks devices offline that sent nothing for `offline_after`: one failure per elapsed
    /// `offline_after`, so the status board opens its notification after
    /// `devices.failure_threshold` of them. Silence is only judged while connected: when ddms
    /// cannot reach the broker, that is not the devices' fault.
    async fn check_silence(&mut self) {
        let Some(connected_since) = self.connected_since else {
            return;
        };
        let offline_after = self.ingester.settings.runtime.borrow().offline_after;
        let now = Instant::now();
        let mut due = Vec::new();
        for (&id, &enabled) in &self.devices {
            if !enabled {
                continue;
            }
            let seen = self.seen.get(&id);
            let heard = seen
                .map(|s| s.last_message.max(connected_since))
                .unwrap_or(connected_since);
            let since = seen
                .and_then(|s| s.last_failure)
                .map_or(heard, |failure| failure.max(heard));
            if now - since >= offline_after {
                due.push((id, now - heard));
            }
        }
        if due.is_empty() {
            return;
        }
        // With a shared subscription other instances take part of the stream: trust their
        // last-seen records (written at least every 30 s) before calling a device silent.
        let recent_elsewhere: HashMap<Uuid, chrono::DateTime<Utc>> =
            if self.ingester.settings.shared_subscription {
                match self.ingester.store.list_device_status().await {
                    Ok(list) => list
                        .into_iter()
                        .filter_map(|s| Some((s.device_id, s.last_seen_at?)))
                        .collect(),
                    Err(_) => HashMap::new(),
                }
            } else {
                HashMap::new()
            };
        let limit = chrono::Duration::from_std(offline_after).unwrap_or_default();
        for (id, silent) in due {
            if recent_elsewhere
                .get(&id)
                .is_some_and(|seen| Utc::now() - *seen < limit)
            {
                continue;
            }
            let seen = self.seen.entry(id).or_insert(Seen {
                last_message: connected_since,
                last_reported: None,
                last_failure: None,
            });
            seen.last_failure = Some(now);
            let error = format!("no message for {} s", silent.as_secs());
            tracing::debug!(device.id = %id, %error, "MQTT device silent");
            self.ingester
                .status
                .record_failure(id, Status::Offline, &error, Utc::now())
                .await;
        }
    }

    async fn reload_devices(&mut self) {
        match self.ingester.store.list_device_versions().await {
            Ok(devices) => {
                self.devices = devices
                    .into_iter()
                    .filter(|d| d.protocol == Protocol::Mqtt)
                    .map(|d| (d.id, d.enabled))
                    .collect();
                self.seen.retain(|id, _| self.devices.contains_key(id));
                self.unknown.retain(|id, _| !self.devices.contains_key(id));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot re-read MQTT devices; keeping the known ones");
            }
        }
    }
}

fn truncate(topic: &str) -> String {
    topic.chars().take(200).collect()
}
