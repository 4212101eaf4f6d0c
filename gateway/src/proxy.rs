//! The Pingora proxy: routing, lifecycle, CORS, throttling and forwarding,
//! all in `ProxyHttp` hooks. `request_filter` answers 400/404/405/429/503
//! itself; `upstream_peer` picks the backend endpoint.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};
use tollgate_crds::api_deployment::{Lifecycle, Security};
use tollgate_crds::throttle_policy::{KeyBy, Scope};

use crate::cors;
use crate::metrics::ResultLabels;
use crate::policy::{Policy, RequestFacts};
use crate::reload::State;
use crate::respond::{Reply, send_empty};
use crate::snapshot::{Api, OpInfo, Snapshot};
use crate::store::cache::KeyCheck;
use crate::store::keys::Environment;
use crate::throttle::{Decision, Window, key_hash, now_ms};
use crate::traffic::{ClusterCount, FailureMode};

/// Requests currently being served (for drain on shutdown and the gauge).
pub static IN_FLIGHT: AtomicI64 = AtomicI64::new(0);

/// Hop-by-hop headers (RFC 9110 7.6.1), never forwarded.
const HOP_BY_HOP: [&str; 7] =
    ["connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te", "upgrade"];

/// The gateway proxy.
pub struct Gateway {
    pub state: Arc<State>,
    pub access_log: bool,
    pub eject_for: Duration,
    pub tls_listener_port: Option<u16>,
    /// Idle keep-alive limit for client connections, seconds.
    pub keepalive_timeout_secs: u64,
    /// Peers whose X-Forwarded-* headers are believed (--trusted-proxies).
    pub trusted_proxies: Arc<Vec<ipnet::IpNet>>,
}

/// Per-request state.
pub struct Ctx {
    start: Instant,
    api: Option<Arc<Api>>,
    forward_path: String,
    sandbox: bool,
    tried: Vec<usize>,
    current: Option<usize>,
    cors_headers: Vec<(String, String)>,
    ratelimit: Option<Decision>,
    flagged: Option<String>,
    bandwidth: Vec<(Arc<Policy>, u64)>,
    upstream_error: Option<&'static str>,
    /// A pooled (reused) connection to the current endpoint failed: the
    /// retry goes to the same endpoint on a fresh connection.
    retry_same_endpoint: bool,
    /// The client: the TCP peer, or from X-Forwarded-For when the peer is a
    /// trusted proxy.
    client_ip: Option<IpAddr>,
    /// The TCP peer.
    peer_ip: Option<IpAddr>,
    /// The peer is a trusted proxy (its X-Forwarded-* headers are kept).
    peer_trusted: bool,
    tls: bool,
    /// The calling application (from its API key), for keyBy Consumer.
    consumer: Option<String>,
    /// A credential header to drop before forwarding.
    strip_header: Option<String>,
}

impl Drop for Ctx {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip())
}

/// The decoded value of the first query parameter named `name`.
fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// `query` without any parameter whose decoded name is `name`; the other
/// parameters are kept byte for byte. None when nothing is left.
fn strip_query_param(query: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter(|pair| form_urlencoded::parse(pair.as_bytes()).next().is_none_or(|(k, _)| k != name))
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

fn header<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

fn ratelimit_headers(d: &Decision) -> Vec<(String, String)> {
    vec![
        ("ratelimit-limit".into(), d.limit.to_string()),
        ("ratelimit-remaining".into(), d.remaining.to_string()),
        ("ratelimit-reset".into(), d.reset_secs().to_string()),
    ]
}

/// Every value of a header, joined with ", " (None when absent).
fn joined(req: &RequestHeader, name: &str) -> Option<String> {
    let values: Vec<&str> = req.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
    (!values.is_empty()).then(|| values.join(", "))
}

fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn trusted(proxies: &[ipnet::IpNet], ip: IpAddr) -> bool {
    let ip = unmapped(ip);
    proxies.iter().any(|n| n.contains(&ip))
}

/// The client behind trusted proxies: the right-most X-Forwarded-For entry
/// that is not itself a trusted proxy. None when the header is absent or an
/// entry on the way is not an address (the peer then counts).
fn forwarded_client(req: &RequestHeader, proxies: &[ipnet::IpNet]) -> Option<IpAddr> {
    let chain = joined(req, "x-forwarded-for")?;
    for entry in chain.rsplit(',').map(str::trim) {
        let ip = entry
            .parse::<IpAddr>()
            .or_else(|_| entry.parse::<std::net::SocketAddr>().map(|a| a.ip()))
            .ok()
            .map(unmapped)?;
        if !trusted(proxies, ip) {
            return Some(ip);
        }
    }
    None
}

/// The counter key of a client address: IPv4 (also IPv4-mapped IPv6) as is,
/// IPv6 by its /64, the smallest block one subscriber is usually given, so
/// one host cannot mint unlimited keys from its own prefix.
fn client_ip_key(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.octets().to_vec(),
            None => v6.octets()[..8].to_vec(),
        },
    }
}

/// One request counted against one limit, to give back when a later check
/// refuses the request.
struct Reservation {
    policy: Arc<Policy>,
    key: u64,
    window: Window,
    cluster: bool,
}

enum Throttle {
    Pass(Option<Decision>),
    Reject(Decision, String),
    /// Redis is unreachable and the failure mode is Closed.
    Unavailable(String),
}

impl Gateway {
    /// Counts one request against one limit: cluster-wide for Cluster-scoped
    /// policies when a traffic manager is configured, else in this process.
    async fn count(
        &self,
        policy: &Arc<Policy>,
        key: u64,
        window: Window,
        count_over: bool,
        held: &mut Vec<Reservation>,
    ) -> Result<Decision, String> {
        if policy.scope == Scope::Cluster
            && let Some(tm) = &self.state.shared.traffic
        {
            match tm.hit(key, window).await {
                ClusterCount::Counted(d) => {
                    if d.allowed {
                        held.push(Reservation { policy: policy.clone(), key, window, cluster: true });
                    }
                    return Ok(d);
                }
                ClusterCount::Unavailable => {
                    let metrics = &self.state.shared.metrics;
                    match tm.failure_mode {
                        FailureMode::Open => {
                            metrics.traffic_fallback.get_or_create(&ResultLabels { result: "open" }).inc();
                        }
                        FailureMode::Closed => {
                            metrics.traffic_fallback.get_or_create(&ResultLabels { result: "closed" }).inc();
                            return Err(format!(
                                "cluster-wide throttling for policy {} is unavailable (traffic manager unreachable)",
                                policy.name
                            ));
                        }
                    }
                }
            }
        }
        let d = policy.requests.hit(key, window, 1, count_over, now_ms());
        if d.allowed || count_over {
            held.push(Reservation { policy: policy.clone(), key, window, cluster: false });
        }
        Ok(d)
    }

    /// Gives back what a request refused by a later check had counted.
    fn refund(&self, held: Vec<Reservation>) {
        for r in held {
            match (&self.state.shared.traffic, r.cluster) {
                (Some(tm), true) => tm.refund(r.key, r.window),
                _ => r.policy.requests.refund(r.key, r.window, 1, now_ms()),
            }
        }
    }

    /// Counts the request against `policy`; returns the decision to report.
    async fn check_policy(
        &self,
        policy: &Arc<Policy>,
        req: &RequestHeader,
        ctx: &mut Ctx,
        held: &mut Vec<Reservation>,
    ) -> Throttle {
        let key: Vec<u8> = match policy.key_by {
            KeyBy::Api => Vec::new(),
            KeyBy::Consumer => ctx.consumer.clone().unwrap_or_default().into_bytes(),
            KeyBy::ClientIp => ctx.client_ip.map(client_ip_key).unwrap_or_default(),
            KeyBy::Header => header(req, &policy.key_name).unwrap_or("").as_bytes().to_vec(),
            // Only verified claims count (none until OAuth2 tokens are
            // verified): a forged token must not mint its own counter.
            KeyBy::Claim => Vec::new(),
        };
        let (which, window) = {
            let header_fn = |n: &str| header(req, n);
            let claim_fn = |_: &str| None;
            let facts = RequestFacts { client_ip: ctx.client_ip, header: &header_fn, claim: &claim_fn };
            policy.limit_for(&facts)
        };
        let now = now_ms();
        let id = policy.id.as_bytes();
        let count_over = !policy.stop_on_quota_reach;
        if let Some(bw) = policy.bandwidth {
            let k = key_hash(&[id, b"bytes", &key]);
            if let Some(d) = policy.bytes.peek_exhausted(k, bw, now) {
                if policy.stop_on_quota_reach {
                    return Throttle::Reject(d, format!("bandwidth quota of policy {} reached", policy.name));
                }
                ctx.flagged = Some(policy.name.clone());
            }
            ctx.bandwidth.push((policy.clone(), k));
        }
        if let Some(burst) = policy.burst {
            let d = match self.count(policy, key_hash(&[id, b"burst", &key]), burst, count_over, held).await {
                Ok(d) => d,
                Err(why) => return Throttle::Unavailable(why),
            };
            if !d.allowed {
                if policy.stop_on_quota_reach {
                    return Throttle::Reject(d, format!("spike arrest of policy {} reached", policy.name));
                }
                ctx.flagged = Some(policy.name.clone());
            }
        }
        let d = match self.count(policy, key_hash(&[id, &[which as u8], &key]), window, count_over, held).await {
            Ok(d) => d,
            Err(why) => return Throttle::Unavailable(why),
        };
        if !d.allowed {
            if policy.stop_on_quota_reach {
                return Throttle::Reject(d, format!("quota of policy {} reached", policy.name));
            }
            ctx.flagged = Some(policy.name.clone());
        }
        Throttle::Pass(Some(d))
    }

    /// Checks the credentials `security` asks for. Ok gives the caller's
    /// subscription tier (a ThrottlePolicy counted per application).
    async fn authenticate(
        &self,
        session: &mut Session,
        snapshot: &Snapshot,
        api: &Arc<Api>,
        security: &Security,
        ctx: &mut Ctx,
    ) -> Result<Option<Arc<Policy>>, Reply> {
        let Some(api_key) = &security.api_key else {
            // OAuth2 and mTLS-bound tokens are verified by the key manager role.
            return Err(Reply::new(
                401,
                "unauthorized",
                "this API requires OAuth2 or mTLS credentials, which this gateway cannot verify yet",
            )
            .header("www-authenticate", "Bearer"));
        };
        // mtls.required is an extra requirement on top of any scheme. Client
        // certificates are not requested by the listeners yet (no client CA),
        // so no request can meet it: refuse instead of serving with less.
        if security.mtls.as_ref().is_some_and(|m| m.required) {
            return Err(Reply::new(
                401,
                "unauthorized",
                "this API requires a verified TLS client certificate (mutual TLS)",
            )
            .header("www-authenticate", "Bearer error=\"invalid_token\""));
        }
        let (presented, header_name) = match (&api_key.header, &api_key.query) {
            (_, Some(q)) if api_key.header.is_none() => {
                let presented = query_param(session.req_header().uri.query().unwrap_or(""), q);
                // The key never reaches the backend, nor any log line or
                // error summary that prints the request: drop it from the
                // request itself now.
                if presented.is_some() {
                    strip_key_from_query(session, q);
                }
                (presented, None)
            }
            (h, _) => {
                let name = h.clone().unwrap_or_else(|| "apikey".into()).to_ascii_lowercase();
                (header(session.req_header(), &name).map(str::to_string), Some(name))
            }
        };
        let challenge = "APIKey";
        let Some(key) = presented.filter(|k| !k.is_empty()) else {
            return Err(Reply::new(401, "unauthorized", "an API key is required").header("www-authenticate", challenge));
        };
        let Some(store) = &self.state.shared.store else {
            return Err(Reply::new(503, "key_check_unavailable", "this gateway has no store to check API keys"));
        };
        let grant = match store.cache.check(&store.db, &crate::store::keys::hash(&key)).await {
            KeyCheck::Valid(g) => g,
            KeyCheck::Unknown => {
                return Err(Reply::new(401, "unauthorized", "unknown API key").header("www-authenticate", challenge));
            }
            KeyCheck::Revoked => {
                return Err(Reply::new(401, "unauthorized", "revoked API key").header("www-authenticate", challenge));
            }
            KeyCheck::Unavailable => {
                return Err(Reply::new(503, "key_check_unavailable", "API keys cannot be checked right now")
                    .header("retry-after", "1"));
            }
        };
        let Some((_, tier_name)) = grant.subscriptions.iter().find(|(a, _)| *a == api.id) else {
            return Err(Reply::new(403, "forbidden", format!("the application is not subscribed to {}", api.id)));
        };
        if grant.environment == Environment::Sandbox {
            if api.sandbox.is_none() {
                return Err(Reply::new(
                    403,
                    "forbidden",
                    format!("{} has no sandbox endpoints for sandbox keys", api.id),
                ));
            }
            ctx.sandbox = true;
        }
        ctx.consumer = Some(grant.application_id.clone());
        ctx.strip_header = header_name;
        Ok(snapshot.tier_policy(api, tier_name))
    }

    async fn reject(&self, session: &mut Session, ctx: &Ctx, reply: Reply) -> pingora::Result<bool> {
        reply.send(session, &ctx.cors_headers).await?;
        Ok(true)
    }
}

/// Rewrites the downstream request's URI without the query parameter `name`.
fn strip_key_from_query(session: &mut Session, name: &str) {
    let uri = &session.req_header().uri;
    let Some(query) = uri.query() else { return };
    let target = match strip_query_param(query, name) {
        Some(q) => format!("{}?{q}", uri.path()),
        None => uri.path().to_string(),
    };
    if let Ok(new) = target.parse::<http::Uri>() {
        session.req_header_mut().set_uri(new);
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        Ctx {
            start: Instant::now(),
            api: None,
            forward_path: String::new(),
            sandbox: false,
            consumer: None,
            strip_header: None,
            tried: Vec::new(),
            current: None,
            cors_headers: Vec::new(),
            ratelimit: None,
            flagged: None,
            bandwidth: Vec::new(),
            upstream_error: None,
            retry_same_endpoint: false,
            client_ip: None,
            peer_ip: None,
            peer_trusted: false,
            tls: false,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
        // Idle keep-alive connections close after --keepalive-timeout-seconds
        // (Pingora keeps HTTP/1.1 connections forever, or for whatever the
        // client's Keep-Alive header asks); connections that are not kept
        // alive stay so.
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(self.keepalive_timeout_secs));
        }
        ctx.peer_ip = client_ip(session);
        ctx.peer_trusted = ctx.peer_ip.is_some_and(|p| trusted(&self.trusted_proxies, p));
        ctx.client_ip = if ctx.peer_trusted {
            forwarded_client(session.req_header(), &self.trusted_proxies).or(ctx.peer_ip)
        } else {
            ctx.peer_ip
        };
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let snapshot = self.state.snapshot.load_full();
        let req = session.req_header();
        let path = match crate::path::canonicalise(req.uri.path()) {
            Ok(p) => p,
            Err(why) => {
                self.state.shared.metrics.refused_paths.get_or_create(&ResultLabels { result: why.label() }).inc();
                return self.reject(session, ctx, Reply::new(400, "bad_request", why.message())).await;
            }
        };
        let Some(m) = snapshot.router.lookup(&path) else {
            return self
                .reject(session, ctx, Reply::new(404, "not_found", format!("no API is served at {path}")))
                .await;
        };
        let api = m.target.api.clone();
        let rest = path[m.prefix_len..].to_string();
        ctx.api = Some(api.clone());

        let origin = header(req, "origin").map(str::to_string);
        if let (Some(cors_cfg), Some(origin)) = (&api.cors, &origin)
            && cors::origin_allowed(cors_cfg, origin)
        {
            ctx.cors_headers = cors::response_headers(cors_cfg, origin);
        }
        if api.lifecycle == Lifecycle::Blocked {
            return self
                .reject(session, ctx, Reply::new(503, "api_blocked", format!("API {} is blocked", api.spec.context)))
                .await;
        }

        let op_path = if rest.is_empty() { "/" } else { rest.as_str() };
        let method = req.method.clone();
        let mut op: Option<&OpInfo> = None;
        let mut allow: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";
        if let Some(router) = &api.operations {
            let Ok(found) = router.at(op_path) else {
                return self
                    .reject(
                        session,
                        ctx,
                        Reply::new(404, "not_found", format!("no operation of this API matches {op_path}")),
                    )
                    .await;
            };
            let p = &api.paths[*found.value];
            allow = &p.allow;
            op = p
                .methods
                .iter()
                .find(|(m, _)| *m == method || (method == http::Method::HEAD && *m == http::Method::GET))
                .map(|(_, o)| o);
        }

        // CORS preflight, answered by the gateway.
        if method == http::Method::OPTIONS
            && let (Some(cors_cfg), Some(origin), Some(req_method)) =
                (&api.cors, &origin, header(req, "access-control-request-method"))
        {
            let hdrs = cors::preflight_headers(
                cors_cfg,
                origin,
                req_method,
                header(req, "access-control-request-headers"),
                allow,
            )
            .unwrap_or_default();
            send_empty(session, 204, &hdrs).await?;
            return Ok(true);
        }
        if api.operations.is_some() && op.is_none() {
            if method == http::Method::OPTIONS {
                send_empty(session, 204, &[("allow".into(), allow.to_string())]).await?;
                return Ok(true);
            }
            return self
                .reject(
                    session,
                    ctx,
                    Reply::new(405, "method_not_allowed", format!("{method} is not allowed on {op_path}"))
                        .header("allow", allow),
                )
                .await;
        }

        let mut tier: Option<Arc<Policy>> = None;
        if let Some(security) = &api.security {
            match self.authenticate(session, &snapshot, &api, security, ctx).await {
                Ok(t) => tier = t,
                Err(reply) => return self.reject(session, ctx, reply).await,
            }
        }

        let policies: Vec<Arc<Policy>> =
            api.policy.iter().cloned().chain(op.and_then(|o| o.policy.clone())).chain(tier).collect();
        // Check every policy; a request refused by any consumes no quota of
        // the others (what was counted is given back).
        let mut held = Vec::new();
        for policy in &policies {
            let req = session.req_header();
            let verdict = self.check_policy(policy, req, ctx, &mut held).await;
            if matches!(verdict, Throttle::Reject(..) | Throttle::Unavailable(_)) {
                self.refund(std::mem::take(&mut held));
                ctx.bandwidth.clear();
                ctx.flagged = None;
            }
            match verdict {
                Throttle::Pass(Some(d)) => {
                    if ctx.ratelimit.is_none_or(|cur| d.remaining < cur.remaining) {
                        ctx.ratelimit = Some(d);
                    }
                }
                Throttle::Pass(None) => {}
                Throttle::Unavailable(message) => {
                    self.state.shared.metrics.throttled(&policy.id, "unavailable").inc();
                    let reply = Reply::new(503, "traffic_manager_unavailable", message).header("retry-after", "1");
                    return self.reject(session, ctx, reply).await;
                }
                Throttle::Reject(d, message) => {
                    self.state.shared.metrics.throttled(&policy.id, "rejected").inc();
                    let mut reply =
                        Reply::new(429, "too_many_requests", message).header("retry-after", d.reset_secs().to_string());
                    reply.headers.extend(ratelimit_headers(&d));
                    reply.extra = Some(serde_json::json!({"policy": policy.name}));
                    return self.reject(session, ctx, reply).await;
                }
            }
        }
        if let Some(name) = &ctx.flagged {
            self.state.shared.metrics.throttled(&format!("{}/{}", api.object.namespace, name), "flagged").inc();
        }

        ctx.forward_path = match session.req_header().uri.query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest,
        };
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> pingora::Result<Box<HttpPeer>> {
        let api = ctx.api.clone().ok_or_else(|| Error::explain(ErrorType::InternalError, "no API in context"))?;
        let set = if ctx.sandbox { api.sandbox.as_ref().unwrap_or(&api.endpoints) } else { &api.endpoints };
        let idx = match (std::mem::take(&mut ctx.retry_same_endpoint), ctx.current) {
            (true, Some(current)) => current,
            _ => {
                let idx = set
                    .pick(&ctx.tried)
                    .ok_or_else(|| Error::explain(ErrorType::ConnectNoRoute, "no backend endpoint available"))?;
                ctx.tried.push(idx);
                idx
            }
        };
        ctx.current = Some(idx);
        let ep = &set.endpoints[idx];
        let addr = ep.addr().ok_or_else(|| {
            let why = ep.target.error().unwrap_or_default();
            Error::explain(ErrorType::ConnectNoRoute, format!("backend host {} does not resolve: {why}", ep.host))
        })?;
        let mut peer = HttpPeer::new(addr, ep.tls, ep.host.clone());
        let connect = api.timeout.min(Duration::from_secs(5));
        peer.options.connection_timeout = Some(connect);
        peer.options.total_connection_timeout = Some(connect);
        peer.options.read_timeout = Some(api.timeout);
        peer.options.write_timeout = Some(api.timeout);
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        let api = ctx.api.as_ref().expect("routed");
        let set = if ctx.sandbox { api.sandbox.as_ref().unwrap_or(&api.endpoints) } else { &api.endpoints };
        let ep = &set.endpoints[ctx.current.expect("peer chosen")];
        let mut target = String::with_capacity(ep.base_path.len() + ctx.forward_path.len() + 1);
        target.push_str(&ep.base_path);
        target.push_str(&ctx.forward_path);
        if target.is_empty() || target.starts_with('?') {
            target.insert(0, '/');
        }
        upstream.set_uri(
            target.parse::<http::Uri>().map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "forward path", e))?,
        );

        // Hop-by-hop headers, including those the Connection header names.
        let named: Vec<String> = upstream
            .headers
            .get_all("connection")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
            .filter(|s| !s.is_empty() && s != "close" && s != "keep-alive")
            .collect();
        for h in HOP_BY_HOP {
            upstream.remove_header(h);
        }
        for h in named.iter().chain(ctx.strip_header.iter()) {
            upstream.remove_header(h.as_str());
        }
        let original_host = header(session.req_header(), "host").map(str::to_string);
        let default_port = if ep.tls { 443 } else { 80 };
        let host = if ep.port == default_port { ep.host.clone() } else { format!("{}:{}", ep.host, ep.port) };
        upstream.insert_header("host", host)?;
        // X-Forwarded-*: a trusted proxy's values are extended or kept; from
        // anyone else they are replaced, so a client cannot forge its
        // address, scheme or host for the backend.
        let incoming = |name: &str| if ctx.peer_trusted { joined(session.req_header(), name) } else { None };
        match (ctx.peer_ip, incoming("x-forwarded-for")) {
            (Some(peer), Some(prev)) => upstream.insert_header("x-forwarded-for", format!("{prev}, {peer}"))?,
            (Some(peer), None) => upstream.insert_header("x-forwarded-for", peer.to_string())?,
            (None, _) => {
                upstream.remove_header("x-forwarded-for");
            }
        }
        let proto = incoming("x-forwarded-proto")
            .filter(|p| p == "http" || p == "https")
            .unwrap_or_else(|| (if ctx.tls { "https" } else { "http" }).to_string());
        upstream.insert_header("x-forwarded-proto", proto)?;
        match incoming("x-forwarded-host").or(original_host) {
            Some(h) => upstream.insert_header("x-forwarded-host", h)?,
            None => {
                upstream.remove_header("x-forwarded-host");
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        for h in HOP_BY_HOP {
            resp.remove_header(h);
        }
        if let Some(api) = &ctx.api {
            if api.lifecycle == Lifecycle::Deprecated {
                resp.insert_header("deprecation", "true")?;
            }
            if let Some(i) = ctx.current {
                let set = if ctx.sandbox { api.sandbox.as_ref().unwrap_or(&api.endpoints) } else { &api.endpoints };
                set.endpoints[i].health.succeed();
            }
        }
        if ctx.api.as_ref().is_some_and(|a| a.cors.is_some()) {
            cors::apply_to_response(resp, &ctx.cors_headers)?;
        }
        if let Some(d) = &ctx.ratelimit {
            for (n, v) in ratelimit_headers(d) {
                resp.insert_header(n, v)?;
            }
        }
        if let Some(p) = &ctx.flagged {
            resp.insert_header("x-tollgate-quota-exceeded", p.as_str())?;
        }
        Ok(())
    }

    fn fail_to_connect(&self, session: &mut Session, _peer: &HttpPeer, ctx: &mut Ctx, mut e: Box<Error>) -> Box<Error> {
        if let (Some(api), Some(i)) = (&ctx.api, ctx.current) {
            let set = if ctx.sandbox { api.sandbox.as_ref().unwrap_or(&api.endpoints) } else { &api.endpoints };
            set.endpoints[i].health.fail(self.eject_for);
            api.metrics.connect_errors.inc();
            let idempotent = session.req_header().method.is_idempotent();
            let retries_left = (ctx.tried.len() as u32) <= api.retries;
            let another = ctx.tried.len() < set.endpoints.len();
            e.set_retry(idempotent && retries_left && another);
        }
        ctx.upstream_error = Some("connect");
        e
    }

    /// Pingora's default retry policy (idempotent requests whose body is
    /// still buffered; `ReusedOnly` errors only on a reused connection), plus:
    /// a failure of a pooled connection is retried on the same endpoint,
    /// which is not at fault (a single-endpoint API would otherwise have
    /// nothing left to pick and answer 502).
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated() {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        if e.retry() && client_reused {
            ctx.retry_same_endpoint = true;
        }
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let (status, code, message) = match e.etype() {
            ErrorType::ConnectTimedout
            | ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::TLSHandshakeFailure => (502, "bad_gateway", "the backend could not be reached"),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                ctx.upstream_error = Some("timeout");
                if let Some(api) = &ctx.api {
                    api.metrics.timeouts.inc();
                }
                (504, "gateway_timeout", "the backend did not answer in time")
            }
            ErrorType::HTTPStatus(c) => (*c, "error", "request failed"),
            _ => match e.esource() {
                ErrorSource::Upstream => {
                    ctx.upstream_error = Some("other");
                    if let Some(api) = &ctx.api {
                        api.metrics.other_upstream_errors.inc();
                    }
                    (502, "bad_gateway", "the backend connection failed")
                }
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => (0, "", ""),
                    _ => (400, "bad_request", "the request could not be read"),
                },
                _ => (500, "internal_error", "internal error"),
            },
        };
        if status > 0 && session.response_written().is_none() {
            let _ = Reply::new(status, code, message).send(session, &ctx.cors_headers).await;
        }
        FailToProxy { error_code: status, can_reuse_downstream: false }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map(|r| r.status.as_u16()).unwrap_or(0);
        let elapsed = ctx.start.elapsed();
        self.state.shared.metrics.total_requests.inc();
        let bytes = session.body_bytes_sent() as u64;
        if let Some(api) = &ctx.api {
            api.metrics.record(status, elapsed.as_secs_f64());
            let now = now_ms();
            for (policy, key) in &ctx.bandwidth {
                if let Some(bw) = policy.bandwidth {
                    policy.bytes.hit(*key, bw, bytes, true, now);
                }
            }
        }
        if self.access_log {
            let req = session.req_header();
            let upstream = match (&ctx.api, ctx.current) {
                (Some(api), Some(i)) => {
                    let set = if ctx.sandbox { api.sandbox.as_ref().unwrap_or(&api.endpoints) } else { &api.endpoints };
                    Some(
                        set.endpoints[i].addr().map(|a| a.to_string()).unwrap_or_else(|| set.endpoints[i].host.clone()),
                    )
                }
                _ => None,
            };
            tracing::info!(
                target: "access",
                method = %req.method,
                path = req.uri.path(),
                api = ctx.api.as_ref().map(|a| a.id.as_str()).unwrap_or("-"),
                status,
                latency_ms = elapsed.as_secs_f64() * 1000.0,
                bytes,
                upstream = upstream.as_deref().unwrap_or("-"),
                upstream_error = ctx.upstream_error.unwrap_or("-"),
                client = %ctx.client_ip.map(|i| i.to_string()).unwrap_or_default(),
                error = e.map(|e| e.etype().as_str()).unwrap_or("-"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_right_most_untrusted_forwarded_address() {
        let proxies: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "127.0.0.1/32".parse().unwrap()];
        let req = |values: &[&str]| {
            let mut r = RequestHeader::build("GET", b"/", None).unwrap();
            for v in values {
                r.append_header("x-forwarded-for", *v).unwrap();
            }
            r
        };
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(forwarded_client(&req(&["198.51.100.1, 203.0.113.9, 10.1.2.3"]), &proxies), ip("203.0.113.9"));
        assert_eq!(forwarded_client(&req(&["198.51.100.1", "203.0.113.9"]), &proxies), ip("203.0.113.9"));
        assert_eq!(forwarded_client(&req(&["[2001:db8::1]:4711, ::ffff:10.0.0.1"]), &proxies), ip("2001:db8::1"));
        assert_eq!(forwarded_client(&req(&["198.51.100.1, garbage, 10.0.0.2"]), &proxies), None);
        assert_eq!(forwarded_client(&req(&["10.0.0.1, 127.0.0.1"]), &proxies), None, "only proxies");
        assert_eq!(forwarded_client(&req(&[]), &proxies), None);
        assert!(trusted(&proxies, "::ffff:10.9.9.9".parse().unwrap()));
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_and_mapped_ipv4_as_ipv4() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(client_ip_key(ip("2001:db8:1:2::1")), client_ip_key(ip("2001:db8:1:2:ffff:1:2:3")));
        assert_ne!(client_ip_key(ip("2001:db8:1:2::1")), client_ip_key(ip("2001:db8:1:3::1")));
        assert_eq!(client_ip_key(ip("::ffff:203.0.113.7")), client_ip_key(ip("203.0.113.7")));
        assert_ne!(client_ip_key(ip("203.0.113.7")), client_ip_key(ip("203.0.113.8")));
    }

    #[test]
    fn query_keys_are_read_decoded_and_stripped_exactly() {
        assert_eq!(query_param("a=1&api%6Bey=s%2Bk+y&apikey=2", "apikey").as_deref(), Some("s+k y"));
        assert_eq!(strip_query_param("a=1&apikey=x&b=%2F&apikey=y", "apikey").as_deref(), Some("a=1&b=%2F"));
        assert_eq!(strip_query_param("api%6Bey=x&b", "apikey").as_deref(), Some("b"));
        assert_eq!(strip_query_param("apikey=x", "apikey"), None);
        assert_eq!(strip_query_param("apikeyx=1&&", "apikey").as_deref(), Some("apikeyx=1"));
    }
}
