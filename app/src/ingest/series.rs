//! Series ids for the batch writer: a bounded cache in front of the store, the per-device series
//! quota (`ingest.max_series_per_device`), and forgetting the series of deleted devices.
//!
//! A device's series are loaded all at once the first time it is seen, so the writer knows how
//! many it has: a device sending ever new metric names costs no query per name once it is at its
//! quota.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::Sample;
use crate::store::{SeriesId, Store, StoreResult};

/// Series ids held in memory at most (about 100 bytes each); past it the cache starts over.
pub const MAX_CACHED_SERIES: usize = 200_000;

/// What the writer does with a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    Series(SeriesId),
    /// The device has `max_series_per_device` series and this metric is not one of them.
    OverQuota,
}

struct CachedSeries {
    id: SeriesId,
    unit: Option<String>,
}

pub struct SeriesResolver {
    /// Every series of each device seen (loaded whole; see the module comment).
    devices: HashMap<Uuid, HashMap<String, CachedSeries>>,
    cached: usize,
    /// Devices whose quota refusal was logged (once per device while cached).
    logged_over_quota: HashSet<Uuid>,
    max_per_device: usize,
    max_cached: usize,
}

impl SeriesResolver {
    pub fn new(max_per_device: usize) -> Self {
        SeriesResolver {
            devices: HashMap::new(),
            cached: 0,
            logged_over_quota: HashSet::new(),
            max_per_device,
            max_cached: MAX_CACHED_SERIES,
        }
    }

    pub fn max_per_device(&self) -> usize {
        self.max_per_device
    }

    /// The sample's series id, creating the series when the device is within its quota.
    pub async fn resolve(&mut self, store: &dyn Store, sample: &Sample) -> StoreResult<Resolved> {
        if !self.devices.contains_key(&sample.device_id) {
            let loaded = store.device_series(sample.device_id).await?;
            if self.cached + loaded.len() > self.max_cached {
                self.clear();
            }
            self.cached += loaded.len();
            let series = loaded
                .into_iter()
                .map(|(metric, id, unit)| (metric, CachedSeries { id, unit }))
                .collect();
            self.devices.insert(sample.device_id, series);
        }
        let series = self.devices.entry(sample.device_id).or_default();
        if let Some(known) = series.get_mut(&sample.metric) {
            // A changed unit (a register map edited) is stored; the same or none costs nothing.
            if sample.unit.is_some() && sample.unit != known.unit {
                store
                    .ensure_series(sample.device_id, &sample.metric, sample.unit.as_deref())
                    .await?;
                known.unit.clone_from(&sample.unit);
            }
            return Ok(Resolved::Series(known.id));
        }
        if series.len() >= self.max_per_device {
            return Ok(Resolved::OverQuota);
        }
        // Another instance may have created it meanwhile: `ensure_series` returns its id then.
        let id = store
            .ensure_series(sample.device_id, &sample.metric, sample.unit.as_deref())
            .await?;
        series.insert(
            sample.metric.clone(),
            CachedSeries {
                id,
                unit: sample.unit.clone(),
            },
        );
        self.cached += 1;
        Ok(Resolved::Series(id))
    }

    /// Forgets every device but `existing`: a deleted device's ids must never be used again
    /// (SQLite reused the highest deleted id before migration 0007), and its memory is freed.
    pub fn retain_devices(&mut self, existing: &HashSet<Uuid>) {
        self.devices.retain(|id, _| existing.contains(id));
        self.logged_over_quota.retain(|id| existing.contains(id));
        self.cached = self.devices.values().map(HashMap::len).sum();
    }

    pub fn clear(&mut self) {
        self.devices.clear();
        self.logged_over_quota.clear();
        self.cached = 0;
    }

    /// Whether this is the first refusal for the device's quota since it was cached.
    pub fn first_time_over_quota(&mut self, device_id: Uuid) -> bool {
        self.devices.contains_key(&device_id) && self.logged_over_quota.insert(device_id)
    }

    pub fn cached(&self) -> usize {
        self.cached
    }
}
