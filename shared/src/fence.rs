//! The fence around URLs a tenant gives (agent routes): requests to them never reach the
//! deployment's own network. An address is refused when it is loopback, private, link-local
//! (cloud metadata at 169.254.169.254 included), shared (100.64/10), multicast, unspecified,
//! reserved or broadcast, or an IPv6 form of one of those, unless it lies in a network the
//! operator allows (`AGENT_ALLOWED_NETWORKS`, for a local agent in development and tests).
//!
//! Checked twice: when a route is saved (every address the name resolves to), and when the
//! worker connects (its HTTP client resolves names through [`FencedResolver`], and a URL whose
//! host is an address is checked before the request), since DNS may change between the two.
//! Redirects are not followed by that client.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    str::FromStr,
    sync::Arc,
};

/// An IP network, `10.0.0.0/8` or `fd00::/8` (a bare address is a network of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP network (e.g. 10.0.0.0/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Network { addr, prefix })
    }
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Why an address is not for tenants' URLs, if it is not.
pub fn internal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => {
            // An IPv4 address written as IPv6 (mapped, or NAT64's well-known prefix) is that
            // IPv4 address.
            if let Some(v4) = v6.to_ipv4_mapped() {
                return internal_v4(v4);
            }
            let s = v6.segments();
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                return internal_v4(Ipv4Addr::new(
                    (s[6] >> 8) as u8,
                    s[6] as u8,
                    (s[7] >> 8) as u8,
                    s[7] as u8,
                ));
            }
            internal_v6(v6)
        }
    }
}

fn internal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(match o {
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_private() => "private",
        [169, 254, 169, 254] => "cloud metadata",
        _ if ip.is_link_local() => "link-local",
        [100, 64..=127, _, _] => "shared address space (100.64/10)",
        _ if ip.is_multicast() => "multicast",
        _ if ip.is_broadcast() => "broadcast",
        [0, ..] => "unspecified (0/8)",
        [192, 0, 0, _] => "IETF protocol assignments (192.0.0/24)",
        [198, 18..=19, _, _] => "benchmarking (198.18/15)",
        [240..=255, ..] => "reserved (240/4)",
        _ => return None,
    })
}

fn internal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    Some(match first {
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_multicast() => "multicast",
        f if f & 0xfe00 == 0xfc00 => "private (unique local, fc00::/7)",
        f if f & 0xffc0 == 0xfe80 => "link-local",
        f if f & 0xffc0 == 0xfec0 => "site-local",
        _ => return None,
    })
}

/// The fence: internal addresses refused, except in the networks the operator allows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fence {
    allowed: Vec<Network>,
}

impl Fence {
    /// From `AGENT_ALLOWED_NETWORKS`: networks separated by commas (empty: none).
    pub fn parse(setting: &str) -> Result<Self, String> {
        let allowed = setting
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Network::from_str)
            .collect::<Result<_, _>>()?;
        Ok(Fence { allowed })
    }

    /// Why `ip` is refused, if it is.
    pub fn refuses(&self, ip: IpAddr) -> Option<&'static str> {
        let why = internal(ip)?;
        (!self.allowed.iter().any(|n| n.contains(ip))).then_some(why)
    }

    /// Checks a URL's host: an address directly, a name by every address it resolves to now.
    /// The problem, for people, if any. A name that does not resolve yet passes (its addresses
    /// are checked when the worker connects).
    pub async fn check_url(&self, url: &url::Url) -> Result<(), String> {
        let port = url.port_or_known_default().unwrap_or(80);
        let addrs: Vec<IpAddr> = match url.host() {
            None => return Err("has no host".into()),
            Some(url::Host::Ipv4(ip)) => vec![IpAddr::V4(ip)],
            Some(url::Host::Ipv6(ip)) => vec![IpAddr::V6(ip)],
            Some(url::Host::Domain(name)) => match tokio::net::lookup_host((name, port)).await {
                Ok(found) => found.map(|a| a.ip()).collect(),
                Err(_) => return Ok(()),
            },
        };
        self.check_addrs(&addrs)
    }

    /// Checks only an address written in the URL (names are checked by [`FencedResolver`]).
    pub fn check_literal(&self, url: &url::Url) -> Result<(), String> {
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check_addrs(&[IpAddr::V4(ip)]),
            Some(url::Host::Ipv6(ip)) => self.check_addrs(&[IpAddr::V6(ip)]),
            _ => Ok(()),
        }
    }

    fn check_addrs(&self, addrs: &[IpAddr]) -> Result<(), String> {
        match addrs.iter().find_map(|ip| Some((ip, self.refuses(*ip)?))) {
            Some((ip, why)) => Err(format!(
                "reaches {ip}, a {why} address: internal addresses are refused \
                 (AGENT_ALLOWED_NETWORKS allows networks)"
            )),
            None => Ok(()),
        }
    }
}

/// A resolver for reqwest that drops the addresses the fence refuses, at connection time; a name
/// left with none fails to resolve.
#[derive(Debug, Clone)]
pub struct FencedResolver(pub Arc<Fence>);

impl reqwest::dns::Resolve for FencedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let fence = self.0.clone();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| fence.refuses(a.ip()).is_none())
                .collect();
            if allowed.is_empty() {
                let refused: Box<dyn std::error::Error + Send + Sync> = format!(
                    "{} resolves only to addresses the fence refuses",
                    name.as_str()
                )
                .into();
                return Err(refused);
            }
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// An HTTP client for tenants' URLs: names resolved through the fence, no redirects.
pub fn client(fence: Arc<Fence>) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(FencedResolver(fence)))
        .build()
        .expect("TLS backend initialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_and_why() {
        let table: &[(&str, Option<&str>)] = &[
            ("127.0.0.1", Some("loopback")),
            ("10.1.2.3", Some("private")),
            ("172.16.0.1", Some("private")),
            ("172.32.0.1", None),
            ("192.168.1.1", Some("private")),
            ("169.254.169.254", Some("cloud metadata")),
            ("169.254.1.1", Some("link-local")),
            ("100.64.0.1", Some("shared address space (100.64/10)")),
            ("100.128.0.1", None),
            ("224.0.0.1", Some("multicast")),
            ("255.255.255.255", Some("broadcast")),
            ("0.0.0.0", Some("unspecified (0/8)")),
            ("240.0.0.1", Some("reserved (240/4)")),
            ("198.18.0.1", Some("benchmarking (198.18/15)")),
            ("8.8.8.8", None),
            ("::1", Some("loopback")),
            ("::", Some("unspecified")),
            ("fd00:ec2::254", Some("private (unique local, fc00::/7)")),
            ("fe80::1", Some("link-local")),
            ("ff02::1", Some("multicast")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("::ffff:169.254.169.254", Some("cloud metadata")),
            ("64:ff9b::a9fe:a9fe", Some("cloud metadata")),
            ("2001:4860:4860::8888", None),
        ];
        for (ip, want) in table {
            assert_eq!(internal(ip.parse().unwrap()), *want, "{ip}");
        }
    }

    #[test]
    fn allowed_networks_open_the_fence_only_where_they_say() {
        let fence = Fence::parse("127.0.0.0/8, ::1").unwrap();
        let table = [
            ("127.0.0.1", None),
            ("127.255.0.9", None),
            ("::1", None),
            ("10.0.0.1", Some("private")),
            ("169.254.169.254", Some("cloud metadata")),
        ];
        for (ip, want) in table {
            assert_eq!(fence.refuses(ip.parse().unwrap()), want, "{ip}");
        }
        assert_eq!(Fence::parse("").unwrap(), Fence::default());
        for bad in ["10.0.0.0/33", "nonsense", "::/129"] {
            assert!(Fence::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn urls_are_checked_by_every_address() {
        let fence = Fence::default();
        let url = |s: &str| url::Url::parse(s).unwrap();
        assert!(fence.check_url(&url("http://127.0.0.1:9/")).await.is_err());
        assert!(fence.check_url(&url("http://[::1]/")).await.is_err());
        assert!(fence.check_url(&url("http://localhost/")).await.is_err());
        assert!(
            fence
                .check_url(&url("http://169.254.169.254/latest"))
                .await
                .is_err()
        );
        assert!(fence.check_literal(&url("http://10.0.0.1/")).is_err());
        assert!(fence.check_literal(&url("http://example.invalid/")).is_ok());
        assert!(
            fence
                .check_url(&url("http://example.invalid/"))
                .await
                .is_ok()
        );
        let open = Fence::parse("127.0.0.0/8,::1").unwrap();
        assert!(open.check_url(&url("http://127.0.0.1:9/")).await.is_ok());
    }
}
