//! Backend faults: ejection of dead endpoints, timeouts, retries.

mod support;

use std::time::{Duration, Instant};

use support::*;

#[test]
fn dead_endpoint_is_ejected_while_traffic_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("config");
    std::fs::create_dir(&dir).unwrap();
    let (_be, addr) = echo("alive");
    let dead = format!("http://127.0.0.1:{}", free_port());
    let text = api("a", "/a", "v1", &format!("http://{addr}"), "")
        .replace("endpoints: [{url: ", &format!("endpoints: [{{url: '{dead}'}}, {{url: "));
    std::fs::write(dir.join("a.yaml"), &text).unwrap();
    let gw = gateway(&dir, &["--access-log", "false", "--eject-seconds", "30"]);
    // GETs retry on the other endpoint; all succeed.
    for _ in 0..20 {
        assert_eq!(gw.get("/a/v1/x").status, 200);
    }
    // Non-idempotent requests are not retried, but the dead one is ejected,
    // so they reach the live endpoint too.
    for _ in 0..10 {
        assert_eq!(request(gw.http, "POST", "/a/v1/x", &[], b"{}").status, 200);
    }
    let m = gw.metrics();
    let connect_errors: u64 = m
        .lines()
        .find(|l| l.starts_with("tollgate_upstream_errors_total{api=\"bank/a\",kind=\"connect\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!((1..=2).contains(&connect_errors), "the dead endpoint was tried once, then ejected: {connect_errors}");
}

#[test]
fn unreachable_backend_gives_502_and_slow_backend_504_at_the_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("config");
    std::fs::create_dir(&dir).unwrap();
    let (_be, addr) = echo("slow");
    std::fs::write(
        dir.join("slow.yaml"),
        api("slow", "/slow", "v1", &format!("http://{addr}"), "")
            .replace("    endpoints:", "    timeout: 300ms\n    retries: 0\n    endpoints:"),
    )
    .unwrap();
    std::fs::write(dir.join("dead.yaml"), api("dead", "/dead", "v1", &format!("http://127.0.0.1:{}", free_port()), ""))
        .unwrap();
    let gw = gateway(&dir, &["--access-log", "false"]);
    let r = gw.get("/dead/v1/x");
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "bad_gateway");
    let start = Instant::now();
    let r = gw.get("/slow/v1/x?delay_ms=2000");
    let took = start.elapsed();
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"], "gateway_timeout");
    assert!(took >= Duration::from_millis(280) && took < Duration::from_millis(1500), "{took:?}");
    assert_eq!(gw.get("/slow/v1/x?delay_ms=50").status, 200);
}

#[test]
fn backend_host_names_resolve_off_the_request_path_and_unknown_hosts_give_502() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("config");
    std::fs::create_dir(&dir).unwrap();
    let (_be, addr) = echo("by-name");
    // By name: "localhost" resolves.
    std::fs::write(
        dir.join("named.yaml"),
        api("named", "/named", "v1", &format!("http://localhost:{}", addr.port()), ""),
    )
    .unwrap();
    // A host that does not resolve (yet): the API is still accepted and served with 502.
    std::fs::write(
        dir.join("later.yaml"),
        api("later", "/later", "v1", "http://backend-not-there-yet.invalid:8080", ""),
    )
    .unwrap();
    let gw = gateway(&dir, &["--dns-refresh-seconds", "0.2"]);
    assert_eq!(gw.get("/named/v1/x").status, 200);
    let r = gw.get("/later/v1/x");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.json()["error"].is_string(), "JSON error body: {}", r.text());
    let status = gw.status();
    assert_eq!(status["apis"], 2, "an unresolvable backend does not reject the API: {status}");
    assert!(status["errors"].as_array().unwrap().is_empty(), "{status}");
}
