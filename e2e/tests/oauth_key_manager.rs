//! An OAuth2 API end to end on the local control plane: a KeyManager whose
//! keys are published by a local JWKS endpoint is applied, the operator
//! writes it into the ApiManager's artifact folder, and a real gateway on
//! that folder fetches the keys and accepts a token the issuer signed (and
//! refuses one it did not).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use tollgate_e2e::{
    Cluster, apply_manifest, install_crds,
    stack::{Gateway, WatchingOperator, backend, eventually},
    tollgate_resource,
};

const ISSUER: &str = "https://idp.e2e.bank.example/oauth2";

/// An ES256 issuer key and a JWKS endpoint on loopback serving it.
struct Issuer {
    key: EncodingKey,
    addr: SocketAddr,
    fetches: Arc<AtomicUsize>,
}

impl Issuer {
    fn start() -> Issuer {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let raw = kp.public_key_raw();
        let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "e2e-1", "alg": "ES256",
                                    "x": B64.encode(&raw[1..33]), "y": B64.encode(&raw[33..65])}]})
        .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let fetches = Arc::new(AtomicUsize::new(0));
        let counted = fetches.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let mut reader = BufReader::new(s.try_clone().expect("clone"));
                let mut line = String::new();
                while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) && line != "\r\n" {
                    line.clear();
                }
                counted.fetch_add(1, Ordering::SeqCst);
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{jwks}",
                    jwks.len()
                );
            }
        });
        Issuer { key: EncodingKey::from_ec_der(&kp.serialize_der()), addr, fetches }
    }

    fn token(&self, client: &str, key: &EncodingKey) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("e2e-1".into());
        let claims = json!({"iss": ISSUER, "client_id": client, "scope": "accounts", "iat": now, "exp": now + 600});
        encode(&h, &claims, key).expect("sign")
    }
}

/// One HTTP/1.1 exchange; returns the status and the body.
fn call(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nhost: e2e\r\nconnection: close\r\ncontent-length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    s.write_all(format!("{head}\r\n{body}").as_bytes()).expect("write");
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let status = raw.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn admin(gw: &Gateway, path: &str, body: Value) -> Value {
    let (status, text) = call(
        gw.management,
        "POST",
        path,
        &[("authorization", "Bearer e2e-admin-token-0123456789"), ("content-type", "application/json")],
        &body.to_string(),
    );
    assert_eq!(status, 201, "POST {path}: {text}");
    serde_json::from_str(&text).expect("JSON")
}

#[tokio::test]
async fn a_gateway_accepts_tokens_of_an_applied_key_manager() {
    let cluster = Cluster::connect().await;
    install_crds(&cluster.client).await;
    let ns = cluster.namespace("oauth").await;
    let ns = ns.name().to_string();
    let client = cluster.client.clone();
    let work = tempfile::tempdir().expect("tempdir");
    let op = WatchingOperator::start(&cluster, &ns, work.path()).await;
    let (operator, artifacts) = (&op.operator, &op.artifacts);
    let (_backend, backend_addr) = backend(work.path(), "accounts-backend");
    let issuer = Issuer::start();

    for manifest in [
        json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "ApiManager", "metadata": {"name": "apim"},
               "spec": {"pattern": "AllInOne"}}),
        json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "ThrottlePolicy", "metadata": {"name": "gold"},
               "spec": {"limit": {"requests": 1000, "per": "1m"}, "keyBy": "Consumer"}}),
        json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "KeyManager", "metadata": {"name": "bank-idp"},
               "spec": {"apiManagerRef": {"name": "apim"}, "issuer": ISSUER,
                        "jwksUri": format!("http://{}/jwks", issuer.addr), "algorithms": ["ES256"]}}),
        json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "ApiDeployment", "metadata": {"name": "accounts"},
               "spec": {"apiManagerRef": {"name": "apim"}, "context": "/open-banking/aisp", "version": "v3.1",
                        "security": {"oauth2": {"keyManagers": ["bank-idp"]}}, "throttling": {"policy": "gold"},
                        "operations": [{"method": "GET", "path": "/accounts", "scopes": ["accounts"]}],
                        "backend": {"endpoints": [{"url": format!("http://{backend_addr}/aisp")}]}}}),
    ] {
        apply_manifest(&client, &ns, &manifest).await.expect("apply");
    }
    let folder = artifacts.join(&ns).join("apim");
    let km_file = folder.join(format!("keymanagers/{ns}_bank-idp.yaml"));
    let api_file = folder.join(format!("apis/{ns}_accounts.yaml"));
    let kms = kube::Api::<kube::api::DynamicObject>::namespaced_with(
        client.clone(),
        &ns,
        &tollgate_resource("KeyManager").expect("kind"),
    );
    eventually(
        Duration::from_secs(30),
        "KeyManager artifact and API artifact written, KeyManager Accepted",
        || async {
            let km = serde_json::to_value(kms.get("bank-idp").await.map_err(|e| e.to_string())?).unwrap();
            let accepted = km["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Accepted" && c["status"] == "True"));
            if accepted && km_file.is_file() && api_file.is_file() { Ok(()) } else { Err(format!("{}", km["status"])) }
        },
    )
    .await;

    let token_file = work.path().join("admin-token");
    std::fs::write(&token_file, "e2e-admin-token-0123456789").expect("token file");
    let gateway = Gateway::start(&folder, work.path(), &["--admin-token-file", token_file.to_str().expect("path")]);
    let path = "/open-banking/aisp/v3.1/accounts";
    eventually(Duration::from_secs(15), "the API is served (401 without a token)", || async {
        match gateway.get(path) {
            401 => Ok(()),
            s => Err(format!("status {s}\n{}", gateway.proc.log_tail())),
        }
    })
    .await;

    // The TPP's OAuth client belongs to an application subscribed on gold.
    let app = admin(&gateway, "/api/v1/applications", json!({"name": "tpp-e2e"}));
    let app_id = app["id"].as_str().expect("id");
    admin(
        &gateway,
        &format!("/api/v1/applications/{app_id}/oauth-clients"),
        json!({"keyManager": "bank-idp", "clientId": "tpp-e2e-client"}),
    );
    admin(
        &gateway,
        "/api/v1/subscriptions",
        json!({"applicationId": app_id, "api": format!("{ns}/accounts"), "policy": "gold"}),
    );

    let token = issuer.token("tpp-e2e-client", &issuer.key);
    let bearer = format!("Bearer {token}");
    let (status, body) = call(gateway.http, "GET", path, &[("authorization", &bearer)], "");
    assert_eq!(status, 200, "a token the KeyManager's issuer signed: {body}\n{}", gateway.proc.log_tail());
    let echoed: Value = serde_json::from_str(&body).expect("backend JSON");
    assert_eq!(echoed["headers"]["x-tollgate-client-id"], "tpp-e2e-client");
    assert!(echoed["headers"].get("authorization").is_none(), "the token stays at the gateway");
    assert!(issuer.fetches.load(Ordering::SeqCst) >= 1, "the keys came from the JWKS endpoint");

    // A token signed by anyone else is refused.
    let impostor = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let forged = issuer.token("tpp-e2e-client", &EncodingKey::from_ec_der(&impostor.serialize_der()));
    let (status, _) = call(gateway.http, "GET", path, &[("authorization", &format!("Bearer {forged}"))], "");
    assert_eq!(status, 401);
    assert_eq!(operator.unexpected_errors(), 0.0, "{}", operator.proc.log_lines("failed"));
}
