//! `POST /oauth2/token`: the client-credentials grant (RFC 6749 4.4).

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::client_auth::authenticate;
use super::{KmState, OAuthError, PeerCert, form, no_store, ready, unix_now};
use crate::store::keys::new_id;
use crate::store::oauth_clients::OAuthClient;

/// The scopes to grant: the requested ones when the client may have them
/// all (else `invalid_scope`), or every scope of the client when none are asked.
pub fn granted_scopes(client: &OAuthClient, requested: Option<&str>) -> Result<Vec<String>, OAuthError> {
    let Some(requested) = requested.map(str::trim).filter(|r| !r.is_empty()) else {
        return Ok(client.scopes.clone());
    };
    let mut out: Vec<String> = Vec::new();
    for s in requested.split(' ').filter(|s| !s.is_empty()) {
        if !client.scopes.iter().any(|c| c == s) {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                format!("the client may not have scope {s:?}"),
            ));
        }
        if !out.iter().any(|o| o == s) {
            out.push(s.to_string());
        }
    }
    Ok(out)
}

/// The audience a token is for: an RFC 8707 `resource` (an absolute URI
/// without a fragment), else the issuer.
fn audience(s: &KmState, resource: Option<&String>) -> Result<String, OAuthError> {
    match resource {
        None => Ok(s.km.issuer.clone()),
        Some(r) => {
            let ok = r.len() <= 2048
                && r.parse::<http::Uri>().is_ok_and(|u| u.scheme().is_some() && u.host().is_some())
                && !r.contains('#');
            if ok {
                Ok(r.clone())
            } else {
                Err(OAuthError::new(StatusCode::BAD_REQUEST, "invalid_target", "resource must be an absolute URI"))
            }
        }
    }
}

pub async fn token(
    AxState(s): AxState<KmState>,
    Extension(peer): Extension<PeerCert>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match issue(&s, &peer, &headers, &body).await {
        Ok(v) => (StatusCode::OK, no_store(), axum::Json(v)).into_response(),
        Err(e) => {
            s.state.shared.metrics.tokens_issued.get_or_create(&crate::metrics::ResultLabels { result: e.error }).inc();
            e.into_response()
        }
    }
}

async fn issue(s: &KmState, peer: &PeerCert, headers: &HeaderMap, body: &[u8]) -> Result<Value, OAuthError> {
    let f = form(headers, body)?;
    match f.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {}
        Some(other) => {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!("grant_type {other:?} is not supported (client_credentials is)"),
            ));
        }
        None => return Err(OAuthError::invalid_request("grant_type is required")),
    }
    ready(&s.store).await?;
    let client = authenticate(s, headers, &f, peer.0.as_ref()).await?;
    if client
        .metadata
        .as_ref()
        .and_then(|m| m.get("grant_types"))
        .is_some_and(|g| !g.as_array().is_some_and(|a| a.iter().any(|x| x.as_str() == Some("client_credentials"))))
    {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "the client is not registered for client_credentials",
        ));
    }
    let scopes = granted_scopes(&client, f.get("scope").map(String::as_str))?;
    let aud = audience(s, f.get("resource"))?;
    let now = unix_now();
    let ttl = s.km.token_ttl.as_secs();
    let mut claims = json!({
        "iss": s.km.issuer,
        "sub": client.client_id,
        "client_id": client.client_id,
        "aud": aud,
        "scope": scopes.join(" "),
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "jti": new_id(),
    });
    // RFC 8705 3: bound to the certificate the client presented.
    if let Some(cert) = &peer.0 {
        claims["cnf"] = json!({"x5t#S256": cert.x5t_s256});
    }
    let token = s.km.keys.current().sign("at+jwt", &claims);
    s.state.shared.metrics.tokens_issued.get_or_create(&crate::metrics::ResultLabels { result: "issued" }).inc();
    tracing::info!(client_id = %client.client_id, application = %client.application_id, scope = %scopes.join(" "),
        bound = peer.0.is_some(), "access token issued");
    Ok(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": ttl,
        "scope": scopes.join(" "),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::Environment;

    fn client(scopes: &[&str]) -> OAuthClient {
        OAuthClient {
            id: "1".into(),
            application_id: "a".into(),
            key_manager: "builtin".into(),
            client_id: "c".into(),
            environment: Environment::Production,
            jwks: None,
            jwks_uri: None,
            token_endpoint_auth_method: Some("private_key_jwt".into()),
            tls_client_auth_subject_dn: None,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            dynamically_registered: false,
            metadata: None,
            created_at_ms: 0,
            secret_hash: None,
            registration_token_hash: None,
        }
    }

    #[test]
    fn scopes_outside_the_clients_are_refused_never_granted() {
        let c = client(&["accounts", "payments"]);
        assert_eq!(granted_scopes(&c, None).unwrap(), ["accounts", "payments"]);
        assert_eq!(granted_scopes(&c, Some("accounts  accounts")).unwrap(), ["accounts"]);
        let e = granted_scopes(&c, Some("accounts admin")).unwrap_err();
        assert_eq!((e.error, e.status), ("invalid_scope", StatusCode::BAD_REQUEST));
        assert!(granted_scopes(&client(&[]), Some("accounts")).is_err());
    }
}
