//! Which MQTT devices exist and what their credentials are, for the embedded broker: looked up
//! on every CONNECT and every message, so both are cached in memory. The device list is reloaded
//! when the API says devices changed (`AppState.devices_changed`) and once a minute (another
//! instance may have changed them); credentials are cached for a minute and forgotten when the
//! API says credentials changed. A cache miss asks the database, so a device created a moment
//! ago is never refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::locks::{MutexExt, RwLockExt};
use crate::store::{Protocol, Store, StoreError};

/// How long a verified credential is trusted without asking the database again.
const CREDENTIAL_TTL: Duration = Duration::from_secs(60);
/// Devices are reloaded at least this often (changes made through another instance).
const REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// What the broker may do with a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceState {
    /// An enabled MQTT device: its readings are stored.
    Active,
    /// An MQTT device an operator disabled: it may connect, its readings are refused.
    Disabled,
    /// No such device, or not an MQTT device.
    Unknown,
}

/// The outcome of a CONNECT's username and password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed(Uuid),
    /// Unknown username or wrong password (not told apart, so usernames cannot be probed).
    BadCredentials,
    /// The database could not answer.
    Unavailable(String),
}

struct CachedCredentials {
    device_id: Uuid,
    secret_hash: String,
    fetched: Instant,
}

#[derive(Clone)]
pub struct DeviceDirectory {
    store: Arc<dyn Store>,
    devices: Arc<RwLock<HashMap<Uuid, DeviceState>>>,
    credentials: Arc<Mutex<HashMap<String, CachedCredentials>>>,
}

impl DeviceDirectory {
    pub fn new(store: Arc<dyn Store>) -> Self {
        DeviceDirectory {
            store,
            devices: Arc::default(),
            credentials: Arc::default(),
        }
    }

    /// Reloads every device (negative entries learnt since the last reload go with it).
    pub async fn refresh(&self) -> Result<usize, StoreError> {
        let devices = self.store.list_device_versions().await?;
        let fresh: HashMap<Uuid, DeviceState> = devices
            .iter()
            .filter(|d| d.protocol == Protocol::Mqtt)
            .map(|d| (d.id, state_of(d.enabled)))
            .collect();
        let count = fresh.len();
        *self.devices.write_unpoisoned() = fresh;
        Ok(count)
    }

    /// The device's state, from the cache or else the database.
    pub async fn device(&self, id: Uuid) -> Result<DeviceState, StoreError> {
        if let Some(state) = self.devices.read_unpoisoned().get(&id) {
            return Ok(*state);
        }
        let state = match self.store.get_device(id).await {
            Ok(device) if device.protocol == Protocol::Mqtt => state_of(device.enabled),
            Ok(_) | Err(StoreError::NotFound) => DeviceState::Unknown,
            Err(e) => return Err(e),
        };
        self.devices.write_unpoisoned().insert(id, state);
        Ok(state)
    }

    /// Checks a device's username and password against the stored SHA-256 hash.
    pub async fn authenticate(&self, username: &str, password: &[u8]) -> Verdict {
        let cached = {
            let credentials = self.credentials.lock_unpoisoned();
            credentials
                .get(username)
                .filter(|c| c.fetched.elapsed() < CREDENTIAL_TTL)
                .map(|c| (c.device_id, c.secret_hash.clone()))
        };
        let (device_id, secret_hash) = match cached {
            Some(found) => found,
            None => match self.store.find_mqtt_credentials(username).await {
                Ok(stored) => {
                    let mut credentials = self.credentials.lock_unpoisoned();
                    // Bounded: entries of devices that stopped connecting are dropped.
                    if credentials.len() >= 100_000 {
                        credentials.retain(|_, c| c.fetched.elapsed() < CREDENTIAL_TTL);
                    }
                    credentials.insert(
                        username.to_string(),
                        CachedCredentials {
                            device_id: stored.device_id,
                            secret_hash: stored.secret_hash.clone(),
                            fetched: Instant::now(),
                        },
                    );
                    (stored.device_id, stored.secret_hash)
                }
                Err(StoreError::NotFound) => return Verdict::BadCredentials,
                Err(e) => return Verdict::Unavailable(e.to_string()),
            },
        };
        if crate::auth::secret_matches_hash(password, &secret_hash) {
            Verdict::Allowed(device_id)
        } else {
            Verdict::BadCredentials
        }
    }

    pub fn forget_credentials(&self) {
        self.credentials.lock_unpoisoned().clear();
    }

    /// Keeps the caches current until `cancel`: reloads devices when they change (and every
    /// minute), forgets credentials when they change.
    pub async fn maintain(
        self,
        devices_changed: Arc<Notify>,
        credentials_changed: Arc<Notify>,
        cancel: CancellationToken,
    ) {
        let mut failing = false;
        loop {
            // Registered before the reload, so a change during it is not missed.
            let devices = devices_changed.notified();
            let credentials = credentials_changed.notified();
            tokio::pin!(devices, credentials);
            devices.as_mut().enable();
            credentials.as_mut().enable();
            match self.refresh().await {
                Ok(count) => {
                    if failing {
                        tracing::info!(mqtt.devices = count, "MQTT device list reloaded");
                    }
                    failing = false;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot reload the MQTT device list; using the cached one");
                    }
                    failing = true;
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                // Either may come alone or both together (a deleted device loses its
                // credentials): forget them on both, a reconnect costs one query.
                () = &mut devices => self.forget_credentials(),
                () = &mut credentials => self.forget_credentials(),
                () = tokio::time::sleep(if failing { Duration::from_secs(5) } else { REFRESH_INTERVAL }) => {}
            }
        }
    }
}

fn state_of(enabled: bool) -> DeviceState {
    if enabled {
        DeviceState::Active
    } else {
        DeviceState::Disabled
    }
}
