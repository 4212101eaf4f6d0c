//! An open-loop HTTP/1.1 load generator for the soak benchmark.
//!
//! Requests are sent on a fixed schedule (`--rate` per second in total,
//! spread over `--connections` keep-alive connections), whatever the server
//! does. Latency is measured from the moment a request was due, not from
//! when it was sent, so a stalled server shows up as latency instead of
//! silently lowering the rate (no coordinated omission).
//!
//! Prints one JSON object: per window (`--window` seconds) the requests due
//! and completed, errors, non-2xx answers, latency percentiles and, with
//! `--pid`, that process's resident memory; then the totals.

use std::time::Duration;

use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

#[derive(Parser)]
struct Args {
    /// Target, e.g. http://127.0.0.1:8280/plain/v1/hello (plain HTTP only).
    #[arg(long)]
    url: String,
    /// Requests per second, in total.
    #[arg(long)]
    rate: u32,
    /// Seconds to run.
    #[arg(long)]
    duration: u64,
    /// Keep-alive connections (one request in flight on each).
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// Extra request header, `name: value` (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Seconds per reported window.
    #[arg(long, default_value_t = 10)]
    window: u64,
    /// Process whose resident memory is sampled at each window.
    #[arg(long)]
    pid: Option<u32>,
}

enum Outcome {
    Ok,
    Non2xx,
    Error,
}

struct Sample {
    due: Instant,
    latency_us: u64,
    outcome: Outcome,
}

fn rss_mib(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = text.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

async fn connect(
    addr: &str,
) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, Box<dyn std::error::Error + Send + Sync>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One connection: sends request k at `start + (k * connections + index) / rate`.
async fn connection(
    args: std::sync::Arc<Args>,
    authority: String,
    path: String,
    index: u32,
    start: Instant,
    end: Instant,
    tx: mpsc::UnboundedSender<Sample>,
) {
    let interval = Duration::from_secs_f64(f64::from(args.connections) / f64::from(args.rate));
    let mut due = start + Duration::from_secs_f64(f64::from(index) / f64::from(args.rate));
    let mut sender = None;
    while due < end {
        tokio::time::sleep_until(due).await;
        if sender.is_none() {
            sender = connect(&authority).await.ok();
        }
        let outcome = match sender.as_mut() {
            None => Outcome::Error,
            Some(s) => {
                let mut req = hyper::Request::get(path.as_str()).header(hyper::header::HOST, authority.as_str());
                for h in &args.headers {
                    if let Some((k, v)) = h.split_once(':') {
                        req = req.header(k.trim(), v.trim());
                    }
                }
                let req = req.body(Empty::<Bytes>::new()).expect("request");
                let result = async {
                    s.ready().await?;
                    let resp = s.send_request(req).await?;
                    let status = resp.status();
                    resp.into_body().collect().await?;
                    Ok::<_, hyper::Error>(status)
                }
                .await;
                match result {
                    Ok(status) if status.is_success() => Outcome::Ok,
                    Ok(_) => Outcome::Non2xx,
                    Err(_) => {
                        sender = None;
                        Outcome::Error
                    }
                }
            }
        };
        let latency_us = due.elapsed().as_micros() as u64;
        if tx.send(Sample { due, latency_us, outcome }).is_err() {
            return;
        }
        due += interval;
    }
}

fn percentiles(h: &Histogram<u64>) -> serde_json::Value {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    json!({ "p50_ms": ms(0.5), "p90_ms": ms(0.9), "p99_ms": ms(0.99), "p999_ms": ms(0.999),
            "max_ms": h.max() as f64 / 1000.0 })
}

#[tokio::main]
async fn main() {
    let args = std::sync::Arc::new(Args::parse());
    let rest = args.url.strip_prefix("http://").expect("--url must be http://host:port/path");
    let (authority, path) = match rest.find('/') {
        Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
        None => (rest.to_string(), "/".to_string()),
    };
    assert!(args.rate > 0 && args.connections > 0 && args.window > 0, "--rate, --connections and --window must be > 0");
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + Duration::from_secs(args.duration);
    let (tx, mut rx) = mpsc::unbounded_channel();
    for index in 0..args.connections {
        tokio::spawn(connection(args.clone(), authority.clone(), path.clone(), index, start, end, tx.clone()));
    }
    drop(tx);

    let new_hist = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let windows = args.duration.div_ceil(args.window) as usize;
    let mut hists: Vec<Histogram<u64>> = (0..windows).map(|_| new_hist()).collect();
    let mut counts = vec![(0u64, 0u64, 0u64); windows];
    let mut rss = vec![None; windows];
    let mut total = new_hist();
    let mut ticker =
        tokio::time::interval_at(start + Duration::from_secs(args.window), Duration::from_secs(args.window));
    let mut sampled = 0;
    loop {
        tokio::select! {
            sample = rx.recv() => {
                let Some(s) = sample else { break };
                let w = ((s.due - start).as_secs() / args.window) as usize;
                let w = w.min(windows - 1);
                let c = &mut counts[w];
                match s.outcome {
                    Outcome::Ok => c.0 += 1,
                    Outcome::Non2xx => c.1 += 1,
                    Outcome::Error => c.2 += 1,
                }
                let v = s.latency_us.clamp(1, 60_000_000);
                let _ = hists[w].record(v);
                let _ = total.record(v);
            }
            _ = ticker.tick(), if sampled < windows => {
                rss[sampled] = args.pid.and_then(rss_mib);
                sampled += 1;
            }
        }
    }
    for slot in rss.iter_mut().skip(sampled) {
        *slot = args.pid.and_then(rss_mib);
    }
    let per_window: Vec<_> = (0..windows)
        .map(|w| {
            let (ok, non2xx, errors) = counts[w];
            let mut v = percentiles(&hists[w]);
            v["window_end_s"] = json!(((w as u64 + 1) * args.window).min(args.duration));
            v["completed"] = json!(ok + non2xx);
            v["non2xx"] = json!(non2xx);
            v["errors"] = json!(errors);
            v["rss_mib"] = json!(rss[w]);
            v
        })
        .collect();
    let (ok, non2xx, errors) = counts.iter().fold((0, 0, 0), |a, c| (a.0 + c.0, a.1 + c.1, a.2 + c.2));
    let expected = u64::from(args.rate) * args.duration;
    let mut summary = percentiles(&total);
    summary["expected"] = json!(expected);
    summary["completed"] = json!(ok + non2xx);
    summary["non2xx"] = json!(non2xx);
    summary["errors"] = json!(errors);
    summary["achieved_rps"] = json!((ok + non2xx) as f64 / args.duration as f64);
    println!(
        "{}",
        json!({ "url": args.url, "rate": args.rate, "duration_s": args.duration, "connections": args.connections,
                "windows": per_window, "total": summary })
    );
}
