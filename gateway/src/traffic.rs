//! The traffic manager: cluster-wide throttling through Redis.
//!
//! A ThrottlePolicy with `scope: Cluster` counts across every gateway of an
//! ApiManager. To keep Redis off most requests, each gateway *leases* a share
//! of a window's remaining quota with one atomic Lua script (the share is
//! added to the shared counter at once), then admits locally until the lease
//! is spent. Admissions across all gateways therefore never exceed the limit;
//! what a gateway leased but did not use before the window ends is lost
//! (under-admission, bounded as described in docs/traffic-manager.md). Once
//! Redis reports a window exhausted, the gateway refuses locally until the
//! window ends, without asking again.
//!
//! Redis failures (or answers slower than `--redis-timeout-ms`) switch the
//! gateway to degraded mode at once: `Open` counts locally (per gateway),
//! `Closed` refuses with 503. A prober reconnects every second and cluster
//! counting resumes as soon as Redis answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;

use crate::throttle::{Decision, Window, now_ms};

/// What to do while Redis is unreachable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum FailureMode {
    /// Keep serving; count in this gateway only.
    Open,
    /// Refuse throttled traffic with 503.
    Closed,
}

/// Lease sizes: a lease takes 1/LEASE_DIVISOR of what remains (at least 1,
/// at most `max_lease`), so leases shrink as the quota runs out.
pub const LEASE_DIVISOR: u64 = 8;

/// Local leases kept at most (one per counter key seen recently).
const MAX_LEASES: u64 = 100_000;

/// Atomically grants up to a share of the remaining quota of one window.
/// KEYS[1] counter; ARGV: limit, divisor, max lease, ttl ms.
/// Returns {granted, used after grant}.
const LEASE_SCRIPT: &str = r#"
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local limit = tonumber(ARGV[1])
local remaining = limit - used
if remaining <= 0 then return {0, used} end
local grant = math.floor(remaining / tonumber(ARGV[2]))
if grant < 1 then grant = 1 end
local maxl = tonumber(ARGV[3])
if grant > maxl then grant = maxl end
local now = redis.call('INCRBY', KEYS[1], grant)
if now == grant then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
return {grant, now}
"#;

/// How to reach Redis, parsed from `--redis-url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `redis://` or `rediss://` (TLS): one server.
    Single(String),
    /// `redis+sentinel://host:port[,host:port...]/<master-name>[/db]`.
    Sentinel { sentinels: Vec<String>, master: String, db: i64, tls: bool },
    /// `redis+cluster://host:port[,host:port...]` (or `rediss+cluster://`).
    Cluster { nodes: Vec<String> },
}

/// Parses the URL forms above.
pub fn parse_endpoint(url: &str) -> Result<Endpoint, String> {
    let scheme_end = url.find("://").ok_or_else(|| format!("{url:?} is not a redis URL"))?;
    let (scheme, rest) = (&url[..scheme_end], &url[scheme_end + 3..]);
    let hosts = |s: &str, default_port: u16, tls: bool| -> Result<Vec<String>, String> {
        let list: Vec<String> = s
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| {
                let with_port = if h.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
                    h.to_string()
                } else {
                    format!("{h}:{default_port}")
                };
                format!("{}://{with_port}", if tls { "rediss" } else { "redis" })
            })
            .collect();
        if list.is_empty() { Err(format!("{url:?} names no hosts")) } else { Ok(list) }
    };
    match scheme {
        "redis" | "rediss" => {
            redis::Client::open(url).map_err(|e| format!("{url:?}: {e}"))?;
            Ok(Endpoint::Single(url.to_string()))
        }
        "redis+sentinel" | "rediss+sentinel" => {
            let tls = scheme.starts_with("rediss");
            let mut parts = rest.splitn(3, '/');
            let sentinels = hosts(parts.next().unwrap_or(""), 26379, tls)?;
            let master = parts.next().filter(|m| !m.is_empty()).ok_or("sentinel URL needs /<master-name>")?;
            let db = parts.next().filter(|d| !d.is_empty()).map(str::parse).transpose().map_err(|_| "bad db number")?;
            Ok(Endpoint::Sentinel { sentinels, master: master.to_string(), db: db.unwrap_or(0), tls })
        }
        "redis+cluster" | "rediss+cluster" => {
            let host_part = rest.split('/').next().unwrap_or("");
            Ok(Endpoint::Cluster { nodes: hosts(host_part, 6379, scheme.starts_with("rediss"))? })
        }
        other => Err(format!("unsupported scheme {other:?} (redis, rediss, redis+sentinel, redis+cluster)")),
    }
}

#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// Lease state of one counter (policy, limit, key) in this gateway.
struct Lease {
    window_end_ms: AtomicU64,
    /// Leased tokens not yet used.
    tokens: AtomicI64,
    /// Redis said the window is used up.
    exhausted: AtomicBool,
    /// The shared counter after our last lease.
    shared_used: AtomicU64,
    refill: tokio::sync::Mutex<()>,
}

/// Outcome of a cluster-wide count.
pub enum ClusterCount {
    Counted(Decision),
    /// Redis is unreachable: apply the failure mode.
    Unavailable,
}

/// Health of the traffic manager, for /status and metrics.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrafficStatus {
    pub state: &'static str,
    #[serde(rename = "failureMode")]
    pub failure_mode: FailureMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub struct TrafficManager {
    endpoint: Endpoint,
    prefix: String,
    pub failure_mode: FailureMode,
    timeout: Duration,
    max_lease: u64,
    conn: ArcSwapOption<Conn>,
    healthy: AtomicBool,
    degraded: ArcSwap<(u64, String)>,
    /// Local leases by counter key: bounded (TinyLFU, idle ones expire), so
    /// no request ever pays for trimming it. An evicted lease only forgets
    /// tokens it had not used yet (fewer admissions, never more).
    leases: moka::sync::Cache<u64, Arc<Lease>>,
    script: redis::Script,
    metrics: Arc<crate::metrics::Metrics>,
}

impl TrafficManager {
    /// Starts the traffic manager (its own runtime thread connects and probes).
    pub fn start(
        url: &str,
        prefix: &str,
        failure_mode: FailureMode,
        timeout: Duration,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Arc<TrafficManager>, String> {
        let endpoint = parse_endpoint(url)?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("tollgate-redis".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
                match rt {
                    Ok(rt) => {
                        let _ = tx.send(Ok(rt.handle().clone()));
                        rt.block_on(std::future::pending::<()>());
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        let runtime = rx.recv().map_err(|e| e.to_string())??;
        let tm = Arc::new(TrafficManager {
            endpoint,
            prefix: prefix.to_string(),
            failure_mode,
            timeout,
            max_lease: 10_000,
            conn: ArcSwapOption::empty(),
            healthy: AtomicBool::new(false),
            degraded: ArcSwap::from_pointee((now_ms(), "not connected yet".to_string())),
            leases: moka::sync::Cache::builder()
                .max_capacity(MAX_LEASES)
                .time_to_idle(Duration::from_secs(600))
                .support_invalidation_closures()
                .build(),
            script: redis::Script::new(LEASE_SCRIPT),
            metrics,
        });
        tm.set_degraded_gauge(true);
        let weak = Arc::downgrade(&tm);
        runtime.spawn(async move {
            loop {
                let Some(tm) = weak.upgrade() else { return };
                if !tm.healthy.load(Ordering::Acquire) {
                    tm.reconnect().await;
                }
                drop(tm);
                tokio::time::sleep(Duration::from_millis(1000)).await;
            }
        });
        Ok(tm)
    }

    /// Whether cluster counting works right now.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    pub fn status(&self) -> TrafficStatus {
        if self.is_healthy() {
            TrafficStatus { state: "ok", failure_mode: self.failure_mode, since: None, error: None }
        } else {
            let d = self.degraded.load();
            TrafficStatus {
                state: "degraded",
                failure_mode: self.failure_mode,
                since: Some(d.0 / 1000),
                error: Some(d.1.clone()),
            }
        }
    }

    fn set_degraded_gauge(&self, degraded: bool) {
        let labels = crate::metrics::ResultLabels { result: "redis" };
        self.metrics.degraded.get_or_create(&labels).set(i64::from(degraded));
    }

    fn degrade(&self, why: String) {
        self.metrics.traffic_errors.inc();
        if self.healthy.swap(false, Ordering::AcqRel) {
            self.set_degraded_gauge(true);
            tracing::warn!(error = %why, mode = ?self.failure_mode, "traffic manager degraded: Redis unreachable");
            self.degraded.store(Arc::new((now_ms(), why)));
            self.conn.store(None);
        }
    }

    async fn connect(&self) -> Result<Conn, String> {
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(self.timeout));
        let err = |e: redis::RedisError| e.to_string();
        match &self.endpoint {
            Endpoint::Single(url) => {
                let client = redis::Client::open(url.as_str()).map_err(err)?;
                Ok(Conn::Single(client.get_multiplexed_async_connection_with_config(&cfg).await.map_err(err)?))
            }
            Endpoint::Sentinel { sentinels, master, db, tls } => {
                let info = redis::sentinel::SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(redis::RedisConnectionInfo::default().set_db(*db));
                let info = if *tls { info.set_tls_mode(redis::TlsMode::Secure) } else { info };
                let mut client = redis::sentinel::SentinelClient::build(
                    sentinels.clone(),
                    master.clone(),
                    Some(info),
                    redis::sentinel::SentinelServerType::Master,
                )
                .map_err(err)?;
                Ok(Conn::Single(client.get_async_connection_with_config(&cfg).await.map_err(err)?))
            }
            Endpoint::Cluster { nodes } => {
                let client = redis::cluster::ClusterClient::builder(nodes.clone())
                    .connection_timeout(self.timeout.max(Duration::from_millis(200)))
                    .response_timeout(self.timeout)
                    .build()
                    .map_err(err)?;
                Ok(Conn::Cluster(client.get_async_connection().await.map_err(err)?))
            }
        }
    }

    async fn reconnect(&self) {
        let attempt = async {
            let mut conn = self.connect().await?;
            let pong: String = match &mut conn {
                Conn::Single(c) => redis::cmd("PING").query_async(c).await,
                Conn::Cluster(c) => redis::cmd("PING").query_async(c).await,
            }
            .map_err(|e| e.to_string())?;
            if pong != "PONG" {
                return Err(format!("unexpected PING answer {pong:?}"));
            }
            Ok::<_, String>(conn)
        };
        match tokio::time::timeout(self.timeout.max(Duration::from_millis(500)) * 2, attempt).await {
            Ok(Ok(conn)) => {
                self.conn.store(Some(Arc::new(conn)));
                // Leases from before the outage are stale: start over.
                self.leases.invalidate_all();
                self.healthy.store(true, Ordering::Release);
                self.set_degraded_gauge(false);
                tracing::info!("traffic manager connected to Redis: cluster-wide counting");
            }
            Ok(Err(e)) => self.degraded.store(Arc::new((self.degraded.load().0, e))),
            Err(_) => self.degraded.store(Arc::new((self.degraded.load().0, "connect timed out".into()))),
        }
    }

    async fn lease(&self, conn: Conn, key: &str, limit: u64, ttl_ms: u64) -> Result<(u64, u64), String> {
        self.metrics.traffic_leases.inc();
        let mut invocation = self.script.key(key);
        invocation.arg(limit).arg(LEASE_DIVISOR).arg(self.max_lease.max(1)).arg(ttl_ms);
        let call = async move {
            match conn {
                Conn::Single(mut c) => invoke(&invocation, &mut c).await,
                Conn::Cluster(mut c) => invoke(&invocation, &mut c).await,
            }
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(format!("Redis did not answer within {:?}", self.timeout)),
        }
    }

    /// Counts one request against `window` for counter `key` (a hash of
    /// policy, limit and request key) cluster-wide. An exhausted window gives
    /// `allowed: false`; the caller rejects or, for a count-only policy
    /// (`stopOnQuotaReach: false`), lets the request through and flags it.
    pub async fn hit(&self, key: u64, window: Window) -> ClusterCount {
        let period_ms = window.period_secs.max(1) * 1000;
        loop {
            let now = now_ms();
            let window_end_ms = (now / period_ms + 1) * period_ms;
            let decision = |allowed: bool, remaining: u64| Decision {
                allowed,
                limit: window.requests,
                remaining,
                reset_ms: window_end_ms - now,
            };
            if !self.is_healthy() {
                return ClusterCount::Unavailable;
            }
            let lease = self.lease_slot(key, window_end_ms);
            if lease.window_end_ms.load(Ordering::Acquire) != window_end_ms {
                let _g = lease.refill.lock().await;
                if lease.window_end_ms.load(Ordering::Acquire) != window_end_ms {
                    lease.tokens.store(0, Ordering::Release);
                    lease.exhausted.store(false, Ordering::Release);
                    lease.shared_used.store(0, Ordering::Release);
                    lease.window_end_ms.store(window_end_ms, Ordering::Release);
                }
            }
            if lease.tokens.fetch_sub(1, Ordering::AcqRel) > 0 {
                let left = lease.tokens.load(Ordering::Relaxed).max(0) as u64;
                let used = lease.shared_used.load(Ordering::Relaxed);
                return ClusterCount::Counted(decision(true, window.requests.saturating_sub(used) + left));
            }
            lease.tokens.fetch_add(1, Ordering::AcqRel);
            if lease.exhausted.load(Ordering::Acquire) {
                return ClusterCount::Counted(decision(false, 0));
            }
            // Refill: one request per counter asks Redis; the others wait for it.
            let _g = lease.refill.lock().await;
            if lease.tokens.load(Ordering::Acquire) > 0 || lease.window_end_ms.load(Ordering::Acquire) != window_end_ms
            {
                continue;
            }
            if lease.exhausted.load(Ordering::Acquire) {
                return ClusterCount::Counted(decision(false, 0));
            }
            let Some(conn) = self.conn.load_full() else { return ClusterCount::Unavailable };
            let redis_key = format!("{}:{key:016x}:{window_end_ms}", self.prefix);
            // Keep the key a little past the window so late leases still see it.
            match self.lease(Conn::clone(&conn), &redis_key, window.requests, period_ms + 5_000).await {
                Ok((0, used)) => {
                    lease.shared_used.store(used, Ordering::Release);
                    lease.exhausted.store(true, Ordering::Release);
                    return ClusterCount::Counted(decision(false, 0));
                }
                Ok((granted, used)) => {
                    lease.shared_used.store(used, Ordering::Release);
                    lease.tokens.fetch_add(granted as i64, Ordering::AcqRel);
                }
                Err(e) => {
                    self.degrade(e);
                    return ClusterCount::Unavailable;
                }
            }
        }
    }

    /// Gives back one request counted for `key` in the current window of
    /// `window` (a later check refused the request): the token returns to the
    /// local lease, so no Redis round trip.
    pub fn refund(&self, key: u64, window: Window) {
        let period_ms = window.period_secs.max(1) * 1000;
        let window_end_ms = (now_ms() / period_ms + 1) * period_ms;
        let lease = self.leases.get(&key);
        if let Some(lease) = lease
            && lease.window_end_ms.load(Ordering::Acquire) == window_end_ms
        {
            lease.tokens.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn lease_slot(&self, key: u64, window_end_ms: u64) -> Arc<Lease> {
        self.leases.get_with(key, || {
            Arc::new(Lease {
                window_end_ms: AtomicU64::new(window_end_ms),
                tokens: AtomicI64::new(0),
                exhausted: AtomicBool::new(false),
                shared_used: AtomicU64::new(0),
                refill: tokio::sync::Mutex::new(()),
            })
        })
    }

    /// Forgets leases of ended windows.
    pub fn sweep(&self, now_ms: u64) {
        // Off the request path (the config-watch thread); moka applies it lazily.
        let _ = self.leases.invalidate_entries_if(move |_, l| l.window_end_ms.load(Ordering::Relaxed) <= now_ms);
    }
}

async fn invoke<C: ConnectionLike + Send>(
    invocation: &redis::ScriptInvocation<'_>,
    conn: &mut C,
) -> Result<(u64, u64), String> {
    invocation.invoke_async::<(u64, u64)>(conn).await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms() {
        assert_eq!(
            parse_endpoint("redis://127.0.0.1:6379/0").unwrap(),
            Endpoint::Single("redis://127.0.0.1:6379/0".into())
        );
        assert_eq!(
            parse_endpoint("redis+sentinel://s1,s2:26380/mymaster/2").unwrap(),
            Endpoint::Sentinel {
                sentinels: vec!["redis://s1:26379".into(), "redis://s2:26380".into()],
                master: "mymaster".into(),
                db: 2,
                tls: false
            }
        );
        assert_eq!(
            parse_endpoint("rediss+cluster://n1:7000,n2:7001").unwrap(),
            Endpoint::Cluster { nodes: vec!["rediss://n1:7000".into(), "rediss://n2:7001".into()] }
        );
        for bad in ["http://x", "redis+sentinel://s1", "redis+cluster://", "nonsense"] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }
}
