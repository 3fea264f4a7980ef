//! A bound on password hashing in flight. One argon2id verification holds ~19 MiB and tens of
//! milliseconds of CPU on the blocking pool; anonymous failed logins would otherwise start as
//! many at once as they like (memory grows by 19 MiB each). Beyond `http.login.max_concurrent_hashes`
//! a login is answered at once with 503 and `Retry-After` instead of queueing.
//!
//! The hashes run on `limit` threads of their own, each with one argon2 work area
//! ([`HashMemory`]) reused while logins keep coming, not on tokio's blocking pool: there every
//! hash allocated and freed its 19 MiB on whichever pool thread ran it, the allocator kept the
//! freed areas in its per-thread pools, and a login flood grew the process from 29 MiB to
//! 1 GiB for good (found by `cargo xtask soak`). Now the hashing memory is at most `limit` ×
//! 19 MiB, and a thread that finds no login waiting gives its area back, so after a flood the
//! process returns to its size before it.

use std::sync::Arc;

use flume::{Receiver, Sender, TryRecvError};

use prometheus::{IntCounter, IntGauge, Registry};
use tokio::sync::Semaphore;

use super::{validation, ApiError};
use crate::auth::{hash_password_in, HashMemory};

type Job = Box<dyn FnOnce(&mut HashMemory) + Send>;

/// Seconds a client refused for lack of a hashing slot is told to wait.
const RETRY_AFTER_S: u64 = 1;

#[derive(Clone)]
pub struct PasswordHashing {
    slots: Arc<Semaphore>,
    /// To the hashing threads; they end when the last clone of this is dropped.
    jobs: Sender<Job>,
    limit: usize,
    in_flight: IntGauge,
    in_flight_max: IntGauge,
    refused: IntCounter,
}

impl PasswordHashing {
    /// `limit` hashes at once; 0 means twice the CPUs.
    pub fn new(limit: usize) -> Self {
        let limit = if limit == 0 {
            2 * std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            limit
        };
        // A job is sent only while holding a slot, so the queue never holds more than `limit`.
        let (jobs, queue) = flume::bounded::<Job>(limit);
        for n in 0..limit {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("ddms-hash-{n}"))
                .spawn(move || hashing_thread(&queue));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password hashing thread");
            }
        }
        PasswordHashing {
            slots: Arc::new(Semaphore::new(limit)),
            jobs,
            limit,
            in_flight: IntGauge::new(
                "ddms_password_hashes_in_flight",
                "Password hashes and verifications running now",
            )
            .expect("valid metric"),
            in_flight_max: IntGauge::new(
                "ddms_password_hashes_in_flight_max",
                "Most password hashes and verifications that ran at once since start",
            )
            .expect("valid metric"),
            refused: IntCounter::new(
                "ddms_password_hashes_refused_total",
                "Logins and password changes refused because every hashing slot was busy",
            )
            .expect("valid metric"),
        }
    }

    pub fn register(&self, registry: &Registry) {
        let limit = IntGauge::new(
            "ddms_password_hashes_limit",
            "Password hashes allowed at once (http.login.max_concurrent_hashes)",
        )
        .expect("valid metric");
        limit.set(self.limit as i64);
        for metric in [
            Box::new(self.in_flight.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(self.in_flight_max.clone()),
            Box::new(self.refused.clone()),
            Box::new(limit),
        ] {
            if let Err(e) = registry.register(metric) {
                tracing::warn!(error = %e, "cannot register a password hashing metric");
            }
        }
    }

    /// The argon2id hash of a new `password` (a user's, set by an owner or by the user), within
    /// the bound; a password that is not acceptable is a 422 naming `field`.
    pub async fn hash(&self, field: &str, password: String) -> Result<String, ApiError> {
        self.run(move |memory| hash_password_in(memory, &password))
            .await?
            .map_err(|e| validation(field, e.to_string()))
    }

    /// Runs `work` (a hash or verification, given the thread's reused work area) on a hashing
    /// thread if a slot is free; else 503.
    pub async fn run<T, F>(&self, work: F) -> Result<T, ApiError>
    where
        F: FnOnce(&mut HashMemory) -> T + Send + 'static,
        T: Send + 'static,
    {
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            self.refused.inc();
            tracing::warn!(
                limit = self.limit,
                "login refused: every password hashing slot is busy"
            );
            return Err(ApiError::Busy {
                reason: "too many logins are being checked at once",
                retry_after_s: RETRY_AFTER_S,
            });
        };
        // Raised after taking the slot and lowered before giving it back: never above the limit.
        let in_flight = self.in_flight.clone();
        in_flight.inc();
        let running = in_flight.get();
        if running > self.in_flight_max.get() {
            self.in_flight_max.set(running);
        }
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |memory| {
            let result = work(memory);
            // The slot is free only once the hash is done: released here, not when the
            // awaiting request goes away (a client hanging up does not stop the hash).
            in_flight.dec();
            drop(permit);
            let _ = done.send(result);
        });
        self.jobs.try_send(job).map_err(|_| {
            ApiError::Internal(anyhow::anyhow!("the password hashing threads are gone"))
        })?;
        result
            .await
            .map_err(|_| ApiError::Internal(anyhow::anyhow!("a password hash was abandoned")))
    }
}

/// One hashing thread: takes jobs until every sender is gone, in one work area while jobs keep
/// coming; before it waits for the next one, the area is given back.
fn hashing_thread(queue: &Receiver<Job>) {
    let mut memory = HashMemory::default();
    loop {
        let job = match queue.try_recv() {
            Ok(job) => job,
            Err(TryRecvError::Empty) => {
                // A login after a pause pays a few milliseconds of page faults for a fresh
                // area, against 19 MiB held by an idle thread for good.
                memory.release();
                match queue.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            }
            Err(TryRecvError::Disconnected) => return,
        };
        // A panicking hash must not take the thread (and with it a slot's worker) away.
        let run = std::panic::AssertUnwindSafe(|| job(&mut memory));
        if std::panic::catch_unwind(run).is_err() {
            tracing::error!("a password hash panicked");
        }
    }
}
