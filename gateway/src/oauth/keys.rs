//! An issuer's signing keys: a JWK Set parsed once into verification keys,
//! found by `kid` and algorithm family.

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// Key types a JWS algorithm verifies with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Rsa,
    Ec,
    Ed,
}

/// The key family of an asymmetric algorithm; None for HMAC (never
/// trusted: an HMAC "signature" made with a public key proves nothing).
pub fn family(alg: Algorithm) -> Option<Family> {
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => Some(Family::Rsa),
        Algorithm::ES256 | Algorithm::ES384 => Some(Family::Ec),
        Algorithm::EdDSA => Some(Family::Ed),
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => None,
    }
}

/// One verification key.
pub struct Key {
    pub kid: Option<String>,
    pub family: Family,
    /// The algorithm the key is pinned to (`alg` of the JWK), if any.
    pub alg: Option<String>,
    pub key: DecodingKey,
}

/// A parsed JWK Set.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.keys.iter().map(|k| (&k.kid, k.family))).finish()
    }
}

impl KeySet {
    /// Parses a JWK Set document. Symmetric keys and keys marked for
    /// encryption are left out; keys that cannot be parsed are left out too
    /// (an issuer may publish key types this gateway does not use). Fails
    /// when the document is not a JWK Set or holds no usable key.
    pub fn parse(json: &[u8]) -> Result<KeySet, String> {
        let value: serde_json::Value = serde_json::from_slice(json).map_err(|e| format!("not JSON: {e}"))?;
        let Some(keys) = value.get("keys").and_then(|k| k.as_array()) else {
            return Err("not a JWK Set (no \"keys\" array)".into());
        };
        let mut set = KeySet::default();
        for k in keys {
            // One bad key does not spoil the others.
            let Ok(jwk) = serde_json::from_value::<Jwk>(k.clone()) else { continue };
            if let Some(key) = Self::key_of(&jwk) {
                set.keys.push(key);
            }
        }
        if set.keys.is_empty() {
            return Err("the JWK Set holds no usable public signing key (RSA, EC or OKP)".into());
        }
        Ok(set)
    }

    /// Parses an already-typed JWK Set (inline in a KeyManager).
    pub fn from_jwks(jwks: &JwkSet) -> Result<KeySet, String> {
        let keys: Vec<Key> = jwks.keys.iter().filter_map(Self::key_of).collect();
        if keys.is_empty() {
            return Err("the JWK Set holds no usable public signing key (RSA, EC or OKP)".into());
        }
        Ok(KeySet { keys })
    }

    fn key_of(jwk: &Jwk) -> Option<Key> {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            return None;
        }
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Family::Rsa,
            AlgorithmParameters::EllipticCurve(_) => Family::Ec,
            AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
            AlgorithmParameters::OctetKey(_) => return None,
        };
        let key = DecodingKey::from_jwk(jwk).ok()?;
        let alg = jwk.common.key_algorithm.map(|a| a.to_string());
        Some(Key { kid: jwk.common.key_id.clone(), family, alg, key })
    }

    /// Keys that may have signed a token with this `kid` and `alg`: the key
    /// with that kid, or without a kid every key of the algorithm's family.
    pub fn candidates<'a>(&'a self, kid: Option<&'a str>, alg: Algorithm) -> impl Iterator<Item = &'a Key> + 'a {
        let fam = family(alg);
        let alg_name = format!("{alg:?}");
        self.keys.iter().filter(move |k| {
            Some(k.family) == fam
                && k.alg.as_deref().is_none_or(|a| a == alg_name)
                && match kid {
                    Some(kid) => k.kid.as_deref() == Some(kid),
                    None => true,
                }
        })
    }

    /// Whether a key with this kid is held.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EC: &str = r#"{"kty":"EC","crv":"P-256","kid":"ec1","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;

    #[test]
    fn usable_keys_are_kept_and_the_rest_left_out() {
        let doc = format!(
            r#"{{"keys":[{EC},{{"kty":"oct","k":"c2VjcmV0","kid":"hmac"}},{{"kty":"EC","kid":"broken"}},
               {{"kty":"RSA","kid":"enc","use":"enc","n":"sXch","e":"AQAB"}}]}}"#
        );
        let set = KeySet::parse(doc.as_bytes()).unwrap();
        assert_eq!(set.len(), 1);
        assert!(set.has_kid("ec1") && !set.has_kid("hmac") && !set.has_kid("enc"));
        assert_eq!(set.candidates(Some("ec1"), Algorithm::ES256).count(), 1);
        assert_eq!(set.candidates(None, Algorithm::ES256).count(), 1);
        assert_eq!(set.candidates(Some("ec1"), Algorithm::PS256).count(), 0, "wrong family");
        assert_eq!(set.candidates(Some("other"), Algorithm::ES256).count(), 0);
        assert_eq!(family(Algorithm::HS256), None);
    }

    #[test]
    fn documents_without_usable_keys_are_errors() {
        assert!(KeySet::parse(b"not json").is_err());
        assert!(KeySet::parse(b"{\"nokeys\":[]}").is_err());
        assert!(KeySet::parse(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).is_err());
    }
}
