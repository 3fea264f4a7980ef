//! The SSRF guard: which addresses a notification channel may reach.
//!
//! Channel URLs and SMTP hosts are chosen by API users, and ddms usually runs inside a network
//! its users cannot reach themselves. Without a guard, a channel pointing at
//! `http://10.0.0.7/admin` or the cloud metadata service would turn alert delivery into a
//! proxy into that network. So by default a channel may only reach public addresses.
//!
//! Three classes of address:
//! - public: always allowed;
//! - *private* (loopback, RFC 1918, CGNAT 100.64/10, link-local, unique-local, benchmarking,
//!   and any address of this host's own interfaces, which includes ddms' own listen address):
//!   allowed only when **both** `alerts.allow_private_targets` (the operator, in the config
//!   file) **and** the channel's `allow_private` (an API admin) say so. Requiring both means a
//!   stolen admin credential alone cannot open the internal network, while an operator who
//!   opens it still has each inward-pointing channel marked visibly;
//! - *never* (unspecified, multicast, broadcast, reserved 240/4, the cloud metadata
//!   addresses 169.254.169.254 and fd00:ec2::254): no legitimate receiver lives there.
//!
//! IPv6 forms that carry an IPv4 address (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible,
//! NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are judged by the IPv4 address they carry.
//!
//! Literal IPs are checked when a channel is validated and again at delivery; host names are
//! resolved at delivery, **every** address is checked, and the connection is made to those
//! checked addresses only ([`GuardedResolver`] for HTTP, [`resolve_checked`] for SMTP), so a
//! name that resolves differently a second time (DNS rebinding) cannot slip through.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// Why an address was refused; `Display` is the reason shown to users.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{ip} is {what}: {hint}")]
pub struct RefusedTarget {
    pub ip: IpAddr,
    pub what: &'static str,
    hint: &'static str,
}

const PRIVATE_HINT: &str =
    "refused unless alerts.allow_private_targets and the channel's allow_private are both set";
const NEVER_HINT: &str = "never a notification target";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Public,
    Private(&'static str),
    Never(&'static str),
}

/// Checks one address. `allow_private` is the combined permission (both flags).
pub fn check_ip(ip: IpAddr, allow_private: bool) -> Result<(), RefusedTarget> {
    let class = match classify(ip) {
        Class::Public if is_own_address(ip) => Class::Private("an address of this host"),
        class => class,
    };
    match class {
        Class::Public => Ok(()),
        Class::Private(_) if allow_private => Ok(()),
        Class::Private(what) => Err(RefusedTarget {
            ip,
            what,
            hint: PRIVATE_HINT,
        }),
        Class::Never(what) => Err(RefusedTarget {
            ip,
            what,
            hint: NEVER_HINT,
        }),
    }
}

fn classify(ip: IpAddr) -> Class {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn classify_v4(ip: Ipv4Addr) -> Class {
    const NEVER: [([u8; 4], u32, &str); 5] = [
        ([169, 254, 169, 254], 32, "the cloud metadata address"),
        ([0, 0, 0, 0], 8, "an unspecified (\"this network\") address"),
        ([255, 255, 255, 255], 32, "the broadcast address"),
        ([224, 0, 0, 0], 4, "a multicast address"),
        ([240, 0, 0, 0], 4, "a reserved address"),
    ];
    const PRIVATE: [([u8; 4], u32, &str); 8] = [
        ([127, 0, 0, 0], 8, "a loopback address"),
        ([10, 0, 0, 0], 8, "a private address"),
        ([172, 16, 0, 0], 12, "a private address"),
        ([192, 168, 0, 0], 16, "a private address"),
        ([100, 64, 0, 0], 10, "a carrier-grade NAT address"),
        ([169, 254, 0, 0], 16, "a link-local address"),
        ([192, 0, 0, 0], 24, "an IETF protocol address"),
        ([198, 18, 0, 0], 15, "a benchmarking address"),
    ];
    if let Some((_, _, what)) = NEVER.iter().find(|(n, p, _)| in_v4(ip, *n, *p)) {
        return Class::Never(what);
    }
    if let Some((_, _, what)) = PRIVATE.iter().find(|(n, p, _)| in_v4(ip, *n, *p)) {
        return Class::Private(what);
    }
    Class::Public
}

fn classify_v6(ip: Ipv6Addr) -> Class {
    let s = ip.segments();
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    if ip.is_unspecified() {
        return Class::Never("the unspecified address");
    }
    if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        return Class::Never("the cloud metadata address");
    }
    if s[0] & 0xff00 == 0xff00 {
        return Class::Never("a multicast address");
    }
    if ip.is_loopback() {
        return Class::Private("a loopback address");
    }
    if s[0] & 0xffc0 == 0xfe80 {
        return Class::Private("a link-local address");
    }
    if s[0] & 0xffc0 == 0xfec0 {
        return Class::Private("a site-local address");
    }
    if s[0] & 0xfe00 == 0xfc00 {
        return Class::Private("a unique-local (private) address");
    }
    Class::Public
}

/// The IPv4 address an IPv6 address stands for, in the forms that route to it.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        // IPv4-mapped ::ffff:a.b.c.d
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(low),
        // IPv4-compatible ::a.b.c.d (deprecated; not ::, ::1)
        [0, 0, 0, 0, 0, 0, _, _] if u32::from(low) > 1 => Some(low),
        // NAT64 well-known prefix 64:ff9b::/96
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        // 6to4 2002:aabb:ccdd::/48
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

/// Whether `ip` belongs to one of this host's interfaces: binding a socket to an address
/// succeeds only for local ones. This is what catches ddms' own (public) listen address and
/// services bound to 0.0.0.0 reached through it.
fn is_own_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Resolves `host` with tokio's resolver and checks every address; all must pass, so that a
/// name mixing public and private addresses is refused as a whole.
pub async fn resolve_checked(
    host: &str,
    port: u16,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, ResolveError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| ResolveError::Lookup(format!("cannot resolve {host}: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(ResolveError::Lookup(format!("{host} has no address")));
    }
    for addr in &addrs {
        check_ip(addr.ip(), allow_private).map_err(ResolveError::Refused)?;
    }
    Ok(addrs)
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// DNS failed: may work later.
    #[error("{0}")]
    Lookup(String),
    #[error("{0}")]
    Refused(RefusedTarget),
}

/// reqwest's DNS resolver for channel requests: the connection goes to the addresses checked
/// here and nowhere else. (Literal-IP URLs bypass resolvers; the delivery code checks those.)
pub struct GuardedResolver {
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            match resolve_checked(name.as_str(), 0, allow_private).await {
                Ok(addrs) => Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs),
                Err(e) => Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
            }
        })
    }
}

impl GuardedResolver {
    pub fn shared(allow_private: bool) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver { allow_private })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_classified() {
        // (address, allowed by default, allowed with both flags)
        let table: &[(&str, bool, bool)] = &[
            ("93.184.215.14", true, true),
            ("1.1.1.1", true, true),
            ("2606:4700:4700::1111", true, true),
            ("127.0.0.1", false, true),
            ("127.255.0.9", false, true),
            ("10.1.2.3", false, true),
            ("172.16.0.1", false, true),
            ("172.31.255.255", false, true),
            ("172.32.0.1", true, true),
            ("192.168.1.1", false, true),
            ("100.64.0.1", false, true),
            ("100.127.255.254", false, true),
            ("100.128.0.1", true, true),
            ("169.254.1.1", false, true),
            ("198.18.0.1", false, true),
            ("169.254.169.254", false, false),
            ("0.0.0.0", false, false),
            ("0.1.2.3", false, false),
            ("255.255.255.255", false, false),
            ("224.0.0.1", false, false),
            ("239.255.255.250", false, false),
            ("240.0.0.1", false, false),
            ("::1", false, true),
            ("::", false, false),
            ("fe80::1", false, true),
            ("febf::1", false, true),
            ("fc00::1", false, true),
            ("fd12:3456::1", false, true),
            ("ff02::1", false, false),
            ("fd00:ec2::254", false, false),
            ("::ffff:127.0.0.1", false, true),
            ("::ffff:10.0.0.1", false, true),
            ("::ffff:169.254.169.254", false, false),
            ("::ffff:8.8.8.8", true, true),
            ("::127.0.0.1", false, true),
            ("64:ff9b::a9fe:a9fe", false, false),
            ("64:ff9b::808:808", true, true),
            ("2002:7f00:1::", false, true),
            ("2002:0808:0808::", true, true),
        ];
        for (text, by_default, with_flags) in table {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(
                check_ip(ip, false).is_ok(),
                *by_default,
                "{text} by default"
            );
            assert_eq!(check_ip(ip, true).is_ok(), *with_flags, "{text} with flags");
        }
    }

    #[test]
    fn refusal_says_why_and_what_would_allow_it() {
        let err = check_ip("10.0.0.1".parse().unwrap(), false).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("10.0.0.1 is a private address"), "{text}");
        assert!(text.contains("alerts.allow_private_targets"), "{text}");
        let err = check_ip("169.254.169.254".parse().unwrap(), true).unwrap_err();
        assert!(err.to_string().contains("metadata"), "{err}");
    }

    #[tokio::test]
    async fn names_are_resolved_and_every_address_checked() {
        let err = resolve_checked("localhost", 80, false).await.unwrap_err();
        assert!(matches!(err, ResolveError::Refused(_)), "{err}");
        let addrs = resolve_checked("localhost", 80, true).await.unwrap();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
        let err = resolve_checked("does-not-exist.invalid", 80, true)
            .await
            .unwrap_err();
        assert!(matches!(err, ResolveError::Lookup(_)), "{err}");
    }
}
