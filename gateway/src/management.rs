//! The management API (health, readiness, status, metrics) on its own
//! listeners, plain and TLS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::State as AxState;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::json;

use crate::key_manager::PeerCert;
use crate::proxy::IN_FLIGHT;
use crate::reload::State;
use crate::tls::ReloadingCert;

/// Routes of the management API.
pub fn router(state: Arc<State>) -> Router {
    let store_routes = match &state.shared.store {
        Some(store) => crate::store_api::routes(state.clone(), store.clone()),
        None => Router::new(),
    };
    let analytics_routes = match &state.shared.store {
        Some(store) if state.shared.analytics_api => crate::store_api::analytics_routes(state.clone(), store.clone()),
        _ => Router::new(),
    };
    let key_manager_routes = match (&state.shared.store, &state.shared.key_manager) {
        (Some(store), Some(km)) if state.shared.key_manager_endpoints => {
            crate::key_manager::routes(state.clone(), store.clone(), km.clone())
        }
        _ => Router::new(),
    };
    let portal_routes = match (&state.shared.store, &state.shared.portal) {
        (Some(store), Some(settings)) => crate::portal::routes(state.clone(), store.clone(), settings),
        _ => Router::new(),
    };
    Router::new()
        .route("/healthz", get(|| async { (StatusCode::OK, axum::Json(json!({"status": "ok"}))) }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/status/dependencies", get(dependencies))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            (StatusCode::NOT_FOUND, axum::Json(json!({"error": "not_found", "message": "no such endpoint"})))
        })
        .with_state(state)
        .merge(store_routes)
        .merge(key_manager_routes)
        .merge(analytics_routes)
        .merge(portal_routes)
}

/// Whether the API-traffic listener accepts connections (checked once with
/// a loopback connection, then remembered).
async fn traffic_listening(state: &State) -> bool {
    if state.listening.load(Ordering::Acquire) {
        return true;
    }
    let Some(addr) = *state.traffic_probe.lock() else { return true };
    let ok = matches!(
        tokio::time::timeout(Duration::from_millis(300), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    );
    if ok {
        state.listening.store(true, Ordering::Release);
    }
    ok
}

async fn readyz(AxState(state): AxState<Arc<State>>) -> Response {
    if state.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"status": "draining"}))).into_response()
    } else if state.ready.load(Ordering::Acquire) && traffic_listening(&state).await {
        (StatusCode::OK, axum::Json(json!({"status": "ready"}))).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"status": "loading"}))).into_response()
    }
}

async fn status(AxState(state): AxState<Arc<State>>) -> Response {
    let snap = state.snapshot.load_full();
    let st = state.status.lock().clone();
    let apis: Vec<_> = snap
        .apis
        .iter()
        .map(|a| {
            json!({
                "id": a.id,
                "context": a.spec.context,
                "version": a.spec.version,
                "lifecycle": format!("{:?}", a.spec.lifecycle),
                "url": a.versioned_path,
            })
        })
        .collect();
    axum::Json(json!({
        "revision": snap.revision,
        "generation": st.generation,
        "ready": state.ready.load(Ordering::Acquire),
        "apis": apis.len(),
        "policies": snap.policies.len(),
        "apiList": apis,
        "lastReload": st.last_reload,
        "lastReloadMillis": st.last_reload_millis,
        "errors": st.errors,
        // The snapshot revision the portal's search index holds (it catches
        // up within a few seconds of a reload); null without a store.
        "searchIndexRevision": state.shared.store.as_ref().and_then(|s| s.search.as_ref()).map(|i| i.revision()),
        "trafficManager": state.shared.traffic.as_ref().map(|t| t.status()),
        "database": database_health(&state).await,
        "tls": state.tls_cert.get().map(|c| c.status()),
        "clientCa": state.client_ca.get().map(|c| c.status()),
        "keyManagers": key_managers(&snap),
        "builtinKeyManager": state.shared.builtin.as_ref().map(|i| {
            let keys = match &i.keys {
                crate::oauth::issuer::Keys::Inline(k) => json!({"inline": true, "keys": k.len()}),
                crate::oauth::issuer::Keys::Remote(r) => serde_json::to_value(r.status()).unwrap_or_default(),
            };
            json!({
                "issuer": i.issuer,
                "keys": keys,
                "signingKid": state.shared.key_manager.as_ref().map(|k| k.keys.current().kid.clone()),
                "keySource": state.shared.key_manager.as_ref().map(|k| k.keys.source.clone()),
                "responseSigningKid": state.shared.key_manager.as_ref().map(|k| k.response_keys.current().kid.clone()),
                "responseKeySource": state.shared.key_manager.as_ref().map(|k| k.response_keys.source.clone()),
                "dynamicRegistration": state.shared.key_manager.as_ref().is_some_and(|k| k.ssa_keys.is_some()),
            })
        }),
    }))
    .into_response()
}

/// The database's health; null without a store.
async fn database_health(state: &State) -> Option<serde_json::Value> {
    match &state.shared.store {
        Some(store) => Some(store.health().await),
        None => None,
    }
}

/// The outside services this process depends on and whether it reaches
/// them: what the operator reads into the ApiManager's conditions (small,
/// unlike /status with its list of APIs).
async fn dependencies(AxState(state): AxState<Arc<State>>) -> Response {
    axum::Json(json!({
        "database": database_health(&state).await,
        "trafficManager": state.shared.traffic.as_ref().map(|t| t.status()),
    }))
    .into_response()
}

/// The trusted token issuers and the state of their keys.
fn key_managers(snap: &crate::snapshot::Snapshot) -> Vec<serde_json::Value> {
    snap.issuers
        .values()
        .map(|i| {
            let keys = match &i.keys {
                crate::oauth::issuer::Keys::Inline(k) => json!({"inline": true, "keys": k.len()}),
                crate::oauth::issuer::Keys::Remote(r) => serde_json::to_value(r.status()).unwrap_or_default(),
            };
            json!({"id": i.id, "issuer": i.issuer, "apiManager": i.manager, "keys": keys})
        })
        .collect()
}

async fn metrics(AxState(state): AxState<Arc<State>>) -> Response {
    state.shared.metrics.in_flight.set(IN_FLIGHT.load(Ordering::Relaxed));
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.shared.metrics.encode(),
    )
        .into_response()
}

/// Serves the management API and keeps the requests-per-second gauge.
pub struct ManagementService {
    pub state: Arc<State>,
    pub plain: SocketAddr,
    pub tls: Option<(SocketAddr, Arc<ReloadingCert>)>,
    /// Verifies client certificates on the TLS listener (--client-auth).
    pub client_verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    /// Time a client gets for the TLS handshake and the request head.
    pub header_timeout: Duration,
}

#[async_trait]
impl BackgroundService for ManagementService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let app = router(self.state.clone());
        let plain = match tokio::net::TcpListener::bind(self.plain).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(addr = %self.plain, error = %e, "cannot bind the management listener");
                std::process::exit(2);
            }
        };
        tracing::info!(addr = %self.plain, "management API listening");
        let mut tasks = Vec::new();
        // The management listeners keep serving through the drain after
        // SIGTERM (so /readyz answers 503 to the load balancer) until the
        // process exits.
        tasks.push(tokio::spawn(serve(plain, None, app.clone(), self.header_timeout)));
        if let Some((addr, cert)) = &self.tls {
            let listener = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(addr = %addr, error = %e, "cannot bind the management TLS listener");
                    std::process::exit(2);
                }
            };
            tracing::info!(addr = %addr, "management API (TLS) listening");
            // The process's provider: the --tls-profile suites.
            let provider = rustls::crypto::CryptoProvider::get_default()
                .cloned()
                .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
            let builder = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("default TLS versions");
            let builder = match &self.client_verifier {
                Some(v) => builder.with_client_cert_verifier(v.clone()),
                None => builder.with_no_client_auth(),
            };
            let config = builder.with_cert_resolver(cert.clone());
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            tasks.push(tokio::spawn(serve(listener, Some(acceptor), app.clone(), self.header_timeout)));
        }
        // Requests per second, averaged over the last 5 seconds.
        let metrics = self.state.shared.metrics.clone();
        let mut samples = std::collections::VecDeque::from([metrics.total_requests.get(); 1]);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let now = metrics.total_requests.get();
                    samples.push_back(now);
                    if samples.len() > 6 { samples.pop_front(); }
                    let span = (samples.len() - 1).max(1) as f64;
                    let first = *samples.front().unwrap_or(&now);
                    metrics.requests_per_second.set((now - first) as f64 / span);
                    metrics.in_flight.set(IN_FLIGHT.load(Ordering::Relaxed));
                    // Keep the persisted search index on the served snapshot.
                    if let Some(store) = &self.state.shared.store
                        && self.state.ready.load(Ordering::Acquire)
                        && let Some(index) = &store.search
                    {
                        let snap = self.state.snapshot.load_full();
                        if index.revision() != snap.revision {
                            let store = store.clone();
                            let _ = tokio::task::spawn_blocking(move || store.sync_search(&snap.revision, &snap.indexed_apis())).await;
                        }
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// Accepts connections and serves `app` on each (through TLS with
/// `acceptor`). A client gets `header_timeout` for the TLS handshake and for
/// each request head (slowloris); accept errors such as EMFILE back off
/// (5 ms doubling to 1 s) instead of spinning.
async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    header_timeout: Duration,
) {
    const FIRST_BACKOFF: Duration = Duration::from_millis(5);
    let mut backoff = FIRST_BACKOFF;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff = FIRST_BACKOFF;
                stream
            }
            Err(e) => {
                if backoff == FIRST_BACKOFF {
                    tracing::warn!(error = %e, "management listener cannot accept connections; backing off");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let (app, acceptor) = (app.clone(), acceptor.clone());
        tokio::spawn(async move {
            let over_tls = crate::portal::OverTls(acceptor.is_some());
            let service = |peer: PeerCert| {
                hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    let app = app.clone();
                    // The connection's verified client certificate (tls_client_auth, bound tokens).
                    req.extensions_mut().insert(peer.clone());
                    req.extensions_mut().insert(over_tls);
                    async move { Ok::<_, std::convert::Infallible>(tower_call(app, req).await) }
                })
            };
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_timeout);
            match acceptor {
                Some(acceptor) => {
                    let Ok(Ok(tls)) = tokio::time::timeout(header_timeout, acceptor.accept(stream)).await else {
                        return;
                    };
                    // Verified by the listener's client verifier (--client-ca) when present.
                    let cert = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|leaf| Arc::new(crate::pipeline::request::ClientCert::new(leaf.to_vec())));
                    let _ = http.serve_connection(hyper_util::rt::TokioIo::new(tls), service(PeerCert(cert))).await;
                }
                None => {
                    let _ = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service(PeerCert(None))).await;
                }
            }
        });
    }
}

async fn tower_call(app: Router, req: hyper::Request<hyper::body::Incoming>) -> Response {
    use tower::ServiceExt;
    let req = req.map(axum::body::Body::new);
    match app.oneshot(req).await {
        Ok(r) => r,
        Err(e) => match e {},
    }
}
