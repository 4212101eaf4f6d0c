//! Backend endpoints: weighted round robin with passive ejection.
//!
//! The schedule of an endpoint set is precomputed (smooth weighted round
//! robin) so picking an endpoint is one atomic increment. An endpoint that
//! fails to connect or times out is ejected for a while and then tried again;
//! its health lives in a registry keyed by host and port, so it survives
//! configuration reloads. Host names are resolved off the request path
//! ([`crate::dns`]); an endpoint whose host does not resolve is skipped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::dns::{DnsCache, Target};
use crate::throttle::now_ms;

/// One backend endpoint.
#[derive(Debug)]
pub struct Endpoint {
    /// The URL as configured.
    pub url: String,
    pub tls: bool,
    /// Host (for SNI and the Host header) and port.
    pub host: String,
    pub port: u16,
    /// The URL's own path without a trailing slash ("" for none).
    pub base_path: String,
    pub target: Arc<Target>,
    pub weight: u32,
    pub health: Arc<Health>,
}

/// Passive health of an address.
#[derive(Debug, Default)]
pub struct Health {
    ejected_until_ms: AtomicU64,
    consecutive_failures: AtomicU32,
}

impl Health {
    /// Whether the endpoint may be used now.
    pub fn available(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    /// Records a failure: ejects for `base` doubled per consecutive failure (at most 8x).
    pub fn fail(&self, base: Duration) {
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed).min(3);
        let until = now_ms() + base.as_millis() as u64 * (1 << n);
        self.ejected_until_ms.store(until, Ordering::Relaxed);
    }

    /// Records a success.
    pub fn succeed(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.ejected_until_ms.store(0, Ordering::Relaxed);
        }
    }
}

impl Endpoint {
    /// The address to connect to (None while the host does not resolve).
    pub fn addr(&self) -> Option<SocketAddr> {
        self.target.addr()
    }
}

/// Health by host, port and scheme, shared across reloads.
#[derive(Default)]
pub struct HealthRegistry {
    by_target: Mutex<HashMap<(String, u16, bool), Arc<Health>>>,
}

impl HealthRegistry {
    pub fn get(&self, host: &str, port: u16, tls: bool) -> Arc<Health> {
        self.by_target.lock().entry((host.to_string(), port, tls)).or_default().clone()
    }
}

/// Endpoints of one API with their round-robin schedule.
#[derive(Debug)]
pub struct EndpointSet {
    pub endpoints: Vec<Endpoint>,
    schedule: Vec<u16>,
    next: AtomicUsize,
}

/// Why an endpoint URL cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("endpoint {0:?} is not an absolute http or https URL")]
    BadUrl(String),
}

/// Splits `http(s)://host[:port][/path]`.
pub fn parse_url(url: &str) -> Result<(bool, String, u16, String), EndpointError> {
    let bad = || EndpointError::BadUrl(url.to_string());
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(bad());
    };
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| (&rest[..i], &rest[i..]));
    if authority.is_empty() || authority.contains('@') || path.contains(['?', '#']) {
        return Err(bad());
    }
    let (host, port) = if let Some(h) = authority.strip_prefix('[') {
        let end = h.find(']').ok_or_else(bad)?;
        let port = &h[end + 1..];
        (h[..end].to_string(), port.strip_prefix(':').map(|p| p.parse().map_err(|_| bad())).transpose()?)
    } else if let Some((h, p)) = authority.rsplit_once(':') {
        (h.to_string(), Some(p.parse().map_err(|_| bad())?))
    } else {
        (authority.to_string(), None)
    };
    let port = port.unwrap_or(if tls { 443 } else { 80 });
    Ok((tls, host, port, path.trim_end_matches('/').to_string()))
}

impl EndpointSet {
    /// Parses and schedules `(url, weight)` pairs; host names go to `dns`.
    pub fn build(
        items: &[(String, u32)],
        health: &HealthRegistry,
        dns: &DnsCache,
    ) -> Result<EndpointSet, EndpointError> {
        let mut endpoints = Vec::with_capacity(items.len());
        for (url, weight) in items {
            let (tls, host, port, base_path) = parse_url(url)?;
            let health = health.get(&host, port, tls);
            endpoints.push(Endpoint {
                url: url.clone(),
                tls,
                target: dns.target(&host, port),
                host,
                port,
                base_path,
                weight: *weight,
                health,
            });
        }
        let schedule = smooth_wrr(&endpoints.iter().map(|e| e.weight).collect::<Vec<_>>());
        Ok(EndpointSet { endpoints, schedule, next: AtomicUsize::new(0) })
    }

    /// Picks the next available endpoint, skipping `exclude` (indexes already
    /// tried by this request) and ejected ones; when every endpoint is
    /// ejected, the one whose ejection ends first is tried.
    pub fn pick(&self, exclude: &[usize]) -> Option<usize> {
        if self.schedule.is_empty() {
            return None;
        }
        let now = now_ms();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..self.schedule.len() {
            let idx = self.schedule[(start + i) % self.schedule.len()] as usize;
            let ep = &self.endpoints[idx];
            if !exclude.contains(&idx) && ep.health.available(now) && ep.addr().is_some() {
                return Some(idx);
            }
        }
        (0..self.endpoints.len())
            .filter(|i| !exclude.contains(i) && self.endpoints[*i].weight > 0 && self.endpoints[*i].addr().is_some())
            .min_by_key(|i| self.endpoints[*i].health.ejected_until_ms.load(Ordering::Relaxed))
    }
}

/// Smooth weighted round robin (as nginx does it), unrolled into a schedule.
fn smooth_wrr(weights: &[u32]) -> Vec<u16> {
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    if total == 0 {
        return Vec::new();
    }
    // Keep the schedule short: scale weights down by their gcd.
    let g = weights.iter().filter(|w| **w > 0).fold(0u32, |a, b| gcd(a, *b)).max(1);
    let w: Vec<i64> = weights.iter().map(|x| i64::from(*x / g)).collect();
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, wi) in current.iter_mut().zip(&w) {
            *c += wi;
        }
        let (best, _) = current.iter().enumerate().max_by_key(|(i, c)| (**c, -(*i as i64))).expect("non-empty");
        current[best] -= total;
        out.push(best as u16);
    }
    out
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        assert_eq!(parse_url("http://127.0.0.1:8080").unwrap(), (false, "127.0.0.1".into(), 8080, "".into()));
        assert_eq!(parse_url("https://bank.example/v3/").unwrap(), (true, "bank.example".into(), 443, "/v3".into()));
        assert_eq!(parse_url("http://[::1]:9/x").unwrap(), (false, "::1".into(), 9, "/x".into()));
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("http://u:p@x").is_err());
        assert!(parse_url("http://x/?q").is_err());
    }

    #[test]
    fn weighted_schedule_is_smooth_and_proportional() {
        let s = smooth_wrr(&[5, 1, 1]);
        assert_eq!(s.len(), 7);
        assert_eq!(s.iter().filter(|i| **i == 0).count(), 5);
        assert_eq!(s, vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_wrr(&[2, 2]), vec![0, 1]);
        assert!(smooth_wrr(&[0]).is_empty());
        assert_eq!(smooth_wrr(&[1, 0]), vec![0]);
    }

    #[test]
    fn ejected_endpoints_are_skipped_then_retried() {
        let reg = HealthRegistry::default();
        let dns = DnsCache::default();
        let set = EndpointSet::build(&[("http://127.0.0.1:1".into(), 1), ("http://127.0.0.1:2".into(), 1)], &reg, &dns)
            .unwrap();
        set.endpoints[0].health.fail(Duration::from_millis(200));
        for _ in 0..10 {
            assert_eq!(set.pick(&[]), Some(1));
        }
        assert_eq!(set.pick(&[1]), Some(0), "all ejected or excluded: least-recently ejected is tried");
        std::thread::sleep(Duration::from_millis(250));
        let picks: Vec<_> = (0..4).map(|_| set.pick(&[]).unwrap()).collect();
        assert!(picks.contains(&0), "retried after the ejection: {picks:?}");
    }

    #[test]
    fn endpoints_whose_host_does_not_resolve_are_skipped() {
        let reg = HealthRegistry::default();
        let dns = DnsCache::default();
        let set = EndpointSet::build(
            &[("http://no-such-backend.invalid:80/x".into(), 5), ("http://127.0.0.1:2".into(), 1)],
            &reg,
            &dns,
        )
        .expect("an unresolvable host does not reject the API");
        for _ in 0..10 {
            assert_eq!(set.pick(&[]), Some(1));
        }
        let only_bad = EndpointSet::build(&[("http://no-such-backend.invalid".into(), 1)], &reg, &dns).unwrap();
        assert_eq!(only_bad.pick(&[]), None, "nothing to connect to");
    }
}
