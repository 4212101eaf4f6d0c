//! The Pingora proxy hooks, kept thin: `request_filter` routes the request
//! and runs the API's compiled [`Pipeline`](crate::pipeline::Pipeline) (which
//! answers 400/401/403/404/405/429/503 itself); `upstream_peer` and
//! `upstream_request_filter` pick the backend endpoint and build what it
//! receives; the rest handles responses, failures and the access log.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};

use crate::metrics::ResultLabels;
use crate::pipeline::Flow;
use crate::pipeline::request::{Client, RequestCtx, header, joined};
use crate::reload::State;
use crate::respond::{Reply, send_empty};
use crate::snapshot::Api;

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
    /// Client certificates forwarded by a TLS-terminating proxy
    /// (--client-cert-header).
    pub forwarded_certs: Option<Arc<crate::client_tls::ForwardedCerts>>,
    /// Backend connections of the exchanges the gateway drives itself
    /// (signed responses).
    pub connector: Arc<pingora::connectors::http::Connector>,
}

/// Largest request body read before the pipeline (idempotency, JWS): the
/// size Pingora keeps for a retry, so the body can still be forwarded.
pub const MAX_READ_BODY: usize = 64 * 1024;
/// Largest backend answer the gateway signs.
pub const MAX_SIGNED_BODY: usize = 1 << 20;

/// Per-request state: the pipeline's, plus what forwarding needs.
pub struct Ctx {
    start: Instant,
    api: Option<Arc<Api>>,
    req: RequestCtx,
    /// Path and query sent to the backend, below the endpoint's base path.
    forward_path: String,
    tried: Vec<usize>,
    current: Option<usize>,
    upstream_error: Option<&'static str>,
    /// The code of the answer the gateway wrote itself (analytics fault kind).
    gateway_code: Option<&'static str>,
    /// A pooled (reused) connection to the current endpoint failed: the
    /// retry goes to the same endpoint on a fresh connection.
    retry_same_endpoint: bool,
}

impl Drop for Ctx {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

fn peer_ip(session: &Session) -> Option<IpAddr> {
    session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip())
}

impl Gateway {
    async fn reject(&self, session: &mut Session, ctx: &mut Ctx, reply: Reply) -> pingora::Result<bool> {
        ctx.gateway_code = Some(reply.code);
        reply.send(session, &ctx.req.answer_headers()).await?;
        Ok(true)
    }

    /// Reads the whole request body (kept by Pingora for forwarding); None
    /// when it is larger than [`MAX_READ_BODY`].
    async fn read_body(session: &mut Session) -> pingora::Result<Option<bytes::Bytes>> {
        session.enable_retry_buffering();
        let mut total = 0usize;
        while let Some(chunk) = session.read_request_body().await? {
            total += chunk.len();
            if total > MAX_READ_BODY {
                return Ok(None);
            }
        }
        Ok(Some(session.get_retry_buffer().unwrap_or_default()))
    }

    /// Writes an answer stored for an idempotency key.
    async fn replay(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        stored: crate::store::idempotency::StoredResponse,
    ) -> pingora::Result<()> {
        let mut resp = ResponseHeader::build(stored.status, Some(stored.headers.len() + 4))?;
        for (n, v) in &stored.headers {
            resp.append_header(n.clone(), v.as_str())?;
        }
        resp.insert_header("content-length", stored.body.len().to_string())?;
        resp.insert_header("x-idempotency-replayed", "true")?;
        for (n, v) in ctx.req.answer_headers() {
            resp.insert_header(n, v.as_str())?;
        }
        let head_only = session.req_header().method == http::Method::HEAD;
        session.write_response_header(Box::new(resp), head_only || stored.body.is_empty()).await?;
        if !head_only && !stored.body.is_empty() {
            session.write_response_body(Some(stored.body.into()), true).await?;
        }
        Ok(())
    }

    /// Forwards the request and answers with the backend's response signed
    /// (`x-jws-signature` over its body): the signature must be in the head,
    /// so the whole answer is read first, which Pingora's proxy loop cannot.
    async fn exchange_signed(&self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<()> {
        let Some(km) = self.state.shared.key_manager.clone() else {
            let reply = Reply::new(503, "signing_unavailable", "this gateway has no key manager to sign answers");
            return reply.send(session, &ctx.req.answer_headers()).await;
        };
        let body = match ctx.req.body.clone() {
            Some(b) => b,
            None => match Self::read_body(session).await? {
                Some(b) => b,
                None => {
                    let reply = Reply::new(413, "payload_too_large", format!("the body is over {MAX_READ_BODY} bytes"));
                    return reply.send(session, &ctx.req.answer_headers()).await;
                }
            },
        };
        match self.signed_answer(session, ctx, body).await {
            Ok((mut resp, answer)) => {
                let signature = km.response_keys.current().sign_detached(&km.issuer, &answer);
                resp.insert_header("x-jws-signature", signature)?;
                if let Some(claim) = &mut ctx.req.idempotency {
                    record_head(claim, &resp);
                    claim.body =
                        (answer.len() <= crate::pipeline::idempotency::MAX_STORED_BODY).then(|| answer.to_vec());
                }
                let head_only = session.req_header().method == http::Method::HEAD;
                session.write_response_header(Box::new(resp), head_only || answer.is_empty()).await?;
                if !head_only && !answer.is_empty() {
                    session.write_response_body(Some(answer), true).await?;
                }
                Ok(())
            }
            Err(e) => {
                let _ = self.fail_to_proxy(session, &e, ctx).await;
                Ok(())
            }
        }
    }

    async fn signed_answer(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        body: bytes::Bytes,
    ) -> pingora::Result<(ResponseHeader, bytes::Bytes)> {
        let peer = self.upstream_peer(session, ctx).await?;
        let mut upstream = session.req_header().clone();
        self.upstream_request_filter(session, &mut upstream, ctx).await?;
        upstream.remove_header("transfer-encoding");
        upstream.remove_header("expect");
        upstream.insert_header("content-length", body.len().to_string())?;
        let (mut http, _) = match self.connector.get_http_session(&*peer).await {
            Ok(h) => h,
            Err(e) => {
                let e = self.fail_to_connect(session, &peer, ctx, e);
                return Err(e);
            }
        };
        http.write_request_header(Box::new(upstream)).await.map_err(|e| e.into_up())?;
        if !body.is_empty() {
            http.write_request_body(body, true).await.map_err(|e| e.into_up())?;
        }
        http.finish_request_body().await.map_err(|e| e.into_up())?;
        http.read_response_header().await.map_err(|e| e.into_up())?;
        let mut resp = http
            .response_header()
            .cloned()
            .ok_or_else(|| Error::explain(ErrorType::InvalidHTTPHeader, "no response head"))?;
        let mut answer = bytes::BytesMut::new();
        while let Some(chunk) = http.read_response_body().await.map_err(|e| e.into_up())? {
            if answer.len() + chunk.len() > MAX_SIGNED_BODY {
                return Err(Error::explain(ErrorType::HTTPStatus(502), "the backend's answer is too large to sign"));
            }
            answer.extend_from_slice(&chunk);
        }
        self.connector.release_http_session(http, &*peer, Some(Duration::from_secs(60))).await;
        resp.remove_header("transfer-encoding");
        resp.remove_header("content-length");
        self.response_filter(session, &mut resp, ctx).await?;
        resp.insert_header("content-length", answer.len().to_string())?;
        Ok((resp, answer.freeze()))
    }
}

/// A request or response head (Pingora keeps a header map and the names'
/// original case side by side; removing through it keeps both in step).
trait Head {
    fn map(&self) -> &http::HeaderMap;
    fn remove(&mut self, name: &http::HeaderName);
}

impl Head for RequestHeader {
    fn map(&self) -> &http::HeaderMap {
        &self.headers
    }
    fn remove(&mut self, name: &http::HeaderName) {
        self.remove_header(name);
    }
}

impl Head for ResponseHeader {
    fn map(&self) -> &http::HeaderMap {
        &self.headers
    }
    fn remove(&mut self, name: &http::HeaderName) {
        self.remove_header(name);
    }
}

/// Removes every header `drop` picks by its (lower-case) name, in one pass
/// over the names the head carries: most heads carry none of them, and
/// removing each candidate by name would parse and hash every one of them
/// on every request.
fn remove_where(head: &mut impl Head, drop: impl Fn(&str) -> bool) {
    let found: Vec<http::HeaderName> = head.map().keys().filter(|n| drop(n.as_str())).cloned().collect();
    for name in &found {
        head.remove(name);
    }
}

/// Keeps a response head for an idempotency key.
fn record_head(claim: &mut crate::pipeline::idempotency::Claim, resp: &ResponseHeader) {
    claim.status = Some(resp.status.as_u16());
    claim.headers = resp
        .headers
        .iter()
        .filter(|(n, _)| crate::pipeline::idempotency::storable_header(n.as_str()))
        .filter(|(n, _)| n.as_str() != crate::pipeline::interaction::HEADER)
        .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        Ctx {
            start: Instant::now(),
            api: None,
            req: RequestCtx::default(),
            forward_path: String::new(),
            tried: Vec::new(),
            current: None,
            upstream_error: None,
            gateway_code: None,
            retry_same_endpoint: false,
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
        let ssl = session.digest().and_then(|d| d.ssl_digest.clone());
        ctx.req.client = Client::of(session.req_header(), peer_ip(session), ssl.is_some(), &self.trusted_proxies);
        // A trusted proxy's own handshake certificate never stands for the
        // client behind it: from a proxy only the forwarded header counts.
        if !ctx.req.client.peer_trusted {
            ctx.req.client.cert =
                ssl.as_ref().and_then(|s| s.extension.get::<crate::client_tls::HandshakeCert>()).map(|c| c.0.clone());
        }
        if let Some(fwd) = &self.forwarded_certs {
            // Only a trusted proxy's header counts; everyone else's is
            // removed before anything reads or forwards it.
            let value = session.req_header_mut().remove_header(fwd.header.as_str());
            if let (true, None, Some(v)) = (ctx.req.client.peer_trusted, &ctx.req.client.cert, value) {
                match fwd.parse(v.as_bytes()) {
                    Ok(cert) => ctx.req.client.cert = Some(cert),
                    Err(why) => {
                        let result = if why.starts_with("not PEM") || why == "no PEM certificate" {
                            "malformed"
                        } else {
                            "unverified"
                        };
                        self.state
                            .shared
                            .metrics
                            .forwarded_cert_rejections
                            .get_or_create(&ResultLabels { result })
                            .inc();
                        tracing::debug!(error = %why, "forwarded client certificate refused");
                    }
                }
            }
        }
        let path = match crate::route::canonical::canonicalise(session.req_header().uri.path()) {
            Ok(p) => p,
            Err(why) => {
                self.state.shared.metrics.refused_paths.get_or_create(&ResultLabels { result: why.label() }).inc();
                return self.reject(session, ctx, Reply::new(400, "bad_request", why.message())).await;
            }
        };
        let routed = self.state.snapshot.load().router.lookup(&path).map(|m| (m.target.api.clone(), m.prefix_len));
        let Some((api, prefix_len)) = routed else {
            let reply = Reply::new(404, "not_found", format!("no API is served at {path}"));
            return self.reject(session, ctx, reply).await;
        };
        let rest = path[prefix_len..].to_string();
        ctx.req.rest = rest;
        ctx.api = Some(api.clone());
        let mut from = 0;
        let flow = loop {
            match api.pipeline.on_request(session.req_header_mut(), &mut ctx.req, &self.state.shared, from).await {
                Flow::ReadBody { resume } => match Self::read_body(session).await? {
                    Some(body) => {
                        ctx.req.body = Some(body);
                        from = resume;
                    }
                    None => {
                        let reply =
                            Reply::new(413, "payload_too_large", format!("the body is over {MAX_READ_BODY} bytes"));
                        return self.reject(session, ctx, reply).await;
                    }
                },
                flow => break flow,
            }
        };
        match flow {
            Flow::Next | Flow::ReadBody { .. } => {}
            Flow::Reply(reply) => return self.reject(session, ctx, reply).await,
            Flow::Empty { status, mut headers } => {
                if let Some(id) = &ctx.req.interaction_id {
                    headers.push((crate::pipeline::interaction::HEADER.to_string(), id.clone()));
                }
                send_empty(session, status, &headers).await?;
                return Ok(true);
            }
            Flow::Stored(stored) => {
                self.replay(session, ctx, stored).await?;
                return Ok(true);
            }
        }
        ctx.forward_path = match session.req_header().uri.query() {
            Some(q) => format!("{}?{q}", ctx.req.rest),
            None => ctx.req.rest.clone(),
        };
        if api.pipeline.signs_responses {
            self.exchange_signed(session, ctx).await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> pingora::Result<Box<HttpPeer>> {
        let api = ctx.api.clone().ok_or_else(|| Error::explain(ErrorType::InternalError, "no API in context"))?;
        let set = api.endpoints_for(ctx.req.sandbox());
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
        let set = api.endpoints_for(ctx.req.sandbox());
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
        // With them, the verified identity's headers (never the client's
        // claim of one) and whatever the pipeline strips (credentials).
        let strip = |name: &str| {
            HOP_BY_HOP.contains(&name)
                || crate::pipeline::authn::IDENTITY_HEADERS.contains(&name)
                || named.iter().chain(ctx.req.strip_headers.iter()).any(|h| h.as_str() == name)
        };
        remove_where(upstream, strip);
        for (n, v) in &ctx.req.identity_headers {
            if let Ok(v) = http::HeaderValue::from_str(v) {
                upstream.insert_header(*n, v)?;
            }
        }
        let original_host = header(session.req_header(), "host").map(str::to_string);
        let default_port = if ep.tls { 443 } else { 80 };
        let host = if ep.port == default_port { ep.host.clone() } else { format!("{}:{}", ep.host, ep.port) };
        upstream.insert_header("host", host)?;
        // X-Forwarded-*: a trusted proxy's values are extended or kept; from
        // anyone else they are replaced, so a client cannot forge its
        // address, scheme or host for the backend.
        let client = &ctx.req.client;
        let incoming = |name: &str| if client.peer_trusted { joined(session.req_header(), name) } else { None };
        match (client.peer_ip, incoming("x-forwarded-for")) {
            (Some(peer), Some(prev)) => upstream.insert_header("x-forwarded-for", format!("{prev}, {peer}"))?,
            (Some(peer), None) => upstream.insert_header("x-forwarded-for", peer.to_string())?,
            (None, _) => {
                upstream.remove_header("x-forwarded-for");
            }
        }
        let proto = incoming("x-forwarded-proto")
            .filter(|p| p == "http" || p == "https")
            .unwrap_or_else(|| (if client.tls { "https" } else { "http" }).to_string());
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
        remove_where(resp, |name| HOP_BY_HOP.contains(&name));
        if let Some(api) = &ctx.api {
            if let Some(i) = ctx.current {
                api.endpoints_for(ctx.req.sandbox()).endpoints[i].health.succeed();
            }
            api.pipeline.on_response(resp, &ctx.req)?;
        }
        if let Some(claim) = &mut ctx.req.idempotency {
            record_head(claim, resp);
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> pingora::Result<Option<Duration>> {
        // The answer of a request that owns an idempotency key is kept (up
        // to the limit; a larger one is not stored).
        if let (Some(claim), Some(chunk)) = (&mut ctx.req.idempotency, body.as_ref())
            && let Some(kept) = &mut claim.body
        {
            if kept.len() + chunk.len() > crate::pipeline::idempotency::MAX_STORED_BODY {
                claim.body = None;
            } else {
                kept.extend_from_slice(chunk);
            }
        }
        Ok(None)
    }

    fn fail_to_connect(&self, session: &mut Session, _peer: &HttpPeer, ctx: &mut Ctx, mut e: Box<Error>) -> Box<Error> {
        if let (Some(api), Some(i)) = (&ctx.api, ctx.current) {
            let set = api.endpoints_for(ctx.req.sandbox());
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
            let _ = Reply::new(status, code, message).send(session, &ctx.req.answer_headers()).await;
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
            api.pipeline.on_logging(&ctx.req, bytes);
            if let Some(recorder) = &self.state.shared.analytics {
                let principal = ctx.req.principal.as_ref();
                recorder.record(crate::analytics::Event {
                    at_ms: crate::throttle::now_ms() as i64,
                    api: api.shared_id.clone(),
                    operation: ctx.req.operation.operation().map(|o| o.name.clone()),
                    application: principal.map(|p| p.application.clone()),
                    environment: principal.map(|p| p.environment.as_str()),
                    client_id: principal.and_then(|p| p.client_id.clone()).filter(|_| recorder.detailed),
                    interaction_id: ctx.req.interaction_id.clone().filter(|_| recorder.detailed),
                    status,
                    fault: fault_kind(status, ctx.upstream_error, ctx.gateway_code),
                    throttled: ctx.req.throttled,
                    latency_ms: elapsed.as_secs_f64() * 1000.0,
                    bytes_in: session.body_bytes_read() as u64,
                    bytes_out: bytes,
                });
            }
        }
        if let (Some(claim), Some(store)) = (ctx.req.idempotency.take(), &self.state.shared.store) {
            complete_idempotency(store, claim, status, e.is_some()).await;
        }
        if self.access_log {
            let req = session.req_header();
            let upstream = match (&ctx.api, ctx.current) {
                (Some(api), Some(i)) => {
                    let set = api.endpoints_for(ctx.req.sandbox());
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
                client = %ctx.req.client.ip.map(|i| i.to_string()).unwrap_or_default(),
                error = e.map(|e| e.etype().as_str()).unwrap_or("-"),
                interaction_id = ctx.req.interaction_id.as_deref().unwrap_or("-"),
            );
        }
    }
}

/// Stores the answer of a request that owned an idempotency key, or frees
/// the key when the backend gave no answer worth keeping (5xx, a failure,
/// a body over the limit): the client may then retry.
async fn complete_idempotency(
    store: &crate::store::Store,
    claim: crate::pipeline::idempotency::Claim,
    status: u16,
    failed: bool,
) {
    let keep = !failed && (200..500).contains(&status) && claim.status == Some(status);
    let result = match (keep, claim.body) {
        (true, Some(body)) => {
            let stored = crate::store::idempotency::StoredResponse { status, headers: claim.headers, body };
            let expires = crate::throttle::now_ms() as i64 + claim.ttl.as_millis() as i64;
            store.db.complete_idempotency_key(&claim.scope, &claim.key, &claim.id, &stored, expires).await
        }
        _ => store.db.release_idempotency_key(&claim.scope, &claim.key, &claim.id).await,
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "idempotency key could not be completed; it expires with its TTL");
    }
}

/// What went wrong with a request, for analytics: the backend (could not be
/// reached, too slow, failed otherwise, answered 5xx), or the gateway's own
/// refusal by its code; empty when nothing did.
fn fault_kind(status: u16, upstream: Option<&'static str>, gateway: Option<&'static str>) -> &'static str {
    match (upstream, gateway) {
        (Some("connect"), _) => "backend_connect",
        (Some("timeout"), _) => "backend_timeout",
        (Some(_), _) => "backend_error",
        (None, Some(code)) => code,
        (None, None) if status >= 500 => "backend_5xx",
        (None, None) => "",
    }
}
