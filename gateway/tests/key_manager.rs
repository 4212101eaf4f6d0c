//! The built-in key manager end to end, with real certificates (a test CA
//! made here) and the gateway process: discovery and JWKS, each client
//! authentication method and its failures, scopes, token claims and
//! certificate binding, introspection and revocation (and the gateway
//! refusing a revoked token), dynamic client registration, key rotation
//! across a restart, and two gateways sharing one PostgreSQL database.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use support::oauth::*;
use support::pki::*;
use support::postgres::Postgres;
use support::*;

const ISSUER: &str = "https://as.bank.test/oauth2";

struct Env {
    tmp: tempfile::TempDir,
    dir: PathBuf,
    ca: Ca,
    tpp: Leaf,
    other: Leaf,
    server: Leaf,
    gw: Gateway,
    /// The TPP's application (subscribed to both APIs).
    app: String,
    _backend: Proc,
}

impl Env {
    fn start(extra: &[&str]) -> Env {
        let Workspace { tmp, dir, pki, ca, server } = Workspace::new();
        let tpp = ca.leaf(&pki, "tpp-one", false);
        let other = ca.leaf(&pki, "tpp-two", false);
        let (backend, addr) = echo("bank");
        let url = format!("http://{addr}");
        std::fs::write(dir.join("gold.yaml"), policy("gold", "  limit: {requests: 1000, per: 1m}\n")).unwrap();
        std::fs::write(
            dir.join("accounts.yaml"),
            api(
                "accounts",
                "/accounts",
                "v1",
                &url,
                "  security: {oauth2: {}}\n  operations:\n  - {method: GET, path: '/{id}', scopes: [accounts]}\n",
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
                "  security: {oauth2: {keyManagers: [builtin]}, mtls: {required: true}}\n",
            ),
        )
        .unwrap();
        std::fs::write(tmp.path().join("admin-token"), ADMIN).unwrap();
        let gw = Self::gateway(&tmp, &dir, &server, &ca, extra);
        let mut env = Env { tmp, dir, ca, tpp, other, server, gw, app: String::new(), _backend: backend };
        env.app = env.application("tpp-one", &["bank/accounts", "bank/payments"]);
        env
    }

    fn gateway(tmp: &tempfile::TempDir, dir: &Path, server: &Leaf, ca: &Ca, extra: &[&str]) -> Gateway {
        let mut flags = mtls_gateway_flags(server, ca, &tmp.path().join("admin-token"));
        flags.extend(["--issuer", ISSUER, "--access-log", "false"].map(String::from));
        flags.extend(extra.iter().map(|e| e.to_string()));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        gateway(dir, &flags)
    }

    fn admin(&self, method: &str, path: &str, body: Value) -> Resp {
        admin_at(self.gw.mgmt, method, path, body)
    }

    fn application(&self, name: &str, apis: &[&str]) -> String {
        let r = self.admin("POST", "/api/v1/applications", json!({"name": name}));
        assert_eq!(r.status, 201, "{}", r.text());
        let id = r.json()["id"].as_str().unwrap().to_string();
        for a in apis {
            let r =
                self.admin("POST", "/api/v1/subscriptions", json!({"applicationId": id, "api": a, "policy": "gold"}));
            assert_eq!(r.status, 201, "{}", r.text());
        }
        id
    }

    /// A built-in client of `app`; its clientId (and secret).
    fn client(&self, app: &str, body: Value) -> (String, Option<String>) {
        let r = self.admin("POST", &format!("/api/v1/applications/{app}/oauth-clients"), body);
        assert_eq!(r.status, 201, "{}", r.text());
        let v = r.json();
        (v["clientId"].as_str().unwrap().to_string(), v["clientSecret"].as_str().map(str::to_string))
    }

    fn tls(&self) -> TlsClient {
        TlsClient::new(&self.ca.der)
    }
}

#[test]
fn discovery_and_jwks_publish_the_issuer_endpoints_and_public_keys_only() {
    let env = Env::start(&[]);
    for path in ["/oauth2/.well-known/openid-configuration", "/.well-known/openid-configuration"] {
        let r = request(env.gw.mgmt, "GET", path, &[], b"");
        assert_eq!(r.status, 200, "{path}");
        let d = r.json();
        assert_eq!(d["issuer"], ISSUER);
        assert_eq!(d["token_endpoint"], format!("{ISSUER}/token"));
        assert_eq!(d["jwks_uri"], format!("{ISSUER}/jwks"));
        assert_eq!(d["registration_endpoint"], format!("{ISSUER}/register"));
        assert_eq!(d["tls_client_certificate_bound_access_tokens"], true);
        assert_eq!(d["mtls_endpoint_aliases"]["token_endpoint"], format!("{ISSUER}/token"));
        let methods: Vec<&str> = d["token_endpoint_auth_methods_supported"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap())
            .collect();
        assert!(methods.contains(&"private_key_jwt") && methods.contains(&"tls_client_auth"), "{methods:?}");
        assert!(d["token_endpoint_auth_signing_alg_values_supported"].as_array().unwrap().contains(&json!("PS256")));
    }
    let r = request(env.gw.mgmt, "GET", "/oauth2/jwks", &[], b"");
    assert_eq!(r.status, 200);
    let keys = r.json()["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 1);
    assert!(keys[0]["kid"].as_str().is_some_and(|k| k.len() == 43), "RFC 7638 thumbprint: {}", keys[0]);
    assert!(keys[0].get("d").is_none(), "no private part");
    assert_eq!(env.gw.status()["builtinKeyManager"]["issuer"], ISSUER);
}

#[test]
fn private_key_jwt_issues_scoped_tokens_the_gateway_accepts_and_refuses_bad_assertions() {
    let env = Env::start(&[]);
    let key = SigningKey::new("tpp-key");
    let (client, _) = env.client(
        &env.app,
        json!({"tokenEndpointAuthMethod": "private_key_jwt", "jwks": key.jwks(), "scopes": ["accounts", "payments"]}),
    );
    let aud = format!("{ISSUER}/token");
    let mgmt = env.gw.mgmt;

    let r = token_with(mgmt, &assertion(&key, &client, &aud, 120, "a-1"), Some("accounts"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let t = r.json();
    assert_eq!(
        (t["token_type"].as_str(), t["scope"].as_str(), t["expires_in"].as_u64()),
        (Some("Bearer"), Some("accounts"), Some(3600))
    );
    let access = t["access_token"].as_str().unwrap().to_string();
    let (h, c) = jwt_parts(&access);
    let jwks = request(mgmt, "GET", "/oauth2/jwks", &[], b"").json();
    assert_eq!(h["kid"], jwks["keys"][0]["kid"]);
    assert_eq!(h["alg"], "ES256");
    assert_eq!(
        (c["iss"].as_str(), c["sub"].as_str(), c["client_id"].as_str()),
        (Some(ISSUER), Some(client.as_str()), Some(client.as_str()))
    );
    assert_eq!(c["aud"], ISSUER);
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 3600);
    assert!(c["jti"].as_str().is_some_and(|j| !j.is_empty()));
    assert!(c.get("cnf").is_none(), "no certificate on the plain listener, no binding");

    // The gateway takes the token: the client's application, subscription and scope.
    let r = request(env.gw.http, "GET", "/accounts/v1/list", &[("authorization", &bearer(&access))], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    // Asked for more than the client may have: refused, never granted.
    let r = token_with(mgmt, &assertion(&key, &client, &aud, 120, "a-2"), Some("accounts admin"));
    assert_eq!((r.status, error_of(&r).as_str()), (400, "invalid_scope"));
    // A token with the scope the operation does not list gets 403.
    let r = token_with(mgmt, &assertion(&key, &client, ISSUER, 120, "a-3"), Some("payments"));
    assert_eq!(r.status, 200, "aud = the issuer is accepted too: {}", r.text());
    let payments_only = r.json()["access_token"].as_str().unwrap().to_string();
    let r = request(env.gw.http, "GET", "/accounts/v1/list", &[("authorization", &bearer(&payments_only))], b"");
    assert_eq!(r.status, 403);

    // Failures, each 401 invalid_client.
    let stranger = SigningKey::new("tpp-key");
    let cases = [
        ("replayed jti", assertion(&key, &client, &aud, 120, "a-1")),
        ("expired", assertion(&key, &client, &aud, -120, "a-4")),
        ("wrong audience", assertion(&key, &client, "https://elsewhere.test/token", 120, "a-5")),
        ("wrong key", assertion(&stranger, &client, &aud, 120, "a-6")),
        ("unknown client", assertion(&key, "no-such-client", &aud, 120, "a-7")),
        ("lives too long", assertion(&key, &client, &aud, 3600, "a-8")),
        ("no jti", key.sign(&json!({"iss": client, "sub": client, "aud": aud, "exp": now() + 60}))),
        ("sub differs", key.sign(&json!({"iss": client, "sub": "x", "aud": aud, "exp": now() + 60, "jti": "a-9"}))),
    ];
    for (what, a) in cases {
        let r = token_with(mgmt, &a, None);
        assert_eq!((r.status, error_of(&r).as_str()), (401, "invalid_client"), "{what}: {}", r.text());
    }
    // Times written as non-integers (RFC 7519 NumericDate) are read as
    // times, not as 0: the jti is kept until the assertion expires, and the
    // lifetime rule holds.
    let fractional = |exp: f64, jti: &str| {
        key.sign(&json!({"iss": client, "sub": client, "aud": aud, "iat": now(), "exp": exp, "jti": jti}))
    };
    let once = fractional(now() as f64 + 60.5, "f-1");
    assert_eq!(token_with(mgmt, &once, None).status, 200);
    let r = token_with(mgmt, &once, None);
    assert_eq!((r.status, error_of(&r).as_str()), (401, "invalid_client"), "replayed: {}", r.text());
    assert!(r.text().contains("replayed"), "{}", r.text());
    let r = token_with(mgmt, &fractional(now() as f64 + 86_400.5, "f-2"), None);
    assert_eq!((r.status, error_of(&r).as_str()), (401, "invalid_client"), "a day ahead: {}", r.text());
    assert!(r.text().contains("lives too long"), "{}", r.text());
    let text_exp =
        key.sign(&json!({"iss": client, "sub": client, "aud": aud, "exp": (now() + 60).to_string(), "jti": "f-3"}));
    assert_eq!(token_with(mgmt, &text_exp, None).status, 401, "exp as a string");
    // A JWT of another kind (an access token's typ) is no assertion.
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    h.kid = Some(key.kid.clone());
    h.typ = Some("at+jwt".into());
    let typed = jsonwebtoken::encode(
        &h,
        &json!({"iss": client, "sub": client, "aud": aud, "exp": now() + 60, "jti": "f-4"}),
        &key.key,
    )
    .unwrap();
    assert_eq!(token_with(mgmt, &typed, None).status, 401, "typ at+jwt");

    // A forged assertion burned no jti: the real one with the same jti still works.
    let r = token_with(mgmt, &assertion(&key, &client, &aud, 120, "a-6"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["scope"], "accounts payments", "no scope asked: every scope of the client");

    // Grant and request shape errors.
    let r = post_form(mgmt, "/oauth2/token", &[("grant_type", "password")], &[]);
    assert_eq!((r.status, error_of(&r).as_str()), (400, "unsupported_grant_type"));
    let r = post_form(mgmt, "/oauth2/token", &[("scope", "accounts")], &[]);
    assert_eq!((r.status, error_of(&r).as_str()), (400, "invalid_request"));
    let r = post_form(mgmt, "/oauth2/token", &[("grant_type", "client_credentials")], &[]);
    assert_eq!((r.status, error_of(&r).as_str()), (401, "invalid_client"));
    assert!(env.gw.metrics().contains("tollgate_oauth_token_requests_total{result=\"invalid_client\"}"));
}

#[test]
fn tls_client_auth_matches_the_subject_dn_and_binds_the_token_to_the_certificate() {
    let env = Env::start(&[]);
    // Other order, spacing and case than the certificate's subject.
    let (client, _) = env.client(
        &env.app,
        json!({"tokenEndpointAuthMethod": "tls_client_auth", "tlsClientAuthSubjectDn": "o=test tpp ltd ,  CN=TPP-ONE", "scopes": ["payments"]}),
    );
    let params = [("grant_type", "client_credentials"), ("client_id", client.as_str())];
    let r = post_form_tls(&env.tls().with_cert(&env.tpp), env.gw.mgmt_tls, "/oauth2/token", &params);
    assert_eq!(r.status, 200, "{}", r.text());
    let access = r.json()["access_token"].as_str().unwrap().to_string();
    let (_, c) = jwt_parts(&access);
    assert_eq!(c["cnf"]["x5t#S256"], env.tpp.x5t());

    // The bound token works with its certificate on an mtls.required API, not with another.
    let auth = bearer(&access);
    let r = env.tls().with_cert(&env.tpp).get(env.gw.https, "/payments/v1/pay", &[("authorization", &auth)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = env.tls().with_cert(&env.other).get(env.gw.https, "/payments/v1/pay", &[("authorization", &auth)]);
    assert_eq!(r.status, 401);

    // Another certificate of the same CA, or none: invalid_client.
    let r = post_form_tls(&env.tls().with_cert(&env.other), env.gw.mgmt_tls, "/oauth2/token", &params);
    assert_eq!((r.status, error_of(&r).as_str()), (401, "invalid_client"), "{}", r.text());
    let r = post_form_tls(&env.tls(), env.gw.mgmt_tls, "/oauth2/token", &params);
    assert_eq!((r.status, error_of(&r).as_str()), (401, "invalid_client"));
    let r = post_form(env.gw.mgmt, "/oauth2/token", &params, &[]);
    assert_eq!((r.status, error_of(&r).as_str()), (401, "invalid_client"), "the plain listener has no certificate");
    // A private_key_jwt client's token is bound too when it came with a certificate.
    let key = SigningKey::new("k");
    let (pkj, _) = env.client(&env.app, json!({"tokenEndpointAuthMethod": "private_key_jwt", "jwks": key.jwks()}));
    let a = assertion(&key, &pkj, ISSUER, 60, "j1");
    let r = post_form_tls(
        &env.tls().with_cert(&env.other),
        env.gw.mgmt_tls,
        "/oauth2/token",
        &[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
            ("client_assertion", &a),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(jwt_parts(r.json()["access_token"].as_str().unwrap()).1["cnf"]["x5t#S256"], env.other.x5t());
    // Bad DNs are refused at registration.
    let r = env.admin(
        "POST",
        &format!("/api/v1/applications/{}/oauth-clients", env.app),
        json!({"tokenEndpointAuthMethod": "tls_client_auth", "tlsClientAuthSubjectDn": "CN"}),
    );
    assert_eq!(r.status, 422, "{}", r.text());
}

#[test]
fn client_secret_basic_works_outside_fapi_and_is_refused_under_it() {
    let env = Env::start(&[]);
    let (client, secret) =
        env.client(&env.app, json!({"tokenEndpointAuthMethod": "client_secret_basic", "scopes": ["accounts"]}));
    let secret = secret.expect("the secret is shown once");
    let listed = env.admin("GET", &format!("/api/v1/applications/{}/oauth-clients", env.app), Value::Null);
    assert!(!listed.text().contains(&secret), "the secret is never shown again");
    let basic = |s: &str| format!("Basic {}", STANDARD.encode(format!("{client}:{s}")));
    let r = post_form(
        env.gw.mgmt,
        "/oauth2/token",
        &[("grant_type", "client_credentials")],
        &[("authorization", &basic(&secret))],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post_form(
        env.gw.mgmt,
        "/oauth2/token",
        &[("grant_type", "client_credentials")],
        &[("authorization", &basic("wrong"))],
    );
    assert_eq!((r.status, error_of(&r).as_str()), (401, "invalid_client"));
    assert!(r.header("www-authenticate").is_some_and(|c| c.starts_with("Basic")));
    drop(env);

    let fapi = Env::start(&["--tls-profile", "fapi"]);
    let r = fapi.admin(
        "POST",
        &format!("/api/v1/applications/{}/oauth-clients", fapi.app),
        json!({"tokenEndpointAuthMethod": "client_secret_basic"}),
    );
    assert_eq!(r.status, 422, "{}", r.text());
    let d = request(fapi.gw.mgmt, "GET", "/oauth2/.well-known/openid-configuration", &[], b"").json();
    assert!(!d["token_endpoint_auth_methods_supported"].as_array().unwrap().contains(&json!("client_secret_basic")));
}

#[test]
fn introspection_and_revocation_and_the_gateway_refuses_a_revoked_token() {
    let env = Env::start(&["--key-cache-ttl-seconds", "1"]);
    let key = SigningKey::new("k");
    let (client, _) = env.client(
        &env.app,
        json!({"tokenEndpointAuthMethod": "private_key_jwt", "jwks": key.jwks(), "scopes": ["accounts"]}),
    );
    let other_app = env.application("tpp-two", &[]);
    let other_key = SigningKey::new("k2");
    let (other, _) =
        env.client(&other_app, json!({"tokenEndpointAuthMethod": "private_key_jwt", "jwks": other_key.jwks()}));
    let access = token_with(env.gw.mgmt, &assertion(&key, &client, ISSUER, 60, "t1"), None).json()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let as_client = |k: &SigningKey, id: &str, jti: &str| {
        vec![
            ("client_assertion_type".to_string(), "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_string()),
            ("client_assertion".to_string(), assertion(k, id, ISSUER, 60, jti)),
        ]
    };
    let call = |path: &str, token: &str, auth: Vec<(String, String)>, admin: bool| {
        let mut p: Vec<(&str, &str)> = vec![("token", token)];
        p.extend(auth.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let admin_auth = bearer(ADMIN);
        let h: Vec<(&str, &str)> = if admin { vec![("authorization", admin_auth.as_str())] } else { vec![] };
        post_form(env.gw.mgmt, path, &p, &h)
    };
    let r = call("/oauth2/introspect", &access, as_client(&key, &client, "i1"), false);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(
        (v["active"].as_bool(), v["client_id"].as_str(), v["scope"].as_str()),
        (Some(true), Some(client.as_str()), Some("accounts"))
    );
    assert_eq!(call("/oauth2/introspect", &access, vec![], true).json()["active"], true, "admin token");
    assert_eq!(
        call("/oauth2/introspect", &access, as_client(&other_key, &other, "i2"), false).json()["active"],
        false,
        "another client's token"
    );
    assert_eq!(call("/oauth2/introspect", "garbage", vec![], true).json()["active"], false);
    assert_eq!(call("/oauth2/introspect", &access, vec![], false).status, 401, "callers authenticate");
    assert_eq!(request(env.gw.http, "GET", "/accounts/v1/x", &[("authorization", &bearer(&access))], b"").status, 200);

    // Another client may not revoke it; its own client may.
    let r = call("/oauth2/revoke", &access, as_client(&other_key, &other, "r1"), false);
    assert_eq!((r.status, error_of(&r).as_str()), (400, "unauthorized_client"));
    assert_eq!(
        call("/oauth2/revoke", "not-a-token", as_client(&key, &client, "r2"), false).status,
        200,
        "RFC 7009: invalid tokens are 200"
    );
    let r = call("/oauth2/revoke", &access, as_client(&key, &client, "r3"), false);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(call("/oauth2/introspect", &access, vec![], true).json()["active"], false);
    let r = request(env.gw.http, "GET", "/accounts/v1/x", &[("authorization", &bearer(&access))], b"");
    assert_eq!(r.status, 401, "revoked: {}", r.text());
    assert!(r.header("www-authenticate").is_some_and(|c| c.contains("invalid_token")));
    assert!(env.gw.metrics().contains("result=\"revoked\""));
}

/// A software statement (UK OBIE shape) signed by `key`.
fn ssa(key: &SigningKey, roles: &[&str], extra: Value) -> String {
    let mut c = json!({"iss": "Test Directory", "iat": now(), "jti": format!("ssa-{}", now()),
        "software_id": "sw-123", "software_client_name": "TPP One App", "org_id": "org-1", "software_roles": roles});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    key.sign(&c)
}

#[test]
fn dynamic_client_registration_with_signed_statements_and_signed_requests() {
    let directory = SigningKey::new("directory-1");
    let tmp_keys = tempfile::tempdir().unwrap();
    let ssa_jwks = tmp_keys.path().join("ssa-jwks.json");
    std::fs::write(&ssa_jwks, directory.jwks().to_string()).unwrap();
    let env = Env::start(&["--ssa-jwks", ssa_jwks.to_str().unwrap()]);
    let tpp_key = SigningKey::new("tpp-signing");
    let register = |body: Value| {
        request(
            env.gw.mgmt,
            "POST",
            "/oauth2/register",
            &[("content-type", "application/json")],
            body.to_string().as_bytes(),
        )
    };
    let good = json!({"software_statement": ssa(&directory, &["AISP"], json!({})), "jwks": tpp_key.jwks(),
        "token_endpoint_auth_method": "private_key_jwt", "grant_types": ["client_credentials"], "scope": "accounts"});
    let r = register(good.clone());
    assert_eq!(r.status, 201, "{}", r.text());
    let reg = r.json();
    let client = reg["client_id"].as_str().unwrap().to_string();
    let reg_token = reg["registration_access_token"].as_str().unwrap().to_string();
    assert_eq!(reg["registration_client_uri"], format!("{ISSUER}/register/{client}"));
    assert_eq!((reg["scope"].as_str(), reg["software_id"].as_str()), (Some("accounts"), Some("sw-123")));
    // The client works at once: a token, then an API call through its own application.
    let r = token_with(env.gw.mgmt, &assertion(&tpp_key, &client, ISSUER, 60, "d1"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    let app = reg["application_id"].as_str().unwrap();
    let r = env.admin(
        "POST",
        "/api/v1/subscriptions",
        json!({"applicationId": app, "api": "bank/accounts", "policy": "gold"}),
    );
    assert_eq!(r.status, 201);
    let access = token_with(env.gw.mgmt, &assertion(&tpp_key, &client, ISSUER, 60, "d2"), None).json()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(request(env.gw.http, "GET", "/accounts/v1/x", &[("authorization", &bearer(&access))], b"").status, 200);

    // Forged or bad statements and metadata.
    let forger = SigningKey::new("directory-1");
    let mut forged = good.clone();
    forged["software_statement"] = json!(ssa(&forger, &["AISP"], json!({})));
    let r = register(forged);
    assert_eq!((r.status, error_of(&r).as_str()), (400, "invalid_software_statement"), "{}", r.text());
    let mut none = good.clone();
    none.as_object_mut().unwrap().remove("software_statement");
    assert_eq!(error_of(&register(none)), "invalid_software_statement");
    let bad_metadata = [
        json!({"scope": "payments"}),
        json!({"grant_types": ["authorization_code"]}),
        json!({"jwks_uri": "http://169.254.169.254/latest/meta-data", "jwks": null}),
        json!({"token_endpoint_auth_method": "none"}),
        json!({"token_endpoint_auth_method": "tls_client_auth", "tls_client_auth_subject_dn": "not a dn"}),
    ];
    for patch in bad_metadata {
        let mut b = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                b.as_object_mut().unwrap().remove(k);
            } else {
                b[k] = v.clone();
            }
        }
        let r = register(b);
        assert_eq!((r.status, error_of(&r).as_str()), (400, "invalid_client_metadata"), "{patch}: {}", r.text());
    }
    // A statement without software_roles grants no role-bound scope (it
    // used to grant every one); roles that are not a list are refused.
    let roleless = directory.sign(&json!({"iss": "Test Directory", "iat": now(), "jti": "ssa-roleless",
        "software_id": "sw-456", "software_client_name": "No Roles"}));
    let mut b = good.clone();
    b["software_statement"] = json!(roleless);
    b["scope"] = json!("payments accounts fundsconfirmations");
    let r = register(b.clone());
    assert_eq!((r.status, error_of(&r).as_str()), (400, "invalid_client_metadata"), "{}", r.text());
    b.as_object_mut().unwrap().remove("scope");
    let r = register(b);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["scope"], "", "no roles, no scopes");
    let mut b = good.clone();
    b["software_statement"] = json!(ssa(&directory, &[], json!({"software_roles": "AISP PISP"})));
    assert_eq!(error_of(&register(b)), "invalid_software_statement");
    // A statement issued in the future, written as a fraction, is refused.
    let mut b = good.clone();
    b["software_statement"] = json!(ssa(&directory, &["AISP"], json!({"iat": now() as f64 + 3600.5})));
    assert_eq!(error_of(&register(b)), "invalid_software_statement");

    // An https jwks_uri is taken only from the signed statement.
    let mut b = good.clone();
    b.as_object_mut().unwrap().remove("jwks");
    b["jwks_uri"] = json!("https://tpp.example/jwks");
    assert_eq!(error_of(&register(b)), "invalid_client_metadata");

    // A request signed by the TPP (application/jose), and one signed by someone else.
    let signed = |k: &SigningKey| {
        let mut claims = good.clone();
        claims["iss"] = json!("sw-123");
        claims["aud"] = json!(ISSUER);
        claims["exp"] = json!(now() + 60);
        k.sign(&claims)
    };
    let r = request(
        env.gw.mgmt,
        "POST",
        "/oauth2/register",
        &[("content-type", "application/jose")],
        signed(&tpp_key).as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = request(
        env.gw.mgmt,
        "POST",
        "/oauth2/register",
        &[("content-type", "application/jose")],
        signed(&SigningKey::new("tpp-signing")).as_bytes(),
    );
    assert_eq!((r.status, error_of(&r).as_str()), (400, "invalid_client_metadata"), "{}", r.text());

    // RFC 7592 with the registration access token.
    let uri = format!("/oauth2/register/{client}");
    let r = request(env.gw.mgmt, "GET", &uri, &[("authorization", &bearer(&reg_token))], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["client_id"], client.as_str());
    let r = request(env.gw.mgmt, "GET", &uri, &[("authorization", "Bearer wrong")], b"");
    assert_eq!(r.status, 401);
    let mut update = good.clone();
    update["client_id"] = json!(client);
    update["scope"] = json!("");
    let r = request(
        env.gw.mgmt,
        "PUT",
        &uri,
        &[("authorization", &bearer(&reg_token)), ("content-type", "application/json")],
        update.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["scope"], "accounts", "no scope asked: the roles' scopes");
    let r = request(env.gw.mgmt, "DELETE", &uri, &[("authorization", &bearer(&reg_token))], b"");
    assert_eq!(r.status, 204);
    let r = token_with(env.gw.mgmt, &assertion(&tpp_key, &client, ISSUER, 60, "d3"), None);
    assert_eq!((r.status, error_of(&r).as_str()), (401, "invalid_client"), "deleted");
    assert_eq!(request(env.gw.mgmt, "GET", &uri, &[("authorization", &bearer(&reg_token))], b"").status, 401);
}

#[test]
fn dynamic_registration_is_off_without_ssa_jwks() {
    let env = Env::start(&[]);
    let directory = SigningKey::new("d");
    let body = json!({"software_statement": ssa(&directory, &["AISP"], json!({})), "jwks": directory.jwks()});
    let r = request(
        env.gw.mgmt,
        "POST",
        "/oauth2/register",
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    );
    assert_eq!((r.status, error_of(&r).as_str()), (400, "invalid_software_statement"));
    assert!(r.text().contains("--ssa-jwks"));
}

#[test]
fn a_rotated_signing_key_keeps_old_tokens_valid_across_a_restart() {
    let old = SigningKey::new("unused");
    let new = SigningKey::new("unused");
    let mut env = Env::start(&[]);
    let (old_file, new_file) = (env.tmp.path().join("old.pem"), env.tmp.path().join("new.pem"));
    std::fs::write(&old_file, &old.pem).unwrap();
    std::fs::write(&new_file, &new.pem).unwrap();
    // Restart on the old key (same database and folder).
    drop(std::mem::replace(
        &mut env.gw,
        Env::gateway(&env.tmp, &env.dir, &env.server, &env.ca, &["--signing-key-file", old_file.to_str().unwrap()]),
    ));
    let key = SigningKey::new("c");
    let (client, _) = env.client(&env.app, json!({"tokenEndpointAuthMethod": "private_key_jwt", "jwks": key.jwks()}));
    let first = token_with(env.gw.mgmt, &assertion(&key, &client, ISSUER, 60, "k1"), None).json()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let old_kid = jwt_parts(&first).0["kid"].as_str().unwrap().to_string();

    let flags = format!("{},{}", new_file.display(), old_file.display());
    drop(std::mem::replace(
        &mut env.gw,
        Env::gateway(&env.tmp, &env.dir, &env.server, &env.ca, &["--signing-key-file", &flags]),
    ));
    let jwks = request(env.gw.mgmt, "GET", "/oauth2/jwks", &[], b"").json();
    let kids: Vec<&str> = jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids.len(), 2);
    assert_eq!(kids[1], old_kid, "the old key is still published");
    let second = token_with(env.gw.mgmt, &assertion(&key, &client, ISSUER, 60, "k2"), None).json()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(jwt_parts(&second).0["kid"].as_str(), Some(kids[0]), "the first key signs");
    assert_ne!(kids[0], old_kid);
    for t in [&first, &second] {
        let r = request(env.gw.http, "GET", "/accounts/v1/x", &[("authorization", &bearer(t))], b"");
        assert_eq!(r.status, 403, "verified, scope missing (the client has none): {}", r.text());
        assert_eq!(r.json()["error"], "insufficient_scope");
    }
    // A broken key file stops the start with a clear error.
    std::fs::write(&new_file, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate-gateway"))
        .args([
            "--config-dir",
            env.dir.to_str().unwrap(),
            "--data-dir",
            env.tmp.path().join("data-broken").to_str().unwrap(),
            "--signing-key-file",
            new_file.to_str().unwrap(),
            "--management",
            "127.0.0.1:1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("new.pem"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn two_gateways_on_one_postgresql_share_clients_replays_and_revocations() {
    let pg = Postgres::start();
    let url = pg.url();
    let key_file = tempfile::NamedTempFile::new().unwrap();
    let signing = SigningKey::new("unused");
    std::fs::write(key_file.path(), &signing.pem).unwrap();
    let flags = [
        "--database-url",
        &url,
        "--signing-key-file",
        key_file.path().to_str().unwrap(),
        "--key-cache-ttl-seconds",
        "1",
    ];
    let a = Env::start(&flags);
    let b = Env::gateway(&a.tmp, &a.dir, &a.server, &a.ca, &flags);
    let key = SigningKey::new("c");
    let (client, _) = a.client(
        &a.app,
        json!({"tokenEndpointAuthMethod": "private_key_jwt", "jwks": key.jwks(), "scopes": ["accounts"]}),
    );
    // Registered on A, served by B; an assertion used at B is a replay at A.
    let once = assertion(&key, &client, ISSUER, 60, "shared-1");
    let r = token_with(b.mgmt, &once, None);
    assert_eq!(r.status, 200, "{}", r.text());
    let access = r.json()["access_token"].as_str().unwrap().to_string();
    let r = token_with(a.gw.mgmt, &once, None);
    assert_eq!((r.status, error_of(&r).as_str()), (401, "invalid_client"), "replay seen by the other gateway");
    // B's token works at A; revoked at B, A refuses it within the key-cache TTL.
    let call =
        |gw: SocketAddr| request(gw, "GET", "/accounts/v1/x", &[("authorization", &bearer(&access))], b"").status;
    assert_eq!(call(a.gw.http), 200);
    let r = post_form(b.mgmt, "/oauth2/revoke", &[("token", &access)], &[("authorization", &bearer(ADMIN))]);
    assert_eq!(r.status, 200);
    assert_eq!(call(b.http), 401, "at once on the revoking gateway");
    eventually(Duration::from_secs(10), || call(a.gw.http) == 401);
}

#[test]
fn a_gateway_fetches_the_control_planes_keys_over_tls_trusting_its_ca() {
    let env = Env::start(&[]);
    let jwks_uri = format!("https://127.0.0.1:{}/oauth2/jwks", env.gw.mgmt_tls.port());
    let published = request(env.gw.mgmt, "GET", "/oauth2/jwks", &[], b"").json()["keys"].as_array().unwrap().len();
    // A gateway group: no key-manager role, the control plane's keys over
    // TLS, its listener certificate issued by a private CA.
    let group = |extra: &[&str]| {
        let dir = env.tmp.path().join(format!("group-{}", support::free_port()));
        std::fs::create_dir_all(dir.join("config")).unwrap();
        let mut flags = vec!["--roles", "gateway", "--issuer", ISSUER, "--key-manager-jwks-uri", &jwks_uri];
        flags.extend_from_slice(extra);
        gateway(&dir.join("config"), &flags)
    };
    let keys = |gw: &Gateway| gw.status()["builtinKeyManager"]["keys"].clone();
    let trusting = group(&["--key-manager-ca", env.ca.pem.to_str().unwrap()]);
    support::eventually(Duration::from_secs(60), || keys(&trusting)["keys"].as_u64() == Some(published as u64));
    assert_eq!(keys(&trusting)["lastError"], Value::Null, "{}", keys(&trusting));
    // Without the CA the system store does not know the certificate.
    let untrusting = group(&[]);
    support::eventually(Duration::from_secs(60), || !keys(&untrusting)["lastError"].is_null());
    assert_eq!(keys(&untrusting)["keys"], 0, "{}", keys(&untrusting));
}
