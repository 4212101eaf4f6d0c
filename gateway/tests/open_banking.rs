//! Open-banking request checks end to end, with real eIDAS-style
//! certificates (QCStatements built here), the built-in key manager and a
//! backend that counts what reaches it: x-fapi-interaction-id, PSD2 roles,
//! payment idempotency (also across two gateways on one PostgreSQL) and
//! detached JWS signatures on requests and responses.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};
use support::oauth::*;
use support::pki::*;
use support::postgres::Postgres;
use support::*;

const ISSUER: &str = "https://as.bank.test/oauth2";
const PSD2_PISP: u64 = 2;
const PSD2_AISP: u64 = 3;

/// A backend that counts requests and answers with what it received
/// (`?delay_ms=N` waits first).
struct Backend {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl Backend {
    fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(s) = stream else { continue };
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(s.try_clone().unwrap());
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let target = line.split(' ').nth(1).unwrap_or("/").to_string();
                    let mut headers = serde_json::Map::new();
                    let mut length = 0usize;
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = h.trim_end().split_once(':') {
                            let k = k.trim().to_ascii_lowercase();
                            if k == "content-length" {
                                length = v.trim().parse().unwrap_or(0);
                            }
                            headers.insert(k, json!(v.trim()));
                        }
                    }
                    let mut body = vec![0u8; length];
                    reader.read_exact(&mut body).unwrap();
                    let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                    if let Some(ms) = target.split("delay_ms=").nth(1).and_then(|v| v.parse::<u64>().ok()) {
                        std::thread::sleep(Duration::from_millis(ms));
                    }
                    // `?echo_body`: the request body itself is the answer.
                    let answer = if target.contains("echo_body") {
                        String::from_utf8_lossy(&body).into_owned()
                    } else {
                        json!({"hit": n, "target": target, "headers": headers,
                               "body": String::from_utf8_lossy(&body)})
                        .to_string()
                    };
                    let mut s = s;
                    let _ = write!(
                        s,
                        "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\nx-backend: yes\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                        answer.len()
                    );
                });
            }
        });
        Backend { addr, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

struct Env {
    ws: Workspace,
    backend: Backend,
    gw: Gateway,
    pisp: Leaf,
    aisp: Leaf,
    plain: Leaf,
    /// The TPP's request-signing key (registered as its client's jwks).
    tpp_key: SigningKey,
    client: String,
}

fn manifests(dir: &std::path::Path, backend: SocketAddr) {
    let url = format!("http://{backend}");
    std::fs::write(dir.join("gold.yaml"), policy("gold", "  limit: {requests: 1000, per: 1m}\n")).unwrap();
    std::fs::write(
        dir.join("accounts.yaml"),
        api(
            "accounts",
            "/accounts",
            "v1",
            &url,
            "  security: {oauth2: {}}\n  openBanking: {interactionId: true, tppRoles: [AISP]}\n",
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("payments.yaml"),
        api(
            "payments",
            "/payments",
            "v1",
            &url,
            "  security: {oauth2: {}, mtls: {required: true}}\n  openBanking:\n    interactionId: true\n    tppRoles: [PISP]\n    \
             idempotency: {ttl: 1h}\n    jws: {verifyRequests: true, signResponses: true}\n",
        ),
    )
    .unwrap();
    // Idempotency alone: answers go through the proxy's own path.
    std::fs::write(
        dir.join("transfers.yaml"),
        api(
            "transfers",
            "/transfers",
            "v1",
            &url,
            "  security: {oauth2: {}}\n  openBanking: {idempotency: {ttl: 1h}}\n",
        ),
    )
    .unwrap();
}

impl Env {
    fn start(extra: &[&str]) -> Env {
        let ws = Workspace::new();
        let backend = Backend::start();
        manifests(&ws.dir, backend.addr);
        let pisp = ws.ca.tpp_leaf(&ws.pki, "tpp-pisp", Some(&[PSD2_PISP, PSD2_AISP]), Some("PSDGB-FCA-123456"));
        let aisp = ws.ca.tpp_leaf(&ws.pki, "tpp-aisp", Some(&[PSD2_AISP]), Some("PSDGB-FCA-654321"));
        let plain = ws.ca.tpp_leaf(&ws.pki, "tpp-plain", None, None);
        std::fs::write(ws.tmp.path().join("admin-token"), ADMIN).unwrap();
        let gw = start_gateway(&ws, extra);
        let tpp_key = SigningKey::new("tpp-signing");
        let app = admin_at(gw.mgmt, "POST", "/api/v1/applications", json!({"name": "tpp"})).json()["id"]
            .as_str()
            .unwrap()
            .to_string();
        for a in ["bank/accounts", "bank/payments", "bank/transfers"] {
            let r = admin_at(
                gw.mgmt,
                "POST",
                "/api/v1/subscriptions",
                json!({"applicationId": app, "api": a, "policy": "gold"}),
            );
            assert_eq!(r.status, 201, "{}", r.text());
        }
        let r = admin_at(
            gw.mgmt,
            "POST",
            &format!("/api/v1/applications/{app}/oauth-clients"),
            json!({"tokenEndpointAuthMethod": "private_key_jwt", "jwks": tpp_key.jwks(), "scopes": ["accounts", "payments"]}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        let client = r.json()["clientId"].as_str().unwrap().to_string();
        Env { ws, backend, gw, pisp, aisp, plain, tpp_key, client }
    }

    /// An access token bound to `cert`, from the key manager over mutual TLS.
    fn token(&self, gw: &Gateway, cert: &Leaf) -> String {
        let a = assertion(&self.tpp_key, &self.client, ISSUER, 60, &format!("j-{}", support::free_port()));
        let r = post_form_tls(
            &TlsClient::new(&self.ws.ca.der).with_cert(cert),
            gw.mgmt_tls,
            "/oauth2/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
                ("client_assertion", &a),
            ],
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["access_token"].as_str().unwrap().to_string()
    }

    fn call(&self, gw: &Gateway, cert: &Leaf, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        let mut tls = TlsClient::new(&self.ws.ca.der).with_cert(cert).connect(gw.https).unwrap();
        exchange(&mut tls, method, path, headers, body).unwrap()
    }
}

fn start_gateway(ws: &Workspace, extra: &[&str]) -> Gateway {
    let mut flags = mtls_gateway_flags(&ws.server, &ws.ca, &ws.tmp.path().join("admin-token"));
    flags.extend(["--issuer".to_string(), ISSUER.to_string()]);
    flags.extend(extra.iter().map(|e| e.to_string()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    gateway(&ws.dir, &flags)
}

fn is_uuid(v: &str) -> bool {
    v.len() == 36
        && v.chars().filter(|c| *c == '-').count() == 4
        && v.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
}

#[test]
fn interaction_ids_are_echoed_generated_refused_when_not_uuids_and_on_every_answer() {
    let env = Env::start(&[]);
    let token = env.token(&env.gw, &env.aisp);
    let auth = bearer(&token);
    let id = "3f2504e0-4f89-11d3-9a0c-0305e82c3301";
    let r = env.call(
        &env.gw,
        &env.aisp,
        "GET",
        "/accounts/v1/list",
        &[("authorization", &auth), ("x-fapi-interaction-id", id)],
        b"",
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("x-fapi-interaction-id"), Some(id));
    assert_eq!(r.json()["headers"]["x-fapi-interaction-id"], id, "forwarded");

    let r = env.call(&env.gw, &env.aisp, "GET", "/accounts/v1/list", &[("authorization", &auth)], b"");
    let made = r.header("x-fapi-interaction-id").unwrap().to_string();
    assert!(is_uuid(&made), "{made}");
    assert_eq!(r.json()["headers"]["x-fapi-interaction-id"], made.as_str());

    let hits = env.backend.hits();
    let r = env.call(
        &env.gw,
        &env.aisp,
        "GET",
        "/accounts/v1/list",
        &[("authorization", &auth), ("x-fapi-interaction-id", "x\"};drop")],
        b"",
    );
    assert_eq!(r.status, 400);
    let fresh = r.header("x-fapi-interaction-id").unwrap();
    assert!(is_uuid(fresh) && !r.text().contains("drop"), "never echoed: {fresh}");
    // The gateway's own errors carry it too (401 without a token).
    let r = env.call(&env.gw, &env.aisp, "GET", "/accounts/v1/list", &[("x-fapi-interaction-id", id)], b"");
    assert_eq!((r.status, r.header("x-fapi-interaction-id")), (401, Some(id)));
    assert_eq!(env.backend.hits(), hits, "refused requests never reach the backend");
    let log = std::fs::read_to_string(&env.gw.log).unwrap();
    assert!(log.contains(&format!("\"interaction_id\":\"{id}\"")), "in the access log");
}

#[test]
fn psd2_roles_of_the_certificate_decide_and_the_organisation_is_forwarded() {
    let env = Env::start(&[]);
    let aisp_token = env.token(&env.gw, &env.aisp);
    let r = env.call(&env.gw, &env.aisp, "GET", "/accounts/v1/list", &[("authorization", &bearer(&aisp_token))], b"");
    assert_eq!(r.status, 201, "{}", r.text());
    let seen = r.json()["headers"].clone();
    assert_eq!(seen["x-tollgate-tpp-roles"], "AISP");
    assert_eq!(seen["x-tollgate-tpp-organization-id"], "PSDGB-FCA-654321");

    // An AISP-only certificate on the PISP API, and a certificate without a PSD2 statement.
    let body = br#"{"Data":{"Amount":"1.00"}}"#;
    let sig = env.tpp_key.sign_detached(body);
    for cert in [&env.aisp, &env.plain] {
        let token = env.token(&env.gw, cert);
        let r = env.call(
            &env.gw,
            cert,
            "POST",
            "/payments/v1/domestic-payments",
            &[
                ("authorization", &bearer(&token)),
                ("x-jws-signature", &sig),
                ("x-idempotency-key", "k-roles"),
                ("content-type", "application/json"),
            ],
            body,
        );
        assert_eq!((r.status, r.json()["error"].as_str()), (403, Some("tpp_role_missing")), "{}", r.text());
        assert!(r.json()["message"].as_str().unwrap().contains("PISP"));
    }
    // A client can never set the TPP headers itself.
    let r = env.call(
        &env.gw,
        &env.aisp,
        "GET",
        "/accounts/v1/list",
        &[("authorization", &bearer(&aisp_token)), ("x-tollgate-tpp-roles", "ASPSP,PISP")],
        b"",
    );
    assert_eq!(r.json()["headers"]["x-tollgate-tpp-roles"], "AISP");
}

/// Verifies a detached response signature with the key manager's published
/// answer keys.
fn verify_response(gw: &Gateway, signature: &str, body: &[u8]) -> bool {
    let jwks = request(gw.mgmt, "GET", "/oauth2/response-jwks", &[], b"").json();
    let mut parts = signature.split('.');
    let (h, _, sig) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    let header: Value = serde_json::from_slice(&B64.decode(h).unwrap()).unwrap();
    let jwk = jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == header["kid"]).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&serde_json::from_value(jwk.clone()).unwrap()).unwrap();
    let input = format!("{h}.{}", B64.encode(body));
    jsonwebtoken::crypto::verify(sig, input.as_bytes(), &key, jsonwebtoken::Algorithm::ES256).unwrap()
}

#[test]
fn signed_idempotent_payments_replay_without_reaching_the_backend() {
    let env = Env::start(&[]);
    let token = env.token(&env.gw, &env.pisp);
    let auth = bearer(&token);
    let body = br#"{"Data":{"Initiation":{"InstructedAmount":{"Amount":"10.00","Currency":"GBP"}}}}"#;
    let sig = env.tpp_key.sign_detached(body);
    let pay = |key: &str, sig: &str, body: &[u8]| {
        env.call(
            &env.gw,
            &env.pisp,
            "POST",
            "/payments/v1/domestic-payments",
            &[
                ("authorization", &auth),
                ("x-jws-signature", sig),
                ("x-idempotency-key", key),
                ("content-type", "application/json"),
            ],
            body,
        )
    };
    let first = pay("pay-1", &sig, body);
    assert_eq!(first.status, 201, "{}", first.text());
    assert_eq!(env.backend.hits(), 1);
    let seen = first.json();
    assert_eq!(seen["body"], String::from_utf8_lossy(body).as_ref(), "the exact body reached the backend");
    assert_eq!(seen["headers"]["x-tollgate-tpp-organization-id"], "PSDGB-FCA-123456");
    let response_sig = first.header("x-jws-signature").expect("answers are signed").to_string();
    assert!(verify_response(&env.gw, &response_sig, &first.body), "signature over the answer body");
    assert!(!verify_response(&env.gw, &response_sig, b"{}"));

    // The same request again: the stored answer, the backend not called.
    let again = pay("pay-1", &sig, body);
    assert_eq!((again.status, again.body.clone()), (201, first.body.clone()));
    assert_eq!(again.header("x-idempotency-replayed"), Some("true"));
    assert_eq!(again.header("x-jws-signature"), Some(response_sig.as_str()));
    assert!(again.header("x-fapi-interaction-id").is_some());
    assert_eq!(env.backend.hits(), 1, "a replay never reaches the backend");

    // The same key for another request: 400.
    let other = br#"{"Data":{"Initiation":{"InstructedAmount":{"Amount":"99.00","Currency":"GBP"}}}}"#;
    let r = pay("pay-1", &env.tpp_key.sign_detached(other), other);
    assert_eq!((r.status, r.json()["error"].as_str()), (400, Some("invalid_idempotency_key")), "{}", r.text());
    // Keys: missing or too long.
    let r = pay("", &sig, body);
    assert_eq!(r.status, 400);
    let r = pay(&"k".repeat(41), &sig, body);
    assert_eq!(r.status, 400);
    // Signatures: tampered body, another key, missing, not detached.
    let r = pay("pay-2", &sig, other);
    assert_eq!((r.status, r.json()["error"].as_str()), (400, Some("invalid_signature")));
    let r = pay("pay-3", &SigningKey::new("tpp-signing").sign_detached(body), body);
    assert_eq!((r.status, r.json()["error"].as_str()), (400, Some("invalid_signature")));
    let r = pay("pay-4", "", body);
    assert_eq!(r.status, 400);
    let r = pay("pay-5", &sig.replacen("..", ".e30.", 1), body);
    assert_eq!(r.status, 400);
    assert_eq!(env.backend.hits(), 1, "nothing refused reached the backend");
    // A failed signature did not burn its key: the good request with pay-2 goes through.
    assert_eq!(pay("pay-2", &sig, body).status, 201);
    assert_eq!(env.backend.hits(), 2);
}

/// The attack of a signed answer replayed as a token: a TPP posts access-token
/// claims to a signed-answer API whose backend echoes them, and presents
/// `<answer header>.<answer body>.<answer signature>` as a Bearer token.
fn replay_signed_answer_as_token(env: &Env) -> (Resp, String) {
    let claims = json!({"iss": ISSUER, "sub": env.client, "client_id": env.client, "aud": ISSUER,
                        "scope": "accounts payments", "iat": now(), "exp": now() + 600, "jti": "forged"});
    let body = claims.to_string();
    let token = env.token(&env.gw, &env.pisp);
    let answer = env.call(
        &env.gw,
        &env.pisp,
        "POST",
        "/payments/v1/domestic-payments?echo_body=1",
        &[
            ("authorization", &bearer(&token)),
            ("x-jws-signature", &env.tpp_key.sign_detached(body.as_bytes())),
            ("x-idempotency-key", "echo-1"),
            ("content-type", "application/json"),
        ],
        body.as_bytes(),
    );
    assert_eq!(answer.status, 201, "{}", answer.text());
    assert_eq!(answer.body, body.as_bytes(), "the backend echoed the claims");
    let signature = answer.header("x-jws-signature").expect("answers are signed").to_string();
    assert!(verify_response(&env.gw, &signature, &answer.body));
    let mut parts = signature.split('.');
    let (h, _, sig) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    let forged = format!("{h}.{}.{sig}", B64.encode(&answer.body));
    let r = env.call(&env.gw, &env.aisp, "GET", "/accounts/v1/list", &[("authorization", &bearer(&forged))], b"");
    (r, h.to_string())
}

#[test]
fn a_signed_answer_is_never_an_access_token() {
    let env = Env::start(&[]);
    let (r, header) = replay_signed_answer_as_token(&env);
    assert_eq!(r.status, 401, "a signed answer was accepted as a token: {}", r.text());
    assert!(r.header("www-authenticate").is_some_and(|c| c.contains("invalid_token")));
    // Answers have a key of their own, published apart from the token keys.
    let header: Value = serde_json::from_slice(&B64.decode(&header).unwrap()).unwrap();
    assert_eq!(header["typ"], "JOSE");
    let token_keys = request(env.gw.mgmt, "GET", "/oauth2/jwks", &[], b"").json();
    let kids: Vec<&Value> = token_keys["keys"].as_array().unwrap().iter().map(|k| &k["kid"]).collect();
    assert!(!kids.contains(&&header["kid"]), "the answer key {} is not a token key {kids:?}", header["kid"]);
    let discovery = request(env.gw.mgmt, "GET", "/oauth2/.well-known/openid-configuration", &[], b"").json();
    assert_eq!(discovery["response_signing_jwks_uri"], format!("{ISSUER}/response-jwks"));
    let status = env.gw.status();
    assert_ne!(status["builtinKeyManager"]["signingKid"], status["builtinKeyManager"]["responseSigningKid"]);
}

#[test]
fn a_signed_answer_made_with_the_token_key_is_still_no_token() {
    // Only --signing-key-file: answers fall back to the token key, and only
    // the answer's typ and crit tell them apart.
    let key = SigningKey::new("shared");
    let ws_key = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ws_key.path(), &key.pem).unwrap();
    let env = Env::start(&["--signing-key-file", ws_key.path().to_str().unwrap()]);
    let status = env.gw.status();
    assert_eq!(status["builtinKeyManager"]["signingKid"], status["builtinKeyManager"]["responseSigningKid"]);
    let (r, _) = replay_signed_answer_as_token(&env);
    assert_eq!(r.status, 401, "a signed answer was accepted as a token: {}", r.text());
}

#[test]
fn a_client_that_changes_its_keys_is_checked_with_the_new_keys_at_once() {
    let directory = SigningKey::new("directory");
    let keys_dir = tempfile::tempdir().unwrap();
    let ssa_jwks = keys_dir.path().join("ssa-jwks.json");
    std::fs::write(&ssa_jwks, directory.jwks().to_string()).unwrap();
    // Cached for long: only the change itself can make the new keys count.
    let env = Env::start(&["--ssa-jwks", ssa_jwks.to_str().unwrap(), "--key-cache-ttl-seconds", "600"]);
    let (old_key, new_key) = (SigningKey::new("tpp-old"), SigningKey::new("tpp-new"));
    let statement = directory.sign(&json!({"iss": "Test Directory", "iat": now(), "jti": "ssa-keys",
        "software_id": "sw-keys", "software_roles": ["PISP"]}));
    let metadata = |key: &SigningKey| {
        json!({"software_statement": statement, "jwks": key.jwks(), "token_endpoint_auth_method": "private_key_jwt",
               "scope": "payments"})
    };
    let r = request(
        env.gw.mgmt,
        "POST",
        "/oauth2/register",
        &[("content-type", "application/json")],
        metadata(&old_key).to_string().as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let reg = r.json();
    let client = reg["client_id"].as_str().unwrap().to_string();
    let reg_token = reg["registration_access_token"].as_str().unwrap().to_string();
    let r = admin_at(
        env.gw.mgmt,
        "POST",
        "/api/v1/subscriptions",
        json!({"applicationId": reg["application_id"], "api": "bank/payments", "policy": "gold"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let token = |key: &SigningKey, jti: &str| {
        let r = post_form_tls(
            &TlsClient::new(&env.ws.ca.der).with_cert(&env.pisp),
            env.gw.mgmt_tls,
            "/oauth2/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
                ("client_assertion", &assertion(key, &client, ISSUER, 60, jti)),
            ],
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["access_token"].as_str().unwrap().to_string()
    };
    let access = token(&old_key, "k-1");
    let body = br#"{"Data":{"Initiation":{"InstructedAmount":{"Amount":"1.00","Currency":"GBP"}}}}"#;
    let pay = |key: &SigningKey, idem: &str| {
        env.call(
            &env.gw,
            &env.pisp,
            "POST",
            "/payments/v1/domestic-payments",
            &[
                ("authorization", &bearer(&access)),
                ("x-jws-signature", &key.sign_detached(body)),
                ("x-idempotency-key", idem),
                ("content-type", "application/json"),
            ],
            body,
        )
    };
    assert_eq!(pay(&old_key, "keys-1").status, 201);
    // The client replaces its keys (RFC 7592): the old key signs nothing more.
    let mut update = metadata(&new_key);
    update["client_id"] = json!(client);
    let r = request(
        env.gw.mgmt,
        "PUT",
        &format!("/oauth2/register/{client}"),
        &[("authorization", &bearer(&reg_token)), ("content-type", "application/json")],
        update.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = pay(&old_key, "keys-2");
    assert_eq!((r.status, r.json()["error"].as_str()), (400, Some("invalid_signature")), "{}", r.text());
    assert_eq!(pay(&new_key, "keys-3").status, 201);
    token(&new_key, "k-2");
}

#[test]
fn a_duplicate_in_flight_never_makes_a_second_backend_call() {
    let env = Env::start(&[]);
    let token = env.token(&env.gw, &env.pisp);
    let body = br#"{"slow":true}"#;
    let sig = env.tpp_key.sign_detached(body);
    let send = || {
        env.call(
            &env.gw,
            &env.pisp,
            "POST",
            "/payments/v1/domestic-payments?delay_ms=800",
            &[("authorization", &bearer(&token)), ("x-jws-signature", &sig), ("x-idempotency-key", "slow-1")],
            body,
        )
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(send);
        std::thread::sleep(Duration::from_millis(150));
        let b = s.spawn(send);
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(env.backend.hits(), 1);
    assert_eq!(a.status, 201);
    // The repeat waited for the first (or was told to try again), never a second call.
    assert!(b.status == 201 && b.body == a.body || b.status == 409, "{} {}", b.status, b.text());
}

#[test]
fn idempotency_keys_hold_across_two_gateways_on_one_postgresql() {
    let pg = Postgres::start();
    let url = pg.url();
    let ws_key = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ws_key.path(), SigningKey::new("bank").pem).unwrap();
    let flags = ["--database-url", url.as_str(), "--signing-key-file", ws_key.path().to_str().unwrap()];
    let env = Env::start(&flags);
    // The second gateway does not run the key manager; given the signing
    // key it still signs answers (DistributedGateways gateway groups).
    let b = start_gateway(&env.ws, &[&flags[..], &["--roles", "gateway,store"]].concat());
    assert_eq!(request(b.mgmt, "GET", "/oauth2/jwks", &[], b"").status, 404, "no key-manager endpoints");
    let body = br#"{"Data":{"Amount":"5.00"}}"#;
    let sig = env.tpp_key.sign_detached(body);
    let token = env.token(&env.gw, &env.pisp);
    let pay = |gw: &Gateway, key: &str| {
        env.call(
            gw,
            &env.pisp,
            "POST",
            "/payments/v1/domestic-payments",
            &[("authorization", &bearer(&token)), ("x-jws-signature", &sig), ("x-idempotency-key", key)],
            body,
        )
    };
    let first = pay(&env.gw, "shared-1");
    assert_eq!(first.status, 201, "{}", first.text());
    let second = pay(&b, "shared-1");
    assert_eq!((second.status, second.header("x-idempotency-replayed")), (201, Some("true")), "{}", second.text());
    assert_eq!(second.body, first.body);
    assert_eq!(env.backend.hits(), 1, "the other gateway replayed instead of calling the backend");
    let fresh = pay(&b, "shared-2");
    assert_eq!(fresh.status, 201, "{}", fresh.text());
    assert!(
        verify_response(&env.gw, fresh.header("x-jws-signature").unwrap(), &fresh.body),
        "signed by the gateway-only process"
    );
    assert_eq!(env.backend.hits(), 2);
}

#[test]
fn idempotency_on_a_proxied_api_stores_the_streamed_answer() {
    let env = Env::start(&[]);
    let token = env.token(&env.gw, &env.aisp);
    let send = |key: &str, body: &[u8]| {
        env.call(
            &env.gw,
            &env.aisp,
            "POST",
            "/transfers/v1/standing-orders",
            &[("authorization", &bearer(&token)), ("x-idempotency-key", key), ("content-type", "application/json")],
            body,
        )
    };
    let first = send("t-1", b"{\"a\":1}");
    assert_eq!(first.status, 201, "{}", first.text());
    assert!(first.header("x-jws-signature").is_none(), "not a signing API");
    let again = send("t-1", b"{\"a\":1}");
    assert_eq!((again.status, again.header("x-idempotency-replayed")), (201, Some("true")));
    assert_eq!(again.body, first.body);
    assert_eq!(again.header("x-backend"), Some("yes"), "the backend's headers are kept");
    assert_eq!(env.backend.hits(), 1);
    assert_eq!(send("t-1", b"{\"a\":2}").status, 400, "another body");
    // Over 64 KiB: refused before the backend.
    assert_eq!(send("t-2", &vec![b' '; 70 * 1024]).status, 413);
    assert_eq!(env.backend.hits(), 1);
}
