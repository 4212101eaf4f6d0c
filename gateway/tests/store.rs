//! The store and API keys end to end, each scenario against the embedded
//! SQLite database and a real PostgreSQL server (started here on loopback).

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::postgres::Postgres;
use support::*;

const TOKEN: &str = "test-admin-token-0123456789";

enum Backend {
    Sqlite,
    Postgres(std::sync::Arc<Postgres>),
}

impl Backend {
    fn args(&self) -> Vec<String> {
        match self {
            Backend::Sqlite => vec![],
            Backend::Postgres(pg) => vec!["--database-url".into(), pg.url()],
        }
    }
}

struct Env {
    tmp: tempfile::TempDir,
    dir: PathBuf,
    _backend_proc: Proc,
    backend: Backend,
}

impl Env {
    fn new(backend: Backend) -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("config");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(tmp.path().join("token"), format!("{TOKEN}\n")).unwrap();
        let (proc, addr) = echo("bank");
        let b = format!("http://{addr}");
        let sec = "  security: {apiKey: {header: x-api-key}}\n";
        let accounts = format!(
            "apiVersion: tollgate.dev/v1alpha1\nkind: ApiDeployment\nmetadata: {{name: accounts, namespace: bank}}\nspec:\n  apiManagerRef: {{name: local}}\n  context: /accounts\n  version: v1\n{sec}  backend:\n    endpoints: [{{url: '{b}/live'}}]\n    sandboxEndpoints: [{{url: '{b}/sandbox'}}]\n"
        );
        let docs = [
            accounts,
            api("payments", "/payments", "v1", &b, sec),
            api("byquery", "/byquery", "v1", &b, "  security: {apiKey: {query: key}}\n"),
            api("bound", "/bound", "v1", &b, "  security: {apiKey: {header: x-api-key}, mtls: {required: true}}\n"),
            // Per 30 days: no window ends (and resets the counts) during a test.
            policy("gold", "  limit: {requests: 3, per: 30d}\n  keyBy: Consumer\n"),
        ];
        std::fs::write(dir.join("apis.yaml"), docs.join("---\n")).unwrap();
        Env { tmp, dir, _backend_proc: proc, backend }
    }

    fn gateway(&self, extra: &[&str]) -> Gateway {
        let token = self.tmp.path().join("token");
        let mut args: Vec<String> = vec!["--admin-token-file".into(), token.display().to_string()];
        args.extend(self.backend.args());
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        gateway(&self.dir, &refs)
    }
}

fn admin(gw: &Gateway, method: &str, path: &str, body: Option<Value>) -> Resp {
    let auth = format!("Bearer {TOKEN}");
    let mut headers = vec![("authorization", auth.as_str())];
    let text = body.map(|b| b.to_string()).unwrap_or_default();
    if !text.is_empty() {
        headers.push(("content-type", "application/json"));
    }
    request(gw.mgmt, method, path, &headers, text.as_bytes())
}

fn call(gw: &Gateway, path: &str, key: Option<&str>) -> Resp {
    match key {
        Some(k) => request(gw.http, "GET", path, &[("x-api-key", k)], b""),
        None => request(gw.http, "GET", path, &[], b""),
    }
}

fn new_app(gw: &Gateway, name: &str) -> String {
    let r = admin(gw, "POST", "/api/v1/applications", Some(json!({ "name": name })));
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_string()
}

fn new_key(gw: &Gateway, app: &str, env: &str) -> (String, String) {
    let r = admin(gw, "POST", &format!("/api/v1/applications/{app}/keys"), Some(json!({ "environment": env })));
    assert_eq!(r.status, 201, "{}", r.text());
    let j = r.json();
    (j["apiKey"].as_str().unwrap().to_string(), j["id"].as_str().unwrap().to_string())
}

fn subscribe(gw: &Gateway, app: &str, api: &str) {
    let r =
        admin(gw, "POST", "/api/v1/subscriptions", Some(json!({ "applicationId": app, "api": api, "policy": "gold" })));
    assert_eq!(r.status, 201, "{}", r.text());
}

fn flow(backend: Backend) {
    let env = Env::new(backend);
    let gw = env.gateway(&["--key-cache-ttl-seconds", "1"]);
    away_from_long_window_end();
    let app = new_app(&gw, "tpp-one");
    let (key, key_id) = new_key(&gw, &app, "production");
    assert_eq!(call(&gw, "/accounts/v1/x", None).status, 401, "no key");
    let wrong = call(&gw, "/accounts/v1/x", Some("tg_live_wrong"));
    assert_eq!((wrong.status, wrong.json()["error"].clone()), (401, json!("unauthorized")));
    assert_eq!(call(&gw, "/accounts/v1/x", Some(&key)).status, 403, "not subscribed");
    subscribe(&gw, &app, "bank/accounts");
    let ok = call(&gw, "/accounts/v1/x", Some(&key));
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["path"], "/live/x", "production key -> production endpoint");
    assert!(ok.json()["headers"].get("x-api-key").is_none(), "the credential is not forwarded");
    assert_eq!(call(&gw, "/payments/v1/x", Some(&key)).status, 403, "subscribed to accounts only");
    // The tier counts per application: app one has 3, app two its own 3.
    let app2 = new_app(&gw, "tpp-two");
    let (key2, _) = new_key(&gw, &app2, "production");
    subscribe(&gw, &app2, "bank/accounts");
    let statuses: Vec<u16> = (0..3).map(|_| call(&gw, "/accounts/v1/x", Some(&key)).status).collect();
    assert_eq!(statuses, vec![200, 200, 429], "app one: 3 per window");
    assert_eq!(call(&gw, "/accounts/v1/x", Some(&key2)).status, 200, "app two has its own counter");
    // A sandbox key reaches the sandbox endpoint.
    let (sandbox, _) = new_key(&gw, &app2, "sandbox");
    let r = call(&gw, "/accounts/v1/y", Some(&sandbox));
    assert_eq!((r.status, r.json()["path"].clone()), (200, json!("/sandbox/y")));
    // A key in the query string.
    subscribe(&gw, &app2, "bank/byquery");
    let r = request(gw.http, "GET", &format!("/byquery/v1/z?a=1&key={key2}&b=%2F&key=again"), &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["query"], "a=1&b=%2F", "the key is not forwarded, the rest unchanged: {}", r.text());
    // mtls.required is a requirement on top of the API key: a valid,
    // subscribed key over plain HTTP (no client certificate) is refused.
    subscribe(&gw, &app2, "bank/bound");
    let r = call(&gw, "/bound/v1/x", Some(&key2));
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.text().contains("client certificate"), "{}", r.text());
    // Revocation: at once on this gateway.
    let r = admin(&gw, "DELETE", &format!("/api/v1/applications/{app}/keys/{key_id}"), None);
    assert_eq!(r.status, 204);
    assert_eq!(call(&gw, "/accounts/v1/x", Some(&key)).status, 401, "revoked");
    // Keys are listed without the secret.
    let list = admin(&gw, "GET", &format!("/api/v1/applications/{app}/keys"), None).text();
    assert!(!list.contains(&key) && list.contains("revokedAtMs"), "{list}");
}

fn restart_keeps_everything_and_no_clear_keys(backend: Backend) {
    let env = Env::new(backend);
    let key = {
        let gw = env.gateway(&[]);
        let app = new_app(&gw, "persistent");
        let (key, _) = new_key(&gw, &app, "production");
        subscribe(&gw, &app, "bank/accounts");
        assert_eq!(call(&gw, "/accounts/v1/x", Some(&key)).status, 200);
        key
    };
    let gw = env.gateway(&[]);
    assert_eq!(call(&gw, "/accounts/v1/x", Some(&key)).status, 200, "key and subscription survive a restart");
    let apps = admin(&gw, "GET", "/api/v1/applications", None).json();
    assert_eq!(apps["items"][0]["name"], "persistent");
    // The key never appears in clear text under the data dir.
    let secret = &key[8..];
    let mut stack = vec![env.tmp.path().join("data")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap_or_default();
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "key in clear in {}",
                    p.display()
                );
            }
        }
    }
}

fn bad_input(backend: Backend) {
    let env = Env::new(backend);
    let gw = env.gateway(&[]);
    let auth = format!("Bearer {TOKEN}");
    let json_h = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let cases: Vec<(Resp, u16, &str)> = vec![
        (request(gw.mgmt, "POST", "/api/v1/applications", &json_h, b"{not json"), 400, "invalid JSON"),
        (
            request(gw.mgmt, "POST", "/api/v1/applications", &json_h, br#"{"name":"a","admin":true}"#),
            400,
            "unknown field",
        ),
        (request(gw.mgmt, "POST", "/api/v1/applications", &json_h, &vec![b' '; 100_000]), 413, "at most"),
        (
            request(gw.mgmt, "POST", "/api/v1/applications", &[("authorization", auth.as_str())], br#"{"name":"a"}"#),
            415,
            "application/json",
        ),
        (
            request(
                gw.mgmt,
                "POST",
                "/api/v1/applications",
                &[("content-type", "application/json")],
                br#"{"name":"a"}"#,
            ),
            401,
            "Bearer",
        ),
        (
            request(gw.mgmt, "GET", "/api/v1/applications", &[("authorization", "Bearer not-the-token-at-all")], b""),
            401,
            "wrong",
        ),
        (request(gw.mgmt, "POST", "/api/v1/applications", &json_h, br#"{"name":"  "}"#), 422, "name"),
        (admin(&gw, "GET", "/api/v1/applications/nope", None), 404, "not found"),
        (
            admin(
                &gw,
                "POST",
                "/api/v1/subscriptions",
                Some(json!({"applicationId": "x", "api": "bank/ghost", "policy": "gold"})),
            ),
            422,
            "unknown API",
        ),
    ];
    for (r, status, fragment) in cases {
        assert_eq!(r.status, status, "{}", r.text());
        assert!(r.text().contains(fragment), "{fragment:?} in {}", r.text());
        assert!(r.json()["error"].is_string());
    }
    new_app(&gw, "dup");
    let r = admin(&gw, "POST", "/api/v1/applications", Some(json!({ "name": "dup" })));
    assert_eq!(r.status, 409, "{}", r.text());
    let app = new_app(&gw, "env");
    let r = admin(&gw, "POST", &format!("/api/v1/applications/{app}/keys"), Some(json!({ "environment": "staging" })));
    assert_eq!(r.status, 422);
    let doc = admin(&gw, "GET", "/api/v1/openapi.json", None);
    assert_eq!(doc.status, 200);
    assert_eq!(doc.json()["openapi"], "3.0.3");
    let apis = admin(&gw, "GET", "/api/v1/apis?q=payments", None).json();
    assert_eq!(apis["items"].as_array().unwrap().len(), 1, "{apis}");
}

#[test]
fn sqlite_key_flow() {
    flow(Backend::Sqlite);
}

#[test]
fn postgres_key_flow() {
    flow(Backend::Postgres(std::sync::Arc::new(Postgres::start())));
}

#[test]
fn sqlite_restart_and_no_clear_keys() {
    restart_keeps_everything_and_no_clear_keys(Backend::Sqlite);
}

#[test]
fn postgres_restart_and_no_clear_keys() {
    restart_keeps_everything_and_no_clear_keys(Backend::Postgres(std::sync::Arc::new(Postgres::start())));
}

#[test]
fn sqlite_bad_input() {
    bad_input(Backend::Sqlite);
}

#[test]
fn postgres_bad_input() {
    bad_input(Backend::Postgres(std::sync::Arc::new(Postgres::start())));
}

#[test]
fn a_sandbox_gateway_refuses_production_credentials_and_never_forwards_them() {
    // A DistributedGateways sandbox group (`--environments sandbox`): a valid,
    // subscribed production key is refused before any backend sees it.
    let env = Env::new(Backend::Sqlite);
    let gw = env.gateway(&["--environments", "sandbox"]);
    let app = new_app(&gw, "tpp-one");
    subscribe(&gw, &app, "bank/accounts");
    let (production, _) = new_key(&gw, &app, "production");
    let (sandbox, _) = new_key(&gw, &app, "sandbox");
    let refused = call(&gw, "/accounts/v1/x", Some(&production));
    assert_eq!(
        (refused.status, refused.json()["error"].clone()),
        (403, json!("wrong_environment")),
        "{}",
        refused.text()
    );
    assert!(refused.text().contains("production credentials are not accepted"), "{}", refused.text());
    assert!(refused.json().get("path").is_none(), "the backend never answered: {}", refused.text());
    let r = call(&gw, "/accounts/v1/y", Some(&sandbox));
    assert_eq!((r.status, r.json()["path"].clone()), (200, json!("/sandbox/y")), "{}", r.text());
    // A production group (same database) refuses sandbox keys the same way.
    drop(gw);
    let gw = env.gateway(&["--environments", "production"]);
    let r = call(&gw, "/accounts/v1/y", Some(&sandbox));
    assert_eq!((r.status, r.json()["error"].clone()), (403, json!("wrong_environment")), "{}", r.text());
}

#[test]
fn postgres_outage_cached_keys_pass_management_503_and_recovery() {
    let pg = std::sync::Arc::new(Postgres::start());
    let env = Env::new(Backend::Postgres(pg.clone()));
    let gw = env.gateway(&["--key-cache-ttl-seconds", "0.5"]);
    let gw2 = env.gateway(&["--key-cache-ttl-seconds", "0.5"]);
    let app = new_app(&gw, "outage");
    let (key, key_id) = new_key(&gw, &app, "production");
    subscribe(&gw, &app, "bank/payments");
    assert_eq!(call(&gw, "/payments/v1/x", Some(&key)).status, 200);
    assert_eq!(call(&gw2, "/payments/v1/x", Some(&key)).status, 200);

    pg.stop();
    std::thread::sleep(Duration::from_millis(700)); // past the TTL: the cached grant is stale
    assert_eq!(call(&gw, "/payments/v1/x", Some(&key)).status, 200, "a cached key keeps working");
    let r = admin(&gw, "GET", "/api/v1/applications", None);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "database_unavailable");
    let r = call(&gw, "/payments/v1/x", Some("tg_live_never_seen"));
    assert_eq!(r.status, 503, "an uncached key cannot be checked: {}", r.text());
    // The gateway says so where the operator reads it.
    let r = request(gw.mgmt, "GET", "/status/dependencies", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["database"]["state"], "unreachable", "{}", r.text());
    assert!(r.json()["database"]["error"].as_str().is_some_and(|e| !e.is_empty()), "{}", r.text());
    assert_eq!(r.json()["trafficManager"], Value::Null, "no Redis configured: {}", r.text());

    pg.ctl_start();
    // Bounds a hang, does not time the machine.
    let deadline = Instant::now() + CONDITION_FLOOR;
    loop {
        let r = admin(&gw, "GET", "/api/v1/applications", None);
        if r.status == 200 {
            break;
        }
        let log = std::fs::read_to_string(&gw.log).unwrap_or_default();
        let log: String = log.lines().rfind(|l| l.contains("store error")).unwrap_or("").to_string();
        assert!(Instant::now() < deadline, "the store did not recover: {}\n{log}", r.text());
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = request(gw.mgmt, "GET", "/status/dependencies", &[], b"");
    assert_eq!(r.json()["database"], json!({"state": "ok"}), "{}", r.text());
    assert_eq!(request(gw.mgmt, "GET", "/status", &[], b"").json()["database"], json!({"state": "ok"}));
    // Revocation on one gateway reaches the other within the TTL.
    assert_eq!(admin(&gw, "DELETE", &format!("/api/v1/applications/{app}/keys/{key_id}"), None).status, 204);
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(call(&gw2, "/payments/v1/x", Some(&key)).status, 401, "revoked everywhere within the TTL");
}

fn search_ids(gw: &Gateway, q: &str) -> Vec<String> {
    let r = admin(gw, "GET", &format!("/api/v1/apis?q={q}"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    let mut ids: Vec<String> =
        r.json()["items"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    ids
}

#[test]
fn search_index_is_persisted_reused_and_rebuilt_when_missing_or_stale() {
    let env = Env::new(Backend::Sqlite);
    let index_dir = env.tmp.path().join("data/search-index");
    {
        let gw = env.gateway(&[]);
        assert_eq!(search_ids(&gw, "payments"), vec!["bank/payments"]);
        assert_eq!(search_ids(&gw, "accounts%20payments"), Vec::<String>::new(), "all words must match");
        assert_eq!(search_ids(&gw, "byquery"), vec!["bank/byquery"]);
        let log = std::fs::read_to_string(&gw.log).unwrap();
        assert!(log.contains("search index brought up to date"), "built on first start");
    }
    assert!(index_dir.join("tollgate-revision").is_file(), "the index records its revision");
    {
        // Same artifacts: the persisted index is reused, not rebuilt.
        let gw = env.gateway(&[]);
        assert_eq!(search_ids(&gw, "payments"), vec!["bank/payments"]);
        std::thread::sleep(Duration::from_millis(1500));
        let log = std::fs::read_to_string(&gw.log).unwrap();
        assert!(!log.contains("search index brought up to date"), "reused after a restart");
        // A changed artifact makes it stale: rebuilt and searchable.
        let text = std::fs::read_to_string(env.dir.join("apis.yaml")).unwrap();
        std::fs::write(
            env.dir.join("apis.yaml"),
            text.replacen(
                "  context: /payments\n",
                "  context: /payments\n  description: Domestic standing orders\n",
                1,
            ),
        )
        .unwrap();
        let deadline = Instant::now() + CONDITION_FLOOR;
        while search_ids(&gw, "standing%20orders") != vec!["bank/payments"] {
            assert!(Instant::now() < deadline, "the stale index was not rebuilt");
            std::thread::sleep(Duration::from_millis(100));
        }
        // Only the changed API's document was replaced (deleted and added).
        let log = std::fs::read_to_string(&gw.log).unwrap();
        let line = log.lines().find(|l| l.contains("search index brought up to date")).unwrap_or_default();
        assert!(line.contains("\"changed\":2"), "{line}");
    }
    // A missing index is rebuilt from the artifacts at start.
    std::fs::remove_dir_all(&index_dir).unwrap();
    let gw = env.gateway(&[]);
    assert_eq!(search_ids(&gw, "standing"), vec!["bank/payments"]);
    assert!(index_dir.join("tollgate-revision").is_file());
}
