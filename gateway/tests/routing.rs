//! Routing and forwarding through a real gateway process to a real backend.

mod support;

use support::*;

fn setup() -> (tempfile::TempDir, Proc, Gateway) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("config");
    std::fs::create_dir(&dir).unwrap();
    let (be, addr) = echo("bank");
    let b = format!("http://{addr}");
    let ops = "  operations:\n  - {method: GET, path: '/accounts/{accountId}'}\n  - {method: POST, path: /payments}\n  - {method: GET, path: /}\n";
    let files = [
        (
            "aisp.yaml",
            api(
                "aisp-v3",
                "/open-banking/aisp",
                "v3.1",
                &format!("{b}/base/"),
                &format!("  isDefaultVersion: true\n{ops}"),
            ),
        ),
        ("aisp-v2.yaml", api("aisp-v2", "/open-banking/aisp", "v2", &format!("{b}/old"), "")),
        ("broad.yaml", api("broad", "/open-banking", "v1", &format!("{b}/broad"), "")),
        ("nested.yaml", api("nested", "/open-banking/aisp/v3.1/special", "v1", &format!("{b}/nested"), "")),
        ("created.yaml", api("created", "/created", "v1", &b, "  lifecycle: Created\n")),
        ("deprecated.yaml", api("deprecated", "/deprecated", "v1", &b, "  lifecycle: Deprecated\n")),
        ("blocked.yaml", api("blocked", "/blocked", "v1", &b, "  lifecycle: Blocked\n")),
        ("retired.yaml", api("retired", "/retired", "v1", &b, "  lifecycle: Retired\n")),
        (
            "cors.yaml",
            api(
                "cors",
                "/cors",
                "v1",
                &b,
                "  cors: {allowOrigins: ['https://tpp.example'], allowHeaders: [authorization], exposeHeaders: [x-backend]}\n",
            ),
        ),
    ];
    for (f, text) in files {
        std::fs::write(dir.join(f), text).unwrap();
    }
    let gw = gateway(&dir, &[]);
    (tmp, be, gw)
}

#[test]
fn routes_versions_parameters_and_prefixes() {
    let (_tmp, _be, gw) = setup();
    let r = gw.get("/open-banking/aisp/v3.1/accounts/123?fields=a%20b&x=1");
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["path"], "/base/accounts/123", "rest appended to the endpoint path");
    assert_eq!(j["query"], "fields=a%20b&x=1", "query unchanged");

    let j = gw.get("/open-banking/aisp/accounts/9").json();
    assert_eq!(j["path"], "/base/accounts/9", "default version served at the context");

    let j = gw.get("/open-banking/aisp/v2/anything/here").json();
    assert_eq!(j["path"], "/old/anything/here", "no operations: everything under the context");

    let j = gw.get("/open-banking/aisp/v3.1/special/v1/x").json();
    assert_eq!(j["path"], "/nested/x", "longest context wins");

    let j = gw.get("/open-banking/v1/other").json();
    assert_eq!(j["path"], "/broad/other");

    let j = gw.get("/open-banking/aisp/v3.1").json();
    assert_eq!(j["path"], "/base", "the base path itself maps to operation / and forwards the endpoint path");
}

#[test]
fn unknown_routes_and_methods_get_json_errors() {
    let (_tmp, _be, gw) = setup();
    let r = gw.get("/nowhere/at/all");
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["error"], "not_found");

    let r = gw.get("/open-banking/aisp/v3.1/accounts");
    assert_eq!(r.status, 404, "undeclared operation");

    let r = request(gw.http, "DELETE", "/open-banking/aisp/v3.1/accounts/1", &[], b"");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, OPTIONS"));
    assert_eq!(r.json()["error"], "method_not_allowed");

    let r = gw.get("/open-banking/aisp/v3.1/accounts/../../../etc");
    assert_eq!(r.status, 400, "dot segments are refused");

    // What a backend could resolve differently from the gateway is refused
    // before any route decision, also on an API that allows every path.
    for path in [
        "/open-banking/v1/..;/admin",
        "/open-banking/v1/x/..;jsessionid=1/admin",
        "/open-banking/v1/%2e%2e/admin",
        "/open-banking/v1/.%2E/admin",
        "/open-banking/v1/%252e%252e/admin",
        "/open-banking/v1/a%2Fb",
        "/open-banking/v1/a%5cb",
        "/open-banking/v1/a%00b",
        "/open-banking/v1/%zz",
        "/open-banking/v1//admin",
        "/open-banking/aisp/v3.1/accounts/..%3B/x",
    ] {
        let r = gw.get(path);
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert_eq!(r.json()["error"], "bad_request", "{path}");
    }
    assert!(gw.metrics().contains("tollgate_refused_paths_total{result=\"dot_segment\"}"));
    // Equivalent spellings route alike, and the backend gets the canonical one.
    let r = gw.get("/open-banking/aisp/v3.1/%61ccounts/1");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["path"].as_str().unwrap().ends_with("/accounts/1"), "{}", r.text());
}

#[test]
fn forwarding_headers_head_and_hop_by_hop() {
    let (_tmp, _be, gw) = setup();
    let r = request(
        gw.http,
        "GET",
        "/open-banking/aisp/v3.1/accounts/1",
        &[
            ("x-forwarded-for", "198.51.100.7"),
            ("keep-alive", "timeout=5"),
            ("x-custom", "kept"),
            ("te", "trailers"),
            ("Connection", "keep-alive, X-Hop-Only"),
            ("x-hop-only", "named by Connection"),
            ("Proxy-Connection", "keep-alive"),
            ("X-Tollgate-Client-Id", "forged"),
            ("x-tollgate-application", "forged"),
        ],
        b"",
    );
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "an untrusted peer's X-Forwarded-For is replaced");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "gateway.test");
    assert_eq!(h["x-custom"], "kept");
    for gone in ["keep-alive", "te", "x-hop-only", "proxy-connection", "x-tollgate-client-id", "x-tollgate-application"]
    {
        assert!(h.get(gone).is_none(), "{gone} stripped: {h}");
    }
    assert!(h["host"].as_str().unwrap().starts_with("127.0.0.1:"), "Host is the backend's");

    let r = request(gw.http, "HEAD", "/open-banking/aisp/v3.1/accounts/1", &[], b"");
    assert_eq!(r.status, 200, "HEAD is served by a GET operation");
    assert!(r.body.is_empty());
}

#[test]
fn large_bodies_stream_through_unchanged() {
    let (_tmp, _be, gw) = setup();
    let body: Vec<u8> = (0..10 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let mut sum: u64 = 0xcbf2_9ce4_8422_2325;
    for b in &body {
        sum ^= u64::from(*b);
        sum = sum.wrapping_mul(0x0100_0000_01b3);
    }
    let r = request(
        gw.http,
        "POST",
        "/open-banking/aisp/v3.1/payments",
        &[("content-type", "application/octet-stream")],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["bodyBytes"], 10 * 1024 * 1024);
    assert_eq!(j["bodyFnv"], format!("{sum:016x}"), "body arrives byte for byte");
}

#[test]
fn lifecycle_states() {
    let (_tmp, _be, gw) = setup();
    assert_eq!(gw.get("/created/v1/x").status, 404, "Created is not served");
    assert_eq!(gw.get("/retired/v1/x").status, 404, "Retired is absent");
    let r = gw.get("/blocked/v1/x");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "api_blocked");
    let r = gw.get("/deprecated/v1/x");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("deprecation"), Some("true"));
    assert_eq!(gw.get("/open-banking/v1/x").header("deprecation"), None);
}

#[test]
fn cors_preflight_and_response_headers() {
    let (_tmp, _be, gw) = setup();
    let pre = |origin: &str, hdrs: &str| {
        request(
            gw.http,
            "OPTIONS",
            "/cors/v1/x",
            &[("origin", origin), ("access-control-request-method", "GET"), ("access-control-request-headers", hdrs)],
            b"",
        )
    };
    let r = pre("https://tpp.example", "authorization");
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://tpp.example"));
    assert!(r.header("x-backend").is_none(), "answered by the gateway, not the backend");
    let r = pre("https://evil.example", "authorization");
    assert!(r.header("access-control-allow-origin").is_none());
    let r = pre("https://tpp.example", "x-not-allowed");
    assert!(r.header("access-control-allow-origin").is_none());

    let r = request(gw.http, "GET", "/cors/v1/x", &[("origin", "https://tpp.example")], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://tpp.example"));
    assert_eq!(r.header("access-control-expose-headers"), Some("x-backend"));
    let r = request(gw.http, "GET", "/cors/v1/x", &[("origin", "https://evil.example")], b"");
    assert_eq!(r.status, 200);
    assert!(r.header("access-control-allow-origin").is_none(), "disallowed origins get no CORS headers");

    // The backend's own CORS headers never duplicate or override the gateway's.
    let all = |r: &Resp, name: &str| -> Vec<String> {
        r.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone()).collect()
    };
    let r = request(gw.http, "GET", "/cors/v1/x?cors=1", &[("origin", "https://tpp.example")], b"");
    assert_eq!(all(&r, "access-control-allow-origin"), vec!["https://tpp.example"]);
    assert_eq!(all(&r, "access-control-expose-headers"), vec!["x-backend"]);
    assert!(all(&r, "access-control-allow-credentials").is_empty(), "not configured: {:?}", r.headers);
    let vary = all(&r, "vary").join(", ").to_ascii_lowercase();
    assert_eq!(vary.matches("origin").count(), 1, "Origin once in Vary: {vary}");
    assert!(vary.contains("accept-encoding"), "the backend's other Vary values stay: {vary}");
    let r = request(gw.http, "GET", "/cors/v1/x?cors=1", &[("origin", "https://evil.example")], b"");
    assert!(
        all(&r, "access-control-allow-origin").is_empty() && all(&r, "access-control-allow-credentials").is_empty(),
        "a disallowed origin gets no CORS grant from the backend either: {:?}",
        r.headers
    );
}

#[test]
fn status_and_metrics() {
    let (_tmp, _be, gw) = setup();
    gw.get("/open-banking/aisp/v3.1/accounts/1");
    let st = gw.status();
    assert_eq!(st["apis"], 7, "{st}");
    assert!(st["errors"].as_array().unwrap().is_empty(), "{st}");
    assert!(st["revision"].as_str().unwrap().len() >= 8);
    let m = gw.metrics();
    assert!(m.contains("tollgate_requests_total{api=\"bank/aisp-v3\",class=\"2xx\"} 1"), "{m}");
    assert!(m.contains("tollgate_request_duration_seconds_bucket"));
    assert!(m.contains("tollgate_requests_per_second"));
    assert_eq!(request(gw.mgmt, "GET", "/healthz", &[], b"").status, 200);
}

#[test]
fn gateway_groups_serve_only_the_apis_that_target_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("config");
    std::fs::create_dir(&dir).unwrap();
    let (_be, addr) = echo("bank");
    let b = format!("http://{addr}");
    std::fs::write(dir.join("prod.yaml"), api("prod", "/prod", "v1", &b, "  gateways: [production]\n")).unwrap();
    std::fs::write(dir.join("sandbox.yaml"), api("sandbox", "/sandbox", "v1", &b, "  gateways: [sandbox]\n")).unwrap();
    std::fs::write(dir.join("both.yaml"), api("both", "/both", "v1", &b, "")).unwrap();

    let production = gateway(&dir, &["--gateway-group", "production"]);
    assert_eq!(production.get("/prod/v1/x").status, 200);
    assert_eq!(production.get("/both/v1/x").status, 200, "no spec.gateways: every group serves it");
    assert_eq!(production.get("/sandbox/v1/x").status, 404, "another group's API is not served");

    let ungrouped = gateway(&dir, &[]);
    for path in ["/prod/v1/x", "/sandbox/v1/x", "/both/v1/x"] {
        assert_eq!(ungrouped.get(path).status, 200, "{path}: without a group every API is served");
    }
}
