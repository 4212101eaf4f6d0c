//! Backend host names, resolved off the request path.
//!
//! Each `host:port` of an endpoint is a [`Target`] whose address is looked up
//! when it first appears and again every few seconds by a background thread,
//! so a backend Service created after its API, or one whose address changes,
//! is followed without a reload, and a DNS hiccup never rejects an API.
//! Requests read the last good address with one atomic load.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;

/// One `host:port` and its current address.
#[derive(Debug)]
pub struct Target {
    pub host: String,
    pub port: u16,
    addr: ArcSwapOption<SocketAddr>,
    error: ArcSwapOption<String>,
}

impl Target {
    /// The address to connect to; None while the host does not resolve.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr.load().as_deref().copied()
    }

    /// Why the host does not resolve (None when it does).
    pub fn error(&self) -> Option<String> {
        self.error.load().as_deref().cloned()
    }

    fn refresh(&self) {
        match lookup(&self.host, self.port) {
            Ok(a) => {
                if self.addr() != Some(a) {
                    if let Some(old) = self.addr() {
                        tracing::info!(host = %self.host, port = self.port, %old, new = %a, "backend address changed");
                    }
                    self.addr.store(Some(Arc::new(a)));
                }
                self.error.store(None);
            }
            Err(e) => {
                // Keep the last good address: a resolver hiccup must not cut traffic.
                if self.error().as_deref() != Some(e.as_str()) {
                    tracing::warn!(host = %self.host, port = self.port, error = %e, "backend host does not resolve");
                }
                self.error.store(Some(Arc::new(e)));
            }
        }
    }
}

fn lookup(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    (host, port).to_socket_addrs().map_err(|e| e.to_string())?.next().ok_or_else(|| "no address".to_string())
}

/// All targets in use, shared across reloads.
#[derive(Default)]
pub struct DnsCache {
    targets: Mutex<HashMap<(String, u16), Weak<Target>>>,
}

impl DnsCache {
    /// The target for `host:port`, resolved once now if it is new.
    pub fn target(&self, host: &str, port: u16) -> Arc<Target> {
        let key = (host.to_string(), port);
        if let Some(t) = self.targets.lock().get(&key).and_then(Weak::upgrade) {
            return t;
        }
        let t = Arc::new(Target {
            host: host.to_string(),
            port,
            addr: ArcSwapOption::empty(),
            error: ArcSwapOption::empty(),
        });
        t.refresh();
        self.targets.lock().insert(key, Arc::downgrade(&t));
        t
    }

    /// Looks every live target up again; forgets the ones no API uses.
    pub fn refresh(&self) {
        let live: Vec<Arc<Target>> = {
            let mut map = self.targets.lock();
            map.retain(|_, w| w.strong_count() > 0);
            map.values().filter_map(Weak::upgrade).collect()
        };
        for t in live {
            if t.host.parse::<IpAddr>().is_err() {
                t.refresh();
            }
        }
    }

    /// Refresh every `every` on a thread of its own (lookups block).
    pub fn spawn_refresher(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new().name("tollgate-dns".into()).spawn(move || {
            loop {
                std::thread::sleep(every);
                match weak.upgrade() {
                    Some(cache) => cache.refresh(),
                    None => return,
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the DNS refresher; backend addresses stay as first resolved");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_resolve_at_once_and_targets_are_shared() {
        let cache = DnsCache::default();
        let a = cache.target("127.0.0.1", 8080);
        assert_eq!(a.addr(), Some("127.0.0.1:8080".parse().unwrap()));
        let b = cache.target("127.0.0.1", 8080);
        assert!(Arc::ptr_eq(&a, &b), "one target per host:port");
        drop((a, b));
        cache.refresh();
        assert!(cache.targets.lock().is_empty(), "unused targets are forgotten");
    }

    #[test]
    fn unresolvable_hosts_report_why_and_do_not_panic() {
        let cache = DnsCache::default();
        let t = cache.target("does-not-exist.invalid", 80);
        assert_eq!(t.addr(), None);
        assert!(t.error().is_some());
        cache.refresh();
        assert_eq!(t.addr(), None);
    }

    #[test]
    fn localhost_resolves_by_name() {
        let cache = DnsCache::default();
        let t = cache.target("localhost", 9);
        assert!(t.addr().is_some_and(|a| a.ip().is_loopback()), "{:?}", t.error());
    }
}
