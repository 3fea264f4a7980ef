//! `ddms serve`: wires the store, the ingest pipeline, background tasks and the HTTP service,
//! and shuts them down in order on SIGTERM/SIGINT: end live streams, keep answering while
//! requests still arrive (at most 5 s: a proxy's old workers after a blue-green switch), stop
//! accepting, let in-flight requests finish, stop producers, let a backup in progress finish,
//! flush the pipeline, exit.

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, MqttMode};
use crate::events::{EventHub, Outbox};
use crate::http::{self, AppState, Metrics};
use crate::ingest::{self, BatchWriter, IngestConfig, IngestHandle, IngestMetrics};
use crate::modbus::{ModbusMetrics, PollerContext, Supervisor};
use crate::mqtt::broker::{BrokerContext, EmbeddedBroker};
use crate::mqtt::dynsec::Dynsec;
use crate::mqtt::{BrokerConnection, Ingester, IngesterSettings, Limits};
use crate::retention::RetentionMetrics;
use crate::settings::{RuntimeSettings, Settings};
use crate::shutdown::ShutdownBudget;
use crate::status::StatusBoard;
use crate::store::{self, Store};

/// Events kept for `Last-Event-ID` resumption.
const EVENT_BUFFER: usize = 10_000;
/// At shutdown, the longest the event log may take to append the last events.
const EVENT_LOG_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// Self-registrations allowed per client address per minute.
const REGISTRATIONS_PER_MINUTE: u32 = 10;
/// Broker accounts of deleted devices are looked for this often (dynsec).
const ACCOUNT_RECONCILE_INTERVAL: Duration = Duration::from_secs(600);
/// Rate limiters drop idle client keys this often.
const LIMITER_PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// At shutdown, the longest the MQTT ingester waits for the acks of submitted messages.
const MQTT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Names this process among the instances sharing a database (leases) or a broker (client
/// ids): host, slot and a random suffix, so a restarted process is a new holder.
pub fn instance_id(slot: Option<crate::config::Slot>) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let slot = slot.map(|s| format!("-{s}")).unwrap_or_default();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}{slot}-{}", &suffix[..8])
}

/// A bound, not yet running server. Binding first lets callers (tests) learn the port.
pub struct Server {
    listener: TcpListener,
    /// `http.tls.*`: serve HTTPS with this configuration.
    tls: Option<Arc<rustls::ServerConfig>>,
    state: AppState,
    ingest: IngestHandle,
    writer: BatchWriter,
    modbus_metrics: ModbusMetrics,
    mqtt_ingester: Option<Ingester>,
    dynsec: Option<Arc<Dynsec>>,
    broker: Option<EmbeddedBroker>,
    event_outbox: Outbox,
}

impl Server {
    /// Connects the store (migrating when configured) and binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<Server> {
        let store = store::connect(
            &config.database_url(),
            config.database.max_connections,
            config.database.connect_timeout,
        )
        .await
        .context("cannot open the database")?;
        if config.database.migrate_on_start {
            match store.migrate().await {
                Ok(status) => tracing::info!(
                    db.backend = store.backend().name(),
                    migrations.applied = status.applied.len(),
                    "database schema is current"
                ),
                // Not fatal: the service starts, reports not-ready, and the operator sees why.
                Err(e) => {
                    tracing::error!(error = %e, "migrations failed at start-up; /ready will say so");
                }
            }
        }
        let listener = TcpListener::bind(config.http.listen)
            .await
            .with_context(|| format!("cannot listen on {} (http.listen)", config.http.listen))?;
        let tls = match (&config.http.tls.cert, &config.http.tls.key) {
            (Some(cert), Some(key)) => Some(http::tls::server_config(cert, key)?),
            _ => None,
        };
        let metrics = Metrics::new(crate::VERSION, crate::GIT_SHA);
        let (events, event_outbox) = EventHub::new(EVENT_BUFFER);
        let status = StatusBoard::new(
            store.clone(),
            events.clone(),
            metrics.registry(),
            config.devices.failure_threshold,
        );
        if let Err(e) = status.load().await {
            tracing::warn!(error = %e, "cannot load device statuses; starting with none");
        }
        let settings = Settings::load(store.clone(), RuntimeSettings::defaults(&config)).await;
        let (ingest, writer) = ingest::pipeline(
            store.clone(),
            events.clone(),
            IngestMetrics::register(metrics.registry()),
            IngestConfig {
                channel_capacity: config.ingest.channel_capacity,
                max_batch: config.ingest.max_batch,
                max_delay: Duration::from_millis(config.ingest.max_delay_ms),
                max_series_per_device: config.ingest.max_series_per_device,
            },
        );
        let alerts = Arc::new(crate::alerts::Alerting::new(
            store.clone(),
            events.clone(),
            crate::alerts::metrics::AlertMetrics::register(metrics.registry()),
            config.alerts.clone(),
            config.http.public_url.as_ref().map(|u| u.to_string()),
        ));
        if let Err(e) = alerts.reload().await {
            tracing::warn!(error = %e, "cannot load alert rules; the ticker will retry");
        }
        let writer = writer.with_alerts(alerts.clone());
        status.report_to(alerts.clone());
        let modbus_metrics = ModbusMetrics::register(metrics.registry());
        let devices_changed = Arc::new(Notify::new());
        let writer = writer.forgetting_deleted_devices(devices_changed.clone());
        let mut mqtt_ingester = None;
        let mut mqtt_connected = None;
        let mut dynsec = None;
        if config.mqtt.mode == MqttMode::External {
            let broker =
                BrokerConnection::from_config(&config).context("invalid MQTT broker settings")?;
            let client_id = crate::mqtt::ingester_client_id(&config);
            if config.mqtt.dynsec.enabled {
                if let (Some(username), Some(password)) = (
                    config.mqtt.dynsec.username.clone(),
                    config.mqtt.dynsec.password.clone(),
                ) {
                    dynsec = Some(Arc::new(Dynsec::new(
                        broker.clone(),
                        username,
                        password,
                        client_id.clone(),
                    )));
                }
            }
            let credentials = config.mqtt.username.clone().map(|username| {
                let password = config
                    .mqtt
                    .password
                    .clone()
                    .unwrap_or_else(|| secrecy::SecretString::from(""));
                (username, password)
            });
            let ingester = Ingester::new(
                IngesterSettings {
                    broker,
                    client_id,
                    credentials,
                    shared_subscription: config.mqtt.shared_subscription,
                    runtime: settings.subscribe(),
                    limits: Limits::default(),
                    drain_timeout: MQTT_DRAIN_TIMEOUT.min(config.http.shutdown_timeout),
                },
                store.clone(),
                status.clone(),
                ingest.clone(),
                devices_changed.clone(),
                metrics.registry(),
            );
            mqtt_connected = Some(ingester.connected());
            mqtt_ingester = Some(ingester);
        }
        let credentials_changed = Arc::new(Notify::new());
        let broker_ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let broker = match config.mqtt.mode {
            MqttMode::Embedded => Some(
                EmbeddedBroker::bind(
                    &config.mqtt.embedded,
                    BrokerContext {
                        store: store.clone(),
                        ingest: ingest.clone(),
                        status: status.clone(),
                        registry: metrics.registry().clone(),
                        devices_changed: devices_changed.clone(),
                        credentials_changed: credentials_changed.clone(),
                        ready: broker_ready.clone(),
                        share_port: config.slot.is_some(),
                    },
                )
                .await?,
            ),
            MqttMode::External | MqttMode::Off => None,
        };
        http::session::warm_up();
        let per_minute = NonZeroU32::new(REGISTRATIONS_PER_MINUTE).expect("non-zero");
        let backups = crate::backup::Backups::new(store.clone(), &config)
            .await
            .with_metrics(metrics.registry())
            .with_alerts(alerts.clone());
        backups.clean_leftovers();
        let security = http::security::Security::new(&config);
        security.hashing.register(metrics.registry());
        let security = Arc::new(security);
        let state = AppState {
            instance_id: instance_id(config.slot),
            backups: Arc::new(backups),
            store,
            metrics,
            events,
            status,
            settings,
            register_limiter: Arc::new(http::IpRateLimiter::new(governor::Quota::per_minute(
                per_minute,
            ))),
            security,
            devices_changed,
            credentials_changed,
            shutdown: CancellationToken::new(),
            mqtt_connected,
            broker_accounts: dynsec
                .clone()
                .map(|d| d as Arc<dyn crate::mqtt::BrokerAccounts>),
            broker_ready,
            alerts,
            config: Arc::new(config),
        };
        Ok(Server {
            listener,
            tls,
            state,
            ingest,
            writer,
            modbus_metrics,
            mqtt_ingester,
            dynsec,
            broker,
            event_outbox,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.state.store.clone()
    }

    /// The pipeline's producer side, for embedding and tests.
    pub fn ingest(&self) -> IngestHandle {
        self.ingest.clone()
    }

    pub fn status(&self) -> StatusBoard {
        self.state.status.clone()
    }

    /// The embedded broker's plain and TLS addresses (`mqtt.mode = "embedded"`).
    pub fn mqtt_addrs(&self) -> Option<(SocketAddr, Option<SocketAddr>)> {
        self.broker
            .as_ref()
            .map(|b| (b.local_addr(), b.tls_local_addr()))
    }

    /// Serves until `shutdown` resolves, then shuts down in order (see the module docs).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Server {
            listener,
            tls,
            state,
            ingest,
            writer,
            modbus_metrics,
            mqtt_ingester,
            dynsec,
            broker,
            event_outbox,
        } = self;
        let config = state.config.clone();
        let stop_http = state.shutdown.clone();
        let stop_producers = CancellationToken::new();
        let abort_writer = CancellationToken::new();
        let background = TaskTracker::new();
        background.spawn(maintain_partitions(
            state.store.clone(),
            config.database.partitions_ahead_days,
            stop_producers.clone(),
        ));
        background.spawn(checkpoint(state.store.clone(), stop_producers.clone()));
        background.spawn(crate::settings::follow(
            state.settings.clone(),
            stop_producers.clone(),
        ));
        background.spawn(crate::retention::run(
            state.store.clone(),
            state.settings.clone(),
            state.alerts.clone(),
            state.instance_id.clone(),
            RetentionMetrics::register(state.metrics.registry()),
            stop_producers.clone(),
        ));
        background.spawn(crate::backup::run_schedule(
            state.backups.clone(),
            state.settings.clone(),
            state.instance_id.clone(),
            stop_producers.clone(),
        ));
        background.spawn(state.alerts.clone().run(stop_producers.clone()));
        background.spawn(system_watch(&state).run(stop_producers.clone()));
        background.spawn(state.alerts.outbox().run(stop_producers.clone()));
        let writer = tokio::spawn(writer.run(abort_writer.clone()));
        // The event log outlives the producers and the writer, whose last events it still appends.
        let stop_event_log = CancellationToken::new();
        let event_log = tokio::spawn(crate::events::run_log(
            state.events.clone(),
            event_outbox,
            state.store.clone(),
            stop_event_log.clone(),
        ));
        background.spawn(prune_limiters(state.clone(), stop_producers.clone()));
        if let Some(dynsec) = dynsec {
            background.spawn(reconcile_accounts(
                dynsec,
                state.store.clone(),
                stop_producers.clone(),
            ));
        }
        // Producers (pollers, MQTT ingester) hold clones of `ingest`; this one goes last.
        let producers = TaskTracker::new();
        let modbus = Supervisor::new(
            state.store.clone(),
            state.instance_id.clone(),
            state.devices_changed.clone(),
            PollerContext {
                ingest: ingest.clone(),
                status: state.status.clone(),
                metrics: modbus_metrics,
                request_timeout: config.modbus.request_timeout(),
            },
            config.modbus.lease_ttl(),
        );
        producers.spawn(modbus.run(stop_producers.clone()));
        if let Some(ingester) = mqtt_ingester {
            producers.spawn(ingester.run(stop_producers.clone()));
        }
        // The broker's stop lets every device go once its in-flight message is answered (the
        // writer runs until after producers end), and takes its ingest handle away first.
        if let Some(broker) = broker {
            producers.spawn(broker.run(stop_producers.clone()));
            background.spawn(crate::mqtt::silence::watch(
                state.store.clone(),
                state.status.clone(),
                state.settings.subscribe(),
                stop_producers.clone(),
            ));
        }
        producers.close();

        let addr = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(
            http.listen = %addr,
            url = %format!("{scheme}://{addr}/"),
            db.backend = state.store.backend().name(),
            version = crate::VERSION,
            "ddms is serving"
        );
        let metrics = state.metrics.clone();
        let backups = state.backups.clone();
        let limits = http::serve::ServeLimits {
            max_connections: config.http.max_connections,
            header_read_timeout: config.http.header_read_timeout,
        };
        let app = http::router(state);
        // Its own token: live streams end first (`stop_http`), the listener closes later.
        let stop_accepting = CancellationToken::new();
        // HTTP on a runtime of its own, so a busy dashboard does not delay ingest.
        let http_runtime = http::runtime::HttpRuntime::start()?;
        let mut server = http_runtime.serve(
            listener,
            tls,
            app,
            limits,
            metrics.clone(),
            stop_accepting.clone(),
        )?;

        // Set when the stop signal arrives: every phase below shares this one deadline.
        let mut budget = None;
        let served = tokio::select! {
            result = &mut server => result.context("HTTP server task failed")?.context("HTTP server failed"),
            () = shutdown => {
                // Live streams end first (with a retry hint), so their clients reconnect to the
                // new slot. Then keep answering while requests still arrive: after a blue-green
                // switch, nginx's old workers finish their connections' requests on this slot,
                // and a closed port would turn them into 502s.
                let stop = *budget.insert(ShutdownBudget::start(config.http.shutdown_timeout));
                tracing::info!("shutting down: live streams ended; serving until requests stop arriving");
                stop_http.cancel();
                let waited = wait_for_quiet(&metrics, stop.before_flush(MAX_LAME_DUCK)).await;
                tracing::info!(waited_ms = waited.as_millis() as u64, timeout_s = config.http.shutdown_timeout.as_secs(), "shutting down: no new connections, finishing in-flight requests");
                stop_accepting.cancel();
                match tokio::time::timeout(stop.before_flush(config.http.shutdown_timeout), &mut server).await {
                    Ok(result) => result.context("HTTP server task failed")?.context("HTTP server failed"),
                    Err(_) => {
                        tracing::warn!("in-flight requests did not finish within http.shutdown_timeout; closing them");
                        server.abort();
                        Ok(())
                    }
                }
            }
        };
        let budget = budget.unwrap_or_else(|| ShutdownBudget::start(config.http.shutdown_timeout));
        stop_http.cancel();
        stop_accepting.cancel();
        stop_producers.cancel();
        let all = config.http.shutdown_timeout;
        if tokio::time::timeout(budget.before_flush(all), producers.wait())
            .await
            .is_err()
        {
            tracing::warn!("producers did not stop within the shutdown budget; left behind");
        }
        background.close();
        if tokio::time::timeout(budget.before_flush(all), background.wait())
            .await
            .is_err()
        {
            tracing::warn!("background tasks did not stop within the shutdown budget; left behind");
        }
        backups.finish(budget.before_flush(all)).await;
        // Last producer handle gone: the writer commits what is queued, then ends.
        drop(ingest);
        let flush = tokio::time::timeout(budget.for_flush(all), writer);
        match flush.await {
            Ok(_) => tracing::info!("ingest pipeline flushed"),
            Err(_) => {
                tracing::error!("the ingest pipeline did not flush within what was left of http.shutdown_timeout (database down?); unacknowledged MQTT messages will be redelivered");
                abort_writer.cancel();
            }
        }
        stop_event_log.cancel();
        if tokio::time::timeout(budget.last(EVENT_LOG_FLUSH_TIMEOUT), event_log)
            .await
            .is_err()
        {
            tracing::warn!("the last live events could not be written to the event log");
        }
        // Last: the store's pool may hold database connections driven by its I/O driver.
        drop(http_runtime);
        tracing::info!("shutdown complete");
        served
    }
}

/// At shutdown, how long without a new request counts as "requests stopped arriving".
const QUIET_BEFORE_CLOSING: Duration = Duration::from_millis(250);
/// At shutdown, the longest the port stays open for late requests.
const MAX_LAME_DUCK: Duration = Duration::from_secs(5);

/// Waits until no request has arrived for [`QUIET_BEFORE_CLOSING`], at most [`MAX_LAME_DUCK`]
/// (and never longer than `limit`); returns how long it waited.
async fn wait_for_quiet(metrics: &Metrics, limit: Duration) -> Duration {
    let started = std::time::Instant::now();
    let limit = MAX_LAME_DUCK.min(limit);
    loop {
        let quiet_for = metrics.since_last_request();
        if quiet_for >= QUIET_BEFORE_CLOSING || started.elapsed() >= limit {
            return started.elapsed();
        }
        let left = limit.saturating_sub(started.elapsed());
        tokio::time::sleep((QUIET_BEFORE_CLOSING - quiet_for).min(left)).await;
    }
}

/// Keeps daily reading partitions created ahead. Every instance may run it: the store takes
/// an advisory lock and skips existing partitions.
async fn maintain_partitions(store: Arc<dyn Store>, days_ahead: u32, cancel: CancellationToken) {
    let mut interval = tokio::time::interval(Duration::from_secs(3600));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = interval.tick() => {}
        }
        match store
            .ensure_partitions(chrono::Utc::now(), days_ahead)
            .await
        {
            Ok(0) => {}
            Ok(created) => {
                tracing::info!(partitions.created = created, "reading partitions created");
            }
            Err(e) => tracing::warn!(error = %e, "cannot create reading partitions; will retry"),
        }
    }
}

/// Checkpoints the store every [`store::CHECKPOINT_INTERVAL`], beside the writer (SQLite).
async fn checkpoint(store: Arc<dyn Store>, cancel: CancellationToken) {
    let mut interval = tokio::time::interval(store::CHECKPOINT_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = interval.tick() => {}
        }
        match store.checkpoint().await {
            Ok(()) => failing = false,
            // The writer's own checkpoints go on meanwhile: warn once, not every second.
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cannot checkpoint the database's write-ahead log; will retry");
            }
            Err(_) => {}
        }
    }
}

/// Drops idle client keys from the rate limiters every [`LIMITER_PRUNE_INTERVAL`], so their
/// memory follows the clients of the last minutes, not every client ever seen.
async fn prune_limiters(state: AppState, cancel: CancellationToken) {
    let mut interval = tokio::time::interval(LIMITER_PRUNE_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = interval.tick() => {}
        }
        state.security.prune();
        state.register_limiter.prune();
    }
}

/// Removes broker accounts of devices deleted while the broker was unreachable: at start, then
/// every [`ACCOUNT_RECONCILE_INTERVAL`].
async fn reconcile_accounts(dynsec: Arc<Dynsec>, store: Arc<dyn Store>, cancel: CancellationToken) {
    let mut interval = tokio::time::interval(ACCOUNT_RECONCILE_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = interval.tick() => {}
        }
        match dynsec.reconcile(store.as_ref()).await {
            Ok(0) => {}
            Ok(removed) => {
                tracing::info!(accounts.removed = removed, "stale broker accounts removed");
            }
            Err(e) => tracing::warn!(error = %e, "cannot reconcile broker accounts; will retry"),
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!(signal = "SIGINT", "signal received"),
        () = terminate => tracing::info!(signal = "SIGTERM", "signal received"),
    }
}

/// The checks of ddms itself behind the `disk_space`, `not_ready` and `backup_stale` system
/// alerts (`alerts::watch`).
fn system_watch(state: &AppState) -> crate::alerts::watch::SystemWatch {
    let probe_state = state.clone();
    let ready: crate::alerts::watch::ReadyProbe = Arc::new(
        move || -> futures::future::BoxFuture<'static, Result<(), String>> {
            let state = probe_state.clone();
            Box::pin(async move {
                let (ready, components) = http::readiness(&state, false).await;
                if ready {
                    return Ok(());
                }
                // The components that failed (not those that could not be asked), as /ready says.
                let failed: Vec<String> = components
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(_, c)| c["status"] == "error")
                    .map(|(name, c)| format!("{name}: {}", c["error"].as_str().unwrap_or("error")))
                    .collect();
                Err(failed.join("; "))
            })
        },
    );
    crate::alerts::watch::SystemWatch {
        alerts: state.alerts.clone(),
        disks: vec![
            ("data_dir", state.config.data_dir.clone()),
            ("backup.dir", state.config.backup_dir()),
        ],
        ready,
        backups: state.backups.clone(),
        settings: state.settings.clone(),
        holder: state.instance_id.clone(),
    }
}
