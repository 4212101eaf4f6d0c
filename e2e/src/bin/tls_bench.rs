//! A closed-loop HTTPS load generator with a client certificate (wrk has no
//! client certificates): `--connections` keep-alive TLS connections, each
//! sending the next GET as soon as the last answer is read, for
//! `--duration` seconds. Prints `{"rps", "p50_ms", "p99_ms", "non2xx", "errors"}`.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::time::Instant;

#[derive(Parser)]
struct Args {
    /// https://127.0.0.1:PORT/path
    #[arg(long)]
    url: String,
    /// PEM CA bundle the server certificate chains to.
    #[arg(long)]
    ca: String,
    /// Client certificate (PEM) and key (PEM, PKCS#8).
    #[arg(long)]
    cert: Option<String>,
    #[arg(long)]
    key: Option<String>,
    #[arg(long, default_value_t = 32)]
    connections: u32,
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Extra request header, `name: value` (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
}

type Failure = Box<dyn std::error::Error + Send + Sync>;

fn tls_config(a: &Args) -> Result<rustls::ClientConfig, Failure> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut std::fs::read(&a.ca)?.as_slice()) {
        roots.add(c?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    Ok(match (&a.cert, &a.key) {
        (Some(c), Some(k)) => {
            let certs = rustls_pemfile::certs(&mut std::fs::read(c)?.as_slice()).collect::<Result<Vec<_>, _>>()?;
            let key = rustls_pemfile::private_key(&mut std::fs::read(k)?.as_slice())?.ok_or("no private key")?;
            builder.with_client_auth_cert(certs, key)?
        }
        _ => builder.with_no_client_auth(),
    })
}

async fn connection(
    args: Arc<Args>,
    connector: tokio_rustls::TlsConnector,
    authority: String,
    path: String,
    end: Instant,
) -> Result<(Histogram<u64>, u64, u64), Failure> {
    let tcp = tokio::net::TcpStream::connect(&authority).await?;
    tcp.set_nodelay(true)?;
    let host = authority.rsplit_once(':').map(|(h, _)| h).unwrap_or(&authority).to_string();
    let name = rustls::pki_types::ServerName::try_from(host)?;
    let tls = connector.connect(name, tcp).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut ok, mut non2xx) = (0u64, 0u64);
    while Instant::now() < end {
        let mut req = hyper::Request::get(path.as_str()).header(hyper::header::HOST, authority.as_str());
        for h in &args.headers {
            if let Some((k, v)) = h.split_once(':') {
                req = req.header(k.trim(), v.trim());
            }
        }
        let started = Instant::now();
        sender.ready().await?;
        let resp = sender.send_request(req.body(Empty::<Bytes>::new())?).await?;
        let status = resp.status();
        resp.into_body().collect().await?;
        let _ = hist.record((started.elapsed().as_micros() as u64).max(1));
        if status.is_success() { ok += 1 } else { non2xx += 1 }
    }
    Ok((hist, ok, non2xx))
}

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let args = Arc::new(Args::parse());
    let rest = args.url.strip_prefix("https://").ok_or("--url must be https://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
        None => (rest.to_string(), "/".to_string()),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(&args)?));
    let end = Instant::now() + Duration::from_secs(args.duration);
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.connections)
        .map(|_| tokio::spawn(connection(args.clone(), connector.clone(), authority.clone(), path.clone(), end)))
        .collect();
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut ok, mut non2xx, mut errors) = (0u64, 0u64, 0u64);
    for t in tasks {
        match t.await? {
            Ok((h, o, n)) => {
                total.add(h)?;
                ok += o;
                non2xx += n;
            }
            Err(e) => {
                eprintln!("connection failed: {e}");
                errors += 1;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let ms = |q: f64| total.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{}",
        json!({"rps": (ok + non2xx) as f64 / secs, "p50_ms": ms(0.5), "p99_ms": ms(0.99), "non2xx": non2xx, "errors": errors})
    );
    Ok(())
}
