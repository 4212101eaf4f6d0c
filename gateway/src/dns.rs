//! Backend host names, resolved off the request path.
//!
//! Each `host:port` of an endpoint is a [`Target`] whose addresses are looked
//! up when it first appears and again every few seconds by a background
//! thread, so a backend Service created after its API, or one whose address
//! changes, is followed without a reload, and a DNS hiccup never rejects an
//! API. Requests read the last good addresses with one atomic load and take
//! them in turn (a name with several A/AAAA records, such as a headless
//! Service, spreads its connections).
//!
//! Compiling a snapshot never looks anything up: new names are queued and
//! [`DnsCache::resolve_pending`] resolves them in parallel, with a bounded
//! wait, before the snapshot is swapped in.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;

/// Looks a `host:port` up: every address, in the resolver's order.
pub type Resolver = dyn Fn(&str, u16) -> Result<Vec<SocketAddr>, String> + Send + Sync;

/// One `host:port` and its current addresses.
pub struct Target {
    pub host: String,
    pub port: u16,
    addrs: ArcSwapOption<Vec<SocketAddr>>,
    next: AtomicUsize,
    error: ArcSwapOption<String>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("host", &self.host).field("port", &self.port).finish()
    }
}

impl Target {
    fn new(host: &str, port: u16) -> Target {
        Target {
            host: host.to_string(),
            port,
            addrs: ArcSwapOption::empty(),
            next: AtomicUsize::new(0),
            error: ArcSwapOption::empty(),
        }
    }

    /// The address to connect to, taking the host's addresses in turn; None
    /// while the host does not resolve.
    pub fn addr(&self) -> Option<SocketAddr> {
        let addrs = self.addrs.load();
        let addrs = addrs.as_deref()?;
        match addrs.len() {
            0 => None,
            1 => Some(addrs[0]),
            n => Some(addrs[self.next.fetch_add(1, Ordering::Relaxed) % n]),
        }
    }

    /// Every current address.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.addrs.load().as_deref().cloned().unwrap_or_default()
    }

    /// Why the host does not resolve (None when it does).
    pub fn error(&self) -> Option<String> {
        self.error.load().as_deref().cloned()
    }

    fn refresh(&self, resolver: &Resolver) {
        match resolver(&self.host, self.port) {
            Ok(a) if !a.is_empty() => {
                let old = self.addrs();
                if old != a {
                    if !old.is_empty() {
                        tracing::info!(host = %self.host, port = self.port, ?old, new = ?a, "backend addresses changed");
                    }
                    self.addrs.store(Some(Arc::new(a)));
                }
                self.error.store(None);
            }
            other => {
                let e = other.err().unwrap_or_else(|| "no address".to_string());
                // Keep the last good addresses: a resolver hiccup must not cut traffic.
                if self.error().as_deref() != Some(e.as_str()) {
                    tracing::warn!(host = %self.host, port = self.port, error = %e, "backend host does not resolve");
                }
                self.error.store(Some(Arc::new(e)));
            }
        }
    }
}

/// The system resolver (getaddrinfo): every address of the name.
pub fn system_lookup(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let mut addrs: Vec<SocketAddr> = (host, port).to_socket_addrs().map_err(|e| e.to_string())?.collect();
    let mut seen = std::collections::HashSet::new();
    addrs.retain(|a| seen.insert(*a));
    if addrs.is_empty() { Err("no address".to_string()) } else { Ok(addrs) }
}

/// All targets in use, shared across reloads.
pub struct DnsCache {
    targets: Mutex<HashMap<(String, u16), Weak<Target>>>,
    /// New names not looked up yet.
    pending: Mutex<Vec<Arc<Target>>>,
    resolver: Arc<Resolver>,
}

impl Default for DnsCache {
    fn default() -> Self {
        DnsCache::with_resolver(Arc::new(system_lookup))
    }
}

/// Lookups run at once by [`DnsCache::resolve_pending`].
const PARALLEL_LOOKUPS: usize = 16;

impl DnsCache {
    /// A cache that looks names up with `resolver`.
    pub fn with_resolver(resolver: Arc<Resolver>) -> Self {
        DnsCache { targets: Mutex::default(), pending: Mutex::default(), resolver }
    }

    /// The target for `host:port`. Literal addresses are ready at once; a
    /// new name is queued for [`DnsCache::resolve_pending`] (nothing is
    /// looked up here).
    pub fn target(&self, host: &str, port: u16) -> Arc<Target> {
        let key = (host.to_string(), port);
        if let Some(t) = self.targets.lock().get(&key).and_then(Weak::upgrade) {
            return t;
        }
        let t = Arc::new(Target::new(host, port));
        if let Ok(ip) = host.parse::<IpAddr>() {
            t.addrs.store(Some(Arc::new(vec![SocketAddr::new(ip, port)])));
        } else {
            self.pending.lock().push(t.clone());
        }
        self.targets.lock().insert(key, Arc::downgrade(&t));
        t
    }

    /// Looks up the names queued since the last call, up to
    /// PARALLEL_LOOKUPS at a time, waiting at most `wait` for them; names
    /// still unresolved then are left to the background refresher.
    pub fn resolve_pending(&self, wait: Duration) {
        let pending = std::mem::take(&mut *self.pending.lock());
        if pending.is_empty() {
            return;
        }
        let deadline = Instant::now() + wait;
        let queue = Arc::new(Mutex::new(pending));
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let workers = queue.lock().len().min(PARALLEL_LOOKUPS);
        for _ in 0..workers {
            let (queue, resolver, done) = (queue.clone(), self.resolver.clone(), done_tx.clone());
            let spawned = std::thread::Builder::new().name("tollgate-dns-lookup".into()).spawn(move || {
                loop {
                    let Some(t) = queue.lock().pop() else { break };
                    t.refresh(&*resolver);
                }
                let _ = done.send(());
            });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start a DNS lookup thread; the refresher will resolve the rest");
            }
        }
        drop(done_tx);
        // Each worker reports once the queue is empty; when all have (or
        // died), the channel disconnects.
        while let Ok(()) = done_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {}
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
                t.refresh(&*self.resolver);
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
        cache.resolve_pending(Duration::from_secs(10));
        assert_eq!(t.addr(), None);
        assert!(t.error().is_some());
        cache.refresh();
        assert_eq!(t.addr(), None);
    }

    #[test]
    fn localhost_resolves_by_name() {
        let cache = DnsCache::default();
        let t = cache.target("localhost", 9);
        cache.resolve_pending(Duration::from_secs(10));
        assert!(t.addr().is_some_and(|a| a.ip().is_loopback()), "{:?}", t.error());
    }

    /// A resolver that counts its lookups and gives `n` addresses per name.
    fn counting(n: u8) -> (Arc<Resolver>, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let resolver: Arc<Resolver> = Arc::new(move |_host: &str, port: u16| {
            c.fetch_add(1, Ordering::SeqCst);
            Ok((1..=n).map(|i| SocketAddr::from(([10, 0, 0, i], port))).collect())
        });
        (resolver, calls)
    }

    #[test]
    fn compiling_never_looks_up_and_pending_names_resolve_once_each() {
        let (resolver, calls) = counting(1);
        let cache = DnsCache::with_resolver(resolver);
        let targets: Vec<_> = (0..40).map(|i| cache.target(&format!("svc-{i}.bank.svc"), 80)).collect();
        let again = cache.target("svc-0.bank.svc", 80);
        assert_eq!(calls.load(Ordering::SeqCst), 0, "target() looks nothing up");
        assert!(targets[0].addr().is_none());
        cache.resolve_pending(Duration::from_secs(10));
        assert_eq!(calls.load(Ordering::SeqCst), 40, "each new name once");
        assert!(targets.iter().all(|t| t.addr().is_some()) && again.addr().is_some());
        cache.resolve_pending(Duration::from_secs(10));
        assert_eq!(calls.load(Ordering::SeqCst), 40, "nothing left pending");
    }

    #[test]
    fn every_address_of_a_name_is_used_in_turn() {
        let (resolver, _) = counting(3);
        let cache = DnsCache::with_resolver(resolver);
        let t = cache.target("headless.bank.svc", 8080);
        cache.resolve_pending(Duration::from_secs(10));
        let seen: std::collections::BTreeSet<SocketAddr> = (0..9).filter_map(|_| t.addr()).collect();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert_eq!(t.addrs().len(), 3);
    }
}
