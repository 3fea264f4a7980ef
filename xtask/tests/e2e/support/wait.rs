//! Waiting for a condition with a deadline, for the end-to-end tests: they look at hosts over
//! ssh and at the load generator from plain threads, so this is the blocking counterpart of
//! `app/tests/support/wait.rs` (docs/testing.md, "Waiting in tests"). Each look says what is
//! still missing, so a wait that runs out says how far things got.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// Between two looks: ssh to a container and back takes about as long.
const POLL: Duration = Duration::from_millis(100);

/// What one look at the condition found.
pub enum Check<T> {
    /// It holds; the value is what the waiter wanted from it.
    Holds(T),
    /// Not yet: what is missing, for the failure message.
    Missing(String),
}

/// Looks with `check` until the condition holds and returns its value; after `within`, fails
/// naming `what` it waited for and what the last look found missing. An error from `check`
/// (ssh failed, say) ends the wait at once.
pub fn until<T>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Result<Check<T>>,
) -> Result<T> {
    let deadline = Instant::now() + within;
    loop {
        let missing = match check()? {
            Check::Holds(value) => return Ok(value),
            Check::Missing(missing) => missing,
        };
        if Instant::now() >= deadline {
            bail!("timed out after {within:?} waiting for {what}: {missing}");
        }
        // sleep: the poll interval of this wait with a deadline
        std::thread::sleep(POLL);
    }
}
