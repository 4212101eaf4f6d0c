//! Discovery (RFC 8414 / OpenID Connect Discovery 1.0) and the public JWK Set.

use axum::extract::State as AxState;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::KmState;
use super::client_auth::{CLIENT_SECRET_BASIC, PRIVATE_KEY_JWT, TLS_CLIENT_AUTH, assertion_algorithms};

/// What the key manager offers.
pub fn document(s: &KmState) -> serde_json::Value {
    let km = &s.km;
    let mut methods = vec![PRIVATE_KEY_JWT, TLS_CLIENT_AUTH];
    if !km.fapi {
        methods.push(CLIENT_SECRET_BASIC);
    }
    let algs: Vec<String> = assertion_algorithms(km.fapi).iter().map(|a| format!("{a:?}")).collect();
    let signing: Vec<String> = km.keys.keys.iter().map(|k| format!("{:?}", k.alg)).collect();
    let endpoints = json!({
        "token_endpoint": km.endpoint("token"),
        "introspection_endpoint": km.endpoint("introspect"),
        "revocation_endpoint": km.endpoint("revoke"),
        "registration_endpoint": km.endpoint("register"),
    });
    let mut doc = json!({
        "issuer": km.issuer,
        "jwks_uri": km.endpoint("jwks"),
        // Not a standard field: where the keys of x-jws-signature answers are.
        "response_signing_jwks_uri": km.endpoint("response-jwks"),
        "grant_types_supported": ["client_credentials"],
        "response_types_supported": ["token"],
        "token_endpoint_auth_methods_supported": methods,
        "token_endpoint_auth_signing_alg_values_supported": algs,
        "introspection_endpoint_auth_methods_supported": methods,
        "revocation_endpoint_auth_methods_supported": methods,
        "access_token_signing_alg_values_supported": signing,
        "tls_client_certificate_bound_access_tokens": true,
        "claims_supported": ["iss", "sub", "client_id", "aud", "scope", "iat", "exp", "jti", "cnf"],
        // The management TLS listener asks for client certificates: the
        // same endpoints take mutual TLS (RFC 8705 5).
        "mtls_endpoint_aliases": endpoints,
    });
    if let (Some(d), Some(e)) = (doc.as_object_mut(), endpoints.as_object()) {
        for (k, v) in e {
            d.insert(k.clone(), v.clone());
        }
    }
    doc
}

pub async fn configuration(AxState(s): AxState<KmState>) -> Response {
    ([(header::CACHE_CONTROL, "max-age=300")], axum::Json(document(&s))).into_response()
}

fn key_set(doc: serde_json::Value) -> Response {
    ([(header::CONTENT_TYPE, "application/jwk-set+json"), (header::CACHE_CONTROL, "max-age=300")], doc.to_string())
        .into_response()
}

/// The keys of access tokens.
pub async fn jwks(AxState(s): AxState<KmState>) -> Response {
    key_set(s.km.keys.jwks())
}

/// The keys of signed answers (`x-jws-signature`).
pub async fn response_jwks(AxState(s): AxState<KmState>) -> Response {
    key_set(s.km.response_keys.jwks())
}
