//! Keyed rate limiters whose memory stays bounded whatever keys outsiders invent.
//!
//! A governor keyed limiter keeps one cell per key it has seen. Keys come from outside (client
//! addresses, usernames typed into the login form), so left alone the map grows with every new
//! key. [`BoundedLimiter`] drops keys whose state is back to "fresh" (`retain_recent`) when it
//! reaches its prune mark and on a timer ([`BoundedLimiter::prune`]); if a flood of distinct
//! keys inside one window still leaves it above its hard cap, it forgets every key. Forgetting
//! lets the flooder's keys start afresh, which is the lesser evil: the alternative is memory
//! without end.

use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::RwLock;
use std::time::Duration;

use crate::locks::RwLockExt;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Keys kept before idle ones are pruned on the request path.
pub const PRUNE_AT: usize = 10_000;
/// Keys kept at most; beyond (after pruning), the limiter starts empty again.
pub const MAX_KEYS: usize = 100_000;

pub struct BoundedLimiter<K: Hash + Eq + Clone> {
    quota: Quota,
    prune_at: usize,
    max_keys: usize,
    limiter: RwLock<DefaultKeyedRateLimiter<K>>,
}

impl<K: Hash + Eq + Clone> BoundedLimiter<K> {
    pub fn new(quota: Quota) -> Self {
        Self::with_bounds(quota, PRUNE_AT, MAX_KEYS)
    }

    pub fn with_bounds(quota: Quota, prune_at: usize, max_keys: usize) -> Self {
        BoundedLimiter {
            quota,
            prune_at,
            max_keys: max_keys.max(prune_at),
            limiter: RwLock::new(RateLimiter::keyed(quota)),
        }
    }

    /// One request for `key`: `Err(wait)` when it must wait that long.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        if self.len() >= self.prune_at {
            self.prune();
        }
        let limiter = self.limiter.read_unpoisoned();
        limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Drops keys that are back to their full allowance; forgets all of them when that still
    /// leaves more than the hard cap. Also run on a timer, so idle keys do not linger.
    pub fn prune(&self) {
        let mut limiter = self.limiter.write_unpoisoned();
        limiter.retain_recent();
        if limiter.len() >= self.max_keys {
            tracing::warn!(
                limiter.keys = limiter.len(),
                limiter.max_keys = self.max_keys,
                "too many distinct clients in one window; a rate limiter starts afresh"
            );
            *limiter = RateLimiter::keyed(self.quota);
        }
        limiter.shrink_to_fit();
    }

    /// Keys currently held.
    pub fn len(&self) -> usize {
        self.limiter.read_unpoisoned().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl BoundedLimiter<IpAddr> {
    /// One request from `ip` (IPv6 clients count per /64: one host usually holds a whole /64,
    /// and would otherwise have 2^64 fresh keys to hand).
    pub fn check_key(&self, ip: &IpAddr) -> Result<(), Duration> {
        self.check(&client_key(*ip))
    }
}

/// The key a client address is limited by: IPv4 as is, IPv6 by its /64 network (an
/// IPv4-mapped IPv6 address counts as its IPv4 address).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    #[test]
    fn invented_keys_never_grow_the_limiter_past_its_cap() {
        let quota = Quota::per_hour(NonZeroU32::new(1).unwrap());
        let limiter = BoundedLimiter::with_bounds(quota, 50, 100);
        for i in 0..950 {
            // Every key is used up for an hour: nothing is idle enough to prune.
            assert!(limiter.check(&format!("user-{i}")).is_ok());
            assert!(limiter.len() <= 100, "{} keys after {i}", limiter.len());
        }
        // Still limiting the keys it holds (the last reset was at the 900th).
        assert!(limiter.check(&"user-949".to_string()).is_err());
    }

    #[test]
    fn an_ipv6_host_counts_as_its_slash_64() {
        let quota = Quota::per_hour(NonZeroU32::new(1).unwrap());
        let limiter = BoundedLimiter::new(quota);
        assert!(limiter
            .check_key(&"2001:db8:1:2::1".parse().unwrap())
            .is_ok());
        assert!(limiter
            .check_key(&"2001:db8:1:2:ffff::9".parse().unwrap())
            .is_err());
        assert!(limiter
            .check_key(&"2001:db8:1:3::1".parse().unwrap())
            .is_ok());
        assert_eq!(
            client_key("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(limiter.len(), 2);
    }
}
