//! What the memory allocator (jemalloc, named in `main.rs`) holds, on `/metrics`: the process's
//! resident memory alone cannot tell live data from pages the allocator keeps for reuse, or
//! from memory that is not the allocator's at all (thread stacks, C libraries' own malloc).

// The crate's only unsafe code: SQLite's allocator hook is a C API with raw pointers.
#[allow(unsafe_code)]
mod sqlite;
pub use sqlite::{route_sqlite_memory, SqliteMemoryError};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGauge, Opts};

/// Reads one statistic (`None` when jemalloc cannot tell).
type ReadStatistic = fn() -> Option<usize>;

/// jemalloc's statistics as gauges, read when `/metrics` is scraped.
pub struct AllocatorCollector {
    gauges: Vec<(IntGauge, ReadStatistic)>,
}

impl AllocatorCollector {
    pub fn new() -> Self {
        let gauge = |name: &str, help: &str| {
            IntGauge::with_opts(Opts::new(name, help)).expect("valid metric")
        };
        use tikv_jemalloc_ctl::stats;
        let gauges: Vec<(IntGauge, ReadStatistic)> = vec![
            (
                gauge(
                    "ddms_allocator_allocated_bytes",
                    "Bytes the program has allocated and not freed (jemalloc stats.allocated)",
                ),
                || stats::allocated::read().ok(),
            ),
            (
                gauge(
                    "ddms_allocator_active_bytes",
                    "Bytes in pages holding live allocations (jemalloc stats.active)",
                ),
                || stats::active::read().ok(),
            ),
            (
                gauge(
                    "ddms_allocator_resident_bytes",
                    "Bytes of the allocator's pages that are resident, its metadata included \
                     (jemalloc stats.resident)",
                ),
                || stats::resident::read().ok(),
            ),
            (
                gauge(
                    "ddms_allocator_mapped_bytes",
                    "Bytes the allocator has mapped in active extents (jemalloc stats.mapped)",
                ),
                || stats::mapped::read().ok(),
            ),
            (
                gauge(
                    "ddms_allocator_retained_bytes",
                    "Virtual memory the allocator keeps mapped but has given back to the system \
                     (jemalloc stats.retained; not resident)",
                ),
                || stats::retained::read().ok(),
            ),
        ];
        AllocatorCollector { gauges }
    }
}

impl Default for AllocatorCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector for AllocatorCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.gauges.iter().flat_map(|(g, _)| g.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // jemalloc caches its statistics; advancing the epoch refreshes them.
        if tikv_jemalloc_ctl::epoch::advance().is_err() {
            return Vec::new();
        }
        self.gauges
            .iter()
            .flat_map(|(gauge, read)| {
                let Some(value) = read() else {
                    return Vec::new();
                };
                gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
                gauge.collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allocator_gauges_are_collected_with_plausible_values() {
        let families = AllocatorCollector::new().collect();
        let value = |name: &str| {
            families
                .iter()
                .find(|f| f.name() == name)
                .map(|f| f.get_metric()[0].get_gauge().value())
                .unwrap_or_else(|| panic!("{name} not collected"))
        };
        // The test binary's allocator is not jemalloc, but jemalloc is linked and initialised
        // by the read: its figures are small and consistent, never missing.
        let (allocated, active, resident, mapped) = (
            value("ddms_allocator_allocated_bytes"),
            value("ddms_allocator_active_bytes"),
            value("ddms_allocator_resident_bytes"),
            value("ddms_allocator_mapped_bytes"),
        );
        value("ddms_allocator_retained_bytes");
        assert!(
            allocated <= active,
            "allocated {allocated} > active {active}"
        );
        assert!(active <= mapped, "active {active} > mapped {mapped}");
        assert!(resident > 0.0, "resident {resident}");
    }
}
