//! A deadline for the request head on the traffic listeners (slowloris).
//!
//! Pingora times each read of a request head separately (60 s on a new
//! connection, the keep-alive timeout on a reused one), so a client that
//! sends one byte every 59 s holds a connection and its task open for as
//! long as it likes, and a few thousand such clients exhaust the sockets.
//! Pingora has no hook before the head is read, so this wraps the proxy's
//! connection handler: on HTTP/1 connections it reads the head itself,
//! waiting up to the keep-alive timeout for the first byte and then at most
//! `--header-timeout-seconds` for the rest, and hands the bytes read to
//! Pingora's parser as a prefix (its own API for bytes read ahead of a
//! session). A head ends at its empty line; whatever it holds is then
//! Pingora's to parse (and to answer 400 to).
//! HTTP/2 connections (ALPN h2) go to Pingora directly.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::ALPN;
use pingora::protocols::Stream;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use prometheus_client::metrics::counter::Counter;
use tokio::io::AsyncReadExt;

/// Pingora's own limit on a request head; past it Pingora refuses the request.
const MAX_HEAD: usize = 1_048_575;

/// The proxy's connection handler with a whole-head deadline.
pub struct HeadTimeout<A> {
    inner: Arc<A>,
    /// Longest wait for the first byte of a request (keep-alive timeout).
    idle: Duration,
    /// Longest time from the first byte of a head to its end.
    head: Duration,
    /// Connections closed for a head that did not arrive in time.
    timeouts: Counter,
}

impl<A> HeadTimeout<A> {
    pub fn new(inner: A, idle: Duration, head: Duration, timeouts: Counter) -> Self {
        HeadTimeout { inner: Arc::new(inner), idle, head, timeouts }
    }
}

/// Why no head was read.
#[derive(Debug, PartialEq, Eq)]
pub enum NoHead {
    /// The client closed the connection or sent nothing before the idle
    /// timeout: an ordinary end of a connection.
    Closed,
    /// The head started but did not end within the head timeout.
    TimedOut,
}

/// Where the head in `buf` ends, scanning from `from` (bytes before it
/// were scanned already): the end of the first empty line after the first
/// request byte (CRLF or bare LF line ends; empty lines before a request are
/// skipped, as RFC 9112 2.2 allows). None while the head is unfinished.
///
/// Only a finished head (or [`MAX_HEAD`] bytes) is handed to Pingora: a
/// head Pingora cannot parse may still be read further by it (it escapes
/// some bad request lines and reads on), so judging the bytes here would
/// reopen the slowloris hole.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = buf.iter().position(|b| *b != b'\r' && *b != b'\n')?;
    let from = from.saturating_sub(2).max(start);
    let rest = &buf[from..];
    // Line ends found with memchr (SIMD): this runs on every request.
    memchr::memchr_iter(b'\n', rest).find_map(|i| match rest.get(i + 1) {
        Some(b'\n') => Some(from + i + 2),
        Some(b'\r') if rest.get(i + 2) == Some(&b'\n') => Some(from + i + 3),
        _ => None,
    })
}

#[cfg(test)]
fn head_complete(buf: &[u8]) -> bool {
    buf.len() >= MAX_HEAD || head_end(buf, 0).is_some()
}

/// Which timers bound the waits for a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timers {
    /// Pingora's shared coarse timer wheel (10 ms ticks), created only when
    /// a wait is pending: what the traffic listeners use. A tokio timer
    /// armed per request wakes the runtime's driver through its eventfd
    /// (one `write` system call per request on an otherwise idle worker).
    Shared,
    /// The runtime's own timers (tests with paused time).
    Runtime,
}

/// `future`, unless `limit` passes first (None).
async fn within<F: std::future::Future>(timers: Timers, limit: Duration, future: F) -> Option<F::Output> {
    match timers {
        Timers::Shared => pingora::time::fast_timeout::fast_timeout(limit, future).await.ok(),
        Timers::Runtime => pingora::time::tokio_timeout(limit, future).await.ok(),
    }
}

/// Reads from `stream` until `buf` holds a whole request head: the first
/// byte within `idle`, the rest within `head`. Stops waiting for a first
/// byte when the server shuts down.
pub async fn read_head<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    (idle, head): (Duration, Duration),
    timers: Timers,
    shutdown: &ShutdownWatch,
) -> Result<(), NoHead> {
    if buf.is_empty() {
        let mut shutdown = shutdown.clone();
        let first = async {
            tokio::select! {
                read = stream.read_buf(buf) => read.ok().filter(|n| *n > 0),
                _ = shutdown.wait_for(|down| *down) => None,
            }
        };
        if within(timers, idle, first).await.flatten().is_none() {
            return Err(NoHead::Closed);
        }
    }
    let rest = async {
        let mut scanned = 0;
        while buf.len() < MAX_HEAD && head_end(buf, scanned).is_none() {
            scanned = buf.len();
            match stream.read_buf(buf).await {
                Ok(n) if n > 0 => {}
                _ => return Err(NoHead::Closed),
            }
        }
        Ok(())
    };
    within(timers, head, rest).await.unwrap_or(Err(NoHead::TimedOut))
}

#[async_trait]
impl<A> ServerApp for HeadTimeout<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(self: &Arc<Self>, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2) | Some(ALPN::Custom(_))) {
            return self.inner.process_new(stream, shutdown).await;
        }
        let mut settings: Option<HttpPersistentSettings> = None;
        loop {
            let mut buf = BytesMut::with_capacity(4096);
            match read_head(&mut stream, &mut buf, (self.idle, self.head), Timers::Shared, shutdown).await {
                Ok(()) => {}
                Err(NoHead::Closed) => return None,
                Err(NoHead::TimedOut) => {
                    self.timeouts.inc();
                    return None;
                }
            }
            let mut h1 = pingora::protocols::http::v1::server::HttpSession::new(stream);
            h1.set_pipelined_prefix(buf);
            let mut session = ServerSession::H1(h1);
            match settings.take() {
                Some(s) => s.apply_to_session(&mut session),
                None => {
                    // As Pingora does for a new connection; the proxy sets
                    // the configured keep-alive once the head is read.
                    session.set_keepalive(if *shutdown.borrow() { None } else { Some(self.idle.as_secs()) });
                    session.set_keepalive_reuses_remaining(
                        self.inner.server_options().and_then(|o| o.keepalive_request_limit),
                    );
                }
            }
            let reused = self.inner.process_new_http(session, shutdown).await?;
            let (next, persistent) = reused.consume();
            stream = next;
            settings = persistent;
        }
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn watch() -> (tokio::sync::watch::Sender<bool>, ShutdownWatch) {
        tokio::sync::watch::channel(false)
    }

    /// [`read_head`] with the runtime's timers (these tests pause time),
    /// the idle and head limits in seconds.
    async fn read_head_paused(
        server: &mut tokio::io::DuplexStream,
        buf: &mut BytesMut,
        (idle, head): (u64, u64),
        shutdown: &ShutdownWatch,
    ) -> Result<(), NoHead> {
        let limits = (Duration::from_secs(idle), Duration::from_secs(head));
        read_head(server, buf, limits, Timers::Runtime, shutdown).await
    }

    #[test]
    fn heads_are_recognised_when_whole() {
        assert!(!head_complete(b""));
        assert!(!head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n"));
        assert!(head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(head_complete(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"), "body bytes may follow");
        assert!(!head_complete(b"\x16\x03\x01 not http"), "garbage waits for the deadline, never for Pingora");
        assert!(!head_complete(b"GET /a b HTTP/1.1\r\nHost: x\r\n"), "a bad request line is no finished head");
        assert!(head_complete(b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(head_complete(b"GET / HTTP/1.1\nHost: a\n\r\n"), "mixed line ends");
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody", 0), Some(18));
        // Scanning resumes where it stopped, also across a split line end.
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\n", 16), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\n", 17), Some(18));
        assert!(!head_complete(b"\r\n\r\n"), "empty lines alone are no request");
        assert!(!head_complete(b"\r\n\r\nGET / HTTP/1.1\r\n"), "nor do they end one");
        assert!(head_complete(b"GET / HTTP/1.1\nHost: a\n\n"), "bare LF line ends");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dripped_head_times_out_however_often_bytes_arrive() {
        let (client, mut server) = tokio::io::duplex(1024);
        let (_tx, shutdown) = watch();
        let drip = tokio::spawn(async move {
            let mut client = client;
            for b in b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
                if client.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            client
        });
        let mut buf = BytesMut::new();
        let started = tokio::time::Instant::now();
        let got = read_head_paused(&mut server, &mut buf, (60, 10), &shutdown).await;
        assert_eq!(got, Err(NoHead::TimedOut));
        let took = started.elapsed();
        assert!(took >= Duration::from_secs(10) && took < Duration::from_secs(12), "{took:?}");
        drop(server);
        drip.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_whole_head_is_handed_over_with_what_follows_it() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let (_tx, shutdown) = watch();
        client.write_all(b"POST /a HTTP/1.1\r\nContent-Length: 2\r\n").await.unwrap();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            client.write_all(b"\r\nok").await.unwrap();
            client
        });
        let mut buf = BytesMut::new();
        read_head_paused(&mut server, &mut buf, (60, 10), &shutdown).await.unwrap();
        assert!(buf.starts_with(b"POST /a HTTP/1.1\r\n") && head_complete(&buf));
        let _client = writer.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_close_quietly_after_the_idle_timeout_or_at_shutdown() {
        let (_client, mut server) = tokio::io::duplex(1024);
        let (tx, shutdown) = watch();
        let mut buf = BytesMut::new();
        let got = read_head_paused(&mut server, &mut buf, (5, 1), &shutdown).await;
        assert_eq!(got, Err(NoHead::Closed), "an idle wait is not a head timeout");

        let started = tokio::time::Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            tx.send(true).unwrap();
        });
        let got = read_head_paused(&mut server, &mut buf, (60, 1), &shutdown).await;
        assert_eq!(got, Err(NoHead::Closed));
        assert!(started.elapsed() < Duration::from_secs(3), "shutdown ends the idle wait");
    }
}
