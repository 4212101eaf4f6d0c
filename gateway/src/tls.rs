//! Server certificates loaded from PEM files and reloaded when they change,
//! without a restart. A broken new pair never replaces the working one.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::crypto::ring::sign::any_supported_type;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why a certificate pair cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no PEM private key found")]
    NoKey { path: PathBuf },
    #[error("{path}: unsupported private key: {message}")]
    BadKey { path: PathBuf, message: String },
    #[error("{key} does not belong to the certificate in {cert} ({message})")]
    Mismatch { cert: PathBuf, key: PathBuf, message: String },
}

/// Loads a certificate chain and key into a rustls `CertifiedKey`.
pub fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let read = |p: &Path| std::fs::read(p).map_err(|source| TlsError::Read { path: p.into(), source });
    let cert_pem = read(cert)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice()).filter_map(Result::ok).collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: cert.into() });
    }
    let key_pem = read(key)?;
    let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::NoKey { path: key.into() })?;
    let signing =
        any_supported_type(&key_der).map_err(|e| TlsError::BadKey { path: key.into(), message: e.to_string() })?;
    let pair = CertifiedKey::new(certs, signing);
    // A certificate written before its key (or the other way round) must
    // never go live: every handshake would fail.
    pair.keys_match().map_err(|e| TlsError::Mismatch { cert: cert.into(), key: key.into(), message: e.to_string() })?;
    Ok(pair)
}

/// A certificate resolver whose pair is swapped when the files change.
pub struct ReloadingCert {
    current: ArcSwap<CertifiedKey>,
    cert: PathBuf,
    key: PathBuf,
    /// Why the files on disk are not in service (None when they are).
    problem: parking_lot::Mutex<Option<String>>,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert").field("cert", &self.cert).field("key", &self.key).finish()
    }
}

fn stamp(p: &Path) -> Option<(u64, u128)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.len(), m.modified().ok()?.duration_since(UNIX_EPOCH).ok()?.as_nanos()))
}

impl ReloadingCert {
    /// Loads the pair now (failing when it is unusable) and starts a thread
    /// that reloads it when either file changes.
    pub fn start(cert: &Path, key: &Path, every: Duration) -> Result<Arc<ReloadingCert>, TlsError> {
        let pair = load_pair(cert, key)?;
        let me = Arc::new(ReloadingCert {
            current: ArcSwap::from_pointee(pair),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            problem: parking_lot::Mutex::new(None),
        });
        let weak = Arc::downgrade(&me);
        let mut last = (stamp(cert), stamp(key));
        std::thread::Builder::new()
            .name("tls-reload".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(every);
                    let Some(me) = weak.upgrade() else { return };
                    let now = (stamp(&me.cert), stamp(&me.key));
                    if now == last {
                        continue;
                    }
                    match load_pair(&me.cert, &me.key) {
                        Ok(pair) => {
                            me.current.store(Arc::new(pair));
                            *me.problem.lock() = None;
                            last = now;
                            tracing::info!(cert = %me.cert.display(), "TLS certificate reloaded");
                        }
                        Err(e) => {
                            let message = e.to_string();
                            if me.problem.lock().replace(message.clone()).as_ref() != Some(&message) {
                                tracing::warn!(error = %message, "new TLS certificate not usable; keeping the current one");
                            }
                        }
                    }
                }
            })
            .expect("spawning the TLS reload thread");
        Ok(me)
    }
}

impl ReloadingCert {
    /// For /status: the files, and why they are not in service if so.
    pub fn status(&self) -> serde_json::Value {
        let problem = self.problem.lock().clone();
        serde_json::json!({
            "cert": self.cert.display().to_string(),
            "key": self.key.display().to_string(),
            "servingLastGood": problem.is_some(),
            "error": problem,
        })
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}
