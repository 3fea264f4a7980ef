//! The deploy lock: a lease in `<state>/deploy.lock` (JSON: holder, pid, host, command,
//! expiry), renewed by a heartbeat task while the deploy runs. A deploy that is killed stops
//! renewing, and its lease expires after the TTL; a live one is refused with its holder named.
//!
//! Every read-modify-write of the lock file happens under an `flock` of a guard file beside it,
//! so two deploys racing for an expired lease cannot both win. The lease itself is the lock,
//! not the `flock`: the guard is held for microseconds, never across a deploy.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::state::hostname;
use super::{write_atomic, Layout, ReleaseError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockInfo {
    pub holder: String,
    pub pid: u32,
    pub host: String,
    pub command: String,
    pub acquired_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Distinguishes this lease from a later one by the same holder.
    pub token: String,
    /// Set when read: the lease ran out (its holder died or hung).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub expired: bool,
}

impl std::fmt::Display for LockInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (pid {} on {}, `{}`, since {}), lease until {}",
            self.holder,
            self.pid,
            self.host,
            self.command,
            self.acquired_at.format("%Y-%m-%dT%H:%M:%SZ"),
            self.expires_at.format("%Y-%m-%dT%H:%M:%SZ"),
        )
    }
}

/// A held lease. Dropping it without [`DeployLock::release`] leaves the lease to expire.
pub struct DeployLock {
    path: PathBuf,
    token: String,
    lost: CancellationToken,
    stop: CancellationToken,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
}

/// The lease on the host now, if any (expired ones flagged).
pub fn current(layout: &Layout) -> Option<LockInfo> {
    let mut info = read(&layout.lock_file())?;
    info.expired = info.expires_at <= Utc::now();
    Some(info)
}

fn read(path: &Path) -> Option<LockInfo> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn guard(path: &Path) -> Result<Flock<File>, ReleaseError> {
    let guard_path = path.with_extension("lock.guard");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&guard_path)
        .map_err(ReleaseError::io(&guard_path))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| ReleaseError::Io {
        path: guard_path,
        source: std::io::Error::from(errno),
    })
}

fn ttl_chrono(ttl: Duration) -> chrono::Duration {
    chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::seconds(60))
}

impl DeployLock {
    /// Takes the lease, or fails with [`ReleaseError::LockHeld`] naming the live holder. Must
    /// be called within a tokio runtime (the heartbeat is a task).
    pub fn acquire(
        layout: &Layout,
        ttl: Duration,
        holder: &str,
        command: &str,
    ) -> Result<DeployLock, ReleaseError> {
        let dir = layout.state_dir();
        std::fs::create_dir_all(&dir).map_err(ReleaseError::io(&dir))?;
        let path = layout.lock_file();
        let token = uuid::Uuid::new_v4().simple().to_string();
        {
            let _guard = guard(&path)?;
            if let Some(existing) = read(&path) {
                if existing.expires_at > Utc::now() {
                    return Err(ReleaseError::LockHeld(Box::new(existing)));
                }
                tracing::warn!(
                    lock.holder = %existing.holder,
                    lock.pid = existing.pid,
                    lock.expired_at = %existing.expires_at,
                    "taking over an expired deploy lock (its deploy died or hung)"
                );
            }
            let now = Utc::now();
            let info = LockInfo {
                holder: holder.to_string(),
                pid: std::process::id(),
                host: hostname(),
                command: command.to_string(),
                acquired_at: now,
                expires_at: now + ttl_chrono(ttl),
                token: token.clone(),
                expired: false,
            };
            write_atomic(
                &path,
                &serde_json::to_vec_pretty(&info).expect("serializes"),
            )?;
        }
        let lost = CancellationToken::new();
        let stop = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeat(
            path.clone(),
            token.clone(),
            ttl,
            lost.clone(),
            stop.clone(),
        ));
        Ok(DeployLock {
            path,
            token,
            lost,
            stop,
            heartbeat: Some(heartbeat),
        })
    }

    /// Cancelled when the lease is lost.
    pub fn lost_token(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Stops the heartbeat and removes the lease (if it is still ours).
    pub async fn release(mut self) {
        self.stop.cancel();
        if let Some(heartbeat) = self.heartbeat.take() {
            let _ = heartbeat.await;
        }
        let path = self.path.clone();
        let token = self.token.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let _guard = guard(&path)?;
            if read(&path).is_some_and(|info| info.token == token) {
                std::fs::remove_file(&path).map_err(ReleaseError::io(&path))?;
            }
            Ok::<(), ReleaseError>(())
        })
        .await;
    }
}

impl Drop for DeployLock {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Renews the lease every third of its TTL. If the file no longer holds our token (taken over
/// after we stalled past the TTL), flags the lease as lost and stops.
async fn heartbeat(
    path: PathBuf,
    token: String,
    ttl: Duration,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    let period = (ttl / 3).max(Duration::from_millis(200));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        let path = path.clone();
        let token = token.clone();
        let renewed = tokio::task::spawn_blocking(move || -> Result<bool, ReleaseError> {
            let _guard = guard(&path)?;
            let Some(mut info) = read(&path) else {
                return Ok(false);
            };
            if info.token != token {
                return Ok(false);
            }
            info.expires_at = Utc::now() + ttl_chrono(ttl);
            write_atomic(
                &path,
                &serde_json::to_vec_pretty(&info).expect("serializes"),
            )?;
            Ok(true)
        })
        .await;
        match renewed {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                tracing::error!("the deploy lock was taken over; this deploy must stop");
                lost.cancel();
                return;
            }
            // A transient failure to renew: keep trying until the lease runs out.
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot renew the deploy lock"),
            Err(e) => tracing::warn!(error = %e, "deploy lock heartbeat failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_live_lease_is_refused_and_an_expired_one_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        // Every lease here lasts 30 s: only the one made to look expired runs out.
        let acquire = |holder: &str, command: &str| {
            DeployLock::acquire(&layout, Duration::from_secs(30), holder, command)
        };
        let first = acquire("alice", "activate v2").unwrap();
        let refused = acquire("bob", "activate v3").err();
        match refused {
            Some(ReleaseError::LockHeld(info)) => {
                assert_eq!(info.holder, "alice");
                assert_eq!(info.command, "activate v2");
                assert!(info.to_string().contains("alice"), "{info}");
            }
            other => panic!("expected LockHeld, got {other:?}"),
        }
        // A holder that died: its lease is never renewed again.
        drop(first);
        let mut info = read(&layout.lock_file()).unwrap();
        info.expires_at = Utc::now() - chrono::Duration::seconds(1);
        write_atomic(&layout.lock_file(), &serde_json::to_vec(&info).unwrap()).unwrap();
        assert!(current(&layout).unwrap().expired);
        let second = acquire("bob", "activate v3").unwrap();
        assert_eq!(current(&layout).unwrap().holder, "bob");
        second.release().await;
        assert!(current(&layout).is_none());
    }

    #[tokio::test]
    async fn the_heartbeat_keeps_a_short_lease_alive() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let lock =
            DeployLock::acquire(&layout, Duration::from_millis(900), "alice", "activate").unwrap();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!current(&layout).unwrap().expired);
        assert!(!lock.lost_token().is_cancelled());
        lock.release().await;
    }
}
