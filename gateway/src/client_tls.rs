//! Mutual TLS on the TLS listeners (8243 and 9443): the client CA bundle
//! (`--client-ca`, reloaded when it changes; a broken bundle never replaces
//! the working one), the rustls verifier built from it, the certificate a
//! TLS-terminating proxy forwards (`--client-cert-header`, believed only
//! from `--trusted-proxies` peers and checked against the same CAs), and the
//! TLS profile (`--tls-profile fapi`).

use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CipherSuite, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme, SupportedCipherSuite,
};
use tollgate_crds::loader::FileStamp;

use crate::config::{ClientAuthMode, TlsProfile};
use crate::pipeline::request::ClientCert;

/// The TLS 1.2 suites FAPI 1.0 Advanced (8.5) permits: ECDHE with AES-GCM.
const FAPI_TLS12: [CipherSuite; 4] = [
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
];

/// The crypto of every TLS endpoint of the process (ring) for a profile:
/// `fapi` keeps TLS 1.3 as rustls offers it and, on TLS 1.2, only the FAPI
/// suites. TLS 1.0 and 1.1 are never offered (rustls has neither).
pub fn crypto_provider(profile: TlsProfile) -> CryptoProvider {
    let mut p = rustls::crypto::ring::default_provider();
    if profile == TlsProfile::Fapi {
        p.cipher_suites.retain(|s| match s {
            SupportedCipherSuite::Tls13(_) => true,
            SupportedCipherSuite::Tls12(_) => FAPI_TLS12.contains(&s.suite()),
        });
    }
    p
}

/// Why a client CA bundle cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientCaError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: no usable CA certificate ({message})")]
    NoCa { path: PathBuf, message: String },
}

fn verifier_for(path: &Path, mode: ClientAuthMode) -> Result<Arc<dyn ClientCertVerifier>, ClientCaError> {
    let pem = std::fs::read(path).map_err(|source| ClientCaError::Read { path: path.into(), source })?;
    let mut roots = RootCertStore::empty();
    let mut bad = None;
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        match cert.map_err(|e| e.to_string()).and_then(|c| roots.add(c).map_err(|e| e.to_string())) {
            Ok(()) => {}
            Err(e) => bad = Some(e),
        }
    }
    if roots.is_empty() {
        let message = bad.unwrap_or_else(|| "no PEM certificate found".into());
        return Err(ClientCaError::NoCa { path: path.into(), message });
    }
    let provider =
        CryptoProvider::get_default().cloned().unwrap_or_else(|| Arc::new(crypto_provider(TlsProfile::Default)));
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = if mode == ClientAuthMode::Required { builder } else { builder.allow_unauthenticated() };
    builder.build().map_err(|e| ClientCaError::NoCa { path: path.into(), message: e.to_string() })
}

/// The verifier in service, numbered (cached verdicts belong to one).
#[derive(Debug)]
pub struct Live {
    pub generation: u64,
    verifier: Arc<dyn ClientCertVerifier>,
}

impl Live {
    /// Verifies a certificate chain (leaf first) now.
    pub fn verify_chain(&self, chain: &[CertificateDer<'_>]) -> Result<(), String> {
        let (leaf, intermediates) = chain.split_first().ok_or("no certificate")?;
        self.verifier.verify_client_cert(leaf, intermediates, UnixTime::now()).map(|_| ()).map_err(|e| e.to_string())
    }
}

/// The client-certificate verifier of the TLS listeners, swapped when the
/// CA bundle changes.
#[derive(Debug)]
pub struct ClientCa {
    path: PathBuf,
    mode: ClientAuthMode,
    current: ArcSwap<Live>,
    /// Why the bundle on disk is not in service (None when it is).
    problem: parking_lot::Mutex<Option<String>>,
}

impl ClientCa {
    /// Loads the bundle now (failing when it is unusable) and starts a
    /// thread that reloads it when the file changes.
    pub fn start(path: &Path, mode: ClientAuthMode, every: Duration) -> Result<Arc<ClientCa>, ClientCaError> {
        let me = Arc::new(ClientCa {
            path: path.to_path_buf(),
            mode,
            current: ArcSwap::from_pointee(Live { generation: 0, verifier: verifier_for(path, mode)? }),
            problem: parking_lot::Mutex::new(None),
        });
        let weak = Arc::downgrade(&me);
        let stamp = |p: &Path| std::fs::metadata(p).ok().map(|m| FileStamp::of(&m));
        let mut last = stamp(path);
        std::thread::Builder::new()
            .name("client-ca-reload".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(every);
                    let Some(me) = weak.upgrade() else { return };
                    let now = stamp(&me.path);
                    if now == last {
                        continue;
                    }
                    match verifier_for(&me.path, me.mode) {
                        Ok(v) => {
                            let generation = me.current.load().generation + 1;
                            me.current.store(Arc::new(Live { generation, verifier: v }));
                            *me.problem.lock() = None;
                            last = now;
                            tracing::info!(client_ca = %me.path.display(), "client CA bundle reloaded");
                        }
                        Err(e) => {
                            let message = e.to_string();
                            if me.problem.lock().replace(message.clone()).as_ref() != Some(&message) {
                                tracing::warn!(error = %message, "new client CA bundle not usable; keeping the current one");
                            }
                        }
                    }
                }
            })
            .map_err(|source| ClientCaError::Read { path: path.into(), source })?;
        Ok(me)
    }

    /// For /status.
    pub fn status(&self) -> serde_json::Value {
        let problem = self.problem.lock().clone();
        serde_json::json!({
            "clientCa": self.path.display().to_string(),
            "clientAuth": format!("{:?}", self.mode).to_lowercase(),
            "servingLastGood": problem.is_some(),
            "error": problem,
        })
    }

    /// The verifier in service now.
    pub fn live(&self) -> Arc<Live> {
        self.current.load_full()
    }

    /// Verifies a certificate chain (leaf first) against the CAs now.
    pub fn verify_chain(&self, chain: &[CertificateDer<'_>]) -> Result<(), String> {
        self.current.load().verify_chain(chain)
    }
}

impl ClientCertVerifier for ClientCa {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mode == ClientAuthMode::Required
    }

    /// No CA names in the CertificateRequest (RFC 8446 4.2.4 and RFC 5246
    /// 7.4.4 allow an empty list: the client may send any certificate): the
    /// names would have to outlive a bundle reload.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current.load().verifier.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current.load().verifier.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current.load().verifier.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current.load().verifier.supported_verify_schemes()
    }
}

/// The verified client certificate of a connection, kept in Pingora's
/// TLS digest for the requests on it.
pub struct HandshakeCert(pub Arc<ClientCert>);

/// Pingora's after-handshake hook: remembers the client's leaf certificate
/// (rustls has verified it against the client CAs by then).
pub struct KeepClientCert;

#[async_trait]
impl TlsAccept for KeepClientCert {
    async fn handshake_complete_callback(&self, tls: &TlsRef) -> Option<Arc<dyn Any + Send + Sync>> {
        let der = tls.peer_certificate_der()?;
        Some(Arc::new(HandshakeCert(Arc::new(ClientCert::new(der.to_vec())))))
    }
}

/// A verdict on a forwarded certificate: the certificate and its notAfter
/// (Unix seconds), or why it is refused.
type Verdict = Result<(Arc<ClientCert>, i64), String>;

/// Verdicts are reused for 5 minutes at most, never past the certificate's
/// notAfter; refusals for 5 seconds (a CA just added soon counts).
struct VerdictExpiry;

impl moka::Expiry<(u64, [u8; 32]), Verdict> for VerdictExpiry {
    fn expire_after_create(&self, _: &(u64, [u8; 32]), v: &Verdict, _: std::time::Instant) -> Option<Duration> {
        Some(match v {
            Ok((_, not_after)) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                Duration::from_secs(not_after.saturating_sub(now).max(0) as u64).min(Duration::from_secs(300))
            }
            Err(_) => Duration::from_secs(5),
        })
    }
}

/// Certificates a TLS-terminating proxy forwards in a header.
pub struct ForwardedCerts {
    /// Lower-cased header name.
    pub header: String,
    /// The CAs the certificates must chain to (None: the header is only
    /// stripped, never believed).
    pub ca: Option<Arc<ClientCa>>,
    /// Verdicts by (bundle generation, SHA-256 of the header value).
    cache: moka::sync::Cache<(u64, [u8; 32]), Verdict>,
}

impl ForwardedCerts {
    pub fn new(header: String, ca: Option<Arc<ClientCa>>) -> ForwardedCerts {
        let cache = moka::sync::Cache::builder().max_capacity(10_000).expire_after(VerdictExpiry).build();
        ForwardedCerts { header, ca, cache }
    }

    /// The certificate in a header value: URL-encoded PEM (nginx
    /// `$ssl_client_escaped_cert`, AWS ALB), leaf first, verified against
    /// the client CAs.
    pub fn parse(&self, value: &[u8]) -> Result<Arc<ClientCert>, String> {
        use sha2::Digest;
        let Some(ca) = &self.ca else { return Err("no --client-ca to verify it against".into()) };
        // One bundle for the key and the verdict, even across a reload.
        let live = ca.live();
        let key = (live.generation, sha2::Sha256::digest(value).into());
        self.cache.get_with(key, || Self::verdict(&live, value)).map(|(cert, _)| cert)
    }

    fn verdict(ca: &Live, value: &[u8]) -> Verdict {
        let pem: Vec<u8> = percent_encoding::percent_decode(value).collect();
        let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("not PEM: {e}"))?;
        if chain.is_empty() {
            return Err("no PEM certificate".into());
        }
        ca.verify_chain(&chain)?;
        let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).map_err(|e| format!("not PEM: {e}"))?;
        let not_after = leaf.validity().not_after.timestamp();
        Ok((Arc::new(ClientCert::new(chain[0].to_vec())), not_after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

    fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
    }

    fn client(ca: &CertifiedIssuer<'static, KeyPair>) -> CertificateDer<'static> {
        let mut p = CertificateParams::new(vec!["tpp.example".to_string()]).unwrap();
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        p.signed_by(&KeyPair::generate().unwrap(), ca).unwrap().der().clone()
    }

    #[test]
    fn the_fapi_profile_keeps_only_ecdhe_aes_gcm_on_tls_1_2() {
        let suites = |p: TlsProfile| crypto_provider(p).cipher_suites.iter().map(|s| s.suite()).collect::<Vec<_>>();
        let fapi = suites(TlsProfile::Fapi);
        assert!(fapi.contains(&CipherSuite::TLS13_CHACHA20_POLY1305_SHA256), "TLS 1.3 suites as rustls offers them");
        assert!(!fapi.contains(&CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256));
        assert!(!fapi.contains(&CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256));
        for s in FAPI_TLS12 {
            assert!(fapi.contains(&s), "{s:?}");
        }
        assert!(suites(TlsProfile::Default).contains(&CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256));
    }

    #[test]
    fn a_changed_bundle_goes_live_and_a_broken_one_never_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        let (one, two) = (ca("one"), ca("two"));
        std::fs::write(&path, one.pem()).unwrap();
        let bundle = ClientCa::start(&path, ClientAuthMode::Optional, Duration::from_millis(20)).unwrap();
        assert!(bundle.verify_chain(&[client(&one)]).is_ok());
        assert!(bundle.verify_chain(&[client(&two)]).is_err(), "signed by a CA not in the bundle");
        assert!(!bundle.client_auth_mandatory());

        std::fs::write(&path, format!("{}\n{}", two.pem(), "garbage")).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while bundle.verify_chain(&[client(&two)]).is_err() {
            assert!(std::time::Instant::now() < deadline, "the new bundle never went live");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(bundle.verify_chain(&[client(&one)]).is_err(), "the old CA is gone");

        std::fs::write(&path, "not a certificate").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while bundle.status()["error"].is_null() {
            assert!(std::time::Instant::now() < deadline, "the broken bundle was not reported");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(bundle.verify_chain(&[client(&two)]).is_ok(), "the working bundle stays");
        assert_eq!(bundle.status()["servingLastGood"], true);
        assert!(ClientCa::start(&path, ClientAuthMode::Required, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn forwarded_certificates_are_url_encoded_pem_verified_against_the_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        let (one, two) = (ca("one"), ca("two"));
        std::fs::write(&path, one.pem()).unwrap();
        let bundle = ClientCa::start(&path, ClientAuthMode::None, Duration::from_secs(60)).unwrap();
        let fwd = ForwardedCerts::new("x-ssl-client-cert".into(), Some(bundle));
        let pem = |der: &CertificateDer<'_>| {
            let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der.as_ref());
            format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n")
        };
        let enc = |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
        let good = client(&one);
        let got = fwd.parse(enc(&pem(&good)).as_bytes()).unwrap();
        assert_eq!(got.der, good.to_vec());
        assert!(fwd.parse(enc(&pem(&client(&two))).as_bytes()).is_err());
        assert!(fwd.parse(b"%%%not-pem").is_err());
        assert!(ForwardedCerts::new("h".into(), None).parse(enc(&pem(&good)).as_bytes()).is_err(), "no CA, no trust");
    }

    #[test]
    fn a_new_bundle_is_not_answered_from_the_old_bundles_verdicts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        let (one, two) = (ca("one"), ca("two"));
        std::fs::write(&path, one.pem()).unwrap();
        let bundle = ClientCa::start(&path, ClientAuthMode::None, Duration::from_millis(20)).unwrap();
        let fwd = ForwardedCerts::new("x-ssl-client-cert".into(), Some(bundle.clone()));
        let pem_of = |der: &CertificateDer<'_>| {
            let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der.as_ref());
            let pem = format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n");
            percent_encoding::utf8_percent_encode(&pem, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let (old_tpp, new_tpp) = (pem_of(&client(&one)), pem_of(&client(&two)));
        assert!(fwd.parse(old_tpp.as_bytes()).is_ok());
        assert!(fwd.parse(new_tpp.as_bytes()).is_err());
        std::fs::write(&path, two.pem()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while bundle.verify_chain(&[client(&two)]).is_err() {
            assert!(std::time::Instant::now() < deadline, "the new bundle never went live");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(fwd.parse(new_tpp.as_bytes()).is_ok(), "at once, not after the refusal expires");
        assert!(fwd.parse(old_tpp.as_bytes()).is_err(), "nor is the removed CA's certificate still cached");
    }
}
