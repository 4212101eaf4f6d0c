//! `/api/v1/applications/{id}/oauth-clients`: maps OAuth2 clients of a
//! trusted KeyManager to an application, so the application's
//! subscriptions, tiers and environment apply to the client's tokens.
//!
//! `POST {keyManager, clientId, environment?, jwks? | jwksUri?}` -> 201;
//! `keyManager` is the KeyManager's name (unique among the gateway's
//! KeyManagers) or `namespace/name`. `GET` lists; `DELETE .../{clientRecordId}`
//! removes a mapping (its tokens get 403 at once on this gateway, within
//! the key-cache TTL on others).

use axum::body::Bytes;
use axum::extract::{Path, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{ApiState, authorize, json_body, ready, store_error, unprocessable};
use crate::store::keys::Environment;
use crate::store::oauth_clients::NewClient;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NewOAuthClient {
    key_manager: Option<String>,
    client_id: String,
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
    let Some(km) = req.key_manager.as_deref().map(str::trim).filter(|k| !k.is_empty()) else {
        return unprocessable("keyManager is required: the KeyManager whose tokens the client presents");
    };
    if !valid_client_id(&req.client_id) {
        return unprocessable("clientId must be 1 to 256 visible ASCII characters");
    }
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
    let absolute = |u: &str| (u.starts_with("https://") || u.starts_with("http://")) && u.parse::<http::Uri>().is_ok();
    if let Some(u) = &req.jwks_uri
        && !absolute(u)
    {
        return unprocessable("jwksUri must be an absolute http(s) URL");
    }
    // The KeyManager must be one this gateway trusts.
    let snap = s.state.snapshot.load_full();
    let matches: Vec<&String> =
        snap.issuers.values().filter(|i| i.id == km || (!km.contains('/') && i.name == km)).map(|i| &i.id).collect();
    let key_manager = match matches.as_slice() {
        [one] => (*one).clone(),
        [] => return unprocessable(format!("unknown KeyManager {km:?}: name one this gateway serves (see /status)")),
        _ => return unprocessable(format!("KeyManager name {km:?} is ambiguous: use namespace/name")),
    };
    if let Err(r) = ready(&s).await {
        return *r;
    }
    let new = NewClient {
        key_manager: &key_manager,
        client_id: &req.client_id,
        environment,
        jwks: req.jwks.as_ref(),
        jwks_uri: req.jwks_uri.as_deref(),
    };
    match s.store.db.create_oauth_client(&app, new).await {
        Ok(c) => {
            // A "not mapped" answer may be cached: forget it.
            s.store.cache.invalidate_client(&c.key_manager, &c.client_id).await;
            (StatusCode::CREATED, axum::Json(c)).into_response()
        }
        Err(e) => store_error(e),
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
