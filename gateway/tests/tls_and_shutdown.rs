//! HTTPS with a generated certificate, rotation without restart, and
//! graceful shutdown on SIGTERM.

mod support;

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use support::*;

fn make_cert(dir: &Path, cn: &str) {
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={cn}"), "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(dir.join(format!("{cn}.key")))
        .arg("-out")
        .arg(dir.join(format!("{cn}.crt")))
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is installed (make deps)");
    assert!(status.success());
}

fn der(pem_path: &Path) -> CertificateDer<'static> {
    let pem = std::fs::read(pem_path).unwrap();
    rustls_pemfile::certs(&mut pem.as_slice()).next().unwrap().unwrap()
}

/// GET over TLS trusting only `trust`; returns the status and the served certificate.
fn tls_get(
    addr: std::net::SocketAddr,
    path: &str,
    trust: &[CertificateDer<'static>],
) -> (u16, CertificateDer<'static>) {
    let (status, cert, _) = tls_get_body(addr, path, trust);
    (status, cert)
}

/// [`tls_get`] that also returns the response.
fn tls_get_body(
    addr: std::net::SocketAddr,
    path: &str,
    trust: &[CertificateDer<'static>],
) -> (u16, CertificateDer<'static>, Resp) {
    let mut roots = rustls::RootCertStore::empty();
    for c in trust {
        roots.add(c.clone()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::IpAddress(addr.ip().into());
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let resp = exchange(&mut tls, "GET", path, &[], b"").unwrap();
    let cert = tls.conn.peer_certificates().unwrap()[0].clone().into_owned();
    (resp.status, cert, resp)
}

#[test]
fn https_serves_and_rotates_certificates_without_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    let dir = tmp.path().join("config");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    make_cert(&certs, "first");
    make_cert(&certs, "second");
    std::fs::copy(certs.join("first.crt"), certs.join("tls.crt")).unwrap();
    std::fs::copy(certs.join("first.key"), certs.join("tls.key")).unwrap();
    let (_be, addr) = echo("bank");
    std::fs::write(dir.join("a.yaml"), api("a", "/a", "v1", &format!("http://{addr}"), "")).unwrap();
    let cert_arg = certs.join("tls.crt");
    let key_arg = certs.join("tls.key");
    let gw = gateway(&dir, &["--tls-cert", cert_arg.to_str().unwrap(), "--tls-key", key_arg.to_str().unwrap()]);
    wait_port(gw.https);
    let (first, second) = (der(&certs.join("first.crt")), der(&certs.join("second.crt")));
    let (status, served, resp) = tls_get_body(gw.https, "/a/v1/x", &[first.clone(), second.clone()]);
    assert_eq!(status, 200);
    assert_eq!(served, first);
    // The backend sees https as the forwarded protocol.
    assert_eq!(resp.json()["headers"]["x-forwarded-proto"], "https", "{}", resp.text());
    let plain = gw.get("/a/v1/x");
    assert_eq!(plain.json()["headers"]["x-forwarded-proto"], "http");
    let (status, _) = tls_get(gw.mgmt_tls, "/healthz", std::slice::from_ref(&first));
    assert_eq!(status, 200, "management TLS listener");
    assert_eq!(gw.status()["tls"]["error"], serde_json::Value::Null);

    // A half-written pair is not taken (and /status says so).
    std::fs::write(certs.join("tls.crt"), "-----BEGIN CERTIFICATE-----\nnot really\n").unwrap();
    eventually(Duration::from_secs(4), || gw.status()["tls"]["error"].is_string());
    assert_eq!(gw.status()["tls"]["servingLastGood"], true);
    assert_eq!(
        tls_get(gw.https, "/a/v1/x", &[first.clone(), second.clone()]).1,
        first,
        "broken files keep the old pair"
    );
    // The new certificate before its key: a mismatched pair never goes live.
    std::fs::copy(certs.join("second.crt"), certs.join("tls.crt")).unwrap();
    eventually(Duration::from_secs(4), || {
        gw.status()["tls"]["error"].as_str().is_some_and(|e| e.contains("does not belong to the certificate"))
    });
    for _ in 0..3 {
        assert_eq!(tls_get(gw.https, "/a/v1/x", &[first.clone(), second.clone()]).1, first, "still the old pair");
    }
    // Its key arrives: the new pair goes live and the problem clears.
    std::fs::copy(certs.join("second.key"), certs.join("tls.key")).unwrap();
    eventually(Duration::from_secs(4), || tls_get(gw.https, "/a/v1/x", &[first.clone(), second.clone()]).1 == second);
    eventually(Duration::from_secs(4), || gw.status()["tls"]["error"].is_null());
}

/// How long the backend takes to answer the requests in flight at SIGTERM:
/// long enough that /readyz is seen turning 503 while they are still in
/// flight, however slowly a loaded machine answers.
const IN_FLIGHT_MS: u64 = 20_000;

/// --drain-seconds: far longer than [`IN_FLIGHT_MS`], so the requests finish
/// within it and an exit well before it shows the gateway left as soon as
/// they were done (not at the end of the drain time).
const DRAIN_SECONDS: u64 = 120;

#[test]
fn sigterm_lets_requests_in_flight_finish() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("config");
    std::fs::create_dir(&dir).unwrap();
    let (_be, addr) = echo("bank");
    std::fs::write(dir.join("a.yaml"), api("a", "/a", "v1", &format!("http://{addr}"), "")).unwrap();
    let mut gw = gateway(&dir, &["--drain-seconds", &DRAIN_SECONDS.to_string()]);
    let http = gw.http;
    let slow: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(move || {
                request(http, "GET", &format!("/a/v1/x?delay_ms={IN_FLIGHT_MS}"), &[], b"").status
            })
        })
        .collect();
    // The three are being served (the gateway counts them) before SIGTERM.
    eventually(Duration::from_secs(10), || {
        gw.metrics()
            .lines()
            .find_map(|l| l.strip_prefix("tollgate_requests_in_flight "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .is_some_and(|n| n >= 3.0)
    });
    let pid = gw.proc.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    // /readyz turns 503 while the requests are still in flight (so a load
    // balancer stops sending before the listeners close).
    eventually(Duration::from_secs(10), || {
        try_request(gw.mgmt, "GET", "/readyz", &[], b"").map(|r| r.status).unwrap_or(0) == 503
    });
    assert!(slow.iter().all(|t| !t.is_finished()), "observed while the requests were in flight");
    for t in slow {
        assert_eq!(t.join().unwrap(), 200, "in-flight request completed");
    }
    let drained = Instant::now();
    let status = loop {
        if let Some(s) = gw.proc.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            drained.elapsed() < Duration::from_secs(DRAIN_SECONDS / 2),
            "gateway did not exit once the requests in flight were done"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    assert!(TcpStream::connect_timeout(&http, Duration::from_millis(300)).is_err(), "no longer accepting");
}

/// A client that sends half a request head (or nothing after connecting to
/// the TLS port) is cut off after --header-timeout-seconds: management
/// connections cannot be held open forever (slowloris).
#[test]
fn management_listeners_close_connections_that_never_finish_their_request_head() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    let dir = tmp.path().join("config");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    make_cert(&certs, "tls");
    let (cert, key) = (certs.join("tls.crt"), certs.join("tls.key"));
    let gw = gateway(
        &dir,
        &["--header-timeout-seconds", "1", "--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()],
    );
    wait_port(gw.mgmt_tls);
    // The connection must be closed by the 1 s --header-timeout-seconds: the
    // read gives up at 25 s, before hyper's own 30 s head timeout (on the
    // plain listener) could close it; nothing else would close it on the
    // TLS one. 25 s only bounds a hang: it does not time the machine.
    let closed_within = |addr, send: &[u8]| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(25))).unwrap();
        s.write_all(send).unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 512];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => continue, // a 408 answer before the close is fine
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                Err(e) => panic!("still open after {:?}: {e}", start.elapsed()),
            }
        }
    };
    closed_within(gw.mgmt, b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
    closed_within(gw.mgmt_tls, b"");
    // The listeners still serve everyone else.
    assert_eq!(request(gw.mgmt, "GET", "/healthz", &[], b"").status, 200);
}

/// A client that drips its request head onto the traffic listener, a byte
/// at a time well inside Pingora's per-read timeout, is cut off once the
/// head has taken --header-timeout-seconds; a head that arrives in pieces
/// within the deadline is served, and so are keep-alive requests after it.
#[test]
fn traffic_listeners_close_connections_whose_request_head_is_dripped() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("config");
    std::fs::create_dir(&dir).unwrap();
    let (_be, addr) = echo("bank");
    std::fs::write(dir.join("a.yaml"), api("a", "/a", "v1", &format!("http://{addr}"), "")).unwrap();
    let gw = gateway(&dir, &["--access-log", "false", "--header-timeout-seconds", "1"]);

    // A valid head, and one whose request line Pingora would escape and
    // read on (a space in the target): both are cut off at the deadline.
    // Dripped at one byte per 200 ms at best, each takes over a minute to
    // send: a close while dripping is the 1 s head deadline's doing (nothing
    // else closes a connection that gets a byte every 200 ms), however
    // slowly a loaded machine runs.
    let pad = "a".repeat(320);
    let heads: [Vec<u8>; 2] = [
        format!("GET /a/v1/x HTTP/1.1\r\nhost: g\r\nx-pad: {pad}").into_bytes(),
        format!("GET /a/v1/x y HTTP/1.1\r\nhost: g\r\nx-pad: {pad}").into_bytes(),
    ];
    for (i, head) in heads.iter().enumerate() {
        let mut s = TcpStream::connect(gw.http).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let start = Instant::now();
        let mut closed = None;
        for b in head {
            if s.write_all(&[*b]).is_err() {
                closed = Some(start.elapsed());
                break;
            }
            let mut buf = [0u8; 64];
            match s.read(&mut buf) {
                Ok(0) => {
                    closed = Some(start.elapsed());
                    break;
                }
                Ok(n) => panic!("answered a half head: {}", String::from_utf8_lossy(&buf[..n])),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    closed = Some(start.elapsed());
                    break;
                }
                Err(_) => {} // still open: drip the next byte
            }
        }
        let closed = closed.unwrap_or_else(|| panic!("head {i}: still open after dripping for {:?}", start.elapsed()));
        // The deadline runs from the head's first byte, sent after `start`.
        assert!(closed >= Duration::from_millis(900), "head {i}: closed before the deadline: {closed:?}");
        let timeouts = format!("tollgate_request_head_timeouts_total {}", i + 1);
        eventually(Duration::from_secs(10), || gw.metrics().contains(&timeouts));
    }
    drop(gw);

    // A head in two pieces well inside the deadline (a gateway with a 60 s
    // one: a pause of 400 ms cannot outlast it on a loaded machine), then a
    // second request on the same connection.
    let gw = gateway(&dir, &["--access-log", "false", "--header-timeout-seconds", "60"]);
    let mut s = TcpStream::connect(gw.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.write_all(b"GET /a/v1/x?bytes=3 HTTP/1.1\r\nhost: g\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(400));
    s.write_all(b"\r\n").unwrap();
    for round in 0..2 {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(b"xxx") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "round {round}: closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
        s.write_all(b"GET /a/v1/y?bytes=3 HTTP/1.1\r\nhost: g\r\n\r\n").unwrap();
    }
}
