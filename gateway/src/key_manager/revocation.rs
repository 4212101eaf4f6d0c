//! `POST /oauth2/introspect` (RFC 7662) and `POST /oauth2/revoke` (RFC 7009).
//!
//! Callers authenticate as a client of the key manager (any method it
//! registered) or with the admin token (`Authorization: Bearer`). A client
//! sees and revokes only its own tokens; the admin token any. Revocations
//! are kept by `jti` in the database until the token would have expired,
//! and every gateway of the database refuses the token within the key-cache
//! TTL (this one at once).

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::client_auth::authenticate;
use super::{KmState, OAuthError, PeerCert, form, no_store, ready};
use crate::oauth::VerifiedToken;
use crate::store::cache::KeyCheck;
use crate::store::keys::constant_time_eq;

/// Who asks.
enum Caller {
    Admin,
    Client(String),
}

async fn caller(
    s: &KmState,
    headers: &HeaderMap,
    f: &std::collections::BTreeMap<String, String>,
    peer: &PeerCert,
) -> Result<Caller, OAuthError> {
    let bearer = super::bearer_token(headers);
    if let Some(t) = bearer {
        return match &s.store.admin_token {
            Some(admin) if constant_time_eq(t.as_bytes(), admin) => Ok(Caller::Admin),
            _ => Err(OAuthError::invalid_client("wrong admin token")),
        };
    }
    Ok(Caller::Client(authenticate(s, headers, f, peer.0.as_ref()).await?.client_id))
}

/// A token of the built-in key manager with a good signature and `exp`.
async fn verified(s: &KmState, token: &str) -> Option<Arc<VerifiedToken>> {
    let issuer = s.state.shared.builtin.as_ref()?;
    s.state.shared.tokens.verify(token, std::slice::from_ref(issuer), &s.state.shared.jwks).await.ok()
}

fn jti(t: &VerifiedToken) -> Option<&str> {
    t.claims.get("jti").and_then(|j| j.as_str())
}

pub async fn introspect(
    AxState(s): AxState<KmState>,
    Extension(peer): Extension<PeerCert>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match introspection(&s, &peer, &headers, &body).await {
        Ok(v) => (StatusCode::OK, no_store(), axum::Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn introspection(s: &KmState, peer: &PeerCert, headers: &HeaderMap, body: &[u8]) -> Result<Value, OAuthError> {
    let f = form(headers, body)?;
    let token =
        f.get("token").filter(|t| !t.is_empty()).ok_or_else(|| OAuthError::invalid_request("token is required"))?;
    ready(&s.store).await?;
    let who = caller(s, headers, &f, peer).await?;
    let inactive = json!({"active": false});
    let Some(t) = verified(s, token).await else { return Ok(inactive) };
    let client = t.client_id.clone().unwrap_or_default();
    if let Caller::Client(c) = &who
        && *c != client
    {
        return Ok(inactive);
    }
    let Some(id) = jti(&t) else { return Ok(inactive) };
    match s.store.cache.check_revoked(&s.store.db, id).await {
        Some(false) => {}
        Some(true) => return Ok(inactive),
        None => return Err(OAuthError::unavailable("revocations cannot be read right now")),
    }
    // A deleted client's tokens are no longer active.
    match s.store.cache.check_client(&s.store.db, super::BUILTIN, &client).await {
        KeyCheck::Valid(_) => {}
        KeyCheck::Unavailable => return Err(OAuthError::unavailable("the client cannot be looked up right now")),
        _ => return Ok(inactive),
    }
    let mut out = json!({"active": true, "token_type": "Bearer"});
    for k in ["iss", "sub", "client_id", "aud", "scope", "iat", "nbf", "exp", "jti", "cnf"] {
        if let Some(v) = t.claims.get(k) {
            out[k] = v.clone();
        }
    }
    Ok(out)
}

pub async fn revoke(
    AxState(s): AxState<KmState>,
    Extension(peer): Extension<PeerCert>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match revocation(&s, &peer, &headers, &body).await {
        Ok(()) => (StatusCode::OK, no_store()).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn revocation(s: &KmState, peer: &PeerCert, headers: &HeaderMap, body: &[u8]) -> Result<(), OAuthError> {
    let f = form(headers, body)?;
    let token =
        f.get("token").filter(|t| !t.is_empty()).ok_or_else(|| OAuthError::invalid_request("token is required"))?;
    if let Some(hint) = f.get("token_type_hint")
        && hint != "access_token"
        && hint != "refresh_token"
    {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_token_type",
            format!("token_type_hint {hint:?} is not supported"),
        ));
    }
    ready(&s.store).await?;
    let who = caller(s, headers, &f, peer).await?;
    // RFC 7009 2.2: an invalid (or expired, or foreign) token is answered 200.
    let Some(t) = verified(s, token).await else { return Ok(()) };
    let owner = t.client_id.clone().unwrap_or_default();
    if let Caller::Client(c) = &who
        && *c != owner
    {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "a client may revoke only its own tokens",
        ));
    }
    let Some(id) = jti(&t) else { return Ok(()) };
    s.store.db.revoke_token(id, &owner, (t.expires as i64 + super::LEEWAY_SECS as i64) * 1000).await?;
    s.store.cache.invalidate_revocation(id).await;
    tracing::info!(client_id = %owner, jti = %id, "access token revoked");
    Ok(())
}
