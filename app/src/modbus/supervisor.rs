//! Exactly one poller per Modbus device across every instance sharing the database.
//!
//! Each device has a lease `modbus:{device_id}` in the store. The supervisor of each instance
//! takes the leases of the enabled Modbus devices that are free (or expired), renews its own every
//! third of the TTL, and runs a poller for exactly the devices it holds. It stops a poller when
//! its lease is lost (or cannot be renewed before it would expire), when its device is deleted
//! or disabled, and restarts it when the device's configuration changes. On shutdown it stops
//! its pollers first and then releases its leases, so another instance takes over within a poll
//! interval instead of a lease TTL.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::poller::{self, PollerContext};
use super::ModbusConfig;
use crate::store::{Device, DeviceVersion, Protocol, Store, StoreError, StoreResult};

/// Longest wait for a stopping poller; cancellation is immediate, so this only guards bugs.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the leases to be released at shutdown.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);
/// Free leases are tried at most this often (a device polled every 100 ms still does not cost
/// ten lease writes a second).
const MIN_TAKEOVER_PERIOD: Duration = Duration::from_millis(200);

/// Up to this many changed devices a scan reads them one by one; more, and one listing of every
/// device costs less than the round trips.
const READ_ONE_BY_ONE_UP_TO: usize = 64;

/// The lease that grants polling `device_id`.
pub fn lease_name(device_id: Uuid) -> String {
    format!("modbus:{device_id}")
}

pub struct Supervisor {
    store: Arc<dyn Store>,
    instance_id: String,
    devices_changed: Arc<Notify>,
    poller: PollerContext,
    lease_ttl: Duration,
}

struct Running {
    config: ModbusConfig,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// What the supervisor knows between two passes of its loop.
#[derive(Default)]
struct State {
    /// Enabled Modbus devices with a valid configuration.
    candidates: BTreeMap<Uuid, ModbusConfig>,
    held: HashSet<Uuid>,
    /// When the held leases expire unless renewed (measured from before the renewing call).
    held_until: Option<Instant>,
    running: HashMap<Uuid, Running>,
    /// Devices whose stored configuration was refused, by their `updated_at`: logged once.
    refused: HashMap<Uuid, DateTime<Utc>>,
    /// The `updated_at` of each enabled Modbus device as of the last scan (valid or refused):
    /// a scan reads again only the devices whose version differs.
    scanned: HashMap<Uuid, DateTime<Utc>>,
}

impl Supervisor {
    pub fn new(
        store: Arc<dyn Store>,
        instance_id: String,
        devices_changed: Arc<Notify>,
        poller: PollerContext,
        lease_ttl: Duration,
    ) -> Self {
        Supervisor {
            store,
            instance_id,
            devices_changed,
            poller,
            lease_ttl: lease_ttl.max(Duration::from_millis(300)),
        }
    }

    fn renew_period(&self) -> Duration {
        self.lease_ttl / 3
    }

    /// Runs until `shutdown`, then stops every poller and releases the leases.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut state = State::default();
        let mut rescan = true;
        let now = Instant::now();
        let (mut next_scan, mut next_lease) = (now, now);
        loop {
            // Registered before the scan, so a change made during it is not missed.
            let changed = self.devices_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();

            let now = Instant::now();
            if rescan || now >= next_scan {
                self.scan(&mut state).await;
                next_scan = now + self.renew_period().max(Duration::from_secs(1));
                rescan = false;
                // New devices get their lease at once, deleted ones give it back at once;
                // the leases already held are renewed on their own schedule (with thousands of
                // devices, renewing every lease at each device added made adding them
                // quadratic).
                if Instant::now() < next_lease {
                    self.take_new_leases(&mut state).await;
                }
            }
            if Instant::now() >= next_lease {
                next_lease = self.refresh_leases(&mut state).await;
            }
            if state
                .held_until
                .is_some_and(|until| Instant::now() >= until)
            {
                tracing::warn!(
                    leases = state.held.len(),
                    "Modbus leases could not be renewed in time; stopping their pollers"
                );
                state.held.clear();
                state.held_until = None;
            }
            self.reconcile(&mut state).await;

            let mut wake = next_scan.min(next_lease);
            if let Some(until) = state.held_until {
                wake = wake.min(until);
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = &mut changed => rescan = true,
                () = tokio::time::sleep_until(wake) => {}
            }
        }
        self.shut_down(state).await;
    }

    /// Reads which Modbus devices are enabled and the configuration of those added or changed
    /// since the last scan: the listing holds only versions, and a device is read whole only
    /// when its `updated_at` moved (scans run on every device change, and reading every
    /// configuration each time made adding 10,000 devices quadratic in time and memory).
    async fn scan(&self, state: &mut State) {
        let versions = match self.store.list_device_versions().await {
            Ok(versions) => versions,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list devices; keeping the Modbus devices known");
                return;
            }
        };
        let wanted: Vec<DeviceVersion> = versions
            .into_iter()
            .filter(|v| v.protocol == Protocol::Modbus && v.enabled)
            .collect();
        let changed: HashSet<Uuid> = wanted
            .iter()
            .filter(|v| state.scanned.get(&v.id) != Some(&v.updated_at))
            .map(|v| v.id)
            .collect();
        let mut fetched = match self.read_devices(&changed).await {
            Ok(fetched) => fetched,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read changed devices; keeping the Modbus devices known");
                return;
            }
        };

        let mut candidates = BTreeMap::new();
        let mut scanned = HashMap::new();
        for version in wanted {
            let id = version.id;
            if !changed.contains(&id) {
                if let Some(config) = state.candidates.remove(&id) {
                    candidates.insert(id, config);
                }
                scanned.insert(id, version.updated_at);
                continue;
            }
            // Deleted, disabled or moved to another protocol since the listing: the next scan
            // (which that change triggers) settles it.
            let Some(device) = fetched
                .remove(&id)
                .filter(|d| d.protocol == Protocol::Modbus && d.enabled)
            else {
                continue;
            };
            scanned.insert(id, device.updated_at);
            match serde_json::from_value::<ModbusConfig>(device.config) {
                Ok(config) => {
                    candidates.insert(id, config);
                }
                Err(e) => {
                    if state.refused.insert(id, device.updated_at) != Some(device.updated_at) {
                        tracing::error!(device.id = %id, error = %e, "stored Modbus configuration is invalid; the device is not polled");
                    }
                }
            }
        }
        state
            .refused
            .retain(|id, _| scanned.contains_key(id) && !candidates.contains_key(id));
        state.candidates = candidates;
        state.scanned = scanned;
    }

    /// The devices `ids` whole: one by one when a few changed (a device added or edited), in
    /// one listing when many did (the first scan, or a bulk change).
    async fn read_devices(&self, ids: &HashSet<Uuid>) -> StoreResult<HashMap<Uuid, Device>> {
        let mut devices = HashMap::with_capacity(ids.len());
        if ids.len() > READ_ONE_BY_ONE_UP_TO {
            for device in self.store.list_devices().await? {
                if ids.contains(&device.id) {
                    devices.insert(device.id, device);
                }
            }
            return Ok(devices);
        }
        for &id in ids {
            match self.store.get_device(id).await {
                Ok(device) => {
                    devices.insert(id, device);
                }
                Err(StoreError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(devices)
    }

    /// Releases the leases of devices no longer polled and takes those of devices not held yet
    /// (free, or expired); the held ones keep their expiry until [`Self::refresh_leases`].
    async fn take_new_leases(&self, state: &mut State) {
        self.release_gone(state).await;
        let names: Vec<String> = state
            .candidates
            .keys()
            .filter(|id| !state.held.contains(id))
            .copied()
            .map(lease_name)
            .collect();
        if names.is_empty() {
            return;
        }
        match self.acquire(&names).await {
            Ok((taken, until)) => {
                for id in taken {
                    tracing::debug!(device.id = %id, "Modbus lease taken");
                    state.held.insert(id);
                }
                // The earliest expiry of what is held stays the deadline.
                if state.held_until.is_none() && !state.held.is_empty() {
                    state.held_until = Some(until);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the leases of new Modbus devices; retrying");
            }
        }
    }

    /// Takes or renews the leases `names` for this instance: the devices held now, and until
    /// when they may be polled — a little before the leases can expire in the database.
    async fn acquire(&self, names: &[String]) -> StoreResult<(HashSet<Uuid>, Instant)> {
        let attempt = Instant::now();
        let held = self
            .store
            .acquire_leases(names, &self.instance_id, self.lease_ttl)
            .await?;
        let devices = held
            .iter()
            .filter_map(|name| name.strip_prefix("modbus:")?.parse().ok())
            .collect();
        Ok((devices, attempt + self.lease_ttl - self.lease_ttl / 10))
    }

    /// Stops the pollers of devices deleted or disabled and gives their leases back.
    async fn release_gone(&self, state: &mut State) {
        let gone: Vec<Uuid> = state
            .held
            .iter()
            .filter(|id| !state.candidates.contains_key(id))
            .copied()
            .collect();
        if gone.is_empty() {
            return;
        }
        for id in &gone {
            if let Some(running) = state.running.remove(id) {
                tracing::info!(device.id = %id, "Modbus device deleted or disabled; its poller stops");
                stop(*id, running).await;
            }
            state.held.remove(id);
        }
        let names: Vec<String> = gone.iter().copied().map(lease_name).collect();
        if let Err(e) = self.store.release_leases(&names, &self.instance_id).await {
            tracing::warn!(error = %e, "cannot release Modbus leases; they will expire");
        }
    }

    /// Releases the leases of devices no longer polled, takes or renews the others; returns
    /// when to do it again.
    async fn refresh_leases(&self, state: &mut State) -> Instant {
        self.release_gone(state).await;
        if state.candidates.is_empty() {
            state.held.clear();
            state.held_until = None;
            return Instant::now() + self.renew_period();
        }

        let names: Vec<String> = state.candidates.keys().copied().map(lease_name).collect();
        match self.acquire(&names).await {
            Ok((held, until)) => {
                for id in held.difference(&state.held) {
                    tracing::debug!(device.id = %id, "Modbus lease taken");
                }
                for id in state.held.difference(&held) {
                    tracing::warn!(device.id = %id, "Modbus lease lost to another instance");
                }
                state.held = held;
                state.held_until = Some(until);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot take or renew Modbus leases; retrying");
                return Instant::now() + self.renew_period().min(Duration::from_secs(1));
            }
        }

        // Free devices are tried often enough to take over within about one poll interval.
        let shortest_free_interval = state
            .candidates
            .iter()
            .filter(|(id, _)| !state.held.contains(id))
            .map(|(_, config)| Duration::from_millis(config.poll_interval_ms))
            .min();
        let period = match shortest_free_interval {
            Some(interval) => (interval / 2)
                .max(MIN_TAKEOVER_PERIOD)
                .min(self.renew_period()),
            None => self.renew_period(),
        };
        Instant::now() + period
    }

    /// Makes the running pollers match the held leases and the current configurations.
    async fn reconcile(&self, state: &mut State) {
        let crashed: Vec<Uuid> = state
            .running
            .iter()
            .filter(|(_, running)| running.task.is_finished())
            .map(|(id, _)| *id)
            .collect();
        for id in crashed {
            if let Some(running) = state.running.remove(&id) {
                if let Err(e) = running.task.await {
                    tracing::error!(device.id = %id, error = %e, "Modbus poller failed; restarting it");
                }
            }
        }

        let outdated: Vec<Uuid> = state
            .running
            .iter()
            .filter(|(id, running)| {
                !state.held.contains(id) || state.candidates.get(id) != Some(&running.config)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in outdated {
            let Some(running) = state.running.remove(&id) else {
                continue;
            };
            // Awaited before a replacement starts: one connection per device, always.
            stop(id, running).await;
            if !state.held.contains(&id) {
                tracing::info!(device.id = %id, "Modbus poller stopped: lease not held");
            } else if !state.candidates.contains_key(&id) {
                tracing::info!(device.id = %id, "Modbus poller stopped: device deleted or disabled");
            } else {
                tracing::info!(device.id = %id, "Modbus device configuration changed; poller restarts");
            }
        }

        for id in &state.held {
            let Some(config) = state.candidates.get(id) else {
                continue;
            };
            if state.running.contains_key(id) {
                continue;
            }
            let cancel = CancellationToken::new();
            let task = tokio::spawn(poller::run(
                *id,
                config.clone(),
                self.poller.clone(),
                cancel.clone(),
            ));
            tracing::info!(device.id = %id, modbus.host = %config.host, modbus.port = config.port, "polling Modbus device");
            state.running.insert(
                *id,
                Running {
                    config: config.clone(),
                    cancel,
                    task,
                },
            );
        }
        self.poller
            .metrics
            .devices_polled
            .set(state.running.len() as i64);
    }

    async fn shut_down(&self, mut state: State) {
        for running in state.running.values() {
            running.cancel.cancel();
        }
        for (id, running) in state.running.drain() {
            stop(id, running).await;
        }
        self.poller.metrics.devices_polled.set(0);
        if state.held.is_empty() {
            return;
        }
        let names: Vec<String> = state.held.iter().copied().map(lease_name).collect();
        match tokio::time::timeout(
            RELEASE_TIMEOUT,
            self.store.release_leases(&names, &self.instance_id),
        )
        .await
        {
            Ok(Ok(())) => {
                tracing::info!(
                    leases = names.len(),
                    "Modbus leases released for another instance"
                );
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot release Modbus leases; they will expire");
            }
            Err(_) => tracing::warn!("releasing Modbus leases timed out; they will expire"),
        }
    }
}

async fn stop(id: Uuid, running: Running) {
    running.cancel.cancel();
    let mut task = running.task;
    if tokio::time::timeout(STOP_TIMEOUT, &mut task).await.is_err() {
        tracing::error!(device.id = %id, "Modbus poller did not stop in time; aborting it");
        task.abort();
    }
}
