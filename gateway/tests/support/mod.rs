//! Test support: real processes on loopback and a tiny HTTP/1.1 client.
#![allow(dead_code)]

pub mod oauth;
pub mod pki;
pub mod postgres;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A TCP port on 127.0.0.1 that nothing listens on, for a child process to
/// bind. Chosen in 10000..20000, below the kernel's ephemeral range
/// (ip_local_port_range, 32768.. by default; the local cluster's own ports
/// are 20000..32000): a port from `bind(0)` can be taken as the local port
/// of some outgoing connection before the child binds it, one from here
/// cannot. Never hands out one port twice in a process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const BASE: u32 = 10_000;
    const SPAN: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    // Start at a pid- and time-derived offset so that concurrent test
    // processes walk different parts of the range.
    let seed = std::process::id().wrapping_mul(7919)
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let _ = NEXT.compare_exchange(u32::MAX, seed % SPAN, Ordering::AcqRel, Ordering::Acquire);
    for _ in 0..SPAN {
        let port = (BASE + NEXT.fetch_add(1, Ordering::AcqRel) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free TCP port in {BASE}..{}", BASE + SPAN)
}

/// Shortest deadline of a condition wait ([`eventually`]).
pub const CONDITION_FLOOR: Duration = Duration::from_secs(120);

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something listens on `addr`. The deadline only bounds a hang
/// (a process that never opens its port); it does not time the machine.
pub fn wait_port(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "{addr} did not open");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts the sample backend; returns it and its address.
pub fn echo(name: &str) -> (Proc, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_tollgate-echo"))
        .args([addr.to_string(), name.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(addr);
    (Proc(child), addr)
}

pub struct Gateway {
    pub proc: Proc,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub mgmt: SocketAddr,
    pub mgmt_tls: SocketAddr,
    pub log: PathBuf,
}

/// Starts a gateway on `dir` with extra flags; waits for /readyz (or for the
/// process to exit). The start-up deadline only bounds a hang: a gateway
/// starting slowly on a loaded machine is not a failure.
pub fn gateway(dir: &Path, extra: &[&str]) -> Gateway {
    let p = |_| -> SocketAddr { format!("127.0.0.1:{}", free_port()).parse().unwrap() };
    let (http, https, mgmt, mgmt_tls) = (p(0), p(1), p(2), p(3));
    let log = dir.parent().unwrap_or(dir).join(format!("gateway-{}.log", http.port()));
    let child = Command::new(env!("CARGO_BIN_EXE_tollgate-gateway"))
        .arg("--config-dir")
        .arg(dir)
        .args(["--http", &http.to_string(), "--https", &https.to_string()])
        .args(["--management", &mgmt.to_string(), "--management-tls", &mgmt_tls.to_string()])
        .args(["--threads", "2", "--data-dir"])
        .arg(dir.parent().unwrap_or(dir).join("data"))
        .args(extra)
        // A quick rescan unless the test sets its own.
        .env("TOLLGATE_RESCAN_INTERVAL", "0.5")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut g = Gateway { proc: Proc(child), http, https, mgmt, mgmt_tls, log };
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Ok(r) = try_request(g.mgmt, "GET", "/readyz", &[], b"")
            && r.status == 200
        {
            break;
        }
        let exited = g.proc.0.try_wait().ok().flatten();
        if exited.is_some() || Instant::now() >= deadline {
            let log = std::fs::read_to_string(&g.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
            panic!("gateway not ready (exit: {exited:?}); last log lines:\n{}", tail.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    g
}

impl Gateway {
    pub fn get(&self, path: &str) -> Resp {
        request(self.http, "GET", path, &[], b"")
    }
    pub fn status(&self) -> serde_json::Value {
        request(self.mgmt, "GET", "/status", &[], b"").json()
    }
    pub fn metrics(&self) -> String {
        String::from_utf8(request(self.mgmt, "GET", "/metrics", &[], b"").body).unwrap()
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    try_request(addr, method, path, headers, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Resp> {
    // Generous: these bound a hang, they do not time the answer.
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(30))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    exchange(&mut s, method, path, headers, body)
}

pub fn exchange<S: Read + Write>(
    s: &mut S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Resp> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: gateway.test\r\nconnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        head.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    for chunk in body.chunks(64 * 1024) {
        s.write_all(chunk)?;
    }
    s.flush()?;
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse(&raw, method == "HEAD")
}

fn parse(raw: &[u8], head_only: bool) -> std::io::Result<Resp> {
    let bad = |m: &str| std::io::Error::other(m.to_string());
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no header end"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("header not utf8"))?;
    let mut lines = head.split("\r\n");
    let status: u16 =
        lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).ok_or_else(|| bad("status"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string())))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if head_only {
        body.clear();
    } else if headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked")) {
        body = dechunk(&body);
    }
    Ok(Resp { status, headers, body })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&b[..i]).unwrap().split(';').next().unwrap().trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + size]);
        b = &b[i + 2 + size + 2..];
    }
    out
}

/// Writes a file atomically (temp file + rename), as the operator does.
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_file_name(format!(".{}.tmp", path.file_name().unwrap().to_string_lossy()));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls `f` until it returns true; returns the time taken.
///
/// A test waits for conditions, never for time: the deadline only bounds a
/// hang (a condition that never comes true) and does not time the machine.
/// So whatever `timeout` a caller names, the wait lasts at least
/// [`CONDITION_FLOOR`]: a short deadline (2 s, 3 s...) cannot fail a test on a
/// loaded machine. How fast a change takes effect is measured by the
/// benchmarks (`make bench`), not here.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let timeout = timeout.max(CONDITION_FLOOR);
    let start = Instant::now();
    loop {
        if f() {
            return start.elapsed();
        }
        assert!(start.elapsed() < timeout, "condition not met within {timeout:?}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Milliseconds since the Unix epoch: the clock the gateway's throttling
/// windows are aligned to (the same machine's).
pub fn epoch_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// The longest throttling period (`per: 30d`). Tests whose limits must not
/// roll over use it, so no window boundary falls inside them (with
/// [`away_from_long_window_end`]).
pub const LONG_PERIOD_SECS: u64 = 30 * 24 * 3600;

/// Sleeps past the next boundary of `period_secs` windows when one falls
/// within `margin`.
pub fn away_from_boundary(period_secs: u64, margin: Duration) {
    let period = period_secs * 1000;
    let left = period - epoch_ms() % period;
    if left < margin.as_millis() as u64 {
        std::thread::sleep(Duration::from_millis(left + 50));
    }
}

/// Makes sure the current 30-day window does not end during the test: the
/// margin (10 minutes) bounds a hang, it does not time the machine.
pub fn away_from_long_window_end() {
    away_from_boundary(LONG_PERIOD_SECS, Duration::from_secs(600));
}

/// Runs `f` inside one window of `period_secs` (windows aligned to the Unix
/// epoch), for a test of a short window that must see all of `f`'s requests
/// in one window: starts right after a boundary (a fresh window, whatever
/// earlier attempts counted) and, when `f` ended in a later window than it
/// began (a loaded machine was slow), measures again in the next fresh
/// window. Returns what `f` returned and the window's index.
pub fn in_one_window<T>(period_secs: u64, mut f: impl FnMut() -> T) -> (T, u64) {
    let period = period_secs * 1000;
    for attempt in 1..=30 {
        std::thread::sleep(Duration::from_millis(period - epoch_ms() % period + 50));
        let window = epoch_ms() / period;
        let out = f();
        if epoch_ms() / period == window {
            return (out, window);
        }
        eprintln!("attempt {attempt} straddled a {period_secs} s window boundary; measuring again in a fresh window");
    }
    panic!("30 attempts straddled a {period_secs} s window boundary")
}

/// Sleeps until window `window` of `period_secs` has ended.
pub fn after_window(period_secs: u64, window: u64) {
    let end = (window + 1) * period_secs * 1000;
    while epoch_ms() < end + 20 {
        std::thread::sleep(Duration::from_millis((end + 20).saturating_sub(epoch_ms()).max(1)));
    }
}

pub fn api(name: &str, context: &str, version: &str, backend: &str, extra: &str) -> String {
    format!(
        "apiVersion: tollgate.dev/v1alpha1\nkind: ApiDeployment\nmetadata: {{name: {name}, namespace: bank}}\nspec:\n  apiManagerRef: {{name: local}}\n  context: {context}\n  version: {version}\n  backend:\n    endpoints: [{{url: '{backend}'}}]\n{extra}"
    )
}

/// An API at `<context>/v1` with an API-level policy and a GET /x operation
/// with its own policy.
pub fn api_with_operation_policy(
    name: &str,
    context: &str,
    backend: &str,
    api_policy: &str,
    op_policy: &str,
) -> String {
    api(
        name,
        context,
        "v1",
        backend,
        &format!(
            "  throttling: {{policy: {api_policy}}}\n  operations:\n  - {{method: GET, path: /x, throttling: {{policy: {op_policy}}}}}\n"
        ),
    )
}

pub fn policy(name: &str, body: &str) -> String {
    format!(
        "apiVersion: tollgate.dev/v1alpha1\nkind: ThrottlePolicy\nmetadata: {{name: {name}, namespace: bank}}\nspec:\n{body}"
    )
}
