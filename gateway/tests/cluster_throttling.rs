//! Cluster-wide throttling: three gateway processes share one real Redis
//! (redis-server from Debian packages, started here on loopback).

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::*;

/// A redis-server on a free loopback port, no persistence.
struct Redis {
    proc: Option<Proc>,
    port: u16,
}

impl Redis {
    fn start_on(port: u16) -> Proc {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (make deps installs it)");
        wait_port(format!("127.0.0.1:{port}").parse().unwrap());
        Proc(child)
    }
    fn start() -> Redis {
        let port = free_port();
        Redis { proc: Some(Self::start_on(port)), port }
    }
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
    fn stop(&mut self) {
        self.proc = None;
    }
    fn restart(&mut self) {
        self.proc = Some(Self::start_on(self.port));
    }
}

struct Cluster {
    _tmp: tempfile::TempDir,
    _backend: Proc,
    gateways: Vec<Gateway>,
}

fn cluster(redis: &Redis, policies: &[(&str, &str)], apis: &[String], extra: &[&str]) -> Cluster {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("config");
    std::fs::create_dir(&dir).unwrap();
    let (backend, addr) = echo("bank");
    for (name, body) in policies {
        std::fs::write(dir.join(format!("policy-{name}.yaml")), policy(name, body)).unwrap();
    }
    for (i, a) in apis.iter().enumerate() {
        std::fs::write(dir.join(format!("api-{i}.yaml")), a.replace("BACKEND", &format!("http://{addr}"))).unwrap();
    }
    let prefix = format!("test-{}", free_port());
    let url = redis.url();
    let mut args = vec!["--access-log", "false", "--redis-url", &url, "--redis-key-prefix", &prefix];
    args.extend_from_slice(extra);
    let gateways: Vec<Gateway> = (0..3).map(|_| gateway(&dir, &args)).collect();
    for g in &gateways {
        eventually(Duration::from_secs(10), || g.status()["trafficManager"]["state"] == "ok");
    }
    Cluster { _tmp: tmp, _backend: backend, gateways }
}

/// What --redis-timeout-ms the outage tests give the gateways: far longer
/// than any request takes on a loaded machine, so a request that waited on
/// the dead Redis (until this timeout) stands out from one that did not,
/// however slowly the machine answers.
const REDIS_TIMEOUT_MS: &str = "30000";

/// A request that took this long waited on Redis (half of [`REDIS_TIMEOUT_MS`]).
const WAITED_ON_REDIS: Duration = Duration::from_secs(15);

/// Sends `n` requests from 24 threads, spread round-robin over the
/// gateways; returns (200s, 429s, other statuses, slowest request).
fn spread(
    gws: &[SocketAddr],
    path: &str,
    n: usize,
    headers: &'static [(&'static str, &'static str)],
) -> (usize, usize, Vec<u16>, Duration) {
    let ok = Arc::new(AtomicUsize::new(0));
    let limited = Arc::new(AtomicUsize::new(0));
    let others = Arc::new(parking_lot_free::Others::default());
    let slowest = Arc::new(std::sync::Mutex::new(Duration::ZERO));
    let threads: Vec<_> = (0..24)
        .map(|t| {
            let (ok, limited, others, slowest) = (ok.clone(), limited.clone(), others.clone(), slowest.clone());
            let (gws, path) = (gws.to_vec(), path.to_string());
            std::thread::spawn(move || {
                for i in (t..n).step_by(24) {
                    let started = Instant::now();
                    let status = request(gws[i % gws.len()], "GET", &path, headers, b"").status;
                    let took = started.elapsed();
                    let mut s = slowest.lock().unwrap();
                    *s = (*s).max(took);
                    drop(s);
                    match status {
                        200 => ok.fetch_add(1, Ordering::Relaxed),
                        429 => limited.fetch_add(1, Ordering::Relaxed),
                        other => {
                            others.push(other);
                            0
                        }
                    };
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let slowest = *slowest.lock().unwrap();
    (ok.load(Ordering::Relaxed), limited.load(Ordering::Relaxed), others.take(), slowest)
}

mod parking_lot_free {
    #[derive(Default)]
    pub struct Others(std::sync::Mutex<Vec<u16>>);
    impl Others {
        pub fn push(&self, s: u16) {
            self.0.lock().unwrap().push(s);
        }
        pub fn take(&self) -> Vec<u16> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }
}

fn addrs(c: &Cluster) -> Vec<SocketAddr> {
    c.gateways.iter().map(|g| g.http).collect()
}

#[test]
fn a_limit_holds_across_three_gateways_with_per_key_isolation() {
    let redis = Redis::start();
    let c = cluster(
        &redis,
        &[
            ("shared", "  limit: {requests: 200, per: 30d}\n  keyBy: Api\n"),
            ("per-customer", "  limit: {requests: 30, per: 30d}\n  keyBy: Header\n  keyName: x-customer\n"),
        ],
        &[
            api("a", "/a", "v1", "BACKEND", "  throttling: {policy: shared}\n"),
            api("k", "/k", "v1", "BACKEND", "  throttling: {policy: per-customer}\n"),
        ],
        &[],
    );
    away_from_long_window_end();
    let (ok, limited, others, _) = spread(&addrs(&c), "/a/v1/x", 1000, &[]);
    assert!(others.is_empty(), "{others:?}");
    assert!((196..=200).contains(&ok), "between 0.98 N and N admitted across the gateways, got {ok}");
    assert_eq!(ok + limited, 1000);
    // Redis round trips were far fewer than requests (leases).
    let leases: u64 = c
        .gateways
        .iter()
        .map(|g| {
            g.metrics()
                .lines()
                .find(|l| l.starts_with("tollgate_traffic_manager_leases_total"))
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
                .unwrap_or(0)
        })
        .sum();
    assert!(leases > 0 && leases < 200, "lease calls {leases} for {ok} admissions");

    // Per-key isolation: two customers, each with its own cluster-wide 30.
    let (a, _, o1, _) = spread(&addrs(&c), "/k/v1/x", 90, &[("x-customer", "alice")]);
    let (b, _, o2, _) = spread(&addrs(&c), "/k/v1/x", 90, &[("x-customer", "bob")]);
    assert!(o1.is_empty() && o2.is_empty());
    assert!((29..=30).contains(&a) && (29..=30).contains(&b), "alice {a}, bob {b}");
}

/// stopOnQuotaReach: false under scope Cluster: every request passes, and
/// those over the cluster-wide limit are flagged (header and metric).
#[test]
fn count_only_cluster_policies_flag_requests_over_the_limit() {
    let redis = Redis::start();
    let c = cluster(
        &redis,
        &[("watch", "  limit: {requests: 5, per: 30d}\n  stopOnQuotaReach: false\n")],
        &[api("w", "/w", "v1", "BACKEND", "  throttling: {policy: watch}\n")],
        &[],
    );
    away_from_long_window_end();
    let mut flagged = 0;
    for i in 0..12 {
        let r = request(addrs(&c)[i % 3], "GET", "/w/v1/x", &[], b"");
        assert_eq!(r.status, 200, "count-only never rejects");
        if r.header("x-tollgate-quota-exceeded") == Some("watch") {
            flagged += 1;
        }
    }
    assert_eq!(flagged, 7, "the 7 requests past the cluster-wide 5 are flagged");
    let counted: u64 = c
        .gateways
        .iter()
        .flat_map(|g| {
            g.metrics()
                .lines()
                .filter(|l| l.starts_with("tollgate_throttled_requests_total") && l.contains("flagged"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum();
    assert_eq!(counted, 7);
}

/// A request refused by a later (local) policy gives its cluster-wide count
/// back: it does not use up the quota everyone shares.
#[test]
fn a_refused_request_uses_no_cluster_quota() {
    let redis = Redis::start();
    let c = cluster(
        &redis,
        &[
            ("shared", "  limit: {requests: 10, per: 30d}\n  scope: Cluster\n"),
            (
                "per-client",
                "  limit: {requests: 1, per: 30d}\n  keyBy: Header\n  keyName: x-client\n  scope: Replica\n",
            ),
        ],
        &[api_with_operation_policy("both", "/both", "BACKEND", "shared", "per-client")],
        &[],
    );
    away_from_long_window_end();
    let gw = addrs(&c)[0];
    let call = |client: &str| request(gw, "GET", "/both/v1/x", &[("x-client", client)], b"").status;
    let flood: Vec<u16> = (0..6).map(|_| call("greedy")).collect();
    assert_eq!(flood, vec![200, 429, 429, 429, 429, 429]);
    let others: Vec<u16> = (0..12).map(|i| call(&format!("client-{i}"))).collect();
    assert_eq!(others.iter().filter(|s| **s == 200).count(), 9, "{others:?}");
}

#[test]
fn windows_reset_and_bursts_hold_cluster_wide() {
    let redis = Redis::start();
    let c = cluster(
        &redis,
        &[
            ("short", "  limit: {requests: 12, per: 3s}\n"),
            ("spiky", "  limit: {requests: 100000, per: 1h}\n  burst: {requests: 15, per: 10s}\n"),
        ],
        &[
            api("s", "/s", "v1", "BACKEND", "  throttling: {policy: short}\n"),
            api("b", "/b", "v1", "BACKEND", "  throttling: {policy: spiky}\n"),
        ],
        &[],
    );
    // Each measurement inside one window (again in a fresh window when a
    // slow machine spread it over two).
    let ((first, _, _, _), window) = in_one_window(3, || spread(&addrs(&c), "/s/v1/x", 36, &[]));
    assert!((11..=12).contains(&first), "first window: {first}");
    after_window(3, window);
    let ((second, _, _, _), _) = in_one_window(3, || spread(&addrs(&c), "/s/v1/x", 36, &[]));
    assert!((11..=12).contains(&second), "after the window reset: {second}");

    // (The hourly limit of 100000 is never reached: only the burst counts.)
    let ((burst, limited, _, _), _) = in_one_window(10, || spread(&addrs(&c), "/b/v1/x", 60, &[]));
    assert!((14..=15).contains(&burst), "spike arrest 15 per 10 s across gateways: {burst} ({limited} limited)");
}

#[test]
fn redis_outage_open_keeps_serving_and_recovery_resumes_cluster_counting() {
    let mut redis = Redis::start();
    let c = cluster(
        &redis,
        &[("gold", "  limit: {requests: 60, per: 30d}\n  keyBy: Header\n  keyName: x-app\n")],
        &[api("a", "/a", "v1", "BACKEND", "  throttling: {policy: gold}\n")],
        &["--redis-timeout-ms", REDIS_TIMEOUT_MS, "--redis-failure-mode", "open"],
    );
    away_from_long_window_end();
    redis.stop();
    // Open: traffic keeps flowing, counted per gateway (so up to 3 x 60 for one key).
    let (ok, limited, others, slowest) = spread(&addrs(&c), "/a/v1/x", 90, &[("x-app", "during-outage")]);
    assert!(others.is_empty(), "{others:?}");
    assert_eq!(ok + limited, 90);
    assert!(ok >= 60, "open mode serves: {ok}");
    // A dead Redis is noticed from its closed connection, not by waiting for
    // the --redis-timeout-ms; and once degraded, no request asks it again.
    assert!(slowest < WAITED_ON_REDIS, "no request waits on a dead Redis: {slowest:?}");
    for g in &c.gateways {
        let st = g.status();
        assert_eq!(st["trafficManager"]["state"], "degraded", "{st}");
        assert!(g.metrics().contains("tollgate_degraded{result=\"redis\"} 1"));
    }
    redis.restart();
    for g in &c.gateways {
        eventually(Duration::from_secs(5), || g.status()["trafficManager"]["state"] == "ok");
    }
    let (ok, _, _, _) = spread(&addrs(&c), "/a/v1/x", 180, &[("x-app", "after-recovery")]);
    assert!((59..=60).contains(&ok), "cluster counting resumed: {ok}");
}

#[test]
fn redis_outage_closed_answers_503_without_waiting_on_redis() {
    let mut redis = Redis::start();
    let c = cluster(
        &redis,
        &[("gold", "  limit: {requests: 1000, per: 30d}\n  keyBy: Header\n  keyName: x-app\n")],
        &[api("a", "/a", "v1", "BACKEND", "  throttling: {policy: gold}\n"), api("free", "/free", "v1", "BACKEND", "")],
        &["--redis-timeout-ms", REDIS_TIMEOUT_MS, "--redis-failure-mode", "closed"],
    );
    // The lease taken before the outage stays in its window.
    away_from_long_window_end();
    let app = |gw: &Gateway, name: &str| request(gw.http, "GET", "/a/v1/x", &[("x-app", name)], b"");
    assert_eq!(app(&c.gateways[0], "before").status, 200);
    redis.stop();
    // Quota already leased before the outage stays usable; a key that needs
    // Redis now is refused.
    assert_eq!(app(&c.gateways[0], "before").status, 200, "leased quota is honoured");
    let started = Instant::now();
    let r = app(&c.gateways[0], "new-app");
    let took = started.elapsed();
    assert!(took < WAITED_ON_REDIS, "the refusal did not wait on the dead Redis: {took:?}");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "traffic_manager_unavailable");
    assert_eq!(c.gateways[1].get("/free/v1/x").status, 200, "APIs without a cluster policy are unaffected");
    redis.restart();
    eventually(Duration::from_secs(5), || app(&c.gateways[0], "new-app").status == 200);
}
