//! Per-request state the pipeline steps share: who the client is (address,
//! TLS), which operation the request is for, the verified [`Principal`], and
//! what the steps decided for the response.

use std::net::IpAddr;
use std::sync::Arc;

use pingora::http::RequestHeader;

use crate::oauth::VerifiedToken;
use crate::policy::Policy;
use crate::store::keys::Environment;
use crate::throttle::Decision;

/// One declared operation (a method at a path template).
pub struct Operation {
    /// `METHOD /path/template` (analytics).
    pub name: Arc<str>,
    /// Its own ThrottlePolicy (`operations[].throttling`).
    pub policy: Option<Arc<Policy>>,
    /// OAuth2 scopes it requires (`operations[].scopes`).
    pub scopes: Vec<String>,
}

/// What the API's operation list says about a request.
#[derive(Clone, Default)]
pub enum OpMatch {
    /// The API declares no operations: every path and method is allowed.
    #[default]
    Undeclared,
    /// No declared path template matches.
    NoPath,
    /// A template matches; `op` is None when the method is not declared.
    Path { allow: Arc<str>, op: Option<Arc<Operation>> },
}

impl OpMatch {
    /// The operation the request is for, when one is declared.
    pub fn operation(&self) -> Option<&Operation> {
        match self {
            OpMatch::Path { op: Some(op), .. } => Some(op),
            _ => None,
        }
    }
}

/// A verified client certificate (TLS, or forwarded by a trusted proxy).
#[derive(Debug)]
pub struct ClientCert {
    /// The leaf certificate (DER).
    pub der: Vec<u8>,
    /// base64url SHA-256 of `der`: RFC 8705 `x5t#S256`.
    pub x5t_s256: String,
    /// Its PSD2 roles and organisation, read on first use.
    psd2: std::sync::OnceLock<Result<crate::psd2::Psd2, String>>,
}

impl ClientCert {
    pub fn new(der: Vec<u8>) -> ClientCert {
        use base64::Engine;
        use sha2::Digest;
        let x5t_s256 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&der));
        ClientCert { der, x5t_s256, psd2: std::sync::OnceLock::new() }
    }

    /// What the certificate says about its TPP (eIDAS QWAC), parsed once.
    pub fn psd2(&self) -> &Result<crate::psd2::Psd2, String> {
        self.psd2.get_or_init(|| crate::psd2::Psd2::of_certificate(&self.der))
    }
}

/// The client connection as far as the gateway can tell.
#[derive(Clone, Debug, Default)]
pub struct Client {
    /// The TCP peer.
    pub peer_ip: Option<IpAddr>,
    /// The peer is a trusted proxy (--trusted-proxies): its X-Forwarded-*
    /// headers are believed.
    pub peer_trusted: bool,
    /// The client: the peer, or the right-most untrusted X-Forwarded-For
    /// address when the peer is a trusted proxy.
    pub ip: Option<IpAddr>,
    /// The request came over TLS.
    pub tls: bool,
    /// The client's verified certificate: from the TLS handshake, or from
    /// --client-cert-header when the peer is a trusted proxy.
    pub cert: Option<Arc<ClientCert>>,
}

/// How the caller proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential {
    ApiKey,
    OAuth2,
}

/// The verified caller: produced only by the authentication step, from a
/// credential it checked. Everything after authentication (subscriptions,
/// throttling by consumer or claim, backend choice) reads this, never the
/// request's credentials.
#[derive(Clone, Debug)]
pub struct Principal {
    pub credential: Credential,
    /// The application the credential belongs to.
    pub application: String,
    /// Production or sandbox credentials (sandbox goes to sandbox endpoints).
    pub environment: Environment,
    /// The application's subscription tier for this API (a ThrottlePolicy name).
    pub tier: Option<String>,
    /// The OAuth2 client (for tokens).
    pub client_id: Option<String>,
    /// The verified access token (None for API keys).
    pub token: Option<Arc<VerifiedToken>>,
    /// The verified client certificate the request came with.
    pub client_cert: Option<Arc<ClientCert>>,
}

impl Principal {
    /// A verified claim as text (strings as they are, other values as
    /// JSON); API keys carry none.
    pub fn claim(&self, name: &str) -> Option<String> {
        self.token.as_ref()?.claims.get(name).map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }

    /// Scopes the credential grants (none for API keys).
    pub fn scopes(&self) -> &[String] {
        self.token.as_ref().map(|t| t.scopes.as_slice()).unwrap_or_default()
    }
}

/// State of one request, filled in by the pipeline's steps.
#[derive(Default)]
pub struct RequestCtx {
    pub client: Client,
    /// The request path within the API (canonical; empty for the API root).
    pub rest: String,
    pub operation: OpMatch,
    /// CORS headers for every answer to this request (empty when the origin
    /// is not allowed or the API has no CORS).
    pub cors_headers: Vec<(String, String)>,
    /// The verified caller (None for APIs without security).
    pub principal: Option<Principal>,
    /// Request headers that carried a credential: never forwarded.
    pub strip_headers: Vec<String>,
    /// The verified identity for the backend (X-Tollgate-*).
    pub identity_headers: Vec<(&'static str, String)>,
    /// The tightest rate-limit decision, reported in RateLimit-* headers.
    pub ratelimit: Option<Decision>,
    /// A policy with stopOnQuotaReach false that the request went over.
    pub flagged: Option<Arc<Policy>>,
    /// Bandwidth counters to charge with the response size.
    pub bandwidth: Vec<(Arc<Policy>, u64)>,
    /// `x-fapi-interaction-id` of this request (openBanking.interactionId):
    /// on every answer, the gateway's own included.
    pub interaction_id: Option<String>,
    /// The whole request body, read before the pipeline for APIs whose
    /// steps need it (idempotency, JWS).
    pub body: Option<bytes::Bytes>,
    /// Refused by a throttling policy (analytics).
    pub throttled: bool,
    /// What the idempotency step claimed, to be completed with the answer.
    pub idempotency: Option<super::idempotency::Claim>,
}

impl RequestCtx {
    /// Headers every answer the gateway writes itself carries (CORS for an
    /// allowed origin, the interaction id).
    pub fn answer_headers(&self) -> Vec<(String, String)> {
        let mut h = self.cors_headers.clone();
        if let Some(id) = &self.interaction_id {
            h.push((super::interaction::HEADER.to_string(), id.clone()));
        }
        h
    }
}

impl RequestCtx {
    /// Sandbox credentials: the request goes to the sandbox endpoints.
    pub fn sandbox(&self) -> bool {
        self.principal.as_ref().is_some_and(|p| p.environment == Environment::Sandbox)
    }
}

/// A request header's value, when it is valid text.
pub fn header<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Every value of a header, joined with ", " (None when absent).
pub fn joined(req: &RequestHeader, name: &str) -> Option<String> {
    let values: Vec<&str> = req.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
    (!values.is_empty()).then(|| values.join(", "))
}

fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Whether `ip` is one of the trusted proxies.
pub fn trusted(proxies: &[ipnet::IpNet], ip: IpAddr) -> bool {
    let ip = unmapped(ip);
    proxies.iter().any(|n| n.contains(&ip))
}

/// The client behind trusted proxies: the right-most X-Forwarded-For entry
/// that is not itself a trusted proxy. None when the header is absent or an
/// entry on the way is not an address (the peer then counts).
pub fn forwarded_client(req: &RequestHeader, proxies: &[ipnet::IpNet]) -> Option<IpAddr> {
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

impl Client {
    /// The client of a request that arrived from `peer_ip` (the
    /// certificate is added by the caller).
    pub fn of(req: &RequestHeader, peer_ip: Option<IpAddr>, tls: bool, proxies: &[ipnet::IpNet]) -> Client {
        let peer_trusted = peer_ip.is_some_and(|p| trusted(proxies, p));
        let ip = if peer_trusted { forwarded_client(req, proxies).or(peer_ip) } else { peer_ip };
        Client { peer_ip, peer_trusted, ip, tls, cert: None }
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

        // Only a trusted peer's header is believed.
        let spoofed = req(&["198.51.100.1"]);
        let from_untrusted = Client::of(&spoofed, ip("203.0.113.50"), false, &proxies);
        assert_eq!(from_untrusted.ip, ip("203.0.113.50"));
        assert!(!from_untrusted.peer_trusted);
        let from_proxy = Client::of(&spoofed, ip("10.0.0.7"), true, &proxies);
        assert_eq!(from_proxy.ip, ip("198.51.100.1"));
        assert!(from_proxy.peer_trusted && from_proxy.tls);
    }

    #[test]
    fn claims_read_as_text_and_api_keys_have_none() {
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), "tpp-1".into());
        claims.insert("n".into(), 7.into());
        let token = VerifiedToken {
            issuer_id: "bank/idp".into(),
            claims,
            client_id: Some("tpp-1".into()),
            scopes: vec!["accounts".into()],
            x5t_s256: None,
            expires: 0,
            issuer_fingerprint: [0; 32],
            keys: None,
        };
        let mut p = Principal {
            credential: Credential::OAuth2,
            application: "a".into(),
            environment: Environment::Production,
            tier: None,
            client_id: Some("tpp-1".into()),
            token: Some(Arc::new(token)),
            client_cert: None,
        };
        assert_eq!(p.claim("sub").as_deref(), Some("tpp-1"));
        assert_eq!(p.claim("n").as_deref(), Some("7"));
        assert_eq!(p.claim("missing"), None);
        assert_eq!(p.scopes(), ["accounts"]);
        p.token = None;
        assert_eq!(p.claim("sub"), None);
        assert!(p.scopes().is_empty());
    }

    #[test]
    fn certificate_thumbprints_are_rfc_8705() {
        // x5t#S256 is the base64url SHA-256 of the DER certificate.
        let c = ClientCert::new(b"abc".to_vec());
        assert_eq!(c.x5t_s256, "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0");
    }
}
