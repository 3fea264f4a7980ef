//! `ddms healthcheck`: probes the running instance's own `/ready` (or `/health`) on its
//! configured `http.listen`. It is the container image's `HEALTHCHECK`: the image has no shell
//! and no curl, only this binary. The request itself is the release checks' [`Probe`].
//!
//! [`Probe`]: crate::release::probe::Probe

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Which probe to ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// `/ready`: database, migrations and brokers (what `depends_on: service_healthy` means).
    Ready,
    /// `/health`: the process serves.
    Live,
}

impl Check {
    pub fn path(self) -> &'static str {
        match self {
            Check::Ready => "/ready",
            Check::Live => "/health",
        }
    }
}

/// The URL the probe asks: a wildcard listen address (`0.0.0.0`, `[::]`) is reached on the
/// loopback address of its family.
pub fn url(listen: SocketAddr, check: Check) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!(
        "http://{}{}",
        SocketAddr::new(ip, listen.port()),
        check.path()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listen_address_is_probed_on_loopback() {
        let cases = [
            ("0.0.0.0:8080", Check::Ready, "http://127.0.0.1:8080/ready"),
            ("[::]:8080", Check::Live, "http://[::1]:8080/health"),
            (
                "127.0.0.1:9000",
                Check::Ready,
                "http://127.0.0.1:9000/ready",
            ),
            ("10.1.2.3:80", Check::Live, "http://10.1.2.3:80/health"),
            (
                "[fd00::1]:8080",
                Check::Ready,
                "http://[fd00::1]:8080/ready",
            ),
        ];
        for (listen, check, expected) in cases {
            assert_eq!(url(listen.parse().unwrap(), check), expected, "{listen}");
        }
    }
}
