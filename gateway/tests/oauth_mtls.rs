//! OAuth2 access tokens from a KeyManager and mutual TLS, end to end with
//! real certificates (a test CA made here), a real JWKS endpoint and the
//! gateway process: token checks, scopes, certificate-bound tokens, client
//! certificates forwarded by a trusted proxy, and the FAPI TLS profile.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use rustls::pki_types::CertificateDer;
use serde_json::{Value, json};
use support::pki::*;
use support::*;

static TLS12: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS12];
static TLS13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];

const ISSUER: &str = "https://idp.bank.test/oauth2";
const AUDIENCE: &str = "https://api.bank.test";

// ---------------------------------------------------------------- PKI

// ---------------------------------------------------------------- tokens

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn claims(client: &str, scope: &str) -> Value {
    json!({"iss": ISSUER, "sub": client, "client_id": client, "aud": AUDIENCE, "scope": scope,
           "iat": now(), "exp": now() + 300, "jti": format!("{}", now())})
}

fn with(mut c: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

// ---------------------------------------------------------------- JWKS server

/// Serves a JWK Set at /jwks and counts the fetches.
struct JwksServer {
    addr: SocketAddr,
    doc: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    fn start(keys: &[&SigningKey]) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let doc = Arc::new(Mutex::new(String::new()));
        let fetches = Arc::new(AtomicUsize::new(0));
        let server = JwksServer { addr, doc: doc.clone(), fetches: fetches.clone() };
        server.publish(keys);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                // Read the request head (up to the empty line).
                let mut reader = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) && line != "\r\n" {
                    line.clear();
                }
                fetches.fetch_add(1, Ordering::SeqCst);
                let body = doc.lock().unwrap().clone();
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        server
    }

    fn publish(&self, keys: &[&SigningKey]) {
        *self.doc.lock().unwrap() = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string();
    }
}

// ---------------------------------------------------------------- TLS client

/// GET over plain HTTP from a chosen loopback source address.
fn get_from(source: &str, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut s = connect_from(source, addr);
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    exchange(&mut s, "GET", path, headers, b"").unwrap()
}

// ---------------------------------------------------------------- fixture

struct Fixture {
    _tmp: tempfile::TempDir,
    _backend: Proc,
    gw: Gateway,
    /// The CA of the gateway's certificate and of the TPPs'.
    ca: CertificateDer<'static>,
    tpp: Leaf,
    other_tpp: Leaf,
    foreign: Leaf,
    key: SigningKey,
    jwks: JwksServer,
}

fn admin(gw: &Gateway, token: &str, path: &str, body: Value) -> Resp {
    let auth = format!("Bearer {token}");
    let body = body.to_string();
    request(gw.mgmt, "POST", path, &[("authorization", &auth), ("content-type", "application/json")], body.as_bytes())
}

impl Fixture {
    fn start(extra: &[&str]) -> Fixture {
        let Workspace { tmp, dir, pki, ca, server } = Workspace::new();
        let rogue = Ca::new(&pki, "rogue");
        let tpp = ca.leaf(&pki, "tpp-one", false);
        let other_tpp = ca.leaf(&pki, "tpp-two", false);
        let foreign = rogue.leaf(&pki, "tpp-rogue", false);

        let key = SigningKey::new("k1");
        let jwks = JwksServer::start(&[&key]);
        let (backend, addr) = echo("bank");
        let backend_url = format!("http://{addr}");
        std::fs::write(
            dir.join("idp.yaml"),
            format!(
                "apiVersion: tollgate.dev/v1alpha1\nkind: KeyManager\nmetadata: {{name: bank-idp, namespace: bank}}\n\
                 spec:\n  apiManagerRef: {{name: local}}\n  issuer: {ISSUER}\n  jwksUri: http://{}/jwks\n  audiences: [{AUDIENCE}]\n",
                jwks.addr
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("gold.yaml"),
            policy("gold", "  limit: {requests: 1000, per: 1m}\n  keyBy: Consumer\n"),
        )
        .unwrap();
        std::fs::write(
            dir.join("accounts.yaml"),
            api(
                "accounts",
                "/accounts",
                "v1",
                &backend_url,
                "  security: {oauth2: {keyManagers: [bank-idp]}}\n  operations:\n  \
                 - {method: GET, path: '/accounts/{id}', scopes: [accounts]}\n  \
                 - {method: GET, path: /balances, scopes: [accounts, balances]}\n  - {method: GET, path: /open}\n",
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("payments.yaml"),
            api("payments", "/payments", "v1", &backend_url, "  security: {oauth2: {}, mtls: {required: true}}\n"),
        )
        .unwrap();
        let token = "admin-secret-token";
        let token_file = tmp.path().join("admin-token");
        std::fs::write(&token_file, token).unwrap();
        let mut flags = mtls_gateway_flags(&server, &ca, &token_file);
        flags.extend(["--access-log", "false"].map(String::from));
        flags.extend(extra.iter().map(|e| e.to_string()));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let gw = gateway(&dir, &flags);
        // The issuer's keys are fetched off the request path: wait for them,
        // so no first request depends on how fast that fetch is.
        eventually(Duration::from_secs(10), || {
            gw.status()["keyManagers"].as_array().is_some_and(|kms| {
                kms.iter().any(|k| k["id"] == "bank/bank-idp" && k["keys"]["keys"].as_u64() >= Some(1))
            })
        });
        // tpp-1 belongs to an application subscribed to both APIs; tpp-2's
        // application to none (its KeyManager named by namespace/name).
        for (name, km, client, apis) in [
            ("tpp-one", "bank-idp", "tpp-1", &["bank/accounts", "bank/payments"][..]),
            ("tpp-two", "bank/bank-idp", "tpp-2", &[][..]),
        ] {
            let created = admin(&gw, token, "/api/v1/applications", json!({"name": name}));
            let app = created.json()["id"].as_str().unwrap().to_string();
            let mapped = admin(
                &gw,
                token,
                &format!("/api/v1/applications/{app}/oauth-clients"),
                json!({"keyManager": km, "clientId": client}),
            );
            assert_eq!(mapped.status, 201, "{}", mapped.text());
            for api in apis {
                let body = json!({"applicationId": app, "api": api, "policy": "gold"});
                let sub = admin(&gw, token, "/api/v1/subscriptions", body);
                assert_eq!(sub.status, 201, "{}", sub.text());
            }
        }
        Fixture { _tmp: tmp, _backend: backend, gw, ca: ca.der.clone(), tpp, other_tpp, foreign, key, jwks }
    }

    fn http(&self, path: &str, token: &str) -> Resp {
        let auth = format!("Bearer {token}");
        request(self.gw.http, "GET", path, &[("authorization", &auth)], b"")
    }
}

fn challenge(r: &Resp) -> String {
    r.header("www-authenticate").unwrap_or_default().to_string()
}

fn backend_headers(r: &Resp) -> Value {
    r.json()["headers"].clone()
}

// ---------------------------------------------------------------- tests

#[test]
fn valid_tokens_pass_with_the_verified_identity_and_bad_ones_get_401() {
    let f = Fixture::start(&[]);
    let good = f.key.sign(&claims("tpp-1", "accounts"));
    let r = f.http("/accounts/v1/accounts/42", &good);
    assert_eq!(r.status, 200, "{}", r.text());
    let h = backend_headers(&r);
    assert!(h.get("authorization").is_none(), "the token is not forwarded: {h}");
    assert_eq!(h["x-tollgate-client-id"], "tpp-1");
    assert!(h["x-tollgate-application"].as_str().is_some_and(|a| !a.is_empty()));
    // A client cannot claim an identity of its own.
    let r = request(
        f.gw.http,
        "GET",
        "/accounts/v1/open",
        &[("authorization", &format!("Bearer {good}")), ("x-tollgate-application", "someone-else")],
        b"",
    );
    assert_ne!(backend_headers(&r)["x-tollgate-application"], "someone-else");

    let refused = |token: String, why: &str| {
        let r = f.http("/accounts/v1/accounts/42", &token);
        assert_eq!(r.status, 401, "{why}: {}", r.text());
        assert!(challenge(&r).starts_with("Bearer error=\"invalid_token\""), "{why}: {}", challenge(&r));
        assert_eq!(r.json()["error"], "invalid_token", "{why}");
    };
    refused(f.key.sign(&with(claims("tpp-1", "accounts"), json!({"exp": now() - 120}))), "expired");
    refused(f.key.sign(&with(claims("tpp-1", "accounts"), json!({"iss": "https://evil.test"}))), "wrong issuer");
    refused(f.key.sign(&with(claims("tpp-1", "accounts"), json!({"aud": "https://other.test"}))), "wrong audience");
    let body = B64.encode(claims("tpp-1", "accounts").to_string());
    refused(format!("{}.{body}.", B64.encode(r#"{"alg":"none","kid":"k1"}"#)), "alg none");
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("k1".into());
    let public = f.key.jwk.to_string();
    refused(encode(&hs, &claims("tpp-1", "accounts"), &EncodingKey::from_secret(public.as_bytes())).unwrap(), "HS256");
    let parts: Vec<&str> = good.split('.').collect();
    let forged = B64.encode(claims("tpp-2", "accounts balances").to_string());
    refused(format!("{}.{forged}.{}", parts[0], parts[2]), "tampered claims");
    refused("garbage".into(), "malformed");
    // Two Authorization headers: which one would the backend read?
    let two = [("authorization", format!("Bearer {good}")), ("authorization", "Bearer forged".to_string())];
    let two: Vec<(&str, &str)> = two.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = request(f.gw.http, "GET", "/accounts/v1/accounts/42", &two, b"");
    assert_eq!(r.status, 400, "{}", r.text());
    let r = request(f.gw.http, "GET", "/accounts/v1/accounts/42", &[], b"");
    assert_eq!(r.status, 401, "no token");
    assert!(challenge(&r).starts_with("Bearer"));

    // A valid token of a client whose application is not subscribed: 403.
    let r = f.http("/accounts/v1/accounts/42", &f.key.sign(&claims("tpp-2", "accounts")));
    assert_eq!(r.status, 403, "{}", r.text());
    // A client mapped to no application at all: 403.
    let r = f.http("/accounts/v1/accounts/42", &f.key.sign(&claims("tpp-9", "accounts")));
    assert_eq!(r.status, 403, "{}", r.text());
    let m = f.gw.metrics();
    assert!(m.contains("tollgate_oauth_token_rejections_total{result=\"expired\"} 1"), "{m}");
    assert!(m.contains("tollgate_oauth_token_rejections_total{result=\"bad_signature\"} 1"), "{m}");
}

#[test]
fn every_scope_an_operation_lists_is_required() {
    let f = Fixture::start(&[]);
    let accounts_only = f.key.sign(&claims("tpp-1", "accounts"));
    let both = f.key.sign(&claims("tpp-1", "accounts balances"));
    let none = f.key.sign(&claims("tpp-1", "openid"));
    assert_eq!(f.http("/accounts/v1/accounts/1", &accounts_only).status, 200);
    let r = f.http("/accounts/v1/accounts/1", &none);
    assert_eq!(r.status, 403);
    assert_eq!(challenge(&r), "Bearer error=\"insufficient_scope\", scope=\"accounts\"");
    let r = f.http("/accounts/v1/balances", &accounts_only);
    assert_eq!(r.status, 403, "two-scope operation, one scope held");
    assert_eq!(challenge(&r), "Bearer error=\"insufficient_scope\", scope=\"accounts balances\"");
    assert_eq!(f.http("/accounts/v1/balances", &both).status, 200);
    assert_eq!(f.http("/accounts/v1/open", &none).status, 200, "an operation without scopes");
}

#[test]
fn certificate_bound_tokens_over_mutual_tls() {
    let f = Fixture::start(&[]);
    let tls = TlsClient::new(&f.ca).with_cert(&f.tpp);
    let bound = f.key.sign(&with(claims("tpp-1", "accounts"), json!({"cnf": {"x5t#S256": f.tpp.x5t()}})));
    let unbound = f.key.sign(&claims("tpp-1", "accounts"));
    let bound_to_other =
        f.key.sign(&with(claims("tpp-1", "accounts"), json!({"cnf": {"x5t#S256": f.other_tpp.x5t()}})));
    let auth = |t: &str| format!("Bearer {t}");

    let r = tls.get(f.gw.https, "/payments/v1/x", &[("authorization", &auth(&bound))]);
    assert_eq!(r.status, 200, "bound token with its certificate: {}", r.text());
    let r = tls.get(f.gw.https, "/payments/v1/x", &[("authorization", &auth(&unbound))]);
    assert_eq!(r.status, 401, "mtls.required needs a bound token: {}", r.text());
    let r = tls.get(f.gw.https, "/payments/v1/x", &[("authorization", &auth(&bound_to_other))]);
    assert_eq!(r.status, 401, "bound to another certificate: {}", r.text());
    // Without a client certificate at all.
    let anonymous = TlsClient::new(&f.ca);
    let r = anonymous.get(f.gw.https, "/payments/v1/x", &[("authorization", &auth(&bound))]);
    assert_eq!(r.status, 401, "{}", r.text());
    // A bound token without TLS is refused on any API, also without mtls.required.
    assert_eq!(f.http("/accounts/v1/accounts/1", &bound).status, 401);
    let r = tls.get(f.gw.https, "/accounts/v1/accounts/1", &[("authorization", &auth(&bound))]);
    assert_eq!(r.status, 200, "{}", r.text());
    // A certificate from a CA the gateway does not trust fails the handshake.
    let rogue = TlsClient::new(&f.ca).with_cert(&f.foreign);
    let refused = rogue.connect(f.gw.https).and_then(|mut s| exchange(&mut s, "GET", "/payments/v1/x", &[], b""));
    assert!(refused.is_err(), "an untrusted client CA must not complete a request: {:?}", refused.map(|r| r.status));
    // The management TLS listener asks for the same certificates.
    assert!(rogue.connect(f.gw.mgmt_tls).and_then(|mut s| exchange(&mut s, "GET", "/healthz", &[], b"")).is_err());
    assert_eq!(tls.get(f.gw.mgmt_tls, "/healthz", &[]).status, 200);
}

#[test]
fn a_certificate_forwarded_by_a_trusted_proxy_counts_and_from_anyone_else_is_dropped() {
    let f = Fixture::start(&["--trusted-proxies", "127.0.0.2/32", "--client-cert-header", "X-SSL-Client-Cert"]);
    let escaped: String =
        percent_encoding::utf8_percent_encode(&f.tpp.pem, percent_encoding::NON_ALPHANUMERIC).to_string();
    let bound = f.key.sign(&with(claims("tpp-1", "accounts"), json!({"cnf": {"x5t#S256": f.tpp.x5t()}})));
    let auth = format!("Bearer {bound}");
    let headers = [("authorization", auth.as_str()), ("x-ssl-client-cert", escaped.as_str())];
    let r = get_from("127.0.0.2", f.gw.http, "/payments/v1/x", &headers);
    assert_eq!(r.status, 200, "from the trusted proxy: {}", r.text());
    assert!(backend_headers(&r).get("x-ssl-client-cert").is_none(), "the header is not forwarded");
    let r = get_from("127.0.0.1", f.gw.http, "/payments/v1/x", &headers);
    assert_eq!(r.status, 401, "from an untrusted peer the header is ignored: {}", r.text());
    let r = get_from(
        "127.0.0.1",
        f.gw.http,
        "/accounts/v1/open",
        &[
            ("x-ssl-client-cert", escaped.as_str()),
            ("authorization", &format!("Bearer {}", f.key.sign(&claims("tpp-1", "")))),
        ],
    );
    assert_eq!(r.status, 200);
    assert!(backend_headers(&r).get("x-ssl-client-cert").is_none(), "and removed before forwarding");
    // A certificate the client CAs did not sign, even from the proxy.
    let rogue: String =
        percent_encoding::utf8_percent_encode(&f.foreign.pem, percent_encoding::NON_ALPHANUMERIC).to_string();
    let bound_rogue = f.key.sign(&with(claims("tpp-1", "accounts"), json!({"cnf": {"x5t#S256": f.foreign.x5t()}})));
    let auth = format!("Bearer {bound_rogue}");
    let r =
        get_from("127.0.0.2", f.gw.http, "/payments/v1/x", &[("authorization", &auth), ("x-ssl-client-cert", &rogue)]);
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(f.gw.metrics().contains("tollgate_forwarded_client_cert_rejections_total{result=\"unverified\"} 1"));
    // A trusted proxy speaking mutual TLS itself: its own certificate never
    // stands for the client behind it.
    let mut proxy = TlsClient::new(&f.ca).with_cert(&f.tpp);
    proxy.source = Some("127.0.0.2");
    let auth = format!("Bearer {bound}");
    let r = proxy.get(f.gw.https, "/payments/v1/x", &[("authorization", &auth)]);
    assert_eq!(r.status, 401, "the proxy's handshake certificate is not the client's: {}", r.text());
    let r = proxy.get(f.gw.https, "/payments/v1/x", &[("authorization", &auth), ("x-ssl-client-cert", &escaped)]);
    assert_eq!(r.status, 200, "the forwarded one is: {}", r.text());
}

#[test]
fn the_fapi_profile_refuses_old_protocols_and_weak_suites() {
    let f = Fixture::start(&["--tls-profile", "fapi"]);
    let mut client = TlsClient::new(&f.ca);
    client.versions = &TLS12;
    client.suites = Some(vec![
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        rustls::CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ]);
    assert!(client.connect(f.gw.https).is_err(), "TLS 1.2 with ChaCha20 is not a FAPI suite");
    client.suites = Some(vec![rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]);
    let tls = client.connect(f.gw.https).expect("TLS 1.2 ECDHE-ECDSA-AES128-GCM is");
    assert_eq!(
        tls.conn.negotiated_cipher_suite().unwrap().suite(),
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    );
    let mut t13 = TlsClient::new(&f.ca);
    t13.versions = &TLS13;
    assert!(t13.connect(f.gw.https).is_ok(), "TLS 1.3");
    // TLS 1.1 (a client that offers nothing newer) is refused by the server.
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &f.gw.https.to_string(), "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl is installed (make deps)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // The server answers the TLS 1.1 hello with an alert; no session is made.
    assert!(text.contains("SSL alert number"), "{text}");
    assert!(text.contains("Cipher is (NONE)"), "no TLS 1.1 session: {text}");
    // The default profile takes TLS 1.2 ChaCha20 (so the refusal above is the profile's doing).
    let plain = Fixture::start(&[]);
    let mut chacha = TlsClient::new(&plain.ca);
    chacha.versions = &TLS12;
    chacha.suites = Some(vec![rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256]);
    assert!(chacha.connect(plain.gw.https).is_ok());
}

#[test]
fn a_rotated_issuer_key_is_fetched_when_a_token_names_it() {
    let f = Fixture::start(&[]);
    let first = f.key.sign(&claims("tpp-1", "accounts"));
    assert_eq!(f.http("/accounts/v1/accounts/1", &first).status, 200);
    let fetched = f.jwks.fetches.load(Ordering::SeqCst);
    assert!(fetched >= 1);
    // A token signed with a key the issuer has not published yet.
    let next = SigningKey::new("k2");
    let rotated = next.sign(&claims("tpp-1", "accounts"));
    let r = f.http("/accounts/v1/accounts/1", &rotated);
    assert_eq!(r.status, 401, "unknown key: {}", r.text());
    // Made-up kids do not make the gateway hammer the issuer.
    for i in 0..20 {
        let _ =
            f.http("/accounts/v1/accounts/1", &SigningKey::new(&format!("junk{i}")).sign(&claims("tpp-1", "accounts")));
    }
    assert!(f.jwks.fetches.load(Ordering::SeqCst) <= fetched + 1, "fetches: {}", f.jwks.fetches.load(Ordering::SeqCst));
    // The issuer publishes the new key; after the 30 s guard the next token
    // with its kid makes the gateway fetch the set again, and it passes. (A
    // request waits at most 2 s for that fetch; on a loaded machine it may
    // answer 401 before the fetch is done, so ask until it passes.)
    f.jwks.publish(&[&f.key, &next]);
    std::thread::sleep(Duration::from_secs(31));
    eventually(Duration::from_secs(30), || f.http("/accounts/v1/accounts/1", &rotated).status == 200);
    assert_eq!(f.http("/accounts/v1/accounts/1", &first).status, 200, "the old key still works");
    let status = f.gw.status();
    let km = &status["keyManagers"][0];
    assert_eq!(km["id"], "bank/bank-idp");
    assert_eq!(km["keys"]["keys"], 2);
}
