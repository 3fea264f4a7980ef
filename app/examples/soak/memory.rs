//! Where the server's memory is: a snapshot before and after the hostile phase, so a broken RSS
//! bound says what grew — the allocator's live data, pages it keeps for reuse, memory that is not
//! the allocator's (thread stacks, C code's own malloc), file-backed pages — and which threads
//! came and stayed.

use std::collections::BTreeMap;

use anyhow::{Context, Result};

pub struct MemorySnapshot {
    pub anon_kib: u64,
    pub file_kib: u64,
    /// Threads by name (`/proc/<pid>/task/*/comm`).
    pub threads: BTreeMap<String, usize>,
    /// jemalloc's `allocated` and `resident` bytes from `/metrics`, when the server exports them.
    pub allocator: Option<(u64, u64)>,
}

impl MemorySnapshot {
    pub async fn take(pid: u32, client: &reqwest::Client, base: &str) -> Result<Self> {
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
        let field = |name: &str| -> Result<u64> {
            rollup
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {name} in smaps_rollup"))
        };
        let mut threads = BTreeMap::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let comm = std::fs::read_to_string(task?.path().join("comm")).unwrap_or_default();
            // Numbered names (sqlx-sqlite-worker-3) count under one name.
            let name = comm.trim().trim_end_matches(|c: char| c.is_ascii_digit());
            *threads.entry(name.to_string()).or_insert(0) += 1;
        }
        let metrics = client
            .get(format!("{base}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        let gauge = |name: &str| {
            metrics.lines().find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .map(|v| v as u64)
            })
        };
        let allocator =
            gauge("ddms_allocator_allocated_bytes ").zip(gauge("ddms_allocator_resident_bytes "));
        Ok(MemorySnapshot {
            anon_kib: field("Anonymous:")?,
            file_kib: field("Rss:")?.saturating_sub(field("Anonymous:")?),
            threads,
            allocator,
        })
    }

    /// The report's lines comparing `self` (before) with `after`.
    pub fn attribution(&self, after: &MemorySnapshot) -> Vec<String> {
        let mib = |kib: u64| kib as f64 / 1024.0;
        let mut lines = vec![format!(
            "anonymous {:.1} → {:.1} MiB, file-backed {:.1} → {:.1} MiB",
            mib(self.anon_kib),
            mib(after.anon_kib),
            mib(self.file_kib),
            mib(after.file_kib)
        )];
        if let (Some((a0, r0)), Some((a1, r1))) = (self.allocator, after.allocator) {
            let mib_b = |b: u64| b as f64 / (1024.0 * 1024.0);
            lines.push(format!(
                "allocator: allocated {:.1} → {:.1} MiB, resident {:.1} → {:.1} MiB; not the \
                 allocator's (anonymous − allocator resident; jemalloc counts untouched pages \
                 as resident, so this can go below 0) {:.1} → {:.1} MiB",
                mib_b(a0),
                mib_b(a1),
                mib_b(r0),
                mib_b(r1),
                mib(self.anon_kib) - mib_b(r0),
                mib(after.anon_kib) - mib_b(r1)
            ));
        }
        let names: std::collections::BTreeSet<&String> =
            self.threads.keys().chain(after.threads.keys()).collect();
        let changed: Vec<String> = names
            .into_iter()
            .filter_map(|name| {
                let (before, now) = (
                    self.threads.get(name).copied().unwrap_or(0),
                    after.threads.get(name).copied().unwrap_or(0),
                );
                (before != now).then(|| format!("{name} {before} → {now}"))
            })
            .collect();
        lines.push(format!(
            "threads {} → {}{}",
            self.threads.values().sum::<usize>(),
            after.threads.values().sum::<usize>(),
            if changed.is_empty() {
                String::new()
            } else {
                format!(" ({})", changed.join(", "))
            }
        ));
        lines
    }
}
