//! Ports for servers under test, shared by the integration tests (`services.rs`), the
//! benchmark and soak drivers (`examples/common/driver.rs`) and xtask (its smoke, API fuzzing,
//! schema-compat and tidy servers, the end-to-end tests), which include this file by path.

use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

/// Below the kernel's ephemeral range (32768–60999 by default), which `bind(…:0)` and every
/// outgoing connection draw from: a port taken from that range and released could be grabbed by
/// another client socket before the server under test binds it ("address already in use", seen
/// on busy machines). These never are.
const FIRST: u32 = 20_000;
const SPAN: u32 = 12_000;
const UNSET: u32 = u32::MAX;

/// A port free on every IPv4 address (so a server may bind it on 0.0.0.0 or 127.0.0.1) and not
/// handed out before by this allocator. Each allocator (a process may hold two when a binary
/// includes this file twice) and each process starts at a random place in the range, and ports
/// someone holds are skipped.
pub fn free_port() -> anyhow::Result<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(UNSET);
    let start = (std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        % u64::from(SPAN)) as u32;
    let _ = NEXT.compare_exchange(UNSET, start, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..SPAN {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free port between {FIRST} and {}", FIRST + SPAN)
}
