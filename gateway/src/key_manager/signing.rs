//! The built-in key manager's signing keys: PEM private keys from
//! `--signing-key-file` (EC P-256 -> ES256, RSA -> PS256; the first signs,
//! every one is published), or one EC P-256 key generated under
//! `<data-dir>/key-manager/` and kept across restarts. Each key's `kid` is
//! its RFC 7638 JWK thumbprint. Signing is jsonwebtoken's (ring); the DER
//! structure of PKCS#8 is read with der-parser, never by hand.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RsaKeyPair};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Why the signing keys cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// One signing key.
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    key: EncodingKey,
    /// The public JWK (with kid, alg, use).
    pub jwk: Value,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).field("alg", &self.alg).finish()
    }
}

/// RFC 7638 thumbprint of a JWK given by its required members in
/// lexicographic order.
fn thumbprint(members: &[(&str, &str)]) -> String {
    let mut canonical = serde_json::Map::new();
    for (k, v) in members {
        canonical.insert((*k).to_string(), Value::String((*v).to_string()));
    }
    // serde_json's Map is ordered by key (no preserve_order feature): the
    // canonical form RFC 7638 asks for.
    let text = Value::Object(canonical).to_string();
    B64.encode(Sha256::digest(text.as_bytes()))
}

/// The RSAPrivateKey (PKCS#1) inside a PKCS#8 PrivateKeyInfo.
fn pkcs1_of_pkcs8(der: &[u8]) -> Option<Vec<u8>> {
    use x509_parser::der_parser::ber::BerObjectContent;
    let (_, obj) = x509_parser::der_parser::parse_der(der).ok()?;
    let BerObjectContent::Sequence(items) = obj.content else { return None };
    match items.get(2).map(|o| &o.content) {
        Some(BerObjectContent::OctetString(inner)) => Some(inner.to_vec()),
        _ => None,
    }
}

impl SigningKey {
    /// A key from PEM text (PKCS#8 `PRIVATE KEY`, or PKCS#1 `RSA PRIVATE KEY`).
    pub fn from_pem(pem: &[u8]) -> Result<SigningKey, String> {
        use rustls::pki_types::PrivateKeyDer;
        let key = rustls_pemfile::private_key(&mut &pem[..])
            .map_err(|e| format!("not PEM: {e}"))?
            .ok_or("no private key in the PEM file")?;
        match key {
            PrivateKeyDer::Pkcs8(der) => {
                let der = der.secret_pkcs8_der();
                if let Ok(kp) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &SystemRandom::new()) {
                    return Ok(Self::ec(kp.public_key().as_ref(), EncodingKey::from_ec_der(der)));
                }
                let pkcs1 = pkcs1_of_pkcs8(der).ok_or("a PKCS#8 key that is neither EC P-256 nor RSA")?;
                Self::rsa(&pkcs1)
            }
            PrivateKeyDer::Pkcs1(der) => Self::rsa(der.secret_pkcs1_der()),
            PrivateKeyDer::Sec1(_) => Err("an EC key in SEC1 form (EC PRIVATE KEY): convert it to PKCS#8 with \
                 `openssl pkcs8 -topk8 -nocrypt -in key.pem -out key.p8.pem`"
                .into()),
            _ => Err("unsupported private key format".into()),
        }
    }

    fn ec(public: &[u8], key: EncodingKey) -> SigningKey {
        // Uncompressed point: 0x04 || x || y.
        let (x, y) = (B64.encode(&public[1..33]), B64.encode(&public[33..65]));
        let kid = thumbprint(&[("crv", "P-256"), ("kty", "EC"), ("x", &x), ("y", &y)]);
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "use": "sig", "alg": "ES256"});
        SigningKey { kid, alg: Algorithm::ES256, key, jwk }
    }

    fn rsa(pkcs1: &[u8]) -> Result<SigningKey, String> {
        let kp = RsaKeyPair::from_der(pkcs1).map_err(|e| format!("not a usable RSA private key: {e}"))?;
        if kp.public().modulus_len() < 256 {
            return Err("RSA keys must have at least 2048 bits".into());
        }
        let parts: ring::rsa::PublicKeyComponents<Vec<u8>> = kp.public().into();
        let (n, e) = (B64.encode(&parts.n), B64.encode(&parts.e));
        let kid = thumbprint(&[("e", &e), ("kty", "RSA"), ("n", &n)]);
        let jwk = json!({"kty": "RSA", "n": n, "e": e, "kid": kid, "use": "sig", "alg": "PS256"});
        Ok(SigningKey { kid, alg: Algorithm::PS256, key: EncodingKey::from_rsa_der(pkcs1), jwk })
    }

    /// A detached JWS (`x-jws-signature`) over `body`.
    pub fn sign_detached(&self, issuer: &str, body: &[u8]) -> String {
        crate::jws::sign_detached(self.alg, &self.kid, &self.key, issuer, body)
    }

    /// The base64url signature of `message` (tests build other JWS forms with it).
    #[cfg(test)]
    pub fn sign_raw(&self, message: &[u8]) -> String {
        jsonwebtoken::crypto::sign(message, &self.key, self.alg).expect("signing with a loaded key")
    }

    /// A compact JWS of `claims` with this key (`typ` as given).
    pub fn sign(&self, typ: &str, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        h.typ = Some(typ.to_string());
        // Serialising a JSON value and signing with a parsed key cannot fail.
        jsonwebtoken::encode(&h, claims, &self.key).expect("signing with a loaded key")
    }
}

/// The key manager's keys: the first signs, all are published.
#[derive(Debug)]
pub struct SigningKeys {
    pub keys: Vec<SigningKey>,
    /// Where they came from (for /status).
    pub source: String,
}

/// File name of the generated token key in the key folder
/// (`--key-manager-dir`, default `<data-dir>/key-manager/`).
const GENERATED: &str = "signing-key.pem";
/// File name of the generated answer-signing key beside it.
const GENERATED_RESPONSE: &str = "response-signing-key.pem";

impl SigningKeys {
    /// Loads `files`, or (none given) the key in `key_dir`, generating it
    /// the first time.
    pub fn load(files: &[PathBuf], key_dir: &Path) -> Result<SigningKeys, SigningKeyError> {
        if files.is_empty() {
            return Self::generated(key_dir, GENERATED);
        }
        Self::from_files(files)
    }

    /// The keys that sign answers (`x-jws-signature`): `files`
    /// (--response-signing-key-file); else, when the token keys are
    /// generated (no `token_files`), a key of their own generated beside
    /// them; else the token keys (a shared key for every pod), with a
    /// warning: answers and tokens then differ only by their `typ` and `crit`.
    pub fn load_for_responses(
        files: &[PathBuf],
        token_files: &[PathBuf],
        key_dir: &Path,
    ) -> Result<SigningKeys, SigningKeyError> {
        if !files.is_empty() {
            return Self::from_files(files);
        }
        if token_files.is_empty() {
            return Self::generated(key_dir, GENERATED_RESPONSE);
        }
        tracing::warn!(
            "answers are signed with the token key (--signing-key-file); give them a key of their own with \
             --response-signing-key-file"
        );
        Self::from_files(token_files)
    }

    fn from_files(files: &[PathBuf]) -> Result<SigningKeys, SigningKeyError> {
        let mut keys = Vec::new();
        for path in files {
            let pem = std::fs::read(path).map_err(|source| SigningKeyError::Read { path: path.clone(), source })?;
            let key = SigningKey::from_pem(&pem)
                .map_err(|message| SigningKeyError::Invalid { path: path.clone(), message })?;
            if keys.iter().any(|k: &SigningKey| k.kid == key.kid) {
                continue;
            }
            keys.push(key);
        }
        let source = files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(",");
        Ok(SigningKeys { keys, source })
    }

    fn generated(dir: &Path, name: &str) -> Result<SigningKeys, SigningKeyError> {
        let path = dir.join(name);
        let pem = match std::fs::read(&path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let doc =
                    EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new()).map_err(
                        |_| SigningKeyError::Invalid { path: path.clone(), message: "key generation failed".into() },
                    )?;
                let pem = format!(
                    "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
                    base64::engine::general_purpose::STANDARD
                        .encode(doc.as_ref())
                        .as_bytes()
                        .chunks(64)
                        .map(|c| String::from_utf8_lossy(c).into_owned())
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                write_private(dir, &path, pem.as_bytes())?;
                tracing::info!(path = %path.display(), "generated a signing key of the key manager (single node; give HA pods shared keys with --signing-key-file and --response-signing-key-file)");
                pem.into_bytes()
            }
            Err(source) => return Err(SigningKeyError::Read { path, source }),
        };
        let key =
            SigningKey::from_pem(&pem).map_err(|message| SigningKeyError::Invalid { path: path.clone(), message })?;
        Ok(SigningKeys { keys: vec![key], source: path.display().to_string() })
    }

    /// The key that signs.
    pub fn current(&self) -> &SigningKey {
        &self.keys[0]
    }

    /// The public JWK Set.
    pub fn jwks(&self) -> Value {
        json!({"keys": self.keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
    }
}

/// Writes a private key readable only by this user, atomically.
fn write_private(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), SigningKeyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| SigningKeyError::Write { path: path.to_path_buf(), source };
    std::fs::create_dir_all(dir).map_err(err)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or(GENERATED);
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(err)?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_is_kept_and_its_kid_is_the_rfc7638_thumbprint() {
        let dir = tempfile::tempdir().unwrap();
        let a = SigningKeys::load(&[], &dir.path().join("key-manager")).unwrap();
        let b = SigningKeys::load(&[], &dir.path().join("key-manager")).unwrap();
        assert_eq!(a.current().kid, b.current().kid, "kept across restarts");
        let jwk = &a.jwks()["keys"][0];
        assert_eq!((jwk["kty"].as_str(), jwk["alg"].as_str()), (Some("EC"), Some("ES256")));
        assert!(jwk.get("d").is_none(), "public half only");
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            jwk["x"].as_str().unwrap(),
            jwk["y"].as_str().unwrap()
        );
        assert_eq!(a.current().kid, B64.encode(Sha256::digest(canonical.as_bytes())));
        let mode = std::fs::metadata(dir.path().join("key-manager").join(GENERATED)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn answers_get_a_key_of_their_own_unless_only_token_keys_are_given() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = SigningKeys::load(&[], &dir.path().join("key-manager")).unwrap();
        let answers = SigningKeys::load_for_responses(&[], &[], &dir.path().join("key-manager")).unwrap();
        assert_ne!(tokens.current().kid, answers.current().kid, "generated: two keys");
        let again = SigningKeys::load_for_responses(&[], &[], &dir.path().join("key-manager")).unwrap();
        assert_eq!(answers.current().kid, again.current().kid, "kept across restarts");
        let token_file = dir.path().join("key-manager").join(GENERATED);
        let answer_file = dir.path().join("key-manager").join(GENERATED_RESPONSE);
        let shared = SigningKeys::load_for_responses(&[], std::slice::from_ref(&token_file), dir.path()).unwrap();
        assert_eq!(shared.current().kid, tokens.current().kid, "token keys given, no answer key: the token keys");
        let own =
            SigningKeys::load_for_responses(std::slice::from_ref(&answer_file), &[token_file], dir.path()).unwrap();
        assert_eq!(own.current().kid, answers.current().kid);
    }

    #[test]
    fn rfc7638_example_thumbprint() {
        // RFC 7638 section 3.1.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        assert_eq!(
            thumbprint(&[("e", "AQAB"), ("kty", "RSA"), ("n", n)]),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn bad_key_files_are_clear_errors() {
        assert!(SigningKey::from_pem(b"nothing here").is_err());
        let e = SigningKey::from_pem(b"-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIA==\n-----END EC PRIVATE KEY-----\n")
            .unwrap_err();
        assert!(e.contains("PKCS#8"), "{e}");
    }
}
