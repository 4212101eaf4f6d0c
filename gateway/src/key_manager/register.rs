//! Dynamic client registration: `POST /oauth2/register` (RFC 7591, UK Open
//! Banking DCR profile) and `GET`/`PUT`/`DELETE /oauth2/register/{client_id}`
//! with the registration access token (RFC 7592).
//!
//! A registration carries a `software_statement` signed by a key of
//! `--ssa-jwks` (the directory); the request may itself be a JWS
//! (`application/jose`) signed by one of the client's keys. The client's
//! keys are its `jwks`, or a `jwks_uri` only when the signed statement
//! names it (`software_jwks_endpoint` or `jwks_uri`) and it is https: a
//! request alone never makes the gateway fetch a URL (SSRF). Scopes are
//! bounded by the statement's `software_roles` (AISP: accounts, PISP:
//! payments, CBPII: fundsconfirmations). Each client gets an application of
//! its own.

use axum::body::Bytes;
use axum::extract::{Path, State as AxState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Validation, decode, decode_header};
use serde_json::{Map, Value, json};

use super::client_auth::{CLIENT_SECRET_BASIC, PRIVATE_KEY_JWT, TLS_CLIENT_AUTH};
use super::dn::Dn;
use super::{KmState, LEEWAY_SECS, MAX_BODY, OAuthError, no_store, ready, unix_now};
use crate::oauth::jwt::{self, Kind, TimeError, Times};
use crate::oauth::keys::{KeySet, family};
use crate::store::keys::{self, constant_time_eq};
use crate::store::oauth_clients::{BUILTIN, NewClient, OAuthClient};

fn bad_metadata(d: impl Into<String>) -> OAuthError {
    OAuthError::new(StatusCode::BAD_REQUEST, "invalid_client_metadata", d)
}

fn bad_statement(d: impl Into<String>) -> OAuthError {
    OAuthError::new(StatusCode::BAD_REQUEST, "invalid_software_statement", d)
}

fn invalid_token(d: &str) -> OAuthError {
    let mut e = OAuthError::new(StatusCode::UNAUTHORIZED, "invalid_token", d);
    e.challenge = Some("Bearer error=\"invalid_token\"".into());
    e
}

/// Scopes a PSD2 role may register for (UK Open Banking).
fn role_scopes(role: &str) -> &'static [&'static str] {
    match role {
        "AISP" => &["accounts"],
        "PISP" => &["payments"],
        "CBPII" => &["fundsconfirmations"],
        _ => &[],
    }
}

/// The statement's `software_roles`: absent is none; anything but a list
/// of strings is refused rather than read as "no restriction".
fn software_roles(ssa: &Map<String, Value>) -> Result<Vec<&str>, OAuthError> {
    match ssa.get("software_roles") {
        None => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(Value::as_str)
            .collect::<Option<Vec<&str>>>()
            .ok_or_else(|| bad_statement("software_statement: software_roles must be a list of role names")),
        Some(_) => Err(bad_statement("software_statement: software_roles must be a list of role names")),
    }
}

/// Verifies a JWS of `kind` with one of `keys`; the claims, their times
/// checked (`exp` when present, `nbf`, `iat` not ahead).
fn verify_jws(jws: &str, kind: Kind, keys: &KeySet) -> Result<Map<String, Value>, String> {
    let header = decode_header(jws).map_err(|_| "not a well-formed JWS".to_string())?;
    if family(header.alg).is_none() {
        return Err(format!("algorithm {:?} is not accepted", header.alg));
    }
    jwt::check(jws, kind).map_err(|e| e.to_string())?;
    let mut v = Validation::new(header.alg);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.set_required_spec_claims::<&str>(&[]);
    let mut last = "no trusted key verifies the signature".to_string();
    for key in keys.candidates(header.kid.as_deref(), header.alg) {
        match decode::<Map<String, Value>>(jws, &key.key, &v) {
            Ok(d) => {
                let times = Times::read(&d.claims).map_err(|e| e.to_string())?;
                times.check(unix_now(), LEEWAY_SECS, false).map_err(|e| match e {
                    TimeError::IssuedInFuture => "iat is in the future".to_string(),
                    other => other.to_string(),
                })?;
                return Ok(d.claims);
            }
            Err(e) => last = format!("{e}"),
        }
    }
    Err(last)
}

/// The software statement's claims, verified against `--ssa-jwks`.
fn statement(s: &KmState, ssa: &str) -> Result<Map<String, Value>, OAuthError> {
    let Some(keys) = &s.km.ssa_keys else {
        return Err(bad_statement("dynamic registration is not enabled: the gateway has no --ssa-jwks"));
    };
    let claims = verify_jws(ssa, Kind::SoftwareStatement, keys)
        .map_err(|e| bad_statement(format!("software_statement: {e}")))?;
    match claims.get("software_id").and_then(Value::as_str) {
        Some(id) if !id.is_empty() && id.len() <= 256 => Ok(claims),
        _ => Err(bad_statement("software_statement: software_id is required")),
    }
}

/// What a registration asks for, checked.
struct Registration {
    auth_method: String,
    jwks: Option<Value>,
    jwks_uri: Option<String>,
    subject_dn: Option<String>,
    scopes: Vec<String>,
    /// The metadata kept and shown.
    metadata: Map<String, Value>,
}

fn https_uri(u: &str) -> bool {
    u.len() <= 2048 && u.parse::<http::Uri>().is_ok_and(|p| p.scheme_str() == Some("https") && p.host().is_some())
}

/// Checks registration metadata against the (verified) statement.
fn registration(s: &KmState, req: &Map<String, Value>, ssa: &Map<String, Value>) -> Result<Registration, OAuthError> {
    let text = |k: &str| req.get(k).and_then(Value::as_str);
    let auth_method = text("token_endpoint_auth_method").unwrap_or(PRIVATE_KEY_JWT).to_string();
    match auth_method.as_str() {
        PRIVATE_KEY_JWT | TLS_CLIENT_AUTH => {}
        CLIENT_SECRET_BASIC if !s.km.fapi => {}
        CLIENT_SECRET_BASIC => return Err(bad_metadata("client_secret_basic is not allowed under the FAPI profile")),
        other => return Err(bad_metadata(format!("token_endpoint_auth_method {other:?} is not supported"))),
    }
    let grant_types: Vec<String> = match req.get("grant_types") {
        None => vec!["client_credentials".into()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|g| g.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| bad_metadata("grant_types must be strings"))?,
        Some(_) => return Err(bad_metadata("grant_types must be an array")),
    };
    if grant_types.is_empty() || grant_types.iter().any(|g| g != "client_credentials") {
        return Err(bad_metadata(
            "only the client_credentials grant is offered (authorization_code with PAR and PKCE is not built yet)",
        ));
    }
    // The client's keys.
    let ssa_uri = ["software_jwks_endpoint", "jwks_uri"].iter().find_map(|k| ssa.get(*k).and_then(Value::as_str));
    let jwks = match req.get("jwks") {
        Some(j) => {
            KeySet::parse(j.to_string().as_bytes()).map_err(|e| bad_metadata(format!("jwks: {e}")))?;
            Some(j.clone())
        }
        None => None,
    };
    let jwks_uri = match text("jwks_uri") {
        Some(u) if Some(u) != ssa_uri => {
            return Err(bad_metadata("jwks_uri must be the one the software statement names"));
        }
        Some(u) => Some(u.to_string()),
        None if jwks.is_none() => ssa_uri.map(str::to_string),
        None => None,
    };
    if jwks.is_some() && req.contains_key("jwks_uri") {
        return Err(bad_metadata("give jwks or jwks_uri, not both"));
    }
    if let Some(u) = &jwks_uri
        && !https_uri(u)
    {
        return Err(bad_metadata("jwks_uri must be an https URL"));
    }
    if auth_method == PRIVATE_KEY_JWT && jwks.is_none() && jwks_uri.is_none() {
        return Err(bad_metadata("private_key_jwt needs the client's keys: jwks, or a jwks_uri in the statement"));
    }
    let subject_dn = text("tls_client_auth_subject_dn").map(str::to_string);
    if auth_method == TLS_CLIENT_AUTH {
        let dn =
            subject_dn.as_deref().ok_or_else(|| bad_metadata("tls_client_auth needs tls_client_auth_subject_dn"))?;
        Dn::parse(dn).map_err(|e| bad_metadata(format!("tls_client_auth_subject_dn: {e}")))?;
    }
    // Scopes within the statement's roles: a statement without roles (or
    // with roles that are not a list of names) grants no role-bound scope.
    let roles = software_roles(ssa)?;
    let requested: Vec<String> = text("scope").unwrap_or("").split_whitespace().map(str::to_string).collect();
    let allowed = |scope: &str| scope == "openid" || roles.iter().any(|role| role_scopes(role).contains(&scope));
    if let Some(bad) = requested.iter().find(|s| !allowed(s)) {
        return Err(bad_metadata(if roles.is_empty() {
            format!("scope {bad:?} needs a PSD2 role: the software statement lists no software_roles")
        } else {
            format!("scope {bad:?} is not allowed for the software's roles")
        }));
    }
    let mut scopes = requested;
    if scopes.is_empty() {
        scopes = roles.iter().flat_map(|r| role_scopes(r).iter().map(|s| s.to_string())).collect();
    }
    if scopes.iter().any(|s| s.len() > 128 || !s.bytes().all(|b| b.is_ascii_graphic())) {
        return Err(bad_metadata("scopes are visible ASCII words"));
    }
    let mut metadata = Map::new();
    for k in [
        "client_name",
        "redirect_uris",
        "application_type",
        "id_token_signed_response_alg",
        "token_endpoint_auth_signing_alg",
        "request_object_signing_alg",
        "response_types",
    ] {
        if let Some(v) = req.get(k) {
            metadata.insert(k.into(), v.clone());
        }
    }
    metadata.insert("token_endpoint_auth_method".into(), json!(auth_method));
    metadata.insert("grant_types".into(), json!(grant_types));
    metadata.insert("scope".into(), json!(scopes.join(" ")));
    if let Some(d) = &subject_dn {
        metadata.insert("tls_client_auth_subject_dn".into(), json!(d));
    }
    for k in ["software_id", "org_id", "software_client_name", "software_roles"] {
        if let Some(v) = ssa.get(k) {
            metadata.insert(k.into(), v.clone());
        }
    }
    Ok(Registration { auth_method, jwks, jwks_uri, subject_dn, scopes, metadata })
}

/// The metadata a request carries: a JSON object, or (`application/jose`)
/// the payload of a JWS signed by one of the client's keys.
async fn request_metadata(
    s: &KmState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Map<String, Value>, Map<String, Value>, Option<String>), OAuthError> {
    if body.len() > MAX_BODY {
        return Err(bad_metadata(format!("the body is over {MAX_BODY} bytes")));
    }
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let (req, jws) = match mime.as_str() {
        "application/json" => {
            let v: Value = serde_json::from_slice(body).map_err(|e| bad_metadata(format!("invalid JSON: {e}")))?;
            (v.as_object().cloned().ok_or_else(|| bad_metadata("the body must be a JSON object"))?, None)
        }
        "application/jose" | "application/jwt" => {
            let text = std::str::from_utf8(body).map_err(|_| bad_metadata("the body is not a JWS"))?.trim().to_string();
            (
                crate::oauth::verify::unverified_claims(&text).ok_or_else(|| bad_metadata("the body is not a JWS"))?,
                Some(text),
            )
        }
        _ => return Err(bad_metadata("send application/json or application/jose")),
    };
    let ssa_text = req
        .get("software_statement")
        .and_then(Value::as_str)
        .ok_or_else(|| bad_statement("software_statement is required"))?;
    let ssa = statement(s, ssa_text)?;
    Ok((req, ssa, jws))
}

/// A signed request (`application/jose`) must verify with the client's
/// keys, name the software as `iss`, and this issuer in `aud` when present.
async fn check_request_signature(
    s: &KmState,
    jws: &str,
    r: &Registration,
    ssa: &Map<String, Value>,
) -> Result<(), OAuthError> {
    let keys = match (&r.jwks, &r.jwks_uri) {
        (Some(j), _) => std::sync::Arc::new(KeySet::parse(j.to_string().as_bytes()).map_err(bad_metadata)?),
        (None, Some(uri)) => {
            let src = s.km.client_keys.get_with(uri.clone(), || s.state.shared.jwks.source(uri));
            if src.current().is_none() {
                s.state.shared.jwks.refresh_for_unknown_kid(&src).await;
            }
            src.current().ok_or_else(|| bad_metadata("the software's jwks_uri cannot be fetched"))?
        }
        (None, None) => return Err(bad_metadata("a signed request needs the client's keys (jwks or jwks_uri)")),
    };
    let claims = verify_jws(jws, Kind::RegistrationRequest, &keys)
        .map_err(|e| bad_metadata(format!("the signed request: {e}")))?;
    if let Some(iss) = claims.get("iss").and_then(Value::as_str)
        && Some(iss) != ssa.get("software_id").and_then(Value::as_str)
    {
        return Err(bad_metadata("the signed request's iss must be the software_id"));
    }
    if let Some(aud) = claims.get("aud") {
        let ours = |a: &Value| a.as_str() == Some(s.km.issuer.as_str());
        let ok = match aud {
            Value::Array(a) => a.iter().any(ours),
            other => ours(other),
        };
        if !ok {
            return Err(bad_metadata(format!("the signed request's aud must be {}", s.km.issuer)));
        }
    }
    Ok(())
}

fn response(s: &KmState, c: &OAuthClient, extra: Map<String, Value>) -> Value {
    let mut out = c.metadata.clone().and_then(|m| m.as_object().cloned()).unwrap_or_default();
    out.remove("software_statement_claims");
    out.insert("client_id".into(), json!(c.client_id));
    out.insert("client_id_issued_at".into(), json!(c.created_at_ms / 1000));
    out.insert("registration_client_uri".into(), json!(s.km.endpoint(&format!("register/{}", c.client_id))));
    out.insert("application_id".into(), json!(c.application_id));
    if let Some(j) = &c.jwks {
        out.insert("jwks".into(), j.clone());
    }
    if let Some(u) = &c.jwks_uri {
        out.insert("jwks_uri".into(), json!(u));
    }
    out.extend(extra);
    Value::Object(out)
}

pub async fn register(AxState(s): AxState<KmState>, headers: HeaderMap, body: Bytes) -> Response {
    match create(&s, &headers, &body).await {
        Ok(v) => (StatusCode::CREATED, no_store(), axum::Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn create(s: &KmState, headers: &HeaderMap, body: &[u8]) -> Result<Value, OAuthError> {
    let (req, ssa, jws) = request_metadata(s, headers, body).await?;
    let r = registration(s, &req, &ssa)?;
    if let Some(jws) = &jws {
        check_request_signature(s, jws, &r, &ssa).await?;
    }
    ready(&s.store).await?;
    let client_id = keys::new_id();
    let registration_token = keys::new_key(keys::Environment::Production);
    let secret = (r.auth_method == CLIENT_SECRET_BASIC).then(|| keys::new_key(keys::Environment::Production));
    let software = ssa.get("software_client_name").or(req.get("client_name")).or(ssa.get("software_id"));
    let label: String =
        software.and_then(Value::as_str).unwrap_or("client").chars().filter(|c| !c.is_control()).take(150).collect();
    let app = s.store.db.create_application(&format!("{label} ({client_id})")).await?;
    let mut metadata = r.metadata.clone();
    metadata.insert("software_statement_claims".into(), Value::Object(ssa.clone()));
    let metadata = Value::Object(metadata);
    let new = NewClient {
        key_manager: BUILTIN,
        client_id: &client_id,
        jwks: r.jwks.as_ref(),
        jwks_uri: r.jwks_uri.as_deref(),
        auth_method: Some(&r.auth_method),
        subject_dn: r.subject_dn.as_deref(),
        secret_hash: secret.as_deref().map(keys::hash),
        scopes: &r.scopes,
        registration_token_hash: Some(keys::hash(&registration_token)),
        metadata: Some(&metadata),
        ..Default::default()
    };
    let c = match s.store.db.create_oauth_client(&app.id, new).await {
        Ok(c) => c,
        Err(e) => {
            let _ = s.store.db.delete_application(&app.id).await;
            return Err(e.into());
        }
    };
    tracing::info!(client_id = %client_id, software_id = ?ssa.get("software_id"), "client registered");
    let mut extra = Map::new();
    extra.insert("registration_access_token".into(), json!(registration_token));
    extra.insert("software_statement".into(), req.get("software_statement").cloned().unwrap_or(Value::Null));
    if let Some(secret) = secret {
        extra.insert("client_secret".into(), json!(secret));
        extra.insert("client_secret_expires_at".into(), json!(0));
    }
    Ok(response(s, &c, extra))
}

/// The client a registration access token manages (RFC 7592 2: unknown
/// client and wrong token are both 401).
async fn managed(s: &KmState, headers: &HeaderMap, client_id: &str) -> Result<OAuthClient, OAuthError> {
    let token = super::bearer_token(headers)
        .ok_or_else(|| invalid_token("the registration access token is required (Authorization: Bearer)"))?;
    ready(&s.store).await?;
    let c = s
        .store
        .db
        .oauth_client(BUILTIN, client_id)
        .await?
        .ok_or_else(|| invalid_token("unknown client or wrong token"))?;
    match &c.registration_token_hash {
        Some(h) if constant_time_eq(keys::hash(token).as_bytes(), h.as_bytes()) => Ok(c),
        _ => Err(invalid_token("unknown client or wrong token")),
    }
}

pub async fn read(AxState(s): AxState<KmState>, headers: HeaderMap, Path(client_id): Path<String>) -> Response {
    match managed(&s, &headers, &client_id).await {
        Ok(c) => (StatusCode::OK, no_store(), axum::Json(response(&s, &c, Map::new()))).into_response(),
        Err(e) => e.into_response(),
    }
}

pub async fn update(
    AxState(s): AxState<KmState>,
    headers: HeaderMap,
    Path(client_id): Path<String>,
    body: Bytes,
) -> Response {
    match change(&s, &headers, &client_id, &body).await {
        Ok(v) => (StatusCode::OK, no_store(), axum::Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn change(s: &KmState, headers: &HeaderMap, client_id: &str, body: &[u8]) -> Result<Value, OAuthError> {
    let c = managed(s, headers, client_id).await?;
    let (req, ssa, jws) = request_metadata(s, headers, body).await?;
    if req.get("client_id").and_then(Value::as_str) != Some(client_id) {
        return Err(bad_metadata("client_id in the body must be the client's (RFC 7592 2.2)"));
    }
    let before = c.metadata.as_ref().and_then(|m| m.get("software_id")).and_then(Value::as_str);
    if before != ssa.get("software_id").and_then(Value::as_str) {
        return Err(bad_statement("the software statement is for other software"));
    }
    let r = registration(s, &req, &ssa)?;
    if let Some(jws) = &jws {
        check_request_signature(s, jws, &r, &ssa).await?;
    }
    if r.auth_method == CLIENT_SECRET_BASIC && c.secret_hash.is_none() {
        return Err(bad_metadata("a client cannot move to client_secret_basic; register a new one"));
    }
    let mut metadata = r.metadata.clone();
    metadata.insert("software_statement_claims".into(), Value::Object(ssa));
    let metadata = Value::Object(metadata);
    let update = NewClient {
        key_manager: BUILTIN,
        client_id,
        jwks: r.jwks.as_ref(),
        jwks_uri: r.jwks_uri.as_deref(),
        auth_method: Some(&r.auth_method),
        subject_dn: r.subject_dn.as_deref(),
        scopes: &r.scopes,
        metadata: Some(&metadata),
        ..Default::default()
    };
    s.store.db.update_registered_client(update).await?;
    s.store.cache.invalidate_client(BUILTIN, client_id).await;
    let c = s.store.db.oauth_client(BUILTIN, client_id).await?.ok_or_else(|| invalid_token("unknown client"))?;
    Ok(response(s, &c, Map::new()))
}

pub async fn unregister(AxState(s): AxState<KmState>, headers: HeaderMap, Path(client_id): Path<String>) -> Response {
    let c = match managed(&s, &headers, &client_id).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    // The client's own application goes with it.
    match s.store.db.delete_application(&c.application_id).await {
        Ok(hashes) => {
            for h in hashes {
                s.store.cache.invalidate(&h).await;
            }
            s.store.cache.invalidate_client(BUILTIN, &client_id).await;
            s.store.cache.invalidate_application(&c.application_id);
            tracing::info!(client_id = %client_id, "client unregistered");
            (StatusCode::NO_CONTENT, no_store()).into_response()
        }
        Err(e) => OAuthError::from(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_bound_scopes() {
        assert_eq!(role_scopes("AISP"), ["accounts"]);
        let statement = |v: Value| v.as_object().unwrap().clone();
        assert!(software_roles(&statement(json!({}))).unwrap().is_empty(), "no roles: none, not all");
        assert_eq!(software_roles(&statement(json!({"software_roles": ["AISP"]}))).unwrap(), ["AISP"]);
        assert!(software_roles(&statement(json!({"software_roles": "AISP PISP"}))).is_err());
        assert!(software_roles(&statement(json!({"software_roles": ["AISP", 7]}))).is_err());
        assert!(role_scopes("ASPSP").is_empty());
        assert!(https_uri("https://directory.example/jwks"));
        assert!(!https_uri("http://169.254.169.254/latest"));
        assert!(!https_uri("file:///etc/passwd"));
    }
}
