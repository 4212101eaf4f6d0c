//! A test PKI (a CA made here with rcgen, server and client certificates)
//! and a TLS client that can present a client certificate.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use sha2::Digest;

use super::{Resp, exchange};

/// A certificate and its key, as files and DER.
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
    pub key_der: Vec<u8>,
    pub pem: String,
}

impl Leaf {
    /// RFC 8705 thumbprint.
    pub fn x5t(&self) -> String {
        B64.encode(sha2::Sha256::digest(self.der.as_ref()))
    }
}

pub struct Ca {
    pub issuer: CertifiedIssuer<'static, KeyPair>,
    pub pem: PathBuf,
    pub der: CertificateDer<'static>,
}

impl Ca {
    pub fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, format!("{name} test CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pem = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&pem, issuer.pem()).unwrap();
        let der = issuer.der().clone();
        Ca { issuer, pem, der }
    }

    pub fn leaf(&self, dir: &Path, name: &str, server: bool) -> Leaf {
        self.leaf_with(dir, name, server, |_| {})
    }

    /// A TPP's eIDAS certificate: a QCStatements extension with the PSD2
    /// statement holding `roles` (the last arc of 0.4.0.19495.1.x: 1 ASPSP,
    /// 2 PISP, 3 AISP, 4 CBPII; none = no statement) and, when given, the
    /// subject's organizationIdentifier.
    pub fn tpp_leaf(&self, dir: &Path, name: &str, roles: Option<&[u64]>, org: Option<&str>) -> Leaf {
        self.leaf_with(dir, name, false, |params| {
            if let Some(org) = org {
                params.distinguished_name.push(DnType::CustomDnType(vec![2, 5, 4, 97]), org);
            }
            if let Some(roles) = roles {
                params
                    .custom_extensions
                    .push(rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 5, 5, 7, 1, 3], qc_statements(roles)));
            }
        })
    }

    pub fn leaf_with(
        &self,
        dir: &Path,
        name: &str,
        server: bool,
        customize: impl FnOnce(&mut CertificateParams),
    ) -> Leaf {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.distinguished_name.push(DnType::CommonName, name);
        params.distinguished_name.push(DnType::OrganizationName, "Test TPP Ltd");
        params.extended_key_usages =
            vec![if server { ExtendedKeyUsagePurpose::ServerAuth } else { ExtendedKeyUsagePurpose::ClientAuth }];
        customize(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Leaf { cert: cert_path, key: key_path, der: cert.der().clone(), key_der: key.serialize_der(), pem: cert.pem() }
    }
}

/// QCStatements (RFC 3739) with an ETSI TS 119 495 PSD2 statement.
fn qc_statements(roles: &[u64]) -> Vec<u8> {
    use yasna::models::ObjectIdentifier as O;
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_sequence(|w| {
                w.next().write_oid(&O::from_slice(&[0, 4, 0, 19495, 2]));
                w.next().write_sequence(|w| {
                    w.next().write_sequence(|w| {
                        for r in roles {
                            w.next().write_sequence(|w| {
                                w.next().write_oid(&O::from_slice(&[0, 4, 0, 19495, 1, *r]));
                                w.next()
                                    .write_utf8_string(["", "PSP_AS", "PSP_PI", "PSP_AI", "PSP_IC"][*r as usize % 5]);
                            });
                        }
                    });
                    w.next().write_utf8_string("Financial Conduct Authority");
                    w.next().write_utf8_string("GB-FCA");
                });
            });
        })
    })
}

/// A TLS client (trusting one CA, optionally with a client certificate).
pub struct TlsClient {
    pub trust: CertificateDer<'static>,
    pub cert: Option<(CertificateDer<'static>, Vec<u8>)>,
    pub versions: &'static [&'static rustls::SupportedProtocolVersion],
    pub suites: Option<Vec<rustls::CipherSuite>>,
    /// Loopback source address (default 127.0.0.1).
    pub source: Option<&'static str>,
}

impl TlsClient {
    pub fn new(trust: &CertificateDer<'static>) -> TlsClient {
        TlsClient { trust: trust.clone(), cert: None, versions: rustls::ALL_VERSIONS, suites: None, source: None }
    }

    pub fn with_cert(mut self, leaf: &Leaf) -> TlsClient {
        self.cert = Some((leaf.der.clone(), leaf.key_der.clone()));
        self
    }

    pub fn connect(
        &self,
        addr: SocketAddr,
    ) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
        let mut provider = rustls::crypto::ring::default_provider();
        if let Some(suites) = &self.suites {
            provider.cipher_suites.retain(|s| suites.contains(&s.suite()));
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.trust.clone()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(self.versions)
            .unwrap()
            .with_root_certificates(roots);
        let config = match &self.cert {
            Some((cert, key)) => {
                builder.with_client_auth_cert(vec![cert.clone()], PrivateKeyDer::Pkcs8(key.clone().into())).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        let conn = rustls::ClientConnection::new(Arc::new(config), ServerName::IpAddress(addr.ip().into())).unwrap();
        let sock = connect_from(self.source.unwrap_or("127.0.0.1"), addr);
        sock.set_read_timeout(Some(Duration::from_secs(120)))?;
        let mut tls = rustls::StreamOwned::new(conn, sock);
        // Finish the handshake now, so a refused one is an error here.
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(tls)
    }

    pub fn get(&self, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
        let mut tls = self.connect(addr).unwrap_or_else(|e| panic!("TLS to {addr}: {e}"));
        exchange(&mut tls, "GET", path, headers, b"").unwrap()
    }
}

/// A TCP connection from a chosen loopback source address.
pub fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&format!("{source}:0").parse::<SocketAddr>().unwrap().into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    socket.into()
}

/// An EC P-256 key that signs JWTs, with its public JWK.
pub struct SigningKey {
    pub kid: String,
    pub key: EncodingKey,
    pub jwk: Value,
    /// The private key as PKCS#8 PEM.
    pub pem: String,
}

impl SigningKey {
    pub fn new(kid: &str) -> SigningKey {
        let kp = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = kp.public_key_raw();
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
                         "x": B64.encode(&raw[1..33]), "y": B64.encode(&raw[33..65])});
        SigningKey { kid: kid.into(), key: EncodingKey::from_ec_der(&kp.serialize_der()), jwk, pem: kp.serialize_pem() }
    }

    /// A detached JWS (`<header>..<signature>`, RFC 7515 appendix F) over `body`.
    pub fn sign_detached(&self, body: &[u8]) -> String {
        let h = B64.encode(json!({"alg": "ES256", "kid": self.kid}).to_string());
        let input = format!("{h}.{}", B64.encode(body));
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &self.key, Algorithm::ES256).unwrap();
        format!("{h}..{sig}")
    }

    /// A JWK Set of this key alone.
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.jwk.clone()]})
    }

    pub fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(self.kid.clone());
        encode(&h, claims, &self.key).unwrap()
    }
}

/// Flags of a gateway with TLS listeners (`server`), client certificates of
/// `ca` verified, and the management API behind the token in `admin_token`
/// (access log on, as by default).
pub fn mtls_gateway_flags(server: &Leaf, ca: &Ca, admin_token: &Path) -> Vec<String> {
    let path = |p: &Path| p.to_str().unwrap().to_string();
    vec![
        "--tls-cert".into(),
        path(&server.cert),
        "--tls-key".into(),
        path(&server.key),
        "--client-ca".into(),
        path(&ca.pem),
        "--admin-token-file".into(),
        path(admin_token),
    ]
}

/// A test's folders (`config/` for the gateway, `pki/` for certificates),
/// the bank CA and the gateway's server certificate.
pub struct Workspace {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub pki: PathBuf,
    pub ca: Ca,
    pub server: Leaf,
}

impl Workspace {
    pub fn new() -> Workspace {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, pki) = (tmp.path().join("config"), tmp.path().join("pki"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&pki).unwrap();
        let ca = Ca::new(&pki, "bank");
        let server = ca.leaf(&pki, "gateway", true);
        Workspace { tmp, dir, pki, ca, server }
    }
}
