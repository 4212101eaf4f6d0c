//! Client authentication at the key manager's endpoints (RFC 6749 2.3):
//! `private_key_jwt` (RFC 7523 client assertion), `tls_client_auth` (RFC
//! 8705 2.1: the verified certificate's subject DN) or
//! `client_secret_basic`. A client uses exactly the method it registered;
//! more than one method in a request is refused.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::{HeaderMap, header};
use base64::Engine;
use jsonwebtoken::{Algorithm, Validation, decode, decode_header};

use super::dn::Dn;
use super::{KmState, LEEWAY_SECS, MAX_ASSERTION_LIFETIME, OAuthError, unix_now};
use crate::oauth::jwt::{self, Kind, TimeError, Times};
use crate::oauth::keys::{KeySet, family};
use crate::pipeline::request::ClientCert;
use crate::store::keys::constant_time_eq;
use crate::store::oauth_clients::{BUILTIN, OAuthClient};

pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
pub const PRIVATE_KEY_JWT: &str = "private_key_jwt";
pub const TLS_CLIENT_AUTH: &str = "tls_client_auth";
pub const CLIENT_SECRET_BASIC: &str = "client_secret_basic";

/// Algorithms a client may sign assertions with (FAPI: PS256 and ES256 only).
pub fn assertion_algorithms(fapi: bool) -> Vec<Algorithm> {
    if fapi {
        vec![Algorithm::PS256, Algorithm::ES256]
    } else {
        vec![Algorithm::PS256, Algorithm::ES256, Algorithm::ES384, Algorithm::PS384, Algorithm::PS512, Algorithm::RS256]
    }
}

/// `Authorization: Basic` credentials (RFC 6749 2.3.1: both parts form-encoded).
fn basic(headers: &HeaderMap) -> Option<Result<(String, String), OAuthError>> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, creds) = v.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let bad = || OAuthError::invalid_client("malformed Basic credentials");
    let decoded = base64::engine::general_purpose::STANDARD.decode(creds.trim()).map_err(|_| bad());
    Some(decoded.and_then(|d| {
        let text = String::from_utf8(d).map_err(|_| bad())?;
        let (id, secret) = text.split_once(':').ok_or_else(bad)?;
        let dec = |s: &str| form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
        Ok((dec(id).ok_or_else(bad)?, dec(secret).ok_or_else(bad)?))
    }))
}

/// The client id an assertion names (`iss`), read before verifying.
fn assertion_issuer(assertion: &str) -> Result<String, OAuthError> {
    crate::oauth::verify::unverified_claims(assertion)
        .and_then(|c| c.get("iss").and_then(|i| i.as_str()).map(str::to_string))
        .ok_or_else(|| OAuthError::invalid_client("the client assertion is not a well-formed JWT"))
}

async fn load(s: &KmState, client_id: &str) -> Result<OAuthClient, OAuthError> {
    if client_id.is_empty() || client_id.len() > 256 {
        return Err(OAuthError::invalid_client("unknown client"));
    }
    s.store.db.oauth_client(BUILTIN, client_id).await?.ok_or_else(|| OAuthError::invalid_client("unknown client"))
}

fn expect_method(c: &OAuthClient, used: &str) -> Result<(), OAuthError> {
    match c.token_endpoint_auth_method.as_deref() {
        Some(m) if m == used => Ok(()),
        Some(m) => Err(OAuthError::invalid_client(format!("the client is registered for {m}, not {used}"))),
        None => Err(OAuthError::invalid_client("unknown client")),
    }
}

/// Authenticates the client of a request from its form parameters, headers
/// and the verified TLS client certificate of the connection. A client
/// whose application belongs to a disabled developer is refused like a
/// deleted one: it gets no token and can neither introspect nor revoke.
pub async fn authenticate(
    s: &KmState,
    headers: &HeaderMap,
    form: &BTreeMap<String, String>,
    cert: Option<&Arc<ClientCert>>,
) -> Result<OAuthClient, OAuthError> {
    let c = credentials(s, headers, form, cert).await?;
    if s.store.db.owner_disabled(&c.application_id).await? {
        return Err(OAuthError::invalid_client("the client's developer account is disabled"));
    }
    Ok(c)
}

async fn credentials(
    s: &KmState,
    headers: &HeaderMap,
    form: &BTreeMap<String, String>,
    cert: Option<&Arc<ClientCert>>,
) -> Result<OAuthClient, OAuthError> {
    let assertion_type = form.get("client_assertion_type");
    let assertion = form.get("client_assertion");
    let basic = basic(headers);
    let named = form.get("client_id").map(String::as_str);
    if form.contains_key("client_secret") {
        return Err(OAuthError::invalid_client("client_secret_post is not supported; use client_secret_basic"));
    }
    match (assertion_type, assertion, basic) {
        (Some(_), Some(_), Some(_)) => {
            Err(OAuthError::invalid_request("more than one client authentication method in one request"))
        }
        (Some(t), Some(a), None) => {
            if t != JWT_BEARER {
                return Err(OAuthError::invalid_client(format!("client_assertion_type must be {JWT_BEARER}")));
            }
            private_key_jwt(s, a, named).await
        }
        (Some(_), None, _) | (None, Some(_), _) => {
            Err(OAuthError::invalid_request("client_assertion and client_assertion_type go together"))
        }
        (None, None, Some(creds)) => {
            let (id, secret) = creds.map_err(with_basic_challenge)?;
            if named.is_some_and(|n| n != id) {
                return Err(with_basic_challenge(OAuthError::invalid_client("client_id differs from the Basic user")));
            }
            client_secret(s, &id, &secret).await.map_err(with_basic_challenge)
        }
        (None, None, None) => {
            let Some(id) = named else {
                return Err(OAuthError::invalid_client(
                    "client authentication is required (private_key_jwt, tls_client_auth or client_secret_basic)",
                ));
            };
            tls_client_auth(s, id, cert).await
        }
    }
}

fn with_basic_challenge(mut e: OAuthError) -> OAuthError {
    if e.status == axum::http::StatusCode::UNAUTHORIZED {
        e.challenge = Some("Basic realm=\"oauth2\"".into());
    }
    e
}

async fn client_secret(s: &KmState, id: &str, secret: &str) -> Result<OAuthClient, OAuthError> {
    if s.km.fapi {
        return Err(OAuthError::invalid_client("client_secret_basic is not allowed under the FAPI profile"));
    }
    let c = load(s, id).await?;
    expect_method(&c, CLIENT_SECRET_BASIC)?;
    let presented = crate::store::keys::hash(secret);
    match &c.secret_hash {
        Some(h) if constant_time_eq(presented.as_bytes(), h.as_bytes()) => Ok(c),
        _ => Err(OAuthError::invalid_client("wrong client secret")),
    }
}

async fn tls_client_auth(s: &KmState, id: &str, cert: Option<&Arc<ClientCert>>) -> Result<OAuthClient, OAuthError> {
    let c = load(s, id).await?;
    expect_method(&c, TLS_CLIENT_AUTH)?;
    let Some(cert) = cert else {
        return Err(OAuthError::invalid_client(
            "tls_client_auth needs a client certificate verified by the management TLS listener",
        ));
    };
    let registered = c
        .tls_client_auth_subject_dn
        .as_deref()
        .ok_or_else(|| OAuthError::invalid_client("the client has no registered subject DN"))
        .and_then(|d| Dn::parse(d).map_err(|e| OAuthError::server_error(format!("stored DN: {e}"))))?;
    let presented = Dn::of_certificate(&cert.der).map_err(OAuthError::invalid_client)?;
    if presented != registered {
        return Err(OAuthError::invalid_client("the client certificate's subject does not match the registered DN"));
    }
    Ok(c)
}

/// The client's public keys: inline, or fetched from its jwks_uri.
pub async fn client_keys(s: &KmState, c: &OAuthClient, kid: Option<&str>) -> Result<Arc<KeySet>, OAuthError> {
    if let Some(j) = &c.jwks {
        return KeySet::parse(j.to_string().as_bytes())
            .map(Arc::new)
            .map_err(|e| OAuthError::invalid_client(format!("the client's jwks: {e}")));
    }
    let Some(uri) = &c.jwks_uri else {
        return Err(OAuthError::invalid_client("the client has no registered keys"));
    };
    let jwks = &s.state.shared.jwks;
    let src = s.km.client_keys.get_with(uri.clone(), || jwks.source(uri));
    let fresh_enough = |set: &Arc<KeySet>| kid.is_none_or(|k| set.has_kid(k));
    match src.current() {
        Some(set) if fresh_enough(&set) => Ok(set),
        _ => {
            jwks.refresh_for_unknown_kid(&src).await;
            src.current().ok_or_else(|| OAuthError::invalid_client("the client's jwks_uri cannot be fetched"))
        }
    }
}

async fn private_key_jwt(s: &KmState, assertion: &str, named: Option<&str>) -> Result<OAuthClient, OAuthError> {
    let header = decode_header(assertion)
        .map_err(|_| OAuthError::invalid_client("the client assertion is not a well-formed JWT"))?;
    if family(header.alg).is_none() || !assertion_algorithms(s.km.fapi).contains(&header.alg) {
        return Err(OAuthError::invalid_client(format!("assertions signed with {:?} are not accepted", header.alg)));
    }
    jwt::check(assertion, Kind::ClientAssertion)
        .map_err(|e| OAuthError::invalid_client(format!("the client assertion's header: {e}")))?;
    let id = assertion_issuer(assertion)?;
    if named.is_some_and(|n| n != id) {
        return Err(OAuthError::invalid_client("client_id differs from the assertion's iss"));
    }
    let c = load(s, &id).await?;
    expect_method(&c, PRIVATE_KEY_JWT)?;
    let keys = client_keys(s, &c, header.kid.as_deref()).await?;
    let mut v = Validation::new(header.alg);
    // Times are read by the one NumericDate reader (accept_assertion).
    v.validate_exp = false;
    v.validate_nbf = false;
    v.set_issuer(&[id.as_str()]);
    v.sub = Some(id.clone());
    // RFC 7523 3: the token endpoint URL, or the issuer (as FAPI allows).
    v.set_audience(&[s.km.endpoint("token"), s.km.issuer.clone()]);
    v.set_required_spec_claims(&["iss", "sub", "aud"]);
    let mut last = OAuthError::invalid_client("no registered key of the client verifies the assertion");
    for key in keys.candidates(header.kid.as_deref(), header.alg) {
        match decode::<serde_json::Map<String, serde_json::Value>>(assertion, &key.key, &v) {
            Ok(data) => return accept_assertion(s, c, &data.claims).await,
            Err(e) => {
                use jsonwebtoken::errors::ErrorKind;
                last = OAuthError::invalid_client(match e.kind() {
                    ErrorKind::InvalidSignature => "the assertion's signature does not verify".to_string(),
                    ErrorKind::ExpiredSignature => "the client assertion has expired".to_string(),
                    ErrorKind::ImmatureSignature => "the client assertion is not valid yet".to_string(),
                    ErrorKind::InvalidAudience => {
                        format!("the assertion's aud must be {} or {}", s.km.endpoint("token"), s.km.issuer)
                    }
                    ErrorKind::InvalidSubject => "the assertion's sub must be the client id".to_string(),
                    ErrorKind::MissingRequiredClaim(c) => format!("the assertion lacks {c}"),
                    other => format!("the client assertion is invalid ({other:?})"),
                });
                if !matches!(e.kind(), ErrorKind::InvalidSignature) {
                    break;
                }
            }
        }
    }
    Err(last)
}

/// The checks after the signature: a short life and a jti never seen.
async fn accept_assertion(
    s: &KmState,
    c: OAuthClient,
    claims: &serde_json::Map<String, serde_json::Value>,
) -> Result<OAuthClient, OAuthError> {
    let now = unix_now();
    let times = Times::read(claims).map_err(|e| OAuthError::invalid_client(format!("the client assertion's {e}")))?;
    times.check(now, LEEWAY_SECS, true).map_err(|e| {
        OAuthError::invalid_client(match e {
            TimeError::Missing(c) => format!("the assertion lacks {c}"),
            TimeError::Expired => "the client assertion has expired".to_string(),
            TimeError::NotYetValid => "the client assertion is not valid yet".to_string(),
            TimeError::IssuedInFuture => "the client assertion's iat is in the future".to_string(),
            TimeError::Unreadable(d) => format!("the client assertion's {d}"),
        })
    })?;
    let exp = times.exp.unwrap_or(u64::MAX);
    if exp > now + MAX_ASSERTION_LIFETIME.as_secs() + LEEWAY_SECS {
        return Err(OAuthError::invalid_client(format!(
            "the client assertion lives too long: exp at most {} s ahead",
            MAX_ASSERTION_LIFETIME.as_secs()
        )));
    }
    let jti = match claims.get("jti").and_then(|j| j.as_str()) {
        Some(j) if !j.is_empty() && j.len() <= 256 => j,
        _ => return Err(OAuthError::invalid_client("the client assertion needs a jti")),
    };
    let keep_until = ((exp + LEEWAY_SECS) * 1000) as i64;
    if !s.store.db.use_assertion_jti(&c.client_id, jti, keep_until).await? {
        return Err(OAuthError::invalid_client("the client assertion was used before (jti replayed)"));
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_decoded() {
        let mut h = HeaderMap::new();
        let enc = base64::engine::general_purpose::STANDARD.encode("my%3Aclient:p%40ss+word");
        h.insert(header::AUTHORIZATION, format!("Basic {enc}").parse().unwrap());
        let (id, secret) = basic(&h).unwrap().unwrap();
        assert_eq!((id.as_str(), secret.as_str()), ("my:client", "p@ss word"));
        h.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert!(basic(&h).unwrap().is_err());
        h.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert!(basic(&h).is_none());
    }

    #[test]
    fn fapi_assertions_are_ps256_or_es256() {
        assert!(!assertion_algorithms(true).contains(&Algorithm::RS256));
        assert!(assertion_algorithms(false).contains(&Algorithm::RS256));
    }
}
