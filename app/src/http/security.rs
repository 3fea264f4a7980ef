//! Web hardening that applies to every response, and the throttles in front of the API: who
//! the client is (its address, whether it came over HTTPS — believing `X-Forwarded-*` only from
//! `http.trusted_proxies`), the security headers, per-address and per-credential rate limits,
//! login throttling and CORS.

use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::Quota;
use tokio::sync::Semaphore;

use super::hashing::PasswordHashing;
use super::keyed_limit::{client_key, BoundedLimiter};
use super::revocation::Revocations;
use super::{ApiError, AppState};
use crate::config::Config;

/// No inline script or style, nothing from elsewhere, no framing, no `<base>` tricks.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
     base-uri 'none'; form-action 'self'";
/// One year; sent only on responses that came over HTTPS (RFC 6797 ignores it on plain HTTP).
const HSTS: &str = "max-age=31536000";

/// The client of one request, resolved once by [`harden`] and kept in the request extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientInfo {
    /// The TCP peer, or the client a trusted proxy named in `X-Forwarded-For`.
    pub ip: IpAddr,
    /// Served by our own TLS, or by a trusted proxy that says `X-Forwarded-Proto: https`.
    pub https: bool,
}

impl<S: Send + Sync> FromRequestParts<S> for ClientInfo {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<ClientInfo>()
            .copied()
            .ok_or_else(|| {
                ApiError::Internal(anyhow::anyhow!(
                    "client info missing: the hardening layer did not run"
                ))
            })
    }
}

/// Limiters and settings shared by every request.
pub struct Security {
    tls: bool,
    trusted_proxies: Vec<IpAddr>,
    api_per_ip: Option<BoundedLimiter<IpAddr>>,
    api_per_credential: Option<BoundedLimiter<String>>,
    login_per_ip: BoundedLimiter<IpAddr>,
    login_per_username: BoundedLimiter<String>,
    /// Password hashes and verifications allowed at once.
    pub hashing: PasswordHashing,
    /// Live streams allowed at once (`http.max_streams`).
    pub streams: Arc<Semaphore>,
    /// Credentials ended on this instance: their live streams close.
    pub revocations: Revocations,
}

impl Security {
    pub fn new(config: &Config) -> Security {
        let http = &config.http;
        let api_quota = NonZeroU32::new(http.rate_limit.requests_per_second).map(|rate| {
            let burst = NonZeroU32::new(http.rate_limit.burst)
                .unwrap_or(rate)
                .max(rate);
            Quota::per_second(rate).allow_burst(burst)
        });
        let per_minute = |n: u32| Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN));
        Security {
            tls: http.tls.enabled(),
            trusted_proxies: http.trusted_proxies.clone(),
            api_per_ip: api_quota.map(BoundedLimiter::new),
            api_per_credential: api_quota.map(BoundedLimiter::new),
            login_per_ip: BoundedLimiter::new(per_minute(http.login.attempts_per_minute_per_ip)),
            login_per_username: BoundedLimiter::new(per_minute(
                http.login.attempts_per_minute_per_username,
            )),
            hashing: PasswordHashing::new(http.login.max_concurrent_hashes),
            streams: Arc::new(Semaphore::new(http.max_streams)),
            revocations: Revocations::default(),
        }
    }

    /// Who sent a request that arrived from `peer` with `headers`.
    pub fn client(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> ClientInfo {
        let peer_ip = peer
            .map(|p| p.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        if !self.trusted_proxies.contains(&peer_ip) {
            return ClientInfo {
                ip: peer_ip,
                https: self.tls,
            };
        }
        // The rightmost address that is not one of our proxies is the one the first proxy saw
        // connecting; anything left of it was written by the client and is not evidence.
        let forwarded: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut ip = peer_ip;
        for entry in forwarded.iter().rev() {
            match entry.parse::<IpAddr>() {
                Ok(addr) if self.trusted_proxies.contains(&addr) => ip = addr,
                Ok(addr) => {
                    ip = addr;
                    break;
                }
                Err(_) => break,
            }
        }
        let https = self.tls
            || headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
        ClientInfo { ip, https }
    }

    /// One `/api/*` request from `ip`.
    pub fn check_api_ip(&self, ip: IpAddr) -> Result<(), ApiError> {
        match &self.api_per_ip {
            Some(limiter) => check(limiter, &client_key(ip)),
            None => Ok(()),
        }
    }

    /// One authenticated request by `subject` (`token:…`, `user:…`), from any address.
    pub fn check_api_credential(&self, subject: &str) -> Result<(), ApiError> {
        match &self.api_per_credential {
            Some(limiter) => check(limiter, &subject.to_string()),
            None => Ok(()),
        }
    }

    /// One login attempt for `username` from `ip`; counted whatever its outcome, before the
    /// password is looked at, so a throttled guess costs the server nothing.
    pub fn check_login(&self, ip: IpAddr, username: &str) -> Result<(), ApiError> {
        check(&self.login_per_ip, &client_key(ip))?;
        check(&self.login_per_username, &username.to_lowercase())
    }

    /// Drops idle keys from every limiter (run on a timer: memory stays bounded even when no
    /// request comes to prune on).
    pub fn prune(&self) {
        if let Some(limiter) = &self.api_per_ip {
            limiter.prune();
        }
        if let Some(limiter) = &self.api_per_credential {
            limiter.prune();
        }
        self.login_per_ip.prune();
        self.login_per_username.prune();
    }
}

fn check<K: Hash + Eq + Clone>(limiter: &BoundedLimiter<K>, key: &K) -> Result<(), ApiError> {
    limiter
        .check(key)
        .map_err(|wait: Duration| ApiError::RateLimited {
            retry_after_s: (wait.as_secs_f64().ceil() as u64).max(1),
        })
}

/// The outermost layer but the request id: resolves the [`ClientInfo`], and puts the security
/// headers on every response — pages, JSON, errors from any layer below (404, 405, 408, 413,
/// 429) alike.
pub async fn harden(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let client = state.security.client(peer, request.headers());
    request.extensions_mut().insert(client);
    let api = request.uri().path().starts_with("/api/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let set = |headers: &mut HeaderMap, name: HeaderName, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        CONTENT_SECURITY_POLICY,
    );
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(
        headers,
        HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    set(
        headers,
        HeaderName::from_static("permissions-policy"),
        "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
    );
    if client.https {
        set(headers, header::STRICT_TRANSPORT_SECURITY, HSTS);
    }
    if api {
        // API answers carry credentials-dependent data: never stored by browsers or proxies.
        set(headers, header::CACHE_CONTROL, "no-store");
    }
    response
}

/// Per-address rate limit in front of `/api/*` (the per-credential one runs after
/// authentication, in the `Authorized` extractor).
pub async fn limit_api(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let ip = request
        .extensions()
        .get::<ClientInfo>()
        .map(|c| c.ip)
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    if let Err(e) = state.security.check_api_ip(ip) {
        tracing::info!(client.ip = %ip, "request refused: rate limit");
        return e.into_response();
    }
    next.run(request).await
}

/// CORS for the configured origins only; `None` (no layer) when there are none, so browsers
/// refuse every cross-origin read and preflight.
pub fn cors(config: &Config) -> Option<tower_http::cors::CorsLayer> {
    let origins: Vec<HeaderValue> = config
        .http
        .cors
        .allowed_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    if origins.is_empty() {
        return None;
    }
    // Bearer tokens only: cookies stay same-site (SameSite=Strict), so no credentials here.
    Some(
        tower_http::cors::CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// Equal-length byte strings compared in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn security(extra: &str) -> Security {
        let config =
            crate::config::from_toml(&format!("[mqtt]\nmode = \"off\"\n[http]\n{extra}\n"))
                .unwrap();
        Security::new(&config)
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_proxies() {
        let s = security("trusted_proxies = [\"127.0.0.1\"]");
        let forwarded = headers(&[
            ("x-forwarded-for", "6.6.6.6, 10.1.2.3"),
            ("x-forwarded-proto", "https"),
        ]);
        let via_proxy = s.client(Some("127.0.0.1:5000".parse().unwrap()), &forwarded);
        assert_eq!(via_proxy.ip, "10.1.2.3".parse::<IpAddr>().unwrap());
        assert!(via_proxy.https);
        let direct = s.client(Some("192.0.2.7:5000".parse().unwrap()), &forwarded);
        assert_eq!(direct.ip, "192.0.2.7".parse::<IpAddr>().unwrap());
        assert!(!direct.https);
        let untrusting = security("");
        let ignored = untrusting.client(Some("127.0.0.1:5000".parse().unwrap()), &forwarded);
        assert_eq!(ignored.ip, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert!(!ignored.https);
    }

    #[test]
    fn login_throttle_counts_per_address_and_per_username() {
        let s = security(
            "[http.login]\nattempts_per_minute_per_ip = 3\nattempts_per_minute_per_username = 2",
        );
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(s.check_login(a, "Alice").is_ok());
        assert!(s.check_login(b, "alice").is_ok());
        // Third attempt on the name, from a fresh address: refused, with a wait.
        match s.check_login("10.0.0.3".parse().unwrap(), "ALICE") {
            Err(ApiError::RateLimited { retry_after_s }) => assert!(retry_after_s >= 1),
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Address a: alice, bob, carol, then no more, whatever the name.
        assert!(s.check_login(a, "bob").is_ok());
        assert!(s.check_login(a, "carol").is_ok());
        assert!(matches!(
            s.check_login(a, "dave"),
            Err(ApiError::RateLimited { .. })
        ));
    }

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
