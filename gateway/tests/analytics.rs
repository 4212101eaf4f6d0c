//! Analytics end to end: a scripted mix of answers (200, 429, 502) across
//! two applications and APIs, recorded by the gateway process and read
//! back through /api/v1/analytics exactly; latency percentiles against a
//! backend that sleeps known times; CSV; availability; a restart that keeps
//! everything; two gateways on one PostgreSQL summed.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use support::oauth::{ADMIN, admin_at};
use support::postgres::Postgres;
use support::*;

fn manifests(dir: &Path, backend: &str) {
    std::fs::write(dir.join("tier.yaml"), policy("three", "  limit: {requests: 3, per: 30d}\n  keyBy: Consumer\n"))
        .unwrap();
    std::fs::write(dir.join("wide.yaml"), policy("wide", "  limit: {requests: 1000000, per: 1h}\n  keyBy: Consumer\n"))
        .unwrap();
    let sec = "  security: {apiKey: {}}\n";
    std::fs::write(
        dir.join("a.yaml"),
        api(
            "accounts",
            "/accounts",
            "v1",
            backend,
            &format!("{sec}  operations: [{{method: GET, path: '/{{id}}'}}]\n"),
        ),
    )
    .unwrap();
    // Nothing listens on port 9: every call is a 502.
    std::fs::write(dir.join("b.yaml"), api("broken", "/broken", "v1", "http://127.0.0.1:9", sec)).unwrap();
}

struct Env {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    _backend: Proc,
    gw: Gateway,
    token: std::path::PathBuf,
}

fn start(extra: &[&str]) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("config");
    std::fs::create_dir_all(&dir).unwrap();
    let (backend, addr) = echo("bank");
    manifests(&dir, &format!("http://{addr}"));
    let token = tmp.path().join("admin-token");
    std::fs::write(&token, ADMIN).unwrap();
    let gw = start_gateway(&dir, &token, extra);
    Env { _tmp: tmp, dir, _backend: backend, gw, token }
}

fn start_gateway(dir: &Path, token: &Path, extra: &[&str]) -> Gateway {
    let mut flags = vec!["--admin-token-file", token.to_str().unwrap(), "--access-log", "false"];
    if !extra.contains(&"--analytics-flush-seconds") {
        flags.extend_from_slice(&["--analytics-flush-seconds", "1"]);
    }
    flags.extend_from_slice(extra);
    gateway(dir, &flags)
}

/// A new application subscribed to both APIs (tier "three") and its key.
fn app_with_key(gw: &Gateway, name: &str) -> (String, String) {
    app_with_tier(gw, name, "three")
}

fn app_with_tier(gw: &Gateway, name: &str, tier: &str) -> (String, String) {
    let app = admin_at(gw.mgmt, "POST", "/api/v1/applications", json!({"name": name})).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    for a in ["bank/accounts", "bank/broken"] {
        let r =
            admin_at(gw.mgmt, "POST", "/api/v1/subscriptions", json!({"applicationId": app, "api": a, "policy": tier}));
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let key = admin_at(gw.mgmt, "POST", &format!("/api/v1/applications/{app}/keys"), Value::Null).json()["apiKey"]
        .as_str()
        .unwrap()
        .to_string();
    (app, key)
}

fn get(gw: &Gateway, path: &str, key: &str) -> u16 {
    request(gw.http, "GET", path, &[("apikey", key)], b"").status
}

fn usage(gw: &Gateway, query: &str) -> Vec<Value> {
    let r = admin_at(gw.mgmt, "GET", &format!("/api/v1/analytics/usage?{query}"), Value::Null);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["rows"].as_array().unwrap().clone()
}

/// Totals per (api, application) over the last hour (the hourly table).
fn totals(gw: &Gateway) -> Vec<(String, String, u64, u64, u64)> {
    totals_of(gw, "hour")
}

/// Totals per (api, application) in the rows of one granularity.
fn totals_of(gw: &Gateway, granularity: &str) -> Vec<(String, String, u64, u64, u64)> {
    let mut t: Vec<(String, String, u64, u64, u64)> = Vec::new();
    for r in usage(gw, &format!("granularity={granularity}")) {
        let key = (r["api"].as_str().unwrap().to_string(), r["application"].as_str().unwrap_or("").to_string());
        let (req, err, thr) =
            (r["requests"].as_u64().unwrap(), r["errors"].as_u64().unwrap(), r["throttled"].as_u64().unwrap());
        match t.iter_mut().find(|x| (x.0.as_str(), x.1.as_str()) == (key.0.as_str(), key.1.as_str())) {
            Some(x) => {
                x.2 += req;
                x.3 += err;
                x.4 += thr;
            }
            None => t.push((key.0, key.1, req, err, thr)),
        }
    }
    t.sort();
    t
}

#[test]
fn exact_totals_percentiles_csv_availability_and_a_restart() {
    let mut env = start(&[]);
    let (app1, key1) = app_with_key(&env.gw, "tpp-one");
    let (app2, key2) = app_with_key(&env.gw, "tpp-two");
    // app1: 3 x 200 with known latencies, then a 429 (tier: 3 per 30-day
    // window, so no window boundary falls inside the test).
    // How long each took as the client saw it: the gateway's own measure
    // of a request lies within it, however slowly a loaded machine answers.
    let mut seen_ms = Vec::new();
    for ms in [100, 400, 1600] {
        let started = std::time::Instant::now();
        assert_eq!(get(&env.gw, &format!("/accounts/v1/x?delay_ms={ms}"), &key1), 200);
        seen_ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    assert_eq!(get(&env.gw, "/accounts/v1/x", &key1), 429);
    // app2: 2 x 502 on the broken API, 1 x 200.
    assert_eq!(get(&env.gw, "/broken/v1/x", &key2), 502);
    assert_eq!(get(&env.gw, "/broken/v1/x", &key2), 502);
    assert_eq!(get(&env.gw, "/accounts/v1/y", &key2), 200);
    // Unauthenticated: counted without an application.
    assert_eq!(request(env.gw.http, "GET", "/accounts/v1/x", &[], b"").status, 401);

    let expected = {
        let mut e = vec![
            ("bank/accounts".to_string(), String::new(), 1, 0, 0),
            ("bank/accounts".to_string(), app1.clone(), 4, 0, 1),
            ("bank/accounts".to_string(), app2.clone(), 1, 0, 0),
            ("bank/broken".to_string(), app2.clone(), 2, 2, 0),
        ];
        e.sort();
        e
    };
    // The hourly rows and then the daily ones are written by one compaction:
    // wait for both (the daily ones may come a moment after the hourly).
    eventually(Duration::from_secs(20), || totals(&env.gw) == expected && totals_of(&env.gw, "day") == expected);
    assert_eq!(totals(&env.gw), expected);

    // Percentiles of app1's answers (100, 400, 1600 ms and a fast 429), within one bucket.
    let rows = usage(&env.gw, &format!("granularity=day&api=bank/accounts&application={app1}"));
    assert_eq!(rows.len(), 1, "{rows:?}");
    let p99 = rows[0]["latencyMs"]["p99"].as_f64().unwrap();
    let p50 = rows[0]["latencyMs"]["p50"].as_f64().unwrap();
    // The backend's sleep plus the gateway's own time (at most what the
    // client saw), rounded up to a bucket bound (a factor of at most 1.42;
    // exactness is unit-tested).
    let p99_max = (1600.0 + 100.0_f64).max(seen_ms[2]) * 1.42;
    let p50_max = (100.0 + 50.0_f64).max(seen_ms[0]) * 1.42;
    assert!((1600.0..=p99_max).contains(&p99), "p99 {p99} (client saw {seen_ms:?})");
    assert!((100.0..=p50_max).contains(&p50), "p50 {p50} (client saw {seen_ms:?})");
    assert!(rows[0]["bytes"].as_u64().unwrap() > 0);

    // CSV: a header row and one line per row.
    let r = request(
        env.gw.mgmt,
        "GET",
        "/api/v1/analytics/usage?granularity=hour",
        &[("authorization", &format!("Bearer {ADMIN}")), ("accept", "text/csv")],
        b"",
    );
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/csv"));
    let text = r.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "time,api,application,requests,errors,throttled,p50_ms,p95_ms,p99_ms,bytes");
    assert_eq!(lines.len(), 1 + usage(&env.gw, "granularity=hour").len());

    // Availability: the broken API answered only 5xx.
    let r = admin_at(env.gw.mgmt, "GET", "/api/v1/analytics/availability", Value::Null).json();
    let of = |api: &str| r["apis"].as_array().unwrap().iter().find(|a| a["api"] == api).unwrap().clone();
    assert_eq!(
        (of("bank/broken")["uptimePercent"].as_f64(), of("bank/broken")["serverErrors"].as_u64()),
        (Some(0.0), Some(2))
    );
    assert_eq!(
        (of("bank/accounts")["uptimePercent"].as_f64(), of("bank/accounts")["requests"].as_u64()),
        (Some(100.0), Some(6))
    );

    // Bad parameters.
    for q in [
        "granularity=week",
        "from=yesterday",
        "from=2026-01-01T00:00:00Z&to=2026-03-01T00:00:00Z",
        "to=0&from=10",
        "color=red",
    ] {
        let r = admin_at(env.gw.mgmt, "GET", &format!("/api/v1/analytics/usage?{q}"), Value::Null);
        assert_eq!((r.status, r.json()["error"].as_str()), (400, Some("bad_request")), "{q}: {}", r.text());
    }
    assert_eq!(request(env.gw.mgmt, "GET", "/api/v1/analytics/usage", &[], b"").status, 401);

    // A restart keeps everything (same database).
    let dir = env.dir.clone();
    drop(std::mem::replace(&mut env.gw, start_gateway(&dir, &env.token, &[])));
    assert_eq!(totals(&env.gw), expected);
    // And the new process adds to it.
    assert_eq!(get(&env.gw, "/accounts/v1/z", &key2), 200);
    eventually(Duration::from_secs(20), || {
        totals(&env.gw).iter().any(|t| t.0 == "bank/accounts" && t.1 == app2 && t.2 == 2)
    });
}

#[test]
fn two_gateways_on_one_postgresql_are_summed() {
    let pg = Postgres::start();
    let url = pg.url();
    let env = start(&["--database-url", &url]);
    let other = start_gateway(&env.dir, &env.token, &["--database-url", &url]);
    let (app, key) = app_with_key(&env.gw, "tpp");
    for _ in 0..2 {
        assert_eq!(get(&env.gw, "/accounts/v1/a", &key), 200);
    }
    // The tier (3 per window) is per gateway without Redis: all three pass.
    assert_eq!(get(&other, "/accounts/v1/b", &key), 200);
    let want = vec![("bank/accounts".to_string(), app.clone(), 3, 0, 0)];
    eventually(Duration::from_secs(20), || totals(&env.gw) == want && totals(&other) == want);
    assert_eq!(totals(&other), want);
}

/// Requests a collector received: path, content type, body.
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, String, Vec<u8>)>>>;

/// An OTLP/HTTP collector stand-in: keeps every request's path, content
/// type and body, answers 200.
fn collector() -> (String, Received) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let keep = keep.clone();
            // One thread per connection: the exporters keep theirs open.
            std::thread::spawn(move || {
                let mut reader = BufReader::new(s.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let path = line.split(' ').nth(1).unwrap_or("").to_string();
                    let (mut length, mut ctype) = (0usize, String::new());
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                        let lower = h.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        if let Some(v) = lower.strip_prefix("content-type:") {
                            ctype = v.trim().to_string();
                        }
                    }
                    let mut body = vec![0u8; length];
                    if reader.read_exact(&mut body).is_err() {
                        break;
                    }
                    keep.lock().unwrap().push((path, ctype, body));
                    let _ = s.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
                    );
                }
            });
        }
    });
    (url, got)
}

#[test]
fn per_request_records_are_exported_over_otlp() {
    let (url, got) = collector();
    let env = start(&["--otlp-endpoint", &url]);
    let (_app, key) = app_with_key(&env.gw, "tpp-otlp");
    assert_eq!(get(&env.gw, "/accounts/v1/otlp-one", &key), 200);
    assert_eq!(get(&env.gw, "/broken/v1/otlp-two", &key), 502);
    let contains = |hay: &[u8], needle: &str| hay.windows(needle.len()).any(|w| w == needle.as_bytes());
    eventually(Duration::from_secs(20), || {
        got.lock().unwrap().iter().any(|(path, _, body)| {
            path == "/v1/logs" && contains(body, "bank/broken") && contains(body, "backend_connect")
        })
    });
    let batches: Vec<_> = got.lock().unwrap().iter().filter(|b| b.0 == "/v1/logs").cloned().collect();
    assert!(
        got.lock().unwrap().iter().all(|(path, ctype, _)| ["/v1/logs", "/v1/metrics"].contains(&path.as_str())
            && ctype == "application/x-protobuf"),
        "{:?}",
        got.lock().unwrap().iter().map(|b| (b.0.clone(), b.1.clone())).collect::<Vec<_>>()
    );
    let all: Vec<u8> = batches.iter().flat_map(|b| b.2.clone()).collect();
    assert!(
        contains(&all, "bank/accounts") && contains(&all, "tollgate-gateway"),
        "records carry the API and the service"
    );
}

#[test]
fn the_rollups_are_exported_as_otlp_metrics() {
    let (url, got) = collector();
    // The full logs URL is accepted too: metrics go next to it.
    let env = start(&["--otlp-endpoint", &format!("{url}/v1/logs")]);
    let (app, key) = app_with_key(&env.gw, "tpp-metrics");
    assert_eq!(get(&env.gw, "/accounts/v1/m", &key), 200);
    let contains = |hay: &[u8], needle: &str| hay.windows(needle.len()).any(|w| w == needle.as_bytes());
    eventually(Duration::from_secs(20), || {
        got.lock().unwrap().iter().any(|(path, ctype, body)| {
            path == "/v1/metrics"
                && ctype == "application/x-protobuf"
                && contains(body, "tollgate.requests")
                && contains(body, "tollgate.request.duration")
                && contains(body, &app)
        })
    });
}

/// Latest value of a metric in the Prometheus text.
fn metric(gw: &Gateway, name: &str) -> f64 {
    let text = gw.metrics();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).map(|v| v.trim().parse().unwrap()))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// A PostgreSQL session holding an exclusive lock on the minute table until
/// dropped (psql reading a script from its standard input).
struct TableLock(std::process::Child);

impl TableLock {
    fn take(pg: &Postgres, table: &str) -> TableLock {
        use std::io::{BufRead, Write};
        let mut child = std::process::Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &pg.port.to_string(), "-U", "tollgate", "-d", "postgres", "-At"])
            .args(["-v", "ON_ERROR_STOP=1"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("psql (make deps installs postgresql)");
        let stdin = child.stdin.as_mut().unwrap();
        writeln!(stdin, "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; SELECT 'locked';").unwrap();
        stdin.flush().unwrap();
        // psql echoes the command tags (BEGIN, LOCK TABLE) first.
        let mut out = std::io::BufReader::new(child.stdout.as_mut().unwrap());
        let mut line = String::new();
        while line.trim() != "locked" {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "psql ended before the lock was taken");
        }
        TableLock(child)
    }
}

/// Sessions waiting for a lock on `table`.
fn lock_waiters(pg: &Postgres, table: &str) -> u64 {
    let out = std::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &pg.port.to_string(), "-U", "tollgate", "-d", "postgres", "-At", "-c"])
        .arg(format!(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
             WHERE c.relname = '{table}' AND NOT l.granted"
        ))
        .output()
        .expect("psql (make deps installs postgresql)");
    assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

impl Drop for TableLock {
    fn drop(&mut self) {
        use std::io::Write;
        if let Some(mut stdin) = self.0.stdin.take() {
            let _ = writeln!(stdin, "COMMIT;");
        }
        let _ = self.0.wait();
    }
}

#[test]
fn a_flood_drops_events_and_counts_them_without_holding_up_requests() {
    let pg = Postgres::start();
    let url = pg.url();
    let env = start(&["--database-url", &url, "--analytics-queue-size", "8"]);
    let (app, key) = app_with_tier(&env.gw, "tpp-flood", "wide");
    assert_eq!(get(&env.gw, "/accounts/v1/first", &key), 200);
    let one = vec![("bank/accounts".to_string(), app.clone(), 1, 0, 0)];
    eventually(Duration::from_secs(20), || totals(&env.gw) == one);
    // The database stops taking rollups: the aggregator's next write waits
    // on the lock, and nothing empties the queue meanwhile.
    let lock = TableLock::take(&pg, "analytics_minute");
    assert_eq!(get(&env.gw, "/accounts/v1/second", &key), 200);
    // A flush (every second) with that request's rollup is now stuck: the
    // database shows a session waiting for the lock.
    eventually(Duration::from_secs(20), || lock_waiters(&pg, "analytics_minute") > 0);
    for i in 0..100 {
        assert_eq!(get(&env.gw, &format!("/accounts/v1/flood-{i}"), &key), 200, "request {i}");
    }
    let dropped = metric(&env.gw, "tollgate_analytics_events_dropped_total") as u64;
    assert!(dropped >= 100 - 8, "a queue of 8 behind a stuck writer drops the rest, got {dropped}");
    drop(lock);
    // What was queued is recorded, what was dropped is counted: nothing else is lost.
    let want = vec![("bank/accounts".to_string(), app.clone(), 102 - dropped, 0, 0)];
    eventually(Duration::from_secs(20), || totals(&env.gw) == want);
}

#[test]
fn the_last_seconds_are_written_at_shutdown() {
    // Rollups are written once at start and then every 60 s (the longest
    // interval there is): the requests below reach the database only
    // through the shutdown flush, provided the process has ended within
    // 60 s of its start. On a machine so loaded that it has not, that run
    // proves nothing either way and is made again (a count of tries, not a
    // time limit on the machine).
    for attempt in 1..=5 {
        let started = std::time::Instant::now();
        let mut env = start(&["--analytics-flush-seconds", "60", "--drain-seconds", "0"]);
        let (app, key) = app_with_key(&env.gw, "tpp-last");
        assert_eq!(get(&env.gw, "/accounts/v1/one", &key), 200);
        assert_eq!(get(&env.gw, "/broken/v1/two", &key), 502);
        let written_before = totals_of(&env.gw, "minute");
        let pid = env.gw.proc.0.id().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let status = env.gw.proc.0.wait().unwrap();
        assert!(status.success(), "{status:?}");
        let conclusive = started.elapsed() < Duration::from_secs(60);
        if conclusive {
            assert!(written_before.is_empty(), "nothing written before the shutdown: {written_before:?}");
        }
        let dir = env.dir.clone();
        env.gw = start_gateway(&dir, &env.token, &[]);
        let mut want = vec![
            ("bank/accounts".to_string(), app.clone(), 1, 0, 0),
            ("bank/broken".to_string(), app.clone(), 1, 1, 0),
        ];
        want.sort();
        assert_eq!(totals_of(&env.gw, "minute"), want);
        if conclusive {
            return;
        }
        eprintln!("attempt {attempt}: the first gateway ran past its 60 s flush; again");
    }
    panic!("5 attempts ran past the 60 s flush interval");
}
