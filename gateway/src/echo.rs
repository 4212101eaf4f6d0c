//! `tollgate-echo`: a small backend for `make run`, tests and benchmarks.
//!
//! Answers every request with JSON describing it (method, path, query,
//! headers, body size and a checksum), reading the body as a stream.
//! `?delay_ms=N` waits before answering; `?status=N` picks the status;
//! `?bytes=N` answers with an N-byte body instead.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;

type BoxBody = http_body_util_full::Full;

mod http_body_util_full {
    use bytes::Bytes;
    use hyper::body::{Body, Frame, SizeHint};
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A body of one chunk.
    pub struct Full(Option<Bytes>);

    impl Full {
        pub fn new(b: Bytes) -> Full {
            Full(Some(b))
        }
    }

    impl Body for Full {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
        }
        fn is_end_stream(&self) -> bool {
            self.0.is_none()
        }
        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(self.0.as_ref().map_or(0, |b| b.len() as u64))
        }
    }
}

async fn handle(name: String, req: Request<Incoming>) -> Result<Response<BoxBody>, Infallible> {
    let query = req.uri().query().unwrap_or("").to_string();
    let param = |k: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let (delay, status, bytes_out) = (param("delay_ms"), param("status"), param("bytes"));
    // cors=1: answer with the backend's own (permissive) CORS headers.
    let own_cors = param("cors") == Some(1);
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_str().unwrap_or("").to_string())))
        .collect();
    let mut body = req.into_body();
    let mut size: u64 = 0;
    let mut sum: u64 = 0xcbf2_9ce4_8422_2325;
    while let Some(frame) = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await {
        let Ok(frame) = frame else { break };
        if let Some(data) = frame.data_ref() {
            size += data.len() as u64;
            for b in data.iter() {
                sum ^= u64::from(*b);
                sum = sum.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    if let Some(ms) = delay {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let out = match bytes_out {
        Some(n) => Bytes::from(vec![b'x'; n as usize]),
        None => Bytes::from(
            serde_json::json!({
                "backend": name,
                "method": method,
                "path": path,
                "query": query,
                "headers": headers,
                "bodyBytes": size,
                "bodyFnv": format!("{sum:016x}"),
            })
            .to_string(),
        ),
    };
    let mut resp = Response::new(BoxBody::new(out));
    *resp.status_mut() = http::StatusCode::from_u16(status.unwrap_or(200) as u16).unwrap_or(http::StatusCode::OK);
    resp.headers_mut().insert("content-type", http::HeaderValue::from_static("application/json"));
    resp.headers_mut()
        .insert("x-backend", http::HeaderValue::from_str(&name).unwrap_or(http::HeaderValue::from_static("echo")));
    if own_cors {
        let h = resp.headers_mut();
        h.insert("access-control-allow-origin", http::HeaderValue::from_static("*"));
        h.insert("access-control-allow-credentials", http::HeaderValue::from_static("true"));
        h.insert("access-control-expose-headers", http::HeaderValue::from_static("x-internal"));
        h.insert("vary", http::HeaderValue::from_static("Accept-Encoding, origin"));
    }
    Ok(resp)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args.next().unwrap_or_else(|| "127.0.0.1:8080".into()).parse().unwrap_or_else(|e| {
        eprintln!("usage: tollgate-echo [ADDR] [NAME]: {e}");
        std::process::exit(2)
    });
    let name = args.next().unwrap_or_else(|| addr.to_string());
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap_or_else(|e| {
        eprintln!("tollgate-echo: cannot listen on {addr}: {e}");
        std::process::exit(1)
    });
    println!("tollgate-echo listening on {}", listener.local_addr().map(|a| a.to_string()).unwrap_or_default());
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let name = name.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(name.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
