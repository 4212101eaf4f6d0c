//! The developer portal over HTTP on PostgreSQL (the HA patterns' store):
//! sign-up, an application, a subscription, a one-time key that works
//! through the gateway, the owner shown to the management API, an
//! administrator disabling the developer (the key stops working at once),
//! and no portal without the store role. The browser tests
//! (tests/browser, make browser-test) cover the pages themselves.

mod support;

use std::net::SocketAddr;

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
    // Enabled again, the key works again.
    assert_eq!(admin.post(&format!("/portal/admin/developers/{owner}/enable"), &[("csrf", &t)]).status, 303);
    let r = request(gw.http, "GET", "/accounts/v1/balances", &[("apikey", &key)], b"");
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn the_portal_is_served_only_with_the_store_role() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("config");
    std::fs::create_dir_all(&dir).unwrap();
    let gw = gateway(&dir, &["--roles", "gateway,key-manager"]);
    assert_eq!(request(gw.mgmt, "GET", "/portal/", &[], b"").status, 404);
    let gw = gateway(&dir, &["--roles", "gateway,store"]);
    let r = request(gw.mgmt, "GET", "/portal/", &[], b"");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("No published API matches."));
    // Static files come from the binary.
    let r = request(gw.mgmt, "GET", "/portal/assets/swagger-ui/swagger-ui-bundle.js", &[], b"");
    assert_eq!((r.status, r.header("content-type")), (200, Some("text/javascript; charset=utf-8")));
    assert_eq!(request(gw.mgmt, "GET", "/portal/assets/../Cargo.toml", &[], b"").status, 404);
}
