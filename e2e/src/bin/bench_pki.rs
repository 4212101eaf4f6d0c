//! Credentials for the OAuth2 and mutual-TLS benchmarks: a test CA, a
//! server certificate for 127.0.0.1, a client (TPP) certificate, an ES256
//! issuer key published as a JWK Set, and access tokens for the client
//! (one plain, one bound to the client certificate, RFC 8705).
//!
//!   tollgate-bench-pki DIR ISSUER AUDIENCE CLIENT_ID
//!
//! Writes DIR/{ca.pem, server.crt, server.key, client.crt, client.key,
//! jwks.json} and prints `{"token": ..., "boundToken": ...}`.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use serde_json::json;
use sha2::Digest;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, issuer, audience, client_id] = args.as_slice() else {
        eprintln!("usage: tollgate-bench-pki DIR ISSUER AUDIENCE CLIENT_ID");
        std::process::exit(2);
    };
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("output folder");
    let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).expect("write");

    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.distinguished_name.push(DnType::CommonName, "tollgate bench CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("key")).expect("CA");
    write("ca.pem", &ca.pem());
    let leaf = |name: &str, purpose: ExtendedKeyUsagePurpose| {
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        p.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![purpose];
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &ca).expect("sign");
        write(&format!("{name}.crt"), &cert.pem());
        write(&format!("{name}.key"), &key.serialize_pem());
        cert.der().to_vec()
    };
    leaf("server", ExtendedKeyUsagePurpose::ServerAuth);
    let client = leaf("client", ExtendedKeyUsagePurpose::ClientAuth);

    let signing = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("issuer key");
    let raw = signing.public_key_raw();
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": "bench-1", "alg": "ES256", "use": "sig",
                     "x": B64.encode(&raw[1..33]), "y": B64.encode(&raw[33..65])});
    write("jwks.json", &json!({"keys": [jwk]}).to_string());
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    let key = EncodingKey::from_ec_der(&signing.serialize_der());
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("bench-1".into());
    let claims = json!({"iss": issuer, "aud": audience, "client_id": client_id, "sub": client_id,
                        "scope": "bench", "iat": now, "exp": now + 86_400});
    let token = encode(&header, &claims, &key).expect("token");
    let mut bound = claims.clone();
    bound["cnf"] = json!({"x5t#S256": B64.encode(sha2::Sha256::digest(&client))});
    let bound_token = encode(&header, &bound, &key).expect("token");
    println!("{}", json!({"token": token, "boundToken": bound_token}));
}
