//! Throttling through a real gateway process.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use support::*;

fn setup(policies: &[(&str, &str)], apis: &[String]) -> (tempfile::TempDir, Proc, Gateway) {
    setup_with(policies, apis, &[])
}

fn setup_with(policies: &[(&str, &str)], apis: &[String], extra: &[&str]) -> (tempfile::TempDir, Proc, Gateway) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("config");
    std::fs::create_dir(&dir).unwrap();
    let (be, addr) = echo("bank");
    for (name, body) in policies {
        std::fs::write(dir.join(format!("tp-{name}.yaml")), policy(name, body)).unwrap();
    }
    for (i, a) in apis.iter().enumerate() {
        std::fs::write(dir.join(format!("api-{i}.yaml")), a.replace("BACKEND", &format!("http://{addr}"))).unwrap();
    }
    let mut args = vec!["--access-log", "false"];
    args.extend_from_slice(extra);
    let gw = gateway(&dir, &args);
    (tmp, be, gw)
}

/// Sends `n` requests from 16 threads; returns (200s, 429s). The caller
/// makes sure the windows that count them do not end meanwhile: limits per
/// 30 days (with [`away_from_long_window_end`]) or [`in_one_window`].
fn burst(gw: &Gateway, path: &str, n: usize, headers: &'static [(&'static str, &'static str)]) -> (usize, usize) {
    let ok = Arc::new(AtomicUsize::new(0));
    let limited = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let (ok, limited, addr, path) = (ok.clone(), limited.clone(), gw.http, path.to_string());
            std::thread::spawn(move || {
                for _ in (t..n).step_by(16) {
                    match request(addr, "GET", &path, headers, b"").status {
                        200 => ok.fetch_add(1, Ordering::Relaxed),
                        429 => limited.fetch_add(1, Ordering::Relaxed),
                        s => panic!("unexpected status {s}"),
                    };
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    (ok.load(Ordering::Relaxed), limited.load(Ordering::Relaxed))
}

#[test]
fn exactly_n_of_a_concurrent_burst_pass_and_429_has_headers() {
    let (_t, _b, gw) = setup(
        &[("ten", "  limit: {requests: 40, per: 30d}\n  scope: Replica\n")],
        &[api("a", "/a", "v1", "BACKEND", "  throttling: {policy: ten}\n")],
    );
    away_from_long_window_end();
    let (ok, limited) = burst(&gw, "/a/v1/x", 200, &[]);
    assert_eq!((ok, limited), (40, 160), "exactly N of 5N pass");
    let r = gw.get("/a/v1/x");
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"], "too_many_requests");
    assert_eq!(r.json()["policy"], "ten");
    assert_eq!(r.header("ratelimit-limit"), Some("40"));
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=LONG_PERIOD_SECS).contains(&retry));
    assert_eq!(r.header("ratelimit-reset"), Some(retry.to_string().as_str()));
    assert!(gw.metrics().contains("tollgate_throttled_requests_total{policy=\"bank/ten\",action=\"rejected\"} 161"));
}

#[test]
fn window_resets_on_time() {
    let (_t, _b, gw) = setup(
        &[("two", "  limit: {requests: 2, per: 2s}\n")],
        &[api("a", "/a", "v1", "BACKEND", "  throttling: {policy: two}\n")],
    );
    // Three requests in one window (measured again in a fresh window if a
    // slow machine spread them over two).
    let ((first, second, remaining, third), window) = in_one_window(2, || {
        let first = gw.get("/a/v1/x").status;
        let r = gw.get("/a/v1/x");
        (first, r.status, r.header("ratelimit-remaining").map(str::to_string), gw.get("/a/v1/x").status)
    });
    assert_eq!((first, second, remaining.as_deref(), third), (200, 200, Some("0"), 429));
    // Once that window has ended, whenever the next request comes, its
    // window is a fresh one.
    after_window(2, window);
    assert_eq!(gw.get("/a/v1/x").status, 200, "a new window admits again");
}

#[test]
fn burst_is_a_spike_arrest() {
    let (_t, _b, gw) = setup(
        &[("spiky", "  limit: {requests: 1000, per: 1h}\n  burst: {requests: 5, per: 10s}\n")],
        &[api("a", "/a", "v1", "BACKEND", "  throttling: {policy: spiky}\n")],
    );
    // The burst and the refused request after it in one 10 s window.
    let ((ok, limited, refused), _) = in_one_window(10, || {
        let (ok, limited) = burst(&gw, "/a/v1/x", 30, &[]);
        (ok, limited, gw.get("/a/v1/x"))
    });
    assert_eq!(ok + limited, 30);
    assert_eq!(ok, 5, "burst of 5 per 10s: {ok} passed");
    assert!(refused.json()["message"].as_str().unwrap().contains("spike arrest"), "{}", refused.text());
}

#[test]
fn per_key_isolation_by_header_and_conditions() {
    let (_t, _b, gw) = setup(
        &[(
            "by-customer",
            "  limit: {requests: 3, per: 30d}\n  keyBy: Header\n  keyName: x-fapi-customer-ip-address\n  conditions:\n  - match: {headers: [{name: x-partner, value: trusted}]}\n    limit: {requests: 6, per: 30d}\n",
        )],
        &[api("a", "/a", "v1", "BACKEND", "  throttling: {policy: by-customer}\n")],
    );
    away_from_long_window_end();
    let (ok_a, _) = burst(&gw, "/a/v1/x", 10, &[("x-fapi-customer-ip-address", "203.0.113.1")]);
    let (ok_b, _) = burst(&gw, "/a/v1/x", 10, &[("x-fapi-customer-ip-address", "203.0.113.2")]);
    assert_eq!((ok_a, ok_b), (3, 3), "each header value has its own counter");
    let (ok_c, _) =
        burst(&gw, "/a/v1/x", 10, &[("x-fapi-customer-ip-address", "203.0.113.3"), ("x-partner", "trusted")]);
    assert_eq!(ok_c, 6, "first matching condition gives its own limit");
}

#[test]
fn client_ip_keys_and_ip_range_conditions() {
    let (_t, _b, gw) = setup(
        &[(
            "by-ip",
            "  limit: {requests: 2, per: 30d}\n  keyBy: ClientIp\n  conditions:\n  - match: {ipRanges: [10.0.0.0/8]}\n    limit: {requests: 1, per: 30d}\n  - match: {ipRanges: [127.0.0.0/8]}\n    limit: {requests: 4, per: 30d}\n",
        )],
        &[api("a", "/a", "v1", "BACKEND", "  throttling: {policy: by-ip}\n")],
    );
    away_from_long_window_end();
    let (ok, _) = burst(&gw, "/a/v1/x", 10, &[]);
    assert_eq!(ok, 4, "loopback clients match the 127.0.0.0/8 condition");
}

#[test]
fn count_only_policies_flag_instead_of_reject_and_operation_policies_apply_too() {
    let (_t, _b, gw) = setup(
        &[
            ("soft", "  limit: {requests: 2, per: 30d}\n  stopOnQuotaReach: false\n"),
            ("op", "  limit: {requests: 3, per: 30d}\n"),
        ],
        &[api(
            "a",
            "/a",
            "v1",
            "BACKEND",
            "  throttling: {policy: soft}\n  operations:\n  - {method: GET, path: /x, throttling: {policy: op}}\n  - {method: GET, path: /y}\n",
        )],
    );
    away_from_long_window_end();
    let codes: Vec<u16> = (0..4).map(|_| gw.get("/a/v1/y").status).collect();
    assert_eq!(codes, vec![200, 200, 200, 200], "count-only never rejects");
    let r = gw.get("/a/v1/y");
    assert_eq!(r.header("x-tollgate-quota-exceeded"), Some("soft"));
    let codes: Vec<u16> = (0..4).map(|_| gw.get("/a/v1/x").status).collect();
    assert_eq!(codes, vec![200, 200, 200, 429], "operation policy enforced on top of the API policy");
    assert!(gw.metrics().contains("action=\"flagged\""));
}

/// keyBy: Claim reads verified claims only. Unverified bearer tokens (here
/// on an open API, where nothing verifies them) do not get a counter of
/// their own: forging a new `sub` per request does not escape the limit.
#[test]
fn forged_token_claims_do_not_mint_counters() {
    let (_t, _be, gw) = setup(
        &[("per-sub", "  limit: {requests: 3, per: 30d}\n  keyBy: Claim\n  keyName: sub\n")],
        &[api("open", "/open", "v1", "BACKEND", "  throttling: {policy: per-sub}\n")],
    );
    away_from_long_window_end();
    let statuses: Vec<u16> = (0..6)
        .map(|i| {
            // {"alg":"none"}.{"sub":"forged-<i>"}.
            let payload = format!("{{\"sub\":\"forged-{i}\"}}");
            let b64 = |s: &str| {
                use base64::Engine;
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
            };
            let token = format!("Bearer {}.{}.", b64("{\"alg\":\"none\"}"), b64(&payload));
            request(gw.http, "GET", "/open/v1/x", &[("authorization", &token)], b"").status
        })
        .collect();
    assert_eq!(statuses, vec![200, 200, 200, 429, 429, 429]);
}

/// A request refused by one policy consumes no quota of another: a client
/// hammering its own (operation-level, per-header) limit does not use up
/// the API-wide quota that everyone shares.
#[test]
fn a_request_refused_by_one_policy_uses_no_quota_of_the_others() {
    let (_t, _be, gw) = setup(
        &[
            ("shared", "  limit: {requests: 10, per: 30d}\n"),
            ("per-client", "  limit: {requests: 1, per: 30d}\n  keyBy: Header\n  keyName: x-client\n"),
        ],
        &[api_with_operation_policy("both", "/both", "BACKEND", "shared", "per-client")],
    );
    away_from_long_window_end();
    let call = |client: &str| request(gw.http, "GET", "/both/v1/x", &[("x-client", client)], b"").status;
    let flood: Vec<u16> = (0..6).map(|_| call("greedy")).collect();
    assert_eq!(flood, vec![200, 429, 429, 429, 429, 429]);
    // 9 of the shared 10 are left for everyone else.
    let others: Vec<u16> = (0..12).map(|i| call(&format!("client-{i}"))).collect();
    assert_eq!(others.iter().filter(|s| **s == 200).count(), 9, "{others:?}");
    assert_eq!(&others[9..], &[429, 429, 429]);
}

/// X-Forwarded-For from an untrusted peer is replaced (a client cannot pick
/// its own throttling key or forge its address for the backend); behind a
/// --trusted-proxies peer, the right-most untrusted entry is the client.
#[test]
fn forwarded_addresses_count_only_from_trusted_proxies() {
    let policies = [("by-ip", "  limit: {requests: 2, per: 30d}\n  keyBy: ClientIp\n")];
    let apis = [api("a", "/a", "v1", "BACKEND", "  throttling: {policy: by-ip}\n")];
    let call = |gw: &Gateway, xff: &str| {
        let r = request(
            gw.http,
            "GET",
            "/a/v1/x",
            &[("x-forwarded-for", xff), ("x-forwarded-proto", "https"), ("x-forwarded-host", "evil.example")],
            b"",
        );
        let seen = if r.status == 200 { r.json()["headers"].clone() } else { serde_json::Value::Null };
        (r.status, seen)
    };
    away_from_long_window_end();

    // Untrusted: spoofed headers are replaced; every request is the peer's.
    let (_t1, _b1, plain) = setup(&policies, &apis);
    let (status, seen) = call(&plain, "203.0.113.1");
    assert_eq!(status, 200);
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "{seen}");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "gateway.test");
    assert_eq!(call(&plain, "203.0.113.2").0, 200);
    assert_eq!(call(&plain, "203.0.113.3").0, 429, "a new spoofed address is no new client");

    // Trusted peer: the forwarded client is the key, the chain is extended.
    let (_t2, _b2, behind) = setup_with(&policies, &apis, &["--trusted-proxies", "127.0.0.0/8,10.0.0.0/8"]);
    let (status, seen) = call(&behind, "198.51.100.7, 203.0.113.1, 10.0.0.5");
    assert_eq!(status, 200);
    assert_eq!(seen["x-forwarded-for"], "198.51.100.7, 203.0.113.1, 10.0.0.5, 127.0.0.1", "{seen}");
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert_eq!(seen["x-forwarded-host"], "evil.example");
    assert_eq!(call(&behind, "203.0.113.1").0, 200);
    assert_eq!(call(&behind, "203.0.113.1").0, 429, "client 203.0.113.1 used its 2");
    assert_eq!(call(&behind, "203.0.113.2").0, 200, "another client behind the proxy has its own");
}
