//! A bound on password hashing in flight. One argon2id verification holds ~19 MiB and tens of
//! milliseconds of CPU on the blocking pool; anonymous failed logins would otherwise start as
//! many at once as they like (memory grows by 19 MiB each). Beyond `http.login.max_concurrent_hashes`
//! a login is answered at once with 503 and `Retry-After` instead of queueing.

use std::sync::Arc;

use prometheus::{IntCounter, IntGauge, Registry};
use tokio::sync::Semaphore;

use super::ApiError;

/// Seconds a client refused for lack of a hashing slot is told to wait.
const RETRY_AFTER_S: u64 = 1;

#[derive(Clone)]
pub struct PasswordHashing {
    slots: Arc<Semaphore>,
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
        PasswordHashing {
            slots: Arc::new(Semaphore::new(limit)),
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

    /// Runs `work` (a hash or verification) on the blocking pool if a slot is free; else 503.
    pub async fn run<T, F>(&self, work: F) -> Result<T, ApiError>
    where
        F: FnOnce() -> T + Send + 'static,
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
        tokio::task::spawn_blocking(move || {
            let result = work();
            // The slot is free only once the memory of the hash is: released here, not when
            // the awaiting request goes away (a client hanging up does not stop the hash).
            in_flight.dec();
            drop(permit);
            result
        })
        .await
        .map_err(|e| ApiError::Internal(e.into()))
    }
}
