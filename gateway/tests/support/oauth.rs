//! OAuth2 helpers for tests: forms, client assertions, tokens from the
//! built-in key manager, admin calls.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};

use super::pki::{SigningKey, TlsClient};
use super::{Resp, exchange, request};

/// The admin token the tests' gateways are given.
pub const ADMIN: &str = "key-manager-admin-token";

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

pub fn enc(v: &str) -> String {
    form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

pub fn form_body(params: &[(&str, &str)]) -> String {
    params.iter().map(|(k, v)| format!("{k}={}", enc(v))).collect::<Vec<_>>().join("&")
}

/// The claims of a JWT (not verified) and its header.
pub fn jwt_parts(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let h = serde_json::from_slice(&B64.decode(parts.next().unwrap()).unwrap()).unwrap();
    let c = serde_json::from_slice(&B64.decode(parts.next().unwrap()).unwrap()).unwrap();
    (h, c)
}

pub fn admin_at(mgmt: SocketAddr, method: &str, path: &str, body: Value) -> Resp {
    let auth = format!("Bearer {ADMIN}");
    let body = if body.is_null() { String::new() } else { body.to_string() };
    request(mgmt, method, path, &[("authorization", &auth), ("content-type", "application/json")], body.as_bytes())
}

/// POSTs a form to the management listener (plain).
pub fn post_form(mgmt: SocketAddr, path: &str, params: &[(&str, &str)], headers: &[(&str, &str)]) -> Resp {
    let mut h = vec![("content-type", "application/x-www-form-urlencoded")];
    h.extend_from_slice(headers);
    request(mgmt, "POST", path, &h, form_body(params).as_bytes())
}

/// POSTs a form over TLS (with the client's certificate, if any).
pub fn post_form_tls(client: &TlsClient, addr: SocketAddr, path: &str, params: &[(&str, &str)]) -> Resp {
    let mut tls = client.connect(addr).unwrap();
    let h = [("content-type", "application/x-www-form-urlencoded")];
    exchange(&mut tls, "POST", path, &h, form_body(params).as_bytes()).unwrap()
}

/// A client assertion (RFC 7523) signed by `key`.
pub fn assertion(key: &SigningKey, client: &str, aud: &str, exp_in: i64, jti: &str) -> String {
    key.sign(&json!({"iss": client, "sub": client, "aud": aud, "iat": now(),
                     "exp": (now() as i64 + exp_in), "jti": jti}))
}

pub fn token_with(mgmt: SocketAddr, assertion: &str, scope: Option<&str>) -> Resp {
    let mut p = vec![
        ("grant_type", "client_credentials"),
        ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
        ("client_assertion", assertion),
    ];
    if let Some(s) = scope {
        p.push(("scope", s));
    }
    post_form(mgmt, "/oauth2/token", &p, &[])
}

pub fn error_of(r: &Resp) -> String {
    r.json()["error"].as_str().unwrap_or_default().to_string()
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}
