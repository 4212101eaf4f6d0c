//! Remote JWK Sets (`KeyManager.spec.jwksUri`), fetched off the request
//! path by one worker thread: at first use (retried every 5 s until it
//! works), every 5 minutes after, and when a token names a `kid` the set
//! does not hold (at most once per 30 s per issuer, so a stream of made-up
//! kids cannot turn the gateway into a JWKS flooder). The last good set is
//! kept while the issuer is unreachable or serves garbage.
//!
//! Sources are shared by URI across reloads, so a reload does not refetch.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::{Notify, watch};

use super::keys::KeySet;
use crate::metrics::ResultLabels;

/// Retry interval until a set was fetched once.
const FIRST_FETCH_RETRY: Duration = Duration::from_secs(5);
/// Periodic refresh of a set that was fetched.
const REFRESH_EVERY: Duration = Duration::from_secs(300);
/// Fewest seconds between refreshes caused by an unknown kid.
const UNKNOWN_KID_INTERVAL: Duration = Duration::from_secs(30);
/// Longest a request waits for a refresh caused by its unknown kid.
pub const UNKNOWN_KID_WAIT: Duration = Duration::from_secs(2);
/// Largest JWK Set document read.
const MAX_DOCUMENT: usize = 1 << 20;

/// Gets a JWK Set document by URL.
pub type Fetcher = Arc<dyn Fn(String) -> BoxFuture<'static, Result<Vec<u8>, String>> + Send + Sync>;

#[derive(Default)]
struct FetchState {
    last_attempt: Option<Instant>,
    last_success: Option<Instant>,
    last_error: Option<String>,
    /// A request asked for a refresh (unknown kid).
    wanted: bool,
}

/// One issuer's remote key set.
pub struct RemoteKeys {
    pub uri: String,
    keys: ArcSwapOption<KeySet>,
    state: Mutex<FetchState>,
    /// Bumped after every fetch attempt (waiters wake up).
    attempts: watch::Sender<u64>,
}

/// What /status shows about a remote key set.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoteKeysStatus {
    pub jwks_uri: String,
    pub keys: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetched_seconds_ago: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl RemoteKeys {
    /// The keys held now (None before the first successful fetch).
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.load_full()
    }

    pub fn status(&self) -> RemoteKeysStatus {
        let s = self.state.lock();
        RemoteKeysStatus {
            jwks_uri: self.uri.clone(),
            keys: self.current().map(|k| k.len()).unwrap_or(0),
            fetched_seconds_ago: s.last_success.map(|t| t.elapsed().as_secs()),
            last_error: s.last_error.clone(),
        }
    }

    /// Whether the worker should fetch this set now.
    fn due(&self, now: Instant) -> bool {
        let s = self.state.lock();
        if s.wanted {
            return true;
        }
        match (s.last_success, s.last_attempt) {
            (None, None) => true,
            (None, Some(a)) => now.duration_since(a) >= FIRST_FETCH_RETRY,
            (Some(ok), Some(a)) => {
                now.duration_since(ok) >= REFRESH_EVERY && now.duration_since(a) >= FIRST_FETCH_RETRY
            }
            (Some(_), None) => false,
        }
    }
}

/// Whether keys may be fetched from `uri`: https, or plain http only on
/// loopback (a key set read in the clear could be swapped on the way).
pub fn allowed_uri(uri: &str) -> bool {
    uri.parse::<http::Uri>().is_ok_and(|p| {
        let loopback = matches!(p.host(), Some("127.0.0.1" | "localhost" | "[::1]"));
        p.host().is_some() && (p.scheme_str() == Some("https") || (p.scheme_str() == Some("http") && loopback))
    })
}

/// Every remote key set in use, and the worker that fetches them.
pub struct JwksCache {
    sources: Mutex<HashMap<String, Weak<RemoteKeys>>>,
    wake: Notify,
    fetcher: Fetcher,
    /// `tollgate_jwks_fetches_total{result}`.
    fetches: Family<ResultLabels, Counter>,
}

impl JwksCache {
    /// A cache fetching over HTTP(S) (system trust store; SSL_CERT_FILE is
    /// honoured), counting fetches in `fetches`.
    pub fn new(fetches: Family<ResultLabels, Counter>) -> JwksCache {
        Self::with_fetcher(http_fetcher(None), fetches)
    }

    /// A cache whose fetches of `trust.uri` also trust the CAs of
    /// `trust.ca_file` (the control plane's own CA, `--key-manager-ca`).
    pub fn with_trust(fetches: Family<ResultLabels, Counter>, trust: Option<ExtraTrust>) -> JwksCache {
        Self::with_fetcher(http_fetcher(trust.map(Arc::new)), fetches)
    }

    pub fn with_fetcher(fetcher: Fetcher, fetches: Family<ResultLabels, Counter>) -> JwksCache {
        JwksCache { sources: Mutex::default(), wake: Notify::new(), fetcher, fetches }
    }

    /// The source for `uri`, shared with every issuer (and snapshot) using it.
    pub fn source(&self, uri: &str) -> Arc<RemoteKeys> {
        let mut map = self.sources.lock();
        if let Some(s) = map.get(uri).and_then(Weak::upgrade) {
            return s;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let s = Arc::new(RemoteKeys {
            uri: uri.to_string(),
            keys: ArcSwapOption::empty(),
            state: Mutex::default(),
            attempts: watch::channel(0).0,
        });
        map.insert(uri.to_string(), Arc::downgrade(&s));
        drop(map);
        self.wake.notify_one();
        s
    }

    /// A token names a kid `src` does not hold: asks the worker for a fresh
    /// set (unless one was fetched in the last 30 s) and waits for it, at
    /// most [`UNKNOWN_KID_WAIT`]. Returns whether a fetch attempt finished.
    pub async fn refresh_for_unknown_kid(&self, src: &RemoteKeys) -> bool {
        let mut attempts = src.attempts.subscribe();
        {
            let mut s = src.state.lock();
            // While the issuer has never answered, at most every 5 s.
            let min = if s.last_success.is_some() { UNKNOWN_KID_INTERVAL } else { FIRST_FETCH_RETRY };
            if s.last_attempt.is_some_and(|t| t.elapsed() < min) {
                return false;
            }
            s.wanted = true;
        }
        self.wake.notify_one();
        matches!(tokio::time::timeout(UNKNOWN_KID_WAIT, attempts.changed()).await, Ok(Ok(())))
    }

    /// One round of the worker: fetches every set that is due.
    pub async fn fetch_due(&self) {
        let now = Instant::now();
        let due: Vec<Arc<RemoteKeys>> = {
            let map = self.sources.lock();
            map.values().filter_map(Weak::upgrade).filter(|s| s.due(now)).collect()
        };
        for src in due {
            self.fetch(&src).await;
        }
    }

    async fn fetch(&self, src: &RemoteKeys) {
        {
            let mut s = src.state.lock();
            s.last_attempt = Some(Instant::now());
            s.wanted = false;
        }
        let result = match tokio::time::timeout(Duration::from_secs(5), (self.fetcher)(src.uri.clone())).await {
            Err(_) => Err("timed out after 5 s".to_string()),
            Ok(Err(e)) => Err(e),
            Ok(Ok(body)) => KeySet::parse(&body),
        };
        let label = match result {
            Ok(set) => {
                src.keys.store(Some(Arc::new(set)));
                let mut s = src.state.lock();
                s.last_success = Some(Instant::now());
                s.last_error = None;
                "ok"
            }
            Err(e) => {
                tracing::warn!(jwks_uri = %src.uri, error = %e, "cannot fetch the key manager's JWK Set; keeping the last good keys");
                src.state.lock().last_error = Some(e);
                "error"
            }
        };
        self.fetches.get_or_create(&ResultLabels { result: label }).inc();
        src.attempts.send_modify(|n| *n += 1);
    }

    /// Status of every remote key set in use.
    pub fn status(&self) -> Vec<RemoteKeysStatus> {
        let mut v: Vec<RemoteKeysStatus> =
            self.sources.lock().values().filter_map(Weak::upgrade).map(|s| s.status()).collect();
        v.sort_by(|a, b| a.jwks_uri.cmp(&b.jwks_uri));
        v
    }

    /// Runs the worker on a thread of its own for the life of the process.
    pub fn spawn_worker(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new().name("tollgate-jwks".into()).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the JWKS worker");
                    return;
                }
            };
            rt.block_on(async move {
                loop {
                    let Some(cache) = weak.upgrade() else { return };
                    cache.fetch_due().await;
                    let _ = tokio::time::timeout(Duration::from_secs(1), cache.wake.notified()).await;
                }
            });
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the JWKS worker; remote key sets are never fetched");
        }
    }
}

/// CAs trusted, besides the system store, for one key-set URL.
pub struct ExtraTrust {
    pub uri: String,
    /// A PEM bundle, read at every fetch (rotations count at once).
    pub ca_file: std::path::PathBuf,
}

/// The system trust store, read once per process (the first fetch).
fn system_roots() -> &'static rustls::RootCertStore {
    static ROOTS: std::sync::OnceLock<rustls::RootCertStore> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        roots
    })
}

/// The TLS settings of a fetch: the system store, plus `extra`'s CAs when
/// the fetch is of its URL and its file exists.
fn tls_for(uri: &str, extra: Option<&ExtraTrust>) -> Result<rustls::ClientConfig, String> {
    let mut roots = system_roots().clone();
    if let Some(t) = extra.filter(|t| t.uri == uri) {
        match std::fs::read(&t.ca_file) {
            Ok(pem) => {
                let certs: Vec<_> = rustls_pemfile::certs(&mut &pem[..])
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("--key-manager-ca {}: {e}", t.ca_file.display()))?;
                if certs.is_empty() {
                    return Err(format!("--key-manager-ca {}: no certificate in the file", t.ca_file.display()));
                }
                for c in certs {
                    roots.add(c).map_err(|e| format!("--key-manager-ca {}: {e}", t.ca_file.display()))?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("--key-manager-ca {}: {e}", t.ca_file.display())),
        }
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .map_err(|e| format!("TLS settings: {e}"))
}

/// GETs a URL over HTTP or HTTPS (system roots, and `extra`'s CAs for its
/// URL), at most [`MAX_DOCUMENT`] bytes of a 200 answer.
fn http_fetcher(extra: Option<Arc<ExtraTrust>>) -> Fetcher {
    use http_body_util::{BodyExt, Empty, Limited};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    Arc::new(move |uri: String| {
        let extra = extra.clone();
        Box::pin(async move {
            let tls = tls_for(&uri, extra.as_deref())?;
            let https =
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
            let client: Client<_, Empty<bytes::Bytes>> =
                Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build(https);
            let uri: http::Uri = uri.parse().map_err(|e| format!("bad URL: {e}"))?;
            let req = http::Request::get(uri)
                .header("accept", "application/json, application/jwk-set+json")
                .header("user-agent", concat!("tollgate-gateway/", env!("CARGO_PKG_VERSION")))
                .body(Empty::new())
                .map_err(|e| e.to_string())?;
            let resp = client.request(req).await.map_err(|e| format!("request failed: {e}"))?;
            if resp.status() != http::StatusCode::OK {
                return Err(format!("answered {}", resp.status()));
            }
            let body = Limited::new(resp.into_body(), MAX_DOCUMENT)
                .collect()
                .await
                .map_err(|e| format!("reading the document: {e}"))?;
            Ok(body.to_bytes().to_vec())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const SET: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

    fn cache(answers: Arc<Mutex<Vec<Result<String, String>>>>, calls: Arc<AtomicUsize>) -> Arc<JwksCache> {
        let fetcher: Fetcher = Arc::new(move |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            let next = answers.lock().first().cloned().unwrap_or(Err("down".into()));
            Box::pin(async move { next.map(String::into_bytes) })
        });
        Arc::new(JwksCache::with_fetcher(fetcher, Family::default()))
    }

    #[tokio::test]
    async fn fetched_once_then_kept_through_outages_and_garbage() {
        let answers = Arc::new(Mutex::new(vec![Ok(SET.to_string())]));
        let calls = Arc::new(AtomicUsize::new(0));
        let c = cache(answers.clone(), calls.clone());
        let src = c.source("http://idp/jwks");
        assert!(Arc::ptr_eq(&src, &c.source("http://idp/jwks")), "shared by URI");
        c.fetch_due().await;
        assert_eq!(src.current().unwrap().len(), 1);
        c.fetch_due().await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "not due again");

        *answers.lock() = vec![Ok("{\"keys\":[]}".into())];
        c.fetch(&src).await;
        assert_eq!(src.current().unwrap().len(), 1, "a set without keys never replaces a good one");
        assert!(src.status().last_error.is_some());
        *answers.lock() = vec![Err("connection refused".into())];
        c.fetch(&src).await;
        assert_eq!(src.current().unwrap().len(), 1, "nor does an outage");
    }

    #[tokio::test]
    async fn unknown_kids_refresh_at_most_every_30_seconds() {
        let answers = Arc::new(Mutex::new(vec![Ok(SET.to_string())]));
        let calls = Arc::new(AtomicUsize::new(0));
        let c = cache(answers, calls.clone());
        let src = c.source("http://idp/jwks");
        c.fetch_due().await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Just fetched: a made-up kid does not cause another fetch.
        assert!(!c.refresh_for_unknown_kid(&src).await);
        for _ in 0..10 {
            c.fetch_due().await;
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // 30 s later it does, and the waiting request sees the attempt.
        src.state.lock().last_attempt = Some(Instant::now() - UNKNOWN_KID_INTERVAL);
        let worker = {
            let c = c.clone();
            tokio::spawn(async move {
                loop {
                    c.fetch_due().await;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        assert!(c.refresh_for_unknown_kid(&src).await);
        worker.abort();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_source_that_never_worked_is_retried_every_5_seconds() {
        let answers = Arc::new(Mutex::new(vec![Err("down".to_string())]));
        let calls = Arc::new(AtomicUsize::new(0));
        let c = cache(answers, calls.clone());
        let src = c.source("http://idp/jwks");
        c.fetch_due().await;
        c.fetch_due().await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        src.state.lock().last_attempt = Some(Instant::now() - FIRST_FETCH_RETRY);
        c.fetch_due().await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(src.current().is_none());
    }
}
