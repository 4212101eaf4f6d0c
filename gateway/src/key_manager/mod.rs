//! The built-in key manager (role `key-manager`): an OAuth2 authorization
//! server for the client-credentials grant of open banking.
//!
//! - `POST /oauth2/token` (RFC 6749 4.4) with client authentication by
//!   `private_key_jwt` (RFC 7523), `tls_client_auth` (RFC 8705) or
//!   `client_secret_basic` (not under `--tls-profile fapi`); JWT access
//!   tokens (RFC 9068 shape) bound to the client certificate when one was
//!   presented (`cnf.x5t#S256`);
//! - `GET /oauth2/jwks`, discovery (RFC 8414 / OpenID Connect Discovery);
//! - `POST /oauth2/introspect` (RFC 7662) and `POST /oauth2/revoke` (RFC 7009);
//! - `POST /oauth2/register` and `/oauth2/register/{client_id}` (RFC 7591 /
//!   7592, UK Open Banking DCR: software statements signed by a `--ssa-jwks` key).
//!
//! The gateway trusts the tokens it issues as one more issuer
//! ([`builtin_issuer`]); its clients are rows of the store's oauth_clients
//! table, so subscriptions, tiers and environments apply as for any client.

pub mod client_auth;
pub mod discovery;
pub mod dn;
pub mod register;
pub mod revocation;
pub mod signing;
pub mod token;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::oauth::Issuer;
use crate::oauth::issuer::Keys;
use crate::oauth::keys::KeySet;
use crate::pipeline::request::ClientCert;
use crate::reload::State;
use crate::store::Store;
use signing::SigningKeys;

/// Id of the built-in key manager among the issuers (and `key_manager` of its clients).
pub const BUILTIN: &str = crate::store::oauth_clients::BUILTIN;
/// Longest lifetime of a client assertion (RFC 7523 `exp` - now).
pub const MAX_ASSERTION_LIFETIME: Duration = Duration::from_secs(300);
/// Clock skew allowed on assertions and statements.
pub const LEEWAY_SECS: u64 = 30;

/// The built-in key manager's configuration and keys.
pub struct KeyManager {
    /// `iss` of its tokens, without a trailing slash.
    pub issuer: String,
    /// Keys of access tokens (published at <issuer>/jwks).
    pub keys: SigningKeys,
    /// Keys of signed answers (`x-jws-signature`, published at
    /// <issuer>/response-jwks): never trusted for tokens.
    pub response_keys: SigningKeys,
    pub token_ttl: Duration,
    /// Trusted software-statement signers (`--ssa-jwks`); None: no dynamic registration.
    pub ssa_keys: Option<Arc<KeySet>>,
    /// FAPI profile: no client secrets, no RS256.
    pub fapi: bool,
    /// Remote key sets of clients registered with a jwks_uri, held while in use.
    pub client_keys: moka::sync::Cache<String, Arc<crate::oauth::jwks::RemoteKeys>>,
}

impl KeyManager {
    pub fn new(
        issuer: &str,
        keys: SigningKeys,
        response_keys: SigningKeys,
        token_ttl: Duration,
        ssa_keys: Option<Arc<KeySet>>,
        fapi: bool,
    ) -> KeyManager {
        KeyManager {
            issuer: issuer.trim_end_matches('/').to_string(),
            keys,
            response_keys,
            token_ttl,
            ssa_keys,
            fapi,
            client_keys: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_idle(Duration::from_secs(600))
                .build(),
        }
    }

    /// `<issuer>/<path>`: where an endpoint is published.
    pub fn endpoint(&self, path: &str) -> String {
        format!("{}/{path}", self.issuer)
    }

    /// The issuer the resource-server side trusts for these keys.
    pub fn issuer(&self) -> Result<Issuer, String> {
        let doc = self.keys.jwks().to_string();
        let set = KeySet::parse(doc.as_bytes())?;
        Ok(builtin_issuer(&self.issuer, Keys::Inline(Arc::new(set)), doc.as_bytes()))
    }
}

/// The built-in key manager as a trusted issuer, with its keys inline (same
/// process) or fetched (`--key-manager-jwks-uri`, gateways of a
/// DistributedGateways manager).
pub fn builtin_issuer(issuer: &str, keys: Keys, fingerprint_of: &[u8]) -> Issuer {
    use jsonwebtoken::Algorithm;
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(issuer.as_bytes());
    h.update(fingerprint_of);
    Issuer {
        id: BUILTIN.into(),
        namespace: String::new(),
        name: BUILTIN.into(),
        manager: String::new(),
        issuer: issuer.trim_end_matches('/').to_string(),
        audiences: Vec::new(),
        algorithms: vec![Algorithm::ES256, Algorithm::PS256],
        consumer_claim: "client_id".into(),
        scopes_claim: "scope".into(),
        keys,
        token_kind: crate::oauth::jwt::Kind::AccessToken,
        fingerprint: h.finalize().into(),
    }
}

/// The verified client certificate of the management TLS connection a
/// request came on (None on the plain listener or without one).
#[derive(Clone, Default)]
pub struct PeerCert(pub Option<Arc<ClientCert>>);

#[derive(Clone)]
pub struct KmState {
    pub state: Arc<State>,
    pub store: Arc<Store>,
    pub km: Arc<KeyManager>,
}

/// The key manager's routes.
pub fn routes(state: Arc<State>, store: Arc<Store>, km: Arc<KeyManager>) -> Router {
    Router::new()
        .route("/oauth2/.well-known/openid-configuration", get(discovery::configuration))
        .route("/.well-known/openid-configuration", get(discovery::configuration))
        .route("/.well-known/oauth-authorization-server", get(discovery::configuration))
        .route("/oauth2/jwks", get(discovery::jwks))
        .route("/oauth2/response-jwks", get(discovery::response_jwks))
        .route("/oauth2/token", post(token::token))
        .route("/oauth2/introspect", post(revocation::introspect))
        .route("/oauth2/revoke", post(revocation::revoke))
        .route("/oauth2/register", post(register::register))
        .route("/oauth2/register/{client_id}", get(register::read).put(register::update).delete(register::unregister))
        .with_state(KmState { state, store, km })
}

/// An RFC 6749 5.2 error answer.
#[derive(Debug)]
pub struct OAuthError {
    pub status: StatusCode,
    pub error: &'static str,
    pub description: String,
    /// `WWW-Authenticate` (401 answers).
    pub challenge: Option<String>,
}

impl OAuthError {
    pub fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> OAuthError {
        OAuthError { status, error, description: description.into(), challenge: None }
    }
    pub fn invalid_request(d: impl Into<String>) -> OAuthError {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", d)
    }
    pub fn invalid_client(d: impl Into<String>) -> OAuthError {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", d)
    }
    pub fn unavailable(d: impl Into<String>) -> OAuthError {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", d)
    }
    pub fn server_error(e: impl std::fmt::Display) -> OAuthError {
        tracing::error!(error = %e, "key manager error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the key manager failed; see the gateway log")
    }
}

impl From<crate::store::db::StoreError> for OAuthError {
    fn from(e: crate::store::db::StoreError) -> Self {
        match e {
            crate::store::db::StoreError::Unavailable(m) => OAuthError::unavailable(format!("database: {m}")),
            other => OAuthError::server_error(other),
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.error, "error_description": self.description});
        let mut r = (self.status, no_store(), axum::Json(body)).into_response();
        if let Some(c) = self.challenge.and_then(|c| c.parse().ok()) {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, c);
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        r
    }
}

/// `Cache-Control: no-store` and `Pragma: no-cache` (RFC 6749 5.1).
pub fn no_store() -> [(header::HeaderName, &'static str); 2] {
    [(header::CACHE_CONTROL, "no-store"), (header::PRAGMA, "no-cache")]
}

/// Largest form or registration body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// An `application/x-www-form-urlencoded` body as a map; a parameter given
/// twice is an error (RFC 6749 3.1), as is any other content type.
pub fn form(headers: &HeaderMap, body: &[u8]) -> Result<BTreeMap<String, String>, OAuthError> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if mime != "application/x-www-form-urlencoded" {
        return Err(OAuthError::invalid_request("send the parameters as application/x-www-form-urlencoded"));
    }
    if body.len() > MAX_BODY {
        return Err(OAuthError::invalid_request(format!("the body is over {MAX_BODY} bytes")));
    }
    let mut out = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(body) {
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(OAuthError::invalid_request(format!("parameter {k:?} is given more than once")));
        }
    }
    Ok(out)
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive).
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
}

/// The database is migrated (it may have been down at start).
pub async fn ready(store: &Store) -> Result<(), OAuthError> {
    store.ensure_migrated().await.map_err(OAuthError::from)
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_refuse_repeated_parameters_and_other_content_types() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, "application/x-www-form-urlencoded; charset=utf-8".parse().unwrap());
        let f = form(&h, b"grant_type=client_credentials&scope=a+b%20c").unwrap();
        assert_eq!(f["scope"], "a b c");
        assert_eq!(form(&h, b"scope=a&scope=b").unwrap_err().error, "invalid_request");
        h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        assert_eq!(form(&h, b"{}").unwrap_err().error, "invalid_request");
    }
}
