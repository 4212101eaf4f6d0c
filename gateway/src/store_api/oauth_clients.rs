//! `/api/v1/applications/{id}/oauth-clients`: OAuth2 clients of an
//! application, whose subscriptions, tiers and environment then apply to
//! the client's tokens.
//!
//! - `POST {tokenEndpointAuthMethod, jwks? | jwksUri?, tlsClientAuthSubjectDn?,
//!   scopes, environment?}` -> 201 `{clientId[, clientSecret]}`: a client of
//!   the built-in key manager (`private_key_jwt` with its keys,
//!   `tls_client_auth` with its certificate's subject DN, or
//!   `client_secret_basic`, whose secret is shown once and stored hashed;
//!   refused under the FAPI profile);
//! - `POST {keyManager, clientId, environment?, jwks? | jwksUri?}` -> 201:
//!   maps a client of a trusted KeyManager (its name, unique among the
//!   gateway's KeyManagers, or `namespace/name`).
//!
//! `GET` lists; `DELETE .../{clientRecordId}` removes a client (its tokens
//! get 403 at once on this gateway, within the key-cache TTL on others).

use axum::body::Bytes;
use axum::extract::{Path, State as AxState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{ApiState, authorize, json_body, ready, store_error, unprocessable};
use crate::key_manager::client_auth::{CLIENT_SECRET_BASIC, PRIVATE_KEY_JWT, TLS_CLIENT_AUTH};
use crate::key_manager::dn::Dn;
use crate::store::keys::Environment;
use crate::store::oauth_clients::{BUILTIN, NewClient};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NewOAuthClient {
    key_manager: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    token_endpoint_auth_method: Option<String>,
    #[serde(default)]
    tls_client_auth_subject_dn: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    environment: Option<String>,
    #[serde(default)]
    jwks: Option<serde_json::Value>,
    #[serde(default)]
    jwks_uri: Option<String>,
}

/// A client id as issuers write them: 1 to 256 visible ASCII characters.
fn valid_client_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 256 && id.bytes().all(|b| b.is_ascii_graphic())
}

pub async fn create(
    AxState(s): AxState<ApiState>,
    headers: HeaderMap,
    Path(app): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = authorize(&s, &headers) {
        return *r;
    }
    let req: NewOAuthClient = match json_body(&headers, &body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let environment = match req.environment.as_deref() {
        None => Environment::Production,
        Some(e) => match Environment::parse(e) {
            Some(env) => env,
            None => return unprocessable(format!("environment must be production or sandbox, not {e:?}")),
        },
    };
    if req.jwks.is_some() && req.jwks_uri.is_some() {
        return unprocessable("give jwks or jwksUri, not both");
    }
    if let Some(j) = &req.jwks
        && let Err(e) = crate::oauth::keys::KeySet::parse(j.to_string().as_bytes())
    {
        return unprocessable(format!("jwks: {e}"));
    }
    if let Some(u) = &req.jwks_uri
        && !crate::oauth::jwks::allowed_uri(u)
    {
        return unprocessable("jwksUri must be an https URL (http only on loopback)");
    }
    let built_in = match &req.token_endpoint_auth_method {
        Some(method) => match built_in_client(&s, &req, method) {
            Ok(b) => Some(b),
            Err(r) => return *r,
        },
        None => None,
    };
    let (key_manager, client_id) = match &built_in {
        Some(_) => (BUILTIN.to_string(), crate::store::keys::new_id()),
        None => {
            let Some(km) = req.key_manager.as_deref().map(str::trim).filter(|k| !k.is_empty()) else {
                return unprocessable(
                    "give tokenEndpointAuthMethod (a client of the built-in key manager) or keyManager and clientId \
                     (a client of a KeyManager)",
                );
            };
            let Some(client_id) = req.client_id.clone().filter(|c| valid_client_id(c)) else {
                return unprocessable("clientId must be 1 to 256 visible ASCII characters");
            };
            // The KeyManager must be one this gateway trusts.
            let snap = s.state.snapshot.load_full();
            let matches: Vec<&String> = snap
                .issuers
                .values()
                .filter(|i| i.id == km || (!km.contains('/') && i.name == km))
                .map(|i| &i.id)
                .collect();
            match matches.as_slice() {
                [one] => ((*one).clone(), client_id),
                [] => {
                    return unprocessable(format!(
                        "unknown KeyManager {km:?}: name one this gateway serves (see /status)"
                    ));
                }
                _ => return unprocessable(format!("KeyManager name {km:?} is ambiguous: use namespace/name")),
            }
        }
    };
    if let Err(r) = ready(&s).await {
        return *r;
    }
    let secret = built_in.as_ref().and_then(|b| b.secret.clone());
    let new = NewClient {
        key_manager: &key_manager,
        client_id: &client_id,
        environment: Some(environment),
        jwks: req.jwks.as_ref(),
        jwks_uri: req.jwks_uri.as_deref(),
        auth_method: req.token_endpoint_auth_method.as_deref(),
        subject_dn: req.tls_client_auth_subject_dn.as_deref(),
        secret_hash: secret.as_deref().map(crate::store::keys::hash),
        scopes: &req.scopes,
        ..Default::default()
    };
    match s.store.db.create_oauth_client(&app, new).await {
        Ok(c) => {
            // A "not mapped" answer may be cached: forget it.
            s.store.cache.invalidate_client(&c.key_manager, &c.client_id).await;
            let mut v = serde_json::to_value(&c).unwrap_or_default();
            if let Some(secret) = secret {
                v["clientSecret"] = json!(secret);
            }
            (StatusCode::CREATED, [(header::CACHE_CONTROL, "no-store")], axum::Json(v)).into_response()
        }
        Err(e) => store_error(e),
    }
}

/// A built-in client's settings, checked.
struct BuiltIn {
    /// client_secret_basic: the secret (shown once).
    secret: Option<String>,
}

fn built_in_client(s: &ApiState, req: &NewOAuthClient, method: &str) -> Result<BuiltIn, Box<Response>> {
    let fail = |m: String| Box::new(unprocessable(m));
    let Some(km) = s.state.shared.key_manager.as_ref().filter(|_| s.state.shared.key_manager_endpoints) else {
        return Err(fail("this gateway does not run the key-manager role".into()));
    };
    if req.key_manager.is_some() || req.client_id.is_some() {
        return Err(fail(
            "a client of the built-in key manager gets a generated clientId; give no keyManager or clientId".into(),
        ));
    }
    if req.scopes.iter().any(|s| s.is_empty() || s.len() > 128 || !s.bytes().all(|b| b.is_ascii_graphic())) {
        return Err(fail("scopes are 1 to 128 visible ASCII characters each".into()));
    }
    let has_keys = req.jwks.is_some() || req.jwks_uri.is_some();
    match method {
        PRIVATE_KEY_JWT if has_keys => Ok(BuiltIn { secret: None }),
        PRIVATE_KEY_JWT => Err(fail("private_key_jwt needs the client's public keys: jwks or jwksUri".into())),
        TLS_CLIENT_AUTH => {
            let dn = req
                .tls_client_auth_subject_dn
                .as_deref()
                .ok_or_else(|| fail("tls_client_auth needs tlsClientAuthSubjectDn".into()))?;
            Dn::parse(dn).map_err(|e| fail(format!("tlsClientAuthSubjectDn: {e}")))?;
            Ok(BuiltIn { secret: None })
        }
        CLIENT_SECRET_BASIC if km.fapi => {
            Err(fail("client_secret_basic is not allowed under the FAPI profile (--tls-profile fapi)".into()))
        }
        CLIENT_SECRET_BASIC => Ok(BuiltIn { secret: Some(crate::store::keys::new_key(Environment::Production)) }),
        other => Err(fail(format!(
            "tokenEndpointAuthMethod {other:?}: use private_key_jwt, tls_client_auth or client_secret_basic"
        ))),
    }
}

pub async fn list(AxState(s): AxState<ApiState>, headers: HeaderMap, Path(app): Path<String>) -> Response {
    if let Err(r) = authorize(&s, &headers) {
        return *r;
    }
    if let Err(r) = ready(&s).await {
        return *r;
    }
    match s.store.db.oauth_clients(&app).await {
        Ok(items) => axum::Json(json!({ "items": items })).into_response(),
        Err(e) => store_error(e),
    }
}

pub async fn delete(
    AxState(s): AxState<ApiState>,
    headers: HeaderMap,
    Path((app, id)): Path<(String, String)>,
) -> Response {
    if let Err(r) = authorize(&s, &headers) {
        return *r;
    }
    if let Err(r) = ready(&s).await {
        return *r;
    }
    match s.store.db.delete_oauth_client(&app, &id).await {
        Ok(c) => {
            s.store.cache.invalidate_client(&c.key_manager, &c.client_id).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => store_error(e),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn client_ids_are_visible_ascii() {
        assert!(super::valid_client_id("tpp-1.example:abc"));
        assert!(!super::valid_client_id(""));
        assert!(!super::valid_client_id("a b"));
        assert!(!super::valid_client_id("a\r\nx-injected: 1"));
        assert!(!super::valid_client_id(&"x".repeat(257)));
    }
}
