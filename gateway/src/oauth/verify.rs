//! JWT access-token verification (RFC 9068 / RFC 7519) against the issuers
//! an API trusts: signature with the issuer's key for the token's `kid`,
//! algorithm from the issuer's allow-list (never `none` or HMAC), `iss`
//! exactly, `exp` and `nbf` with 30 s of leeway, `aud` against the issuer's
//! audiences. Verified tokens are cached by their SHA-256 until they expire
//! (at most 5 minutes), so a hot token costs one hash per request.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Validation, decode, decode_header};
use sha2::{Digest, Sha256};

use super::issuer::{Issuer, Keys};
use super::jwks::JwksCache;
use super::jwt::{self, TimeError, Times};
use super::keys::{KeySet, family};

/// Clock skew allowed on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 30;
/// Longest a verified token is reused without checking its signature again.
const MAX_CACHED: Duration = Duration::from_secs(300);
/// Verified tokens held.
const CACHE_CAPACITY: u64 = 100_000;

/// A token whose signature and claims were checked.
#[derive(Debug)]
pub struct VerifiedToken {
    /// `namespace/name` of the KeyManager that issued it.
    pub issuer_id: String,
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// The OAuth2 client (the KeyManager's consumerKey claim).
    pub client_id: Option<String>,
    pub scopes: Vec<String>,
    /// `cnf.x5t#S256`: the certificate the token is bound to (RFC 8705).
    pub x5t_s256: Option<String>,
    /// `exp`, Unix seconds.
    pub expires: u64,
    /// The issuer's configuration and key set that verified it: a cached
    /// token is reused only while both are still current.
    pub issuer_fingerprint: [u8; 32],
    pub keys: Option<Arc<KeySet>>,
}

impl VerifiedToken {
    /// Whether `aud` holds `audience`.
    pub fn has_audience(&self, audience: &str) -> bool {
        audiences(&self.claims).iter().any(|a| a == audience)
    }
}

/// Why a token is refused (each is a 401 `invalid_token`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the access token is not a well-formed JWT")]
    Malformed,
    #[error("the token's algorithm {0} is not accepted")]
    Algorithm(String),
    #[error("no trusted key manager holds the key that signed the token")]
    UnknownKey,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the access token has expired")]
    Expired,
    #[error("the access token is not valid yet")]
    NotYetValid,
    #[error("the token's issuer is not trusted by this API")]
    WrongIssuer,
    #[error("the token's audience is not accepted")]
    WrongAudience,
    #[error("the token lacks a required claim ({0})")]
    MissingClaim(String),
    #[error("the key manager's signing keys cannot be fetched right now")]
    KeysUnavailable,
    /// Not an access token: another kind of JWS (`typ`), or a critical
    /// header parameter that is not understood.
    #[error("the JWS is not an access token: {0}")]
    NotAnAccessToken(String),
    #[error("the token's {0} is not a NumericDate")]
    BadDate(&'static str),
}

impl TokenError {
    /// Label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::Algorithm(_) => "algorithm",
            TokenError::UnknownKey => "unknown_key",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::MissingClaim(_) => "missing_claim",
            TokenError::KeysUnavailable => "keys_unavailable",
            TokenError::NotAnAccessToken(_) => "not_an_access_token",
            TokenError::BadDate(_) => "bad_date",
        }
    }

    /// How specific an error is: the most specific of several issuers' is reported.
    fn rank(&self) -> u8 {
        match self {
            TokenError::Malformed | TokenError::Algorithm(_) => 0,
            TokenError::WrongIssuer => 1,
            TokenError::UnknownKey | TokenError::KeysUnavailable => 2,
            TokenError::BadSignature => 3,
            _ => 4,
        }
    }
}

struct TokenExpiry;

impl moka::Expiry<[u8; 32], Arc<VerifiedToken>> for TokenExpiry {
    fn expire_after_create(&self, _: &[u8; 32], t: &Arc<VerifiedToken>, _: Instant) -> Option<Duration> {
        let left = t.expires.saturating_sub(unix_now());
        Some(Duration::from_secs(left).min(MAX_CACHED))
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The `aud` claim as a list.
fn audiences(claims: &serde_json::Map<String, serde_json::Value>) -> Vec<String> {
    match claims.get("aud") {
        Some(serde_json::Value::String(a)) => vec![a.clone()],
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    }
}

/// The claims (payload) of a compact JWS, read without verifying anything:
/// only ever used to pick whose keys to check it with.
pub fn unverified_claims(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The `iss` a token claims, read without verifying anything.
fn unverified_issuer(token: &str) -> Result<String, TokenError> {
    let claims = unverified_claims(token).ok_or(TokenError::Malformed)?;
    match claims.get("iss") {
        Some(serde_json::Value::String(iss)) => Ok(iss.clone()),
        Some(_) => Err(TokenError::WrongIssuer),
        None => Err(TokenError::MissingClaim("iss".into())),
    }
}

/// Checks tokens; shared by every API and reload.
pub struct Verifier {
    cache: moka::sync::Cache<[u8; 32], Arc<VerifiedToken>>,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier { cache: moka::sync::Cache::builder().max_capacity(CACHE_CAPACITY).expire_after(TokenExpiry).build() }
    }
}

impl Verifier {
    /// Verifies `token` as issued by one of `issuers`.
    pub async fn verify(
        &self,
        token: &str,
        issuers: &[Arc<Issuer>],
        jwks: &JwksCache,
    ) -> Result<Arc<VerifiedToken>, TokenError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(t) = self.cache.get(&digest) {
            if t.expires.saturating_add(LEEWAY_SECS) < unix_now() {
                return Err(TokenError::Expired);
            }
            // Cached for another API maybe: reused only when this API trusts
            // the issuer and its configuration and keys are unchanged; else
            // the token is checked again below.
            let current = issuers.iter().any(|i| {
                i.id == t.issuer_id
                    && i.fingerprint == t.issuer_fingerprint
                    && match (i.current_keys(), &t.keys) {
                        (Some(now), Some(then)) => Arc::ptr_eq(&now, then),
                        _ => false,
                    }
            });
            if current {
                return Ok(t);
            }
        }
        let header = decode_header(token).map_err(|_| TokenError::Malformed)?;
        let raw_header = jwt::header_of(token).map_err(|_| TokenError::Malformed)?;
        if family(header.alg).is_none() {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
        }
        let kid = header.kid.as_deref();
        // Only the issuers the token names are tried (its `iss`, unverified,
        // only picks whose keys to check it with): a forged token costs no
        // signature check of unrelated issuers and no refetch of their keys.
        let claimed = unverified_issuer(token)?;
        let issuers: Vec<&Arc<Issuer>> = issuers.iter().filter(|i| i.issuer == claimed).collect();
        if issuers.is_empty() {
            return Err(TokenError::WrongIssuer);
        }
        let mut best: Option<TokenError> = None;
        let mut note = |e: TokenError| {
            if best.as_ref().is_none_or(|b| e.rank() > b.rank()) {
                best = Some(e);
            }
        };
        let mut refetch = Vec::new();
        for issuer in issuers.iter().copied() {
            if !issuer.algorithms.contains(&header.alg) {
                note(TokenError::Algorithm(format!("{:?}", header.alg)));
                continue;
            }
            // Signed by the issuer's key is not enough: it must be an
            // access token (a signed answer or assertion is not).
            if let Err(e) = jwt::check_header(&raw_header, issuer.token_kind) {
                note(TokenError::NotAnAccessToken(e.to_string()));
                continue;
            }
            match self.try_issuer(token, &header, issuer) {
                Ok(t) => return Ok(self.remember(digest, t)),
                Err(TokenError::UnknownKey) if matches!(issuer.keys, Keys::Remote(_)) => refetch.push(issuer),
                Err(e) => note(e),
            }
        }
        // Keys rotated? One refresh (rate-limited per issuer), then once more.
        for issuer in refetch {
            let Keys::Remote(src) = &issuer.keys else { continue };
            if kid.is_some() || src.current().is_none() {
                jwks.refresh_for_unknown_kid(src).await;
            }
            match self.try_issuer(token, &header, issuer) {
                Ok(t) => return Ok(self.remember(digest, t)),
                Err(TokenError::UnknownKey) if src.current().is_none() => note(TokenError::KeysUnavailable),
                Err(e) => note(e),
            }
        }
        Err(best.unwrap_or(TokenError::UnknownKey))
    }

    fn remember(&self, digest: [u8; 32], t: VerifiedToken) -> Arc<VerifiedToken> {
        let t = Arc::new(t);
        self.cache.insert(digest, t.clone());
        t
    }

    fn try_issuer(
        &self,
        token: &str,
        header: &jsonwebtoken::Header,
        issuer: &Issuer,
    ) -> Result<VerifiedToken, TokenError> {
        let keys = issuer.current_keys().ok_or(TokenError::UnknownKey)?;
        let verified_with = keys.clone();
        let mut validation = Validation::new(header.alg);
        // Times are read below by the one NumericDate reader.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.set_issuer(&[issuer.issuer.as_str()]);
        validation.set_required_spec_claims(&["iss"]);
        let mut result = Err(TokenError::UnknownKey);
        for key in keys.candidates(header.kid.as_deref(), header.alg) {
            match decode::<serde_json::Map<String, serde_json::Value>>(token, &key.key, &validation) {
                Ok(data) => {
                    result = Ok(data.claims);
                    break;
                }
                Err(e) => {
                    result = Err(match e.kind() {
                        ErrorKind::ExpiredSignature => TokenError::Expired,
                        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
                        ErrorKind::MissingRequiredClaim(c) => TokenError::MissingClaim(c.clone()),
                        ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => TokenError::BadSignature,
                        _ => TokenError::Malformed,
                    });
                    // Another key of the family may have signed it (no kid);
                    // a claim error is final.
                    if !matches!(result, Err(TokenError::BadSignature)) {
                        break;
                    }
                }
            }
        }
        let claims = result?;
        // `iss` exactly, as one string (jsonwebtoken also accepts a list).
        if claims.get("iss").and_then(|v| v.as_str()) != Some(issuer.issuer.as_str()) {
            return Err(TokenError::WrongIssuer);
        }
        if !issuer.audiences.is_empty() {
            let aud = audiences(&claims);
            if !issuer.audiences.iter().any(|a| aud.contains(a)) {
                return Err(TokenError::WrongAudience);
            }
        }
        let times = Times::read(&claims).map_err(|e| TokenError::BadDate(e.claim))?;
        times.check(unix_now(), LEEWAY_SECS, true).map_err(|e| match e {
            TimeError::Unreadable(d) => TokenError::BadDate(d.claim),
            TimeError::Missing(c) => TokenError::MissingClaim(c.into()),
            TimeError::Expired => TokenError::Expired,
            TimeError::NotYetValid | TimeError::IssuedInFuture => TokenError::NotYetValid,
        })?;
        let expires = times.exp.ok_or(TokenError::MissingClaim("exp".into()))?;
        let client_id = claims.get(&issuer.consumer_claim).and_then(|v| v.as_str()).map(str::to_string);
        let scopes = match claims.get(&issuer.scopes_claim) {
            Some(serde_json::Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
            _ => Vec::new(),
        };
        let x5t_s256 = match claims.get("cnf") {
            None => None,
            // Bound some other way (DPoP `jkt`, ...): proof this gateway
            // cannot check, so not a bearer token either.
            Some(cnf) => Some(
                cnf.get("x5t#S256")
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
                    .ok_or(TokenError::MissingClaim("cnf.x5t#S256".into()))?,
            ),
        };
        Ok(VerifiedToken {
            issuer_id: issuer.id.clone(),
            client_id,
            scopes,
            x5t_s256,
            expires,
            claims,
            issuer_fingerprint: issuer.fingerprint,
            keys: Some(verified_with),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    use prometheus_client::metrics::family::Family;
    use serde_json::json;

    /// An EC P-256 signing key and its public JWK.
    pub struct TestKey {
        pub kid: String,
        pub encoding: EncodingKey,
        pub jwk: serde_json::Value,
    }

    impl TestKey {
        pub fn ec(kid: &str) -> TestKey {
            let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let raw = kp.public_key_raw();
            let (x, y) = (&raw[1..33], &raw[33..65]);
            TestKey {
                kid: kid.into(),
                encoding: EncodingKey::from_ec_der(&kp.serialize_der()),
                jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": B64.encode(x), "y": B64.encode(y)}),
            }
        }

        pub fn sign(&self, claims: &serde_json::Value) -> String {
            let mut h = Header::new(Algorithm::ES256);
            h.kid = Some(self.kid.clone());
            encode(&h, claims, &self.encoding).unwrap()
        }
    }

    pub fn now() -> u64 {
        unix_now()
    }

    fn issuer(keys: &[&TestKey], audiences: &[&str]) -> Arc<Issuer> {
        let doc = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
        Arc::new(Issuer {
            id: "bank/idp".into(),
            namespace: "bank".into(),
            name: "idp".into(),
            manager: "bank/apim".into(),
            issuer: "https://idp.bank.example".into(),
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            algorithms: vec![Algorithm::PS256, Algorithm::ES256],
            consumer_claim: "client_id".into(),
            scopes_claim: "scope".into(),
            keys: Keys::Inline(Arc::new(super::super::keys::KeySet::parse(doc.to_string().as_bytes()).unwrap())),
            token_kind: super::super::jwt::Kind::ExternalAccessToken,
            fingerprint: [1; 32],
        })
    }

    fn claims(extra: serde_json::Value) -> serde_json::Value {
        let mut c = json!({"iss": "https://idp.bank.example", "exp": now() + 300, "client_id": "tpp-1",
                           "scope": "accounts payments", "aud": "https://api.bank.example"});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    fn jwks() -> JwksCache {
        JwksCache::with_fetcher(Arc::new(|_| Box::pin(async { Err("offline".to_string()) })), Family::default())
    }

    async fn check(token: &str, issuers: &[Arc<Issuer>]) -> Result<Arc<VerifiedToken>, TokenError> {
        Verifier::default().verify(token, issuers, &jwks()).await
    }

    #[tokio::test]
    async fn a_valid_token_yields_client_scopes_and_binding() {
        let k = TestKey::ec("k1");
        let t = k.sign(&claims(json!({"cnf": {"x5t#S256": "abc"}})));
        let v = check(&t, &[issuer(&[&k], &["https://api.bank.example"])]).await.unwrap();
        assert_eq!(v.client_id.as_deref(), Some("tpp-1"));
        assert_eq!(v.scopes, ["accounts", "payments"]);
        assert_eq!(v.x5t_s256.as_deref(), Some("abc"));
        assert!(v.has_audience("https://api.bank.example"));
        let arr = k.sign(&claims(json!({"scope": ["a", "b"]})));
        assert_eq!(check(&arr, &[issuer(&[&k], &[])]).await.unwrap().scopes, ["a", "b"]);
    }

    #[tokio::test]
    async fn hostile_and_stale_tokens_are_refused_for_the_right_reason() {
        let k = TestKey::ec("k1");
        let iss = [issuer(&[&k], &["https://api.bank.example"])];
        let expired = k.sign(&claims(json!({"exp": now() - 120})));
        assert_eq!(check(&expired, &iss).await.unwrap_err(), TokenError::Expired);
        let early = k.sign(&claims(json!({"nbf": now() + 600})));
        assert_eq!(check(&early, &iss).await.unwrap_err(), TokenError::NotYetValid);
        let foreign = k.sign(&claims(json!({"iss": "https://evil.example"})));
        assert_eq!(check(&foreign, &iss).await.unwrap_err(), TokenError::WrongIssuer);
        let listed = k.sign(&claims(json!({"iss": ["https://idp.bank.example", "https://evil.example"]})));
        assert!(check(&listed, &iss).await.is_err(), "iss must be one string");
        let other_aud = k.sign(&claims(json!({"aud": "https://other.example"})));
        assert_eq!(check(&other_aud, &iss).await.unwrap_err(), TokenError::WrongAudience);
        let no_exp = {
            let mut c = claims(json!({}));
            c.as_object_mut().unwrap().remove("exp");
            k.sign(&c)
        };
        assert_eq!(check(&no_exp, &iss).await.unwrap_err(), TokenError::MissingClaim("exp".into()));
        let dpop = k.sign(&claims(json!({"cnf": {"jkt": "xyz"}})));
        assert!(check(&dpop, &iss).await.is_err(), "a binding this gateway cannot check is refused");

        // Tampered claims: the signature no longer covers them.
        let good = k.sign(&claims(json!({})));
        let parts: Vec<&str> = good.split('.').collect();
        let forged = B64.encode(claims(json!({"client_id": "someone-else"})).to_string());
        let tampered = format!("{}.{}.{}", parts[0], forged, parts[2]);
        assert_eq!(check(&tampered, &iss).await.unwrap_err(), TokenError::BadSignature);

        // Signed by a key the issuer does not hold (same kid).
        let impostor = TestKey::ec("k1");
        assert_eq!(check(&impostor.sign(&claims(json!({}))), &iss).await.unwrap_err(), TokenError::BadSignature);
        let unknown = TestKey::ec("k9");
        assert_eq!(check(&unknown.sign(&claims(json!({}))), &iss).await.unwrap_err(), TokenError::UnknownKey);
        assert_eq!(check("not.a.jwt", &iss).await.unwrap_err(), TokenError::Malformed);
    }

    #[tokio::test]
    async fn none_and_hmac_signed_with_the_public_key_are_never_accepted() {
        let k = TestKey::ec("k1");
        let iss = [issuer(&[&k], &[])];
        let body = B64.encode(claims(json!({})).to_string());
        let none = format!("{}.{body}.", B64.encode(r#"{"alg":"none","kid":"k1"}"#));
        assert!(check(&none, &iss).await.is_err());
        // HS256 keyed with the public key's bytes, the classic confusion attack.
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("k1".into());
        let hs = encode(&h, &claims(json!({})), &EncodingKey::from_secret(k.jwk.to_string().as_bytes())).unwrap();
        assert_eq!(check(&hs, &iss).await.unwrap_err(), TokenError::Algorithm("HS256".into()));
        // An algorithm the issuer does not list.
        let mut strict = (*issuer(&[&k], &[])).clone_for_test();
        strict.algorithms = vec![Algorithm::PS256];
        assert!(matches!(
            check(&k.sign(&claims(json!({}))), &[Arc::new(strict)]).await.unwrap_err(),
            TokenError::Algorithm(_)
        ));
    }

    fn signed_with_header(k: &TestKey, header: serde_json::Value, claims: &serde_json::Value) -> String {
        let h = B64.encode(header.to_string());
        let body = B64.encode(claims.to_string());
        let input = format!("{h}.{body}");
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &k.encoding, Algorithm::ES256).unwrap();
        format!("{input}.{sig}")
    }

    #[tokio::test]
    async fn only_access_tokens_pass_and_other_signed_documents_never_do() {
        let k = TestKey::ec("k1");
        let mut builtin = issuer(&[&k], &[]).clone_for_test();
        builtin.token_kind = super::super::jwt::Kind::AccessToken;
        let builtin = [Arc::new(builtin)];
        let c = claims(json!({}));
        let at = signed_with_header(&k, json!({"alg": "ES256", "kid": "k1", "typ": "at+jwt"}), &c);
        assert!(check(&at, &builtin).await.is_ok());
        // A signed answer of the same key, its body holding token claims.
        let answer = signed_with_header(
            &k,
            json!({"alg": "ES256", "kid": "k1", "typ": "JOSE", "http://openbanking.org.uk/iat": 1,
                   "crit": ["http://openbanking.org.uk/iat"]}),
            &c,
        );
        for iss in [&builtin[..], &[issuer(&[&k], &[])][..]] {
            assert!(
                matches!(check(&answer, iss).await.unwrap_err(), TokenError::NotAnAccessToken(_)),
                "a signed answer is no token"
            );
        }
        let plain_jwt = k.sign(&c);
        assert!(matches!(check(&plain_jwt, &builtin).await.unwrap_err(), TokenError::NotAnAccessToken(_)));
        assert!(check(&plain_jwt, &[issuer(&[&k], &[])]).await.is_ok(), "external issuers may send JWT");
        let critical =
            signed_with_header(&k, json!({"alg": "ES256", "kid": "k1", "typ": "at+jwt", "crit": ["x"], "x": 1}), &c);
        assert!(matches!(check(&critical, &builtin).await.unwrap_err(), TokenError::NotAnAccessToken(_)));
        let dpop = signed_with_header(&k, json!({"alg": "ES256", "kid": "k1", "typ": "dpop+jwt"}), &c);
        assert!(check(&dpop, &[issuer(&[&k], &[])]).await.is_err());
    }

    #[tokio::test]
    async fn non_integer_times_are_read_not_dropped() {
        let k = TestKey::ec("k1");
        let iss = [issuer(&[&k], &[])];
        let base = now();
        let t = k.sign(&claims(json!({"exp": base as f64 + 60.5})));
        assert_eq!(check(&t, &iss).await.unwrap().expires, base + 61);
        let stale = k.sign(&claims(json!({"exp": now() as f64 - 120.5})));
        assert_eq!(check(&stale, &iss).await.unwrap_err(), TokenError::Expired);
        let early = k.sign(&claims(json!({"nbf": now() as f64 + 600.25})));
        assert_eq!(check(&early, &iss).await.unwrap_err(), TokenError::NotYetValid);
        let text = k.sign(&claims(json!({"exp": (now() + 60).to_string()})));
        assert_eq!(check(&text, &iss).await.unwrap_err(), TokenError::BadDate("exp"));
    }

    #[tokio::test]
    async fn a_cached_token_is_reused_only_for_an_unchanged_trusted_issuer() {
        let k = TestKey::ec("k1");
        let trusted = issuer(&[&k], &[]);
        let v = Verifier::default();
        let t = k.sign(&claims(json!({})));
        assert!(v.verify(&t, std::slice::from_ref(&trusted), &jwks()).await.is_ok());
        assert!(v.verify(&t, std::slice::from_ref(&trusted), &jwks()).await.is_ok(), "cache hit");
        // An API trusting only another issuer: checked again, and refused.
        let mut other = trusted.clone_for_test();
        other.id = "bank/other".into();
        other.issuer = "https://other.example".into();
        assert_eq!(v.verify(&t, &[Arc::new(other)], &jwks()).await.unwrap_err(), TokenError::WrongIssuer);
        // The same KeyManager reconfigured (now demanding an audience the
        // token lacks): the cached answer is not reused.
        let mut stricter = trusted.clone_for_test();
        stricter.fingerprint = [2; 32];
        stricter.audiences = vec!["https://only.example".into()];
        assert_eq!(v.verify(&t, &[Arc::new(stricter)], &jwks()).await.unwrap_err(), TokenError::WrongAudience);
        // Another KeyManager with the same issuer and keys verifies it anew.
        let mut twin = trusted.clone_for_test();
        twin.id = "bank/twin".into();
        assert_eq!(v.verify(&t, &[Arc::new(twin)], &jwks()).await.unwrap().issuer_id, "bank/twin");
    }

    #[tokio::test]
    async fn a_token_is_checked_only_against_the_issuer_it_names() {
        let k = TestKey::ec("k1");
        let mut elsewhere = issuer(&[&k], &[]).clone_for_test();
        elsewhere.issuer = "https://elsewhere.example".into();
        let t = k.sign(&claims(json!({})));
        assert_eq!(check(&t, &[Arc::new(elsewhere)]).await.unwrap_err(), TokenError::WrongIssuer);
        let no_iss = {
            let mut c = claims(json!({}));
            c.as_object_mut().unwrap().remove("iss");
            k.sign(&c)
        };
        assert_eq!(check(&no_iss, &[issuer(&[&k], &[])]).await.unwrap_err(), TokenError::MissingClaim("iss".into()));
    }

    impl Issuer {
        fn clone_for_test(&self) -> Issuer {
            let keys = match &self.keys {
                Keys::Inline(k) => Keys::Inline(k.clone()),
                Keys::Remote(r) => Keys::Remote(r.clone()),
            };
            Issuer {
                id: self.id.clone(),
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                manager: self.manager.clone(),
                issuer: self.issuer.clone(),
                audiences: self.audiences.clone(),
                algorithms: self.algorithms.clone(),
                consumer_claim: self.consumer_claim.clone(),
                scopes_claim: self.scopes_claim.clone(),
                keys,
                token_kind: self.token_kind,
                fingerprint: self.fingerprint,
            }
        }
    }
}
