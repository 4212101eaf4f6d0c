//! The developer portal over HTTP on PostgreSQL (the HA patterns' store):
//! sign-up, an application, a subscription, a one-time key that works
//! through the gateway, the owner shown to the management API, an
//! administrator disabling the developer (the key stops working at once),
//! and no portal without the store role. The browser tests
//! (tests/browser, make browser-test) cover the pages themselves.

mod support;

use std::net::SocketAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;
use support::oauth::{ADMIN, admin_at};
use support::postgres::Postgres;
use support::*;

/// A browser's cookies, kept from Set-Cookie headers.
#[derive(Default)]
struct Jar(Vec<(String, String)>);

impl Jar {
    fn keep(&mut self, r: &Resp) {
        for (k, v) in &r.headers {
            if k != "set-cookie" {
                continue;
            }
            let pair = v.split(';').next().unwrap_or("");
            if let Some((name, value)) = pair.split_once('=') {
                self.0.retain(|(n, _)| n != name);
                if !value.is_empty() {
                    self.0.push((name.to_string(), value.to_string()));
                }
            }
        }
    }
    fn header(&self) -> String {
        self.0.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }
}

/// The CSRF token of the first form of a page.
fn csrf(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a form") + "name=\"csrf\" value=\"".len();
    page[at..].split('"').next().unwrap().to_string()
}

struct Browser {
    mgmt: SocketAddr,
    jar: Jar,
}

impl Browser {
    fn get(&mut self, path: &str) -> Resp {
        let cookie = self.jar.header();
        let r = request(self.mgmt, "GET", path, &[("cookie", &cookie)], b"");
        self.jar.keep(&r);
        r
    }
    fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Resp {
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
        let cookie = self.jar.header();
        let r = request(
            self.mgmt,
            "POST",
            path,
            &[("cookie", &cookie), ("content-type", "application/x-www-form-urlencoded")],
            body.as_bytes(),
        );
        self.jar.keep(&r);
        r
    }
}

#[test]
fn a_developer_on_postgresql_from_sign_up_to_a_working_key_and_an_administrator_disabling_it() {
    let pg = Postgres::start();
    let url = pg.url();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("config");
    std::fs::create_dir_all(&dir).unwrap();
    let (_backend, addr) = echo("bank");
    std::fs::write(dir.join("tier.yaml"), policy("gold", "  limit: {requests: 100, per: 1m}\n  keyBy: Consumer\n"))
        .unwrap();
    std::fs::write(
        dir.join("a.yaml"),
        api("accounts", "/accounts", "v1", &format!("http://{addr}"), "  security: {apiKey: {}}\n"),
    )
    .unwrap();
    let token = tmp.path().join("admin-token");
    std::fs::write(&token, ADMIN).unwrap();
    let gw = gateway(&dir, &["--database-url", &url, "--admin-token-file", token.to_str().unwrap()]);

    let mut dev = Browser { mgmt: gw.mgmt, jar: Jar::default() };
    let page = dev.get("/portal/signup");
    assert_eq!(page.status, 200);
    assert!(page.header("content-security-policy").unwrap().contains("default-src 'none'"));
    let form_token = csrf(&page.text());
    let r = dev.post(
        "/portal/signup",
        &[("email", "Dev@TPP.example"), ("password", "a long enough password"), ("csrf", &form_token)],
    );
    assert_eq!((r.status, r.header("location")), (303, Some("/portal/applications")), "{}", r.text());
    assert!(dev.jar.0.iter().any(|(n, _)| n == "tollgate_session"));
    // The session's own token from now on; the pre-session one is refused.
    let page = dev.get("/portal/applications").text();
    assert!(page.contains("dev@tpp.example"), "the address is stored lower-cased");
    let token = csrf(&page);
    assert_ne!(token, form_token);
    assert_eq!(dev.post("/portal/applications", &[("name", "x"), ("csrf", &form_token)]).status, 403);
    let r = dev.post("/portal/applications", &[("name", "Budget app"), ("csrf", &token)]);
    assert_eq!(r.status, 303);
    let app_path = r.header("location").unwrap().to_string();
    let app_id = app_path.rsplit('/').next().unwrap().to_string();
    let r =
        dev.post(&format!("{app_path}/subscriptions"), &[("api", "bank/accounts"), ("tier", "gold"), ("csrf", &token)]);
    assert_eq!(r.status, 303, "{}", r.text());
    // A tier that does not exist is refused in the page.
    let r = dev.post(
        &format!("{app_path}/subscriptions"),
        &[("api", "bank/accounts"), ("tier", "platinum"), ("csrf", &token)],
    );
    assert_eq!(r.status, 422);
    let page = dev.post(&format!("{app_path}/keys"), &[("environment", "production"), ("csrf", &token)]).text();
    let at = page.find("tg_live_").expect("the new key in the page");
    let key: String = page[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').collect();
    let r = request(gw.http, "GET", "/accounts/v1/balances", &[("apikey", &key)], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!dev.get(&app_path).text().contains(&key), "shown once");

    // An OAuth client of the built-in key manager (tls_client_auth), and a
    // DN that does not parse.
    let r = dev.post(
        &format!("{app_path}/oauth-clients"),
        &[("method", "tls_client_auth"), ("dn", "CN=tpp-one,O=TPP Ltd,C=GB"), ("scopes", "accounts"), ("csrf", &token)],
    );
    assert_eq!(r.status, 303, "{}", r.text());
    let r = dev.post(
        &format!("{app_path}/oauth-clients"),
        &[("method", "tls_client_auth"), ("dn", "not a DN"), ("csrf", &token)],
    );
    assert_eq!(r.status, 422);
    assert!(r.text().contains("The subject DN is not valid"));
    let clients = admin_at(gw.mgmt, "GET", &format!("/api/v1/applications/{app_id}/oauth-clients"), Value::Null).json();
    let items = clients["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{clients}");
    assert_eq!(items[0]["tlsClientAuthSubjectDn"], "CN=tpp-one,O=TPP Ltd,C=GB");

    // The management API shows the owner.
    let apps = admin_at(gw.mgmt, "GET", "/api/v1/applications", Value::Null).json();
    let owner = apps["items"].as_array().unwrap().iter().find(|a| a["id"] == app_id.as_str()).unwrap()["owner"]
        .as_str()
        .unwrap()
        .to_string();

    // An OAuth client of the developer's application (client_secret_basic).
    let r = admin_at(
        gw.mgmt,
        "POST",
        &format!("/api/v1/applications/{app_id}/oauth-clients"),
        serde_json::json!({"tokenEndpointAuthMethod": "client_secret_basic", "scopes": ["accounts"]}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let (client, secret) = (r.json()["clientId"].as_str().unwrap().to_string(), r.json()["clientSecret"].clone());
    let basic = format!("Basic {}", STANDARD.encode(format!("{client}:{}", secret.as_str().unwrap())));
    let token = || {
        let h = [("authorization", basic.as_str()), ("content-type", "application/x-www-form-urlencoded")];
        request(gw.mgmt, "POST", "/oauth2/token", &h, b"grant_type=client_credentials")
    };
    assert_eq!(token().status, 200, "{}", token().text());

    // An administrator disables the developer: session and key stop at once.
    let mut admin = Browser { mgmt: gw.mgmt, jar: Jar::default() };
    let t = csrf(&admin.get("/portal/admin/signin").text());
    assert_eq!(admin.post("/portal/admin/signin", &[("token", "wrong"), ("csrf", &t)]).status, 401);
    let r = admin.post("/portal/admin/signin", &[("token", ADMIN), ("csrf", &t)]);
    assert_eq!((r.status, r.header("location")), (303, Some("/portal/admin")));
    let page = admin.get("/portal/admin").text();
    assert!(page.contains("Budget app") && page.contains("dev@tpp.example"));
    let t = csrf(&page);
    assert_eq!(admin.post(&format!("/portal/admin/developers/{owner}/disable"), &[("csrf", &t)]).status, 303);
    assert!(admin.get("/portal/admin").text().contains(">disabled<"));
    let r = request(gw.http, "GET", "/accounts/v1/balances", &[("apikey", &key)], b"");
    assert_eq!(r.status, 401, "{}", r.text());
    let r = dev.get(&app_path);
    assert_eq!((r.status, r.header("location")), (303, Some("/portal/signin")), "signed out");
    // The developer's OAuth client gets no token either.
    let r = token();
    assert_eq!((r.status, r.json()["error"].as_str()), (401, Some("invalid_client")), "{}", r.text());
    // Enabled again, the key works again.
    assert_eq!(admin.post(&format!("/portal/admin/developers/{owner}/enable"), &[("csrf", &t)]).status, 303);
    let r = request(gw.http, "GET", "/accounts/v1/balances", &[("apikey", &key)], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(token().status, 200);
}

/// A browser holding the sign-in form of `mgmt`: its cookie, and the token.
fn signin_form(mgmt: SocketAddr) -> (Browser, String) {
    let mut b = Browser { mgmt, jar: Jar::default() };
    let page = b.get("/portal/signin");
    assert_eq!(page.status, 200);
    let token = csrf(&page.text());
    (b, token)
}

fn sign_in(mgmt: SocketAddr, email: &str, password: &str) -> u16 {
    let (mut b, t) = signin_form(mgmt);
    b.post("/portal/signin", &[("email", email), ("password", password), ("csrf", &t)]).status
}

#[test]
fn the_sign_in_limit_holds_for_concurrent_attempts_on_two_gateways() {
    let pg = Postgres::start();
    let url = pg.url();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("config");
    std::fs::create_dir_all(&dir).unwrap();
    let token = tmp.path().join("admin-token");
    std::fs::write(&token, ADMIN).unwrap();
    let flags = ["--database-url", &url, "--admin-token-file", token.to_str().unwrap()];
    let (a, b) = (gateway(&dir, &flags), gateway(&dir, &flags));
    let mut dev = Browser { mgmt: a.mgmt, jar: Jar::default() };
    let t = csrf(&dev.get("/portal/signup").text());
    let r = dev
        .post("/portal/signup", &[("email", "victim@tpp.example"), ("password", "the right password"), ("csrf", &t)]);
    assert_eq!(r.status, 303, "{}", r.text());
    const EMAIL: &str = "victim@tpp.example";
    const LIMIT: usize = 5;

    // 30 wrong passwords for one address, sent at once to both gateways:
    // no more than the limit are checked, whatever the interleaving.
    const ATTEMPTS: usize = 30;
    let start = std::sync::Arc::new(std::sync::Barrier::new(ATTEMPTS));
    let threads: Vec<_> = (0..ATTEMPTS)
        .map(|i| {
            let mgmt = if i % 2 == 0 { a.mgmt } else { b.mgmt };
            let start = start.clone();
            std::thread::spawn(move || {
                let (mut form, t) = signin_form(mgmt);
                start.wait();
                form.post("/portal/signin", &[("email", EMAIL), ("password", "wrong guess"), ("csrf", &t)]).status
            })
        })
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let checked = statuses.iter().filter(|s| **s == 401).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(checked + refused, ATTEMPTS, "{statuses:?}");
    assert!(checked <= LIMIT, "{checked} passwords were checked, the limit is {LIMIT}: {statuses:?}");
    // Refused attempts did not count: the rest of the limit is still there,
    // one attempt after the other, then nothing on either gateway.
    for n in checked..LIMIT {
        assert_eq!(sign_in(if n % 2 == 0 { a.mgmt } else { b.mgmt }, EMAIL, "wrong again"), 401, "failure {n}");
    }
    for mgmt in [a.mgmt, b.mgmt] {
        assert_eq!(sign_in(mgmt, EMAIL, "wrong again"), 429);
        assert_eq!(sign_in(mgmt, EMAIL, "the right password"), 429, "paused for the right password too");
    }
}

#[test]
fn an_administrators_session_ends_when_the_admin_token_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("config");
    std::fs::create_dir_all(&dir).unwrap();
    let token = tmp.path().join("admin-token");
    std::fs::write(&token, ADMIN).unwrap();
    let flags = ["--admin-token-file", token.to_str().unwrap()];
    let gw = gateway(&dir, &flags);
    let mut admin = Browser { mgmt: gw.mgmt, jar: Jar::default() };
    let t = csrf(&admin.get("/portal/admin/signin").text());
    let r = admin.post("/portal/admin/signin", &[("token", ADMIN), ("csrf", &t)]);
    assert_eq!((r.status, r.header("location")), (303, Some("/portal/admin")));
    assert_eq!(admin.get("/portal/admin").status, 200);
    drop(gw);

    // The token is rotated (a leaked one replaced): the session opened with
    // the old one is no administrator's any more, on the same database.
    std::fs::write(&token, "a-rotated-admin-token").unwrap();
    let gw = gateway(&dir, &flags);
    admin.mgmt = gw.mgmt;
    let r = admin.get("/portal/admin");
    assert_eq!(r.status, 403, "{}", r.text());
    let t = csrf(&admin.get("/portal/admin/signin").text());
    let r = admin.post("/portal/admin/signin", &[("token", "a-rotated-admin-token"), ("csrf", &t)]);
    assert_eq!(r.status, 303);
    assert_eq!(admin.get("/portal/admin").status, 200);
}
