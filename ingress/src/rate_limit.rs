//! Per-source limit on invalid webhook signatures. Twilio signs every webhook, so a source that
//! keeps sending bad or missing signatures is probing or flooding: after
//! `INVALID_SIGNATURE_LIMIT` of them within `INVALID_SIGNATURE_WINDOW_SECS`, every webhook
//! request from it is answered 429 until the window that began with its first failure ends.
//! That answer comes before the body is read and before any HMAC, so it costs next to nothing.
//!
//! A source in the penalty box is refused even with a valid signature: telling valid from
//! invalid would mean reading the body and computing the HMAC, the very work being limited.
//! Twilio's own requests never fail the check, so they are never boxed, unless every request
//! seems to come from one address (a proxy in front while `TRUST_FORWARDED_HEADERS` is off).

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::{HeaderMap, request::Parts},
};
use moka::sync::Cache;

use crate::{AppState, error::ApiError};

/// Most sources tracked at once; beyond it the cache evicts (memory stays bounded under a flood
/// from many addresses).
const MAX_SOURCES: u64 = 100_000;

/// The failures of one source in its current window.
struct Strikes {
    since: Instant,
    count: AtomicU32,
}

pub struct InvalidSignatureLimit {
    limit: u32,
    window: Duration,
    strikes: Cache<IpAddr, Arc<Strikes>>,
}

impl InvalidSignatureLimit {
    /// None when `limit` is 0 (the limit is off).
    pub fn new(limit: u32, window: Duration) -> Option<Self> {
        (limit > 0 && !window.is_zero()).then(|| Self {
            limit,
            window,
            // An entry lives one window from the source's first failure: a fixed window.
            strikes: Cache::builder()
                .max_capacity(MAX_SOURCES)
                .time_to_live(window)
                .build(),
        })
    }

    /// How long `source` is still refused, if it is over its limit.
    pub fn check(&self, source: IpAddr) -> Option<Duration> {
        // `contains_key` is not a cache read: a source without failures (Twilio) costs a lookup.
        if !self.strikes.contains_key(&source) {
            return None;
        }
        let strikes = self.strikes.get(&source)?;
        if strikes.count.load(Ordering::Relaxed) < self.limit {
            return None;
        }
        Some(self.window.saturating_sub(strikes.since.elapsed()))
    }

    /// Counts a missing or invalid signature from `source`.
    pub fn strike(&self, source: IpAddr) {
        let strikes = self.strikes.get_with(source, || {
            Arc::new(Strikes {
                since: Instant::now(),
                count: AtomicU32::new(0),
            })
        });
        if strikes.count.fetch_add(1, Ordering::Relaxed) + 1 == self.limit {
            tracing::warn!(
                source = %source,
                limit = self.limit,
                window_secs = self.window.as_secs(),
                "webhook source rate limited after repeated invalid signatures"
            );
        }
    }
}

/// The address a request comes from: the peer, or, when forwarded headers are trusted, the last
/// `X-Forwarded-For` entry, the one our proxy appended (earlier entries are whatever the client
/// wrote, so trusting the first would let anyone pose as Twilio and get it limited). An IPv6
/// address counts by its /64, which one host usually holds whole.
pub fn client_ip(
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    trust_forwarded: bool,
) -> Option<IpAddr> {
    let forwarded = trust_forwarded
        .then(|| headers.get_all("x-forwarded-for").iter().next_back())
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .map(str::trim)
        .and_then(|v| {
            v.parse::<IpAddr>()
                .ok()
                .or_else(|| v.parse::<SocketAddr>().ok().map(|s| s.ip()))
        });
    let ip = forwarded.or(peer.map(|p| p.ip()))?.to_canonical();
    Some(match ip {
        IpAddr::V6(v6) => {
            let [a, b, c, d, ..] = v6.segments();
            IpAddr::V6(Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
        }
        v4 => v4,
    })
}

/// Extractor for the webhook handlers: the request's source, or a 429 when that source is over
/// its limit. It reads only the head, so put it before the body.
#[derive(Debug, Clone, Copy)]
pub struct WebhookSource(pub Option<IpAddr>);

impl WebhookSource {
    /// Counts a missing or invalid signature against this source.
    pub fn strike(self, state: &AppState) {
        if let (Some(limit), Some(ip)) = (&state.invalid_signatures, self.0) {
            limit.strike(ip);
        }
    }
}

impl FromRequestParts<AppState> for WebhookSource {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(limit) = &state.invalid_signatures else {
            return Ok(Self(None));
        };
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        let ip = client_ip(&parts.headers, peer, state.cfg.trust_forwarded_headers);
        if let Some(retry_after) = ip.and_then(|ip| limit.check(ip)) {
            state.metrics.webhook_rate_limited();
            return Err(ApiError::RateLimited { retry_after });
        }
        Ok(Self(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_source_is_limited_after_its_quota_and_others_are_not() {
        let limit = InvalidSignatureLimit::new(3, Duration::from_secs(60)).unwrap();
        let (bad, good) = (ip("203.0.113.9"), ip("198.51.100.7"));
        for _ in 0..3 {
            assert_eq!(limit.check(bad), None);
            limit.strike(bad);
        }
        let retry_after = limit.check(bad).expect("limited after 3");
        assert!(retry_after <= Duration::from_secs(60) && retry_after > Duration::from_secs(50));
        assert_eq!(limit.check(good), None);
        assert!(InvalidSignatureLimit::new(0, Duration::from_secs(60)).is_none());
    }

    #[test]
    fn the_limit_ends_with_the_window() {
        let limit = InvalidSignatureLimit::new(1, Duration::from_millis(50)).unwrap();
        let bad = ip("203.0.113.9");
        limit.strike(bad);
        assert!(limit.check(bad).is_some());
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(limit.check(bad), None);
    }

    #[test]
    fn the_source_is_the_peer_or_the_proxys_last_hop() {
        let peer = Some(SocketAddr::from(([10, 0, 0, 1], 5000)));
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "198.51.100.7, 203.0.113.9".parse().unwrap(),
        );
        assert_eq!(client_ip(&headers, peer, false), Some(ip("10.0.0.1")));
        assert_eq!(client_ip(&headers, peer, true), Some(ip("203.0.113.9")));
        headers.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(client_ip(&headers, peer, true), Some(ip("10.0.0.1")));
        // IPv4-mapped IPv6 is the IPv4 address; IPv6 counts by /64.
        let mapped = Some("[::ffff:192.0.2.1]:1".parse().unwrap());
        assert_eq!(
            client_ip(&HeaderMap::new(), mapped, false),
            Some(ip("192.0.2.1"))
        );
        let v6 = Some("[2001:db8:1:2:3:4:5:6]:1".parse().unwrap());
        assert_eq!(
            client_ip(&HeaderMap::new(), v6, false),
            Some(ip("2001:db8:1:2::"))
        );
        assert_eq!(client_ip(&HeaderMap::new(), None, false), None);
    }
}
