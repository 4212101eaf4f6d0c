//! Detached JWS signatures over HTTP bodies (RFC 7515 appendix F), as UK
//! Open Banking sends them in `x-jws-signature`: `<header>..<signature>`.
//! Both forms are read: the standard one (the body base64url-encoded into
//! the signing input) and the unencoded one (`"b64": false` with `"b64"` in
//! `crit`, RFC 7797) that UK Open Banking used up to v3.1.3. Signing and
//! verifying are jsonwebtoken's (ring).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use crate::oauth::jwt::{Kind, KindError, check_header, numeric_date};

/// UK Open Banking's signing-time header parameter.
const OB_IAT: &str = "http://openbanking.org.uk/iat";
/// Clock skew allowed on it.
const IAT_LEEWAY_SECS: u64 = 30;
use crate::oauth::keys::{KeySet, family};

/// Algorithms accepted on signed requests (FAPI: PS256 and ES256).
pub const ALGORITHMS: [Algorithm; 2] = [Algorithm::PS256, Algorithm::ES256];

/// Why a signature is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwsError {
    #[error("x-jws-signature is not a detached JWS (<header>..<signature>)")]
    Malformed,
    #[error("x-jws-signature uses algorithm {0}; PS256 or ES256 are accepted")]
    Algorithm(String),
    #[error("x-jws-signature names a critical header parameter that is not understood: {0}")]
    Critical(String),
    #[error("x-jws-signature has typ {0:?}: a detached signature has no typ or JOSE")]
    Type(String),
    #[error("x-jws-signature's http://openbanking.org.uk/iat must be a time (seconds) not in the future")]
    SigningTime,
    #[error("x-jws-signature does not verify with the client's registered keys")]
    BadSignature,
}

/// The signing input of a detached JWS over `body`.
fn signing_input(header_b64: &str, encoded: bool, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(header_b64.len() + 1 + body.len() * 4 / 3 + 4);
    m.extend_from_slice(header_b64.as_bytes());
    m.push(b'.');
    if encoded {
        m.extend_from_slice(B64.encode(body).as_bytes());
    } else {
        m.extend_from_slice(body);
    }
    m
}

/// The `kid` a detached JWS names (None when absent or unreadable).
pub fn kid_of(signature: &str) -> Option<String> {
    let h = signature.trim().split('.').next()?;
    let header: Map<String, Value> = serde_json::from_slice(&B64.decode(h).ok()?).ok()?;
    header.get("kid").and_then(Value::as_str).map(str::to_string)
}

/// Verifies a detached signature over `body` with one of `keys`.
pub fn verify_detached(signature: &str, body: &[u8], keys: &KeySet) -> Result<(), JwsError> {
    let mut parts = signature.trim().split('.');
    let (Some(h), Some(""), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(JwsError::Malformed);
    };
    let header: Map<String, Value> =
        B64.decode(h).ok().and_then(|b| serde_json::from_slice(&b).ok()).ok_or(JwsError::Malformed)?;
    let alg_name = header.get("alg").and_then(Value::as_str).ok_or(JwsError::Malformed)?;
    let alg: Algorithm = serde_json::from_value(Value::String(alg_name.into()))
        .map_err(|_| JwsError::Algorithm(alg_name.to_string()))?;
    if family(alg).is_none() || !ALGORITHMS.contains(&alg) {
        return Err(JwsError::Algorithm(alg_name.to_string()));
    }
    // typ (none or JOSE: never a token or assertion) and crit, understood
    // and present (RFC 7515 4.1.11).
    let crit = check_header(&header, Kind::DetachedSignature).map_err(|e| match e {
        KindError::Critical(c) => JwsError::Critical(c),
        KindError::WrongType { found, .. } => JwsError::Type(found),
        _ => JwsError::Malformed,
    })?;
    // UK Open Banking's signing time, when given, is a time not ahead.
    if let Some(iat) = header.get(OB_IAT) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        match numeric_date(iat) {
            Some(t) if t <= now + IAT_LEEWAY_SECS => {}
            _ => return Err(JwsError::SigningTime),
        }
    }
    let encoded = match header.get("b64") {
        None | Some(Value::Bool(true)) => true,
        // RFC 7797 3: b64 false counts only when it is critical.
        Some(Value::Bool(false)) if crit.iter().any(|c| c == "b64") => false,
        _ => return Err(JwsError::Malformed),
    };
    let input = signing_input(h, encoded, body);
    let kid = header.get("kid").and_then(Value::as_str);
    for key in keys.candidates(kid, alg) {
        if jsonwebtoken::crypto::verify(sig, &input, &key.key, alg).unwrap_or(false) {
            return Ok(());
        }
    }
    Err(JwsError::BadSignature)
}

/// A detached JWS (standard form) over `body`: `<header>..<signature>`.
pub fn sign_detached(alg: Algorithm, kid: &str, key: &jsonwebtoken::EncodingKey, issuer: &str, body: &[u8]) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let header = serde_json::json!({
        "alg": format!("{alg:?}"),
        "kid": kid,
        "typ": "JOSE",
        "cty": "application/json",
        "http://openbanking.org.uk/iat": now,
        "http://openbanking.org.uk/iss": issuer,
        "crit": ["http://openbanking.org.uk/iat", "http://openbanking.org.uk/iss"],
    });
    let h = B64.encode(header.to_string());
    let input = signing_input(&h, true, body);
    // Signing with a loaded key cannot fail.
    let sig = jsonwebtoken::crypto::sign(&input, key, alg).expect("signing with a loaded key");
    format!("{h}..{sig}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key_manager::signing::SigningKey;

    fn key() -> SigningKey {
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &ring::rand::SystemRandom::new(),
        )
        .unwrap();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref())
        );
        SigningKey::from_pem(pem.as_bytes()).unwrap()
    }

    fn now_secs() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    }

    fn set(k: &SigningKey) -> KeySet {
        KeySet::parse(serde_json::json!({"keys": [k.jwk]}).to_string().as_bytes()).unwrap()
    }

    #[test]
    fn detached_signatures_cover_the_exact_body() {
        let k = key();
        let body = br#"{"Data":{"Amount":"10.00"}}"#;
        let sig = k.sign_detached("https://as.bank.test", body);
        assert!(sig.contains(".."));
        assert_eq!(verify_detached(&sig, body, &set(&k)), Ok(()));
        assert_eq!(verify_detached(&sig, br#"{"Data":{"Amount":"99.00"}}"#, &set(&k)), Err(JwsError::BadSignature));
        assert_eq!(verify_detached(&sig, body, &set(&key())), Err(JwsError::BadSignature), "another key");
        assert_eq!(verify_detached("abc", body, &set(&k)), Err(JwsError::Malformed));
        let attached = sig.replacen("..", ".eyJ9.", 1);
        assert_eq!(verify_detached(&attached, body, &set(&k)), Err(JwsError::Malformed));
    }

    #[test]
    fn the_unencoded_form_needs_b64_in_crit_and_unknown_crit_is_refused() {
        let k = key();
        let body = b"{\"a\":1}";
        let make = |header: serde_json::Value, encoded: bool| {
            let h = B64.encode(header.to_string());
            let sig = k.sign_raw(&signing_input(&h, encoded, body));
            format!("{h}..{sig}")
        };
        let kid = k.kid.clone();
        let ok = make(serde_json::json!({"alg": "ES256", "kid": kid, "b64": false, "crit": ["b64"]}), false);
        assert_eq!(verify_detached(&ok, body, &set(&k)), Ok(()));
        let no_crit = make(serde_json::json!({"alg": "ES256", "kid": kid, "b64": false}), false);
        assert_eq!(verify_detached(&no_crit, body, &set(&k)), Err(JwsError::Malformed));
        let unknown = make(serde_json::json!({"alg": "ES256", "kid": kid, "crit": ["exp"]}), true);
        assert_eq!(verify_detached(&unknown, body, &set(&k)), Err(JwsError::Critical("exp".into())));
        let ahead = now_secs() + 3600;
        let future = make(serde_json::json!({"alg": "ES256", "kid": kid, OB_IAT: ahead, "crit": [OB_IAT]}), true);
        assert_eq!(verify_detached(&future, body, &set(&k)), Err(JwsError::SigningTime));
        let text = make(serde_json::json!({"alg": "ES256", "kid": kid, OB_IAT: "now", "crit": [OB_IAT]}), true);
        assert_eq!(verify_detached(&text, body, &set(&k)), Err(JwsError::SigningTime));
        let signed_now =
            make(serde_json::json!({"alg": "ES256", "kid": kid, OB_IAT: now_secs(), "crit": [OB_IAT]}), true);
        assert_eq!(verify_detached(&signed_now, body, &set(&k)), Ok(()));
        let token_typ = make(serde_json::json!({"alg": "ES256", "kid": kid, "typ": "at+jwt"}), true);
        assert_eq!(verify_detached(&token_typ, body, &set(&k)), Err(JwsError::Type("at+jwt".into())));
        let hs = make(serde_json::json!({"alg": "HS256"}), true);
        assert_eq!(verify_detached(&hs, body, &set(&k)), Err(JwsError::Algorithm("HS256".into())));
        let none = make(serde_json::json!({"alg": "none"}), true);
        assert!(matches!(verify_detached(&none, body, &set(&k)), Err(JwsError::Algorithm(_))));
    }
}
