//! Wires configuration, snapshot, proxy and management into a Pingora server.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::{Config, Role};
use crate::management::ManagementService;
use crate::metrics::Metrics;
use crate::proxy::{Gateway, IN_FLIGHT};
use crate::reload::{Reloader, State};
use crate::runtime::Shared;
use crate::throttle::Registry;
use crate::tls::ReloadingCert;
use crate::upstream::HealthRegistry;

/// On SIGTERM: mark not-ready, stop accepting (Pingora), and exit as soon as
/// the requests in flight are done (or after the drain time).
struct DrainOnTerm {
    state: Arc<State>,
    drain: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for DrainOnTerm {
    async fn recv(&self) -> ShutdownSignal {
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let kind = tokio::select! {
            _ = term.recv() => ShutdownSignal::GracefulTerminate,
            _ = int.recv() => ShutdownSignal::GracefulTerminate,
        };
        self.state.draining.store(true, Ordering::SeqCst);
        tracing::info!(in_flight = IN_FLIGHT.load(Ordering::Relaxed), "shutting down: draining requests in flight");
        let drain = self.drain;
        let state = self.state.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            // Give the listeners a moment to close, then wait for in-flight requests.
            std::thread::sleep(Duration::from_millis(100));
            while IN_FLIGHT.load(Ordering::SeqCst) > 0 && start.elapsed() < drain {
                std::thread::sleep(Duration::from_millis(20));
            }
            tracing::info!(left = IN_FLIGHT.load(Ordering::SeqCst), "drained; exiting");
            finish_analytics(&state);
            std::process::exit(0);
        });
        kind
    }
}

/// The requests of the last seconds: their rollups are written (and the
/// OTLP exporters emptied) before the process ends.
fn finish_analytics(state: &State) {
    if let Some(a) = &state.shared.analytics
        && !a.finish(Duration::from_secs(10))
    {
        tracing::warn!("analytics: the last rollups could not be written within 10 s");
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,pingora=warn"));
    let _ = tracing_subscriber::fmt().json().with_current_span(false).with_env_filter(filter).try_init();
}

/// Runs the gateway until shutdown.
pub fn run(config: Config) -> anyhow::Result<()> {
    init_logging();
    // Every TLS endpoint of the process (listeners, JWKS and database
    // clients) uses this provider: the --tls-profile suites.
    let _ = crate::client_tls::crypto_provider(config.tls_profile).install_default();
    if !config.config_dir.is_dir() {
        anyhow::bail!("--config-dir {} is not a readable folder", config.config_dir.display());
    }
    let metrics = Arc::new(Metrics::new());
    let dns = Arc::new(crate::dns::DnsCache::default());
    dns.spawn_refresher(config.dns_refresh);
    let traffic = match &config.redis_url {
        Some(url) => Some(
            crate::traffic::TrafficManager::start(
                url,
                &config.redis_key_prefix,
                config.redis_failure_mode,
                config.redis_timeout,
                metrics.clone(),
            )
            .map_err(|e| anyhow::anyhow!("--redis-url: {e}"))?,
        ),
        None => None,
    };
    let store = open_store(&config, metrics.store_key_lookups.clone())?;
    let trust = match (&config.key_manager_jwks_uri, &config.key_manager_ca) {
        (Some(uri), Some(ca)) => {
            if !ca.exists() {
                tracing::warn!(path = %ca.display(), "--key-manager-ca does not exist (yet): the system store alone is trusted for {uri} until it does");
            }
            Some(crate::oauth::jwks::ExtraTrust { uri: uri.clone(), ca_file: ca.clone() })
        }
        _ => None,
    };
    let jwks = Arc::new(crate::oauth::jwks::JwksCache::with_trust(metrics.jwks_fetches.clone(), trust));
    jwks.spawn_worker();
    let (key_manager, builtin) = built_in_key_manager(&config, &jwks)?;
    // Every gateway records; the analytics role only answers the queries.
    let analytics = crate::analytics::Recorder::start(
        store.clone(),
        crate::analytics::Settings {
            queue: config.analytics_queue,
            flush: config.analytics_flush,
            retention: config.analytics_retention,
            otlp_endpoint: config.otlp_endpoint.as_deref(),
        },
        metrics.analytics_dropped.clone(),
    )
    .map_err(|e| anyhow::anyhow!("starting the analytics recorder: {e}"))?;
    let state = Arc::new(State::new(Shared {
        store: Some(store),
        traffic,
        counters: Registry::new(metrics.throttle_keys_refused.clone()),
        health: HealthRegistry::default(),
        metrics,
        max_keys: config.max_throttle_keys,
        gateway_group: config.gateway_group.clone(),
        environments: config.environments.clone(),
        dns: dns.clone(),
        jwks,
        tokens: Arc::default(),
        builtin,
        key_manager,
        key_manager_endpoints: config.has_role(Role::KeyManager),
        analytics: analytics.clone(),
        analytics_api: config.has_role(Role::Analytics),
        portal: config.has_role(Role::Store).then(|| config.portal.clone()),
        client_keys: Arc::new(crate::oauth::client_keys::ClientKeys::new(config.key_cache_ttl)),
    }));
    let mut reloader = Reloader::new(config.config_dir.clone(), state.clone(), config.reload_debounce);
    reloader.reload(true);
    crate::reload::spawn(reloader, config.rescan_interval, config.reload_debounce);

    let cert = match &config.tls {
        Some(t) => {
            Some(ReloadingCert::start(&t.cert, &t.key, Duration::from_secs(1)).context("loading the TLS certificate")?)
        }
        None => None,
    };
    if let Some(c) = &cert {
        let _ = state.tls_cert.set(c.clone());
    }
    let client_ca = match &config.client_ca {
        Some(path) => Some(
            crate::client_tls::ClientCa::start(path, config.client_auth, Duration::from_secs(1))
                .context("loading the client CA bundle (--client-ca)")?,
        ),
        None => None,
    };
    if let Some(c) = &client_ca {
        let _ = state.client_ca.set(c.clone());
    }
    // The listeners ask for client certificates unless --client-auth none.
    let client_verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>> = match &client_ca {
        Some(c) if config.client_auth != crate::config::ClientAuthMode::None => Some(c.clone()),
        _ => None,
    };
    let forwarded_certs = config
        .client_cert_header
        .clone()
        .map(|h| Arc::new(crate::client_tls::ForwardedCerts::new(h, client_ca.clone())));

    let conf = ServerConf {
        threads: config.threads,
        work_stealing: false,
        grace_period_seconds: Some(config.drain.as_secs() + 1),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: 4096,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    if config.has_role(Role::Gateway) {
        // Probe the listener on loopback when it binds every address.
        let mut probe = config.http;
        if probe.ip().is_unspecified() {
            probe.set_ip(if probe.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        *state.traffic_probe.lock() = Some(probe);
        let gateway = Gateway {
            state: state.clone(),
            access_log: config.access_log,
            eject_for: config.eject_for,
            tls_listener_port: config.tls.as_ref().map(|_| config.https.port()),
            trusted_proxies: Arc::new(config.trusted_proxies.clone()),
            keepalive_timeout_secs: config.keepalive_timeout_secs,
            forwarded_certs: forwarded_certs.clone(),
            connector: Arc::new(pingora::connectors::http::Connector::new(None)),
        };
        // Pingora's proxy behind a whole-head deadline (slowloris).
        let app = crate::head_timeout::HeadTimeout::new(
            pingora::proxy::http_proxy(&server.configuration, gateway),
            Duration::from_secs(config.keepalive_timeout_secs),
            config.header_timeout,
            state.shared.metrics.request_head_timeouts.clone(),
        );
        let mut proxy = pingora::services::listening::Service::new("api-traffic".to_string(), app);
        // A response head and a body that fit the write buffer leave in one
        // write (one TCP segment) instead of two.
        let buffers = L4BufferSettings::default().write(config.write_buffer_bytes);
        proxy.add_listener(ListenerConfig::tcp(config.http.to_string()).l4_buffer(buffers));
        if let Some(cert) = &cert {
            // The handshake hook keeps the verified client certificate for
            // the requests on the connection.
            let mut settings =
                TlsSettings::with_callbacks(Box::new(crate::client_tls::KeepClientCert)).context("TLS settings")?;
            settings.set_cert_resolver(cert.clone());
            if let Some(v) = &client_verifier {
                settings.set_client_cert_verifier(v.clone());
            }
            proxy.add_listener(ListenerConfig::tcp(config.https.to_string()).tls(settings).l4_buffer(buffers));
        }
        server.add_service(proxy);
    }
    let management = ManagementService {
        state: state.clone(),
        plain: config.management,
        tls: cert.clone().map(|c| (config.management_tls, c)),
        client_verifier: client_verifier.clone(),
        header_timeout: config.header_timeout,
    };
    server.add_service(background_service("management", management));
    tracing::info!(
        http = %config.http,
        https = %config.https,
        management = %config.management,
        config_dir = %config.config_dir.display(),
        threads = config.threads,
        "tollgate-gateway starting"
    );
    server.run(RunArgs { shutdown_signal: Box::new(DrainOnTerm { state: state.clone(), drain: config.drain }) });
    finish_analytics(&state);
    Ok(())
}

/// The built-in key manager (role key-manager) and the issuer every API
/// trusts for it: its own keys, or without the role the keys at
/// --key-manager-jwks-uri.
#[allow(clippy::type_complexity)]
fn built_in_key_manager(
    config: &Config,
    jwks: &crate::oauth::jwks::JwksCache,
) -> anyhow::Result<(Option<Arc<crate::key_manager::KeyManager>>, Option<Arc<crate::oauth::Issuer>>)> {
    use crate::key_manager::{KeyManager, builtin_issuer, signing::SigningKeys};
    if config.has_role(Role::KeyManager) {
        let keys = SigningKeys::load(&config.signing_key_files, &config.key_manager_dir)
            .context("the key manager's signing keys")?;
        let ssa = match &config.ssa_jwks {
            Some(path) => {
                let doc = std::fs::read(path).with_context(|| format!("--ssa-jwks {}", path.display()))?;
                let set = crate::oauth::keys::KeySet::parse(&doc)
                    .map_err(|e| anyhow::anyhow!("--ssa-jwks {}: {e}", path.display()))?;
                Some(Arc::new(set))
            }
            None => None,
        };
        let fapi = config.tls_profile == crate::config::TlsProfile::Fapi;
        let answers = SigningKeys::load_for_responses(
            &config.response_signing_key_files,
            &config.signing_key_files,
            &config.key_manager_dir,
        )
        .context("the key manager's answer-signing keys")?;
        let km = KeyManager::new(&config.issuer, keys, answers, config.token_ttl, ssa, fapi);
        let issuer = km.issuer().map_err(|e| anyhow::anyhow!("the key manager's public keys: {e}"))?;
        tracing::info!(issuer = %km.issuer, keys = km.keys.keys.len(), signing_kid = %km.keys.current().kid, "built-in key manager");
        return Ok((Some(Arc::new(km)), Some(Arc::new(issuer))));
    }
    // Without the role: the built-in key manager's keys are fetched (or,
    // given --signing-key-file, read here: such a gateway also signs
    // open-banking answers with them).
    if let Some(uri) = &config.key_manager_jwks_uri {
        let keys = crate::oauth::issuer::Keys::Remote(jwks.source(uri));
        let issuer = Arc::new(builtin_issuer(&config.issuer, keys, uri.as_bytes()));
        return Ok((signer(config)?, Some(issuer)));
    }
    match signer(config)? {
        // Tokens are trusted with the token keys only, never the answer keys.
        Some(km) if !config.signing_key_files.is_empty() => {
            let issuer = km.issuer().map_err(|e| anyhow::anyhow!("the signing keys' public halves: {e}"))?;
            Ok((Some(km), Some(Arc::new(issuer))))
        }
        Some(km) => Ok((Some(km), None)),
        None => Ok((None, None)),
    }
}

/// The signing keys of a process without the key-manager role, when it is
/// given --signing-key-file (answers of openBanking.jws.signResponses APIs).
fn signer(config: &Config) -> anyhow::Result<Option<Arc<crate::key_manager::KeyManager>>> {
    use crate::key_manager::{KeyManager, signing::SigningKeys};
    if config.signing_key_files.is_empty() && config.response_signing_key_files.is_empty() {
        return Ok(None);
    }
    let answers = SigningKeys::load_for_responses(
        &config.response_signing_key_files,
        &config.signing_key_files,
        &config.key_manager_dir,
    )
    .context("--response-signing-key-file")?;
    // The token keys are only published here; without them the answer keys
    // stand in (this process issues no tokens).
    let keys = match config.signing_key_files.is_empty() {
        true => SigningKeys::load(&config.response_signing_key_files, &config.key_manager_dir),
        false => SigningKeys::load(&config.signing_key_files, &config.key_manager_dir),
    }
    .context("--signing-key-file")?;
    let fapi = config.tls_profile == crate::config::TlsProfile::Fapi;
    Ok(Some(Arc::new(KeyManager::new(&config.issuer, keys, answers, config.token_ttl, None, fapi))))
}

/// Opens the store on a runtime thread of its own, which keeps driving the
/// database pool for the life of the process.
fn open_store(
    config: &Config,
    key_lookups: prometheus_client::metrics::counter::Counter,
) -> anyhow::Result<Arc<crate::store::Store>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (data_dir, url, token, ttl) =
        (config.data_dir.clone(), config.database_url.clone(), config.admin_token_file.clone(), config.key_cache_ttl);
    std::thread::Builder::new().name("tollgate-store".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                let _ = tx.send(Err(anyhow::anyhow!("store runtime: {e}")));
                return;
            }
        };
        let opened =
            rt.block_on(crate::store::Store::open(&data_dir, url.as_deref(), token.as_deref(), ttl, key_lookups));
        let _ = tx.send(opened.map(Arc::new));
        rt.block_on(std::future::pending::<()>());
    })?;
    rx.recv().map_err(|_| anyhow::anyhow!("the store thread ended"))?
}
