//! API token lookups without a database round trip per request.
//!
//! Every bearer-token request used to write the token's last use: one UPDATE (a commit, and a
//! row lock that every instance sharing the database queues on) per API read. Now:
//! - a successful lookup is kept in process for [`TOKEN_CACHE_TTL`]; within it the token is
//!   not read again. A token revoked elsewhere (another process, the other blue-green slot)
//!   is therefore refused at most that long after the revocation.
//! - `last_used_at` is written at most once per [`LAST_USE_RESOLUTION`] per token, judged by
//!   the stored value itself, so the bound holds across instances too. The `last_used_at` a
//!   lookup returns may be up to that much older than the latest use.
//!
//! Unknown or revoked tokens are not cached: a bad token is looked up every time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::ApiToken;

/// How long a successful lookup is trusted without asking the database again.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(5);
/// The resolution of `api_tokens.last_used_at`.
pub const LAST_USE_RESOLUTION: Duration = Duration::from_secs(60);
/// Past this many entries, expired ones are dropped on insert (live tokens are few).
const PRUNE_ABOVE: usize = 256;

/// Successful token lookups by token hash, each with when it was made.
#[derive(Debug, Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<String, (Instant, ApiToken)>>,
}

impl TokenCache {
    /// The cached token for `token_hash`, if looked up less than [`TOKEN_CACHE_TTL`] before `now`.
    pub fn get(&self, token_hash: &str, now: Instant) -> Option<ApiToken> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(token_hash)
            .filter(|(at, _)| now.saturating_duration_since(*at) < TOKEN_CACHE_TTL)
            .map(|(_, token)| token.clone())
    }

    /// Drops every cached lookup of the token `id` (it was revoked here).
    pub fn forget(&self, id: uuid::Uuid) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|_, (_, token)| token.id != id);
    }

    /// Remembers a successful lookup made at `now`.
    pub fn put(&self, token_hash: &str, token: ApiToken, now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= PRUNE_ABOVE {
            entries.retain(|_, (at, _)| now.saturating_duration_since(*at) < TOKEN_CACHE_TTL);
        }
        entries.insert(token_hash.to_string(), (now, token));
    }
}

/// Whether a token last used at `last_used` should have its use written at `now`.
pub fn last_use_is_stale(last_used: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    last_used.is_none_or(|t| {
        now.signed_duration_since(t)
            .to_std()
            .is_ok_and(|age| age >= LAST_USE_RESOLUTION)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Role;

    fn token(name: &str) -> ApiToken {
        ApiToken {
            id: uuid::Uuid::now_v7(),
            name: name.into(),
            role: Role::Viewer,
            created_at: Utc::now(),
            last_used_at: None,
            revoked_at: None,
        }
    }

    #[test]
    fn a_lookup_is_reused_until_the_ttl_passes() {
        let cache = TokenCache::default();
        let t0 = Instant::now();
        assert!(cache.get("h", t0).is_none());
        cache.put("h", token("ci"), t0);
        assert_eq!(cache.get("h", t0).unwrap().name, "ci");
        let almost = t0 + TOKEN_CACHE_TTL - Duration::from_millis(1);
        assert_eq!(cache.get("h", almost).unwrap().name, "ci");
        assert!(cache.get("h", t0 + TOKEN_CACHE_TTL).is_none());
        assert!(cache.get("other", t0).is_none());
    }

    #[test]
    fn expired_entries_are_dropped_once_the_cache_grows() {
        let cache = TokenCache::default();
        let t0 = Instant::now();
        for i in 0..PRUNE_ABOVE {
            cache.put(&format!("old{i}"), token("old"), t0);
        }
        let later = t0 + TOKEN_CACHE_TTL;
        cache.put("new", token("new"), later);
        let entries = cache.entries.lock().unwrap();
        assert_eq!(entries.len(), 1, "only the live entry is left");
        assert!(entries.contains_key("new"));
    }

    #[test]
    fn last_use_is_written_only_when_older_than_the_resolution() {
        let now = Utc::now();
        let resolution = chrono::Duration::from_std(LAST_USE_RESOLUTION).unwrap();
        assert!(last_use_is_stale(None, now));
        assert!(!last_use_is_stale(Some(now), now));
        assert!(!last_use_is_stale(
            Some(now - resolution + chrono::Duration::seconds(1)),
            now
        ));
        assert!(last_use_is_stale(Some(now - resolution), now));
        // A clock that went backwards (another host's now() ahead of ours) writes nothing.
        assert!(!last_use_is_stale(Some(now + resolution), now));
    }
}
